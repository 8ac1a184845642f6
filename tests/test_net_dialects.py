"""Nets from other dialects: Caffe's leniency (two layers of one name, a zoo deploy's missing result
files), clear refusals, ignored fields logged once, `protonet inspect`, NVCaffe fp16 weights."""
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from protonet import caffe_pb2
from protonet.errors import PrototxtError, ProtonetError
from protonet.io.caffemodel import read_caffemodel_arrays
from protonet.io.prototxt import parse_prototxt
from protonet.net import Net

SMALL = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "a"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" } } }
layer { name: "conv" type: "Convolution" bottom: "a" top: "b"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" } } }
"""


def net_of(text, **kw):
    return Net(parse_prototxt(text, caffe_pb2.NetParameter()), **kw)


# ------------------------------------------------------------------------- duplicate layer names
def test_two_layers_of_one_name_build_and_weights_go_to_the_first(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        net = net_of(SMALL)
    assert list(net.layers) == ["data", "conv", "conv#1"]
    assert "layer 1 and layer 2 are both named 'conv'" in caplog.text
    # Saved as Caffe's Net::ToProto writes it: both layers under their name, each with its blobs.
    path = tmp_path / "dup.caffemodel"
    net.save_weights(path)
    stored = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert [l.name for l in stored.layer] == ["data", "conv", "conv"]
    # Caffe's CopyTrainedLayersFrom copies every source layer named conv into the first target of
    # that name, so the last one in the file wins there and the second layer keeps its filler.
    fresh = net_of(SMALL)
    second_before = fresh.layers["conv#1"].blobs[0].detach().clone()
    fresh.load_weights(path)
    assert torch.equal(fresh.layers["conv"].blobs[0], net.layers["conv#1"].blobs[0])
    assert torch.equal(fresh.layers["conv#1"].blobs[0], second_before)
    assert list(read_caffemodel_arrays(path)) == ["conv"]


def test_duplicate_names_with_opencv(tmp_path):
    """OpenCV names the second layer conv_1 and, unlike Caffe, gives the file's layers of one name
    to its layers of that name in turn: with both layers' blobs equal the two readers agree."""
    cv2 = pytest.importorskip("cv2")
    net = net_of(SMALL)
    with torch.no_grad():
        for a, b in zip(net.layers["conv#1"].blobs, net.layers["conv"].blobs):
            a.copy_(b)
    net.save_weights(tmp_path / "dup.caffemodel")
    (tmp_path / "dup.prototxt").write_text(SMALL)
    x = torch.from_numpy(np.random.RandomState(0).randn(1, 4, 8, 8).astype(np.float32))
    with torch.no_grad():
        ours = net(data=x)["b"].numpy()
    cv = cv2.dnn.readNetFromCaffe(str(tmp_path / "dup.prototxt"), str(tmp_path / "dup.caffemodel"))
    cv.setInput(x.numpy())
    last = cv.getLayerNames()[-1]  # conv_1, or b where OpenCV 4.14 names layers by their tops
    np.testing.assert_allclose(cv.forward(last), ours, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- save_output_param files
DEPLOY = """
name: "det"
layer { name: "loc" type: "Input" top: "loc" input_param { shape { dim: 1 dim: 8 } } }
layer { name: "conf" type: "Input" top: "conf" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "prior" type: "Input" top: "prior" input_param { shape { dim: 1 dim: 2 dim: 8 } } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior"
  top: "detection_out"
  detection_output_param { num_classes: 2 nms_param { nms_threshold: 0.45 } keep_top_k: 10
    save_output_param { output_directory: "OUT" output_name_prefix: "comp4_det_test_"
      output_format: "VOC" label_map_file: "/no/such/dir/labelmap_voc.prototxt"
      name_size_file: "/no/such/dir/test_name_size.txt" num_test_image: 4952 } } }
"""


def test_zoo_deploy_with_missing_result_files_builds_and_runs(tmp_path, caplog):
    text = DEPLOY.replace("OUT", str(tmp_path / "results"))
    with caplog.at_level(logging.WARNING):
        net = net_of(text)
    warnings = [r for r in caplog.records if "will not be saved" in r.getMessage()]
    assert len(warnings) == 1
    assert "/no/such/dir/labelmap_voc.prototxt not found" in warnings[0].getMessage()
    prior = torch.tensor([[0.1, 0.1, 0.3, 0.3, 0.5, 0.5, 0.9, 0.9], [0.1] * 8]).view(1, 2, 8)
    out = net(loc=torch.zeros(1, 8), conf=torch.tensor([[0.2, 0.8, 0.9, 0.1]]), prior=prior)["detection_out"]
    assert out.shape == (1, 1, 2, 7) and out[0, 0, :, 2].tolist() == pytest.approx([0.8, 0.1])
    assert not (tmp_path / "results").exists()


def test_protonet_test_asked_to_save_fails_clearly(tmp_path):
    from protonet.layers.base import NetContext

    text = DEPLOY.replace("OUT", str(tmp_path / "results"))
    with pytest.raises(ProtonetError, match=r"layer detection_out \(DetectionOutput\): label map file "
                                            r"/no/such/dir/labelmap_voc.prototxt not found \(save_output_param"):
        net_of(text, ctx=NetContext(result_files_required=True))
    # without an output directory nothing is asked to be saved: no error even for `test`
    net_of(DEPLOY.replace('output_directory: "OUT"', ""), ctx=NetContext(result_files_required=True))


# ----------------------------------------------------------------------------------- refusals
def test_unknown_type_names_type_layer_fork_and_dialects():
    with pytest.raises(ProtonetError) as err:
        net_of(SMALL.replace('name: "conv" type: "Convolution" bottom: "a"', 'name: "yolo" type: "YoloSeg" bottom: "a"'))
    msg = str(err.value)
    assert msg.startswith("layer yolo: unknown layer type 'YoloSeg' (a type of the YOLO/SSD forks (eric612), "
                          "which protonet does not run); protonet runs the types of BVLC, SSD and RefineDet Caffe")
    assert "NVCaffe" in msg and "layer ports" in msg
    with pytest.raises(ProtonetError, match=r"layer x: unknown layer type 'NoSuchType'; protonet runs"):
        net_of(SMALL.replace('name: "conv" type: "Convolution" bottom: "a"', 'name: "x" type: "NoSuchType" bottom: "a"'))


def test_unknown_field_names_field_message_and_fork():
    text = 'layer { name: "d" type: "DetectionOutput" detection_output_param { num_classes: 2 tflite_detection: true } }'
    with pytest.raises(PrototxtError, match=r'f.prototxt:1:83: Message type "caffe.DetectionOutputParameter" has no '
                                            r'field named "tflite_detection" \(a field of Synopsys Caffe, which protonet '
                                            r'does not run\)$'):
        parse_prototxt(text, caffe_pb2.NetParameter(), "f.prototxt")
    with pytest.raises(PrototxtError, match=r'has no field named "bogus"\.$'):
        parse_prototxt('layer { name: "d" bogus: 1 }', caffe_pb2.NetParameter(), "f.prototxt")


# ---------------------------------------------------------------------------- ignored fields
INTEL = """
name: "int8"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" engine: "MKL2017" forward_type: FLOAT16
        quantization_param { bw_layer_in: 8 bw_layer_out: 8 scale_in: 0.5 scale_out: 2 }
        convolution_param { num_output: 4 kernel_size: 3 engine: MKLDNN } }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2" quantization_param { bw_params: 8 }
        convolution_param { num_output: 4 kernel_size: 3 } }
"""


def test_ignored_dialect_fields_get_one_log_line_each(caplog):
    with caplog.at_level(logging.INFO, logger="protonet.net"):
        net_of(INTEL)
    lines = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage() or "no effect" in r.getMessage()]
    assert lines == [
        "Intel Caffe's engines are ignored: protonet has one implementation of each layer (layers conv1)",
        "Intel Caffe's int8 quantization_param is ignored: protonet runs the float weights (layers conv1, conv2)",
        "NVCaffe's storage/math types have no effect on protonet's float32 run (layers conv1)",
    ]


def test_inspect_reports_dialects_and_layers_it_cannot_run(tmp_path):
    text = INTEL + ('layer { name: "up" type: "Upsample" bottom: "conv2" top: "up" upsample_param { scale: 2 } }\n'
                    'layer { name: "seg" type: "YoloSeg" bottom: "up" top: "seg" }\n')
    (tmp_path / "n.prototxt").write_text(text)
    out = subprocess.run([sys.executable, "-m", "protonet", "inspect", str(tmp_path / "n.prototxt")],
                         capture_output=True, text=True, check=True).stdout
    assert "  dialect Intel Caffe: layer conv1: convolution_param.engine: MKLDNN; layer conv1: quantization_param; " \
           "layer conv1: engine; ... (4 in all)" in out
    assert "  dialect NVCaffe: layer conv1: forward_type" in out
    assert "  dialect layer ports: layer up: upsample_param; layer up: type Upsample" in out
    assert "  cannot run layer seg: type YoloSeg (a type of the YOLO/SSD forks (eric612))" in out


# ------------------------------------------------------------------------------ fp16 weights
def test_nvcaffe_fp16_caffemodel_runs_like_opencv(tmp_path):
    """A caffemodel stored as NVCaffe does (raw_data_type FLOAT16), as OpenCV's fp16 face detector is:
    protonet reads it into float32 and the net agrees with OpenCV reading the same file."""
    cv2 = pytest.importorskip("cv2")
    # (OpenCV 4.14 finds a layer by name only when it is also its top's name)
    text = SMALL.replace('top: "a"', 'top: "conv"').replace('bottom: "a"', 'bottom: "conv"')
    text = text.replace('name: "conv" type: "Convolution" bottom: "conv" top: "b"',
                        'name: "conv2" type: "Convolution" bottom: "conv" top: "conv2"')
    (tmp_path / "n.prototxt").write_text(text)
    net = net_of(text)
    fp16 = caffe_pb2.NetParameter()
    for name, layer in net.layers.items():
        stored = fp16.layer.add(name=name, type=layer.param.type)
        for blob in layer.blobs:
            b = stored.blobs.add(raw_data_type=caffe_pb2.FLOAT16)
            b.shape.dim.extend(blob.shape)
            b.raw_data = blob.detach().numpy().astype("<f2").tobytes()
    (tmp_path / "n.caffemodel").write_bytes(fp16.SerializeToString())
    ours = net_of(text, weights=str(tmp_path / "n.caffemodel"))
    w = ours.layers["conv"].blobs[0].detach().numpy()
    np.testing.assert_array_equal(w, net.layers["conv"].blobs[0].detach().numpy().astype(np.float16).astype(np.float32))
    x = np.random.RandomState(1).randn(1, 4, 8, 8).astype(np.float32)
    with torch.no_grad():
        y = ours(data=torch.from_numpy(x))["conv2"].numpy()
    cv = cv2.dnn.readNetFromCaffe(str(tmp_path / "n.prototxt"), str(tmp_path / "n.caffemodel"))
    cv.setInput(x)
    np.testing.assert_allclose(cv.forward("conv2"), y, rtol=1e-5, atol=1e-5)


def test_netspec_writes_the_ports_types_with_their_parameters():
    from protonet.spec import NetSpec, layers as L

    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 6, 4, 4]))
    n.dw = L.DepthwiseConvolution(n.data, num_output=6, group=6, kernel_size=3, pad=1)
    n.cdw = L.ConvolutionDepthwise(n.dw, kernel_size=3, pad=1)
    n.relu6 = L.ReLU6(n.cdw, negative_slope=0.1)
    n.relu = L.ReLU(n.relu6, negative_slope=0.2)
    n.shuffle = L.ShuffleChannel(n.relu, group=3)
    n.up = L.Upsample(n.shuffle, scale=2)
    n.interp = L.Interp(n.up, zoom_factor=2)
    proto = n.to_proto()
    layers = {l.name: l for l in proto.layer}
    assert layers["cdw"].convolution_param.kernel_size == [3]
    assert layers["relu6"].relu6_param.negative_slope == pytest.approx(0.1)
    assert layers["relu"].relu_param.negative_slope == pytest.approx(0.2) and not layers["relu"].HasField("relu6_param")
    assert layers["shuffle"].shuffle_channel_param.group == 3
    assert layers["up"].upsample_param.scale == 2 and layers["interp"].interp_param.zoom_factor == 2
    net = Net(proto)
    assert net.blob_shapes["interp"] == (1, 6, 15, 15)
