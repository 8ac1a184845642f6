"""The Python API PyTorch users expect: net(x), outputs=, state_dict keyed by Caffe layer names,
priors as a buffer, torch.compile(fullgraph=True) of a whole detector."""
import pathlib

import pytest
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.prototxt import read_prototxt
from protonet.net import Net

FIX = pathlib.Path(__file__).parent / "fixtures" / "net"


def tiny_ssd(top_k=None):
    param = read_prototxt(FIX / "tiny_ssd_deploy.prototxt", caffe_pb2.NetParameter)
    if top_k is not None:
        for layer in param.layer:
            if layer.type == "DetectionOutput":
                layer.detection_output_param.nms_param.top_k = top_k
    return Net(param, weights=str(FIX / "tiny_ssd.caffemodel")).eval()


@pytest.fixture(scope="module")
def net():
    return tiny_ssd()


@pytest.fixture(scope="module")
def image():
    return torch.rand(2, 3, 300, 300, generator=torch.Generator().manual_seed(0)) * 255 - 128


class Calls:
    """Which layers ran (forward hooks)."""

    def __init__(self, net):
        self.ran = []
        self.handles = [layer.register_forward_hook(lambda m, a, o, n=name: self.ran.append(n))
                        for name, layer in net.layers.items()]

    def close(self):
        for h in self.handles:
            h.remove()


def test_positional_input_equals_the_keyword_form(net, image):
    with torch.no_grad():
        by_name = net(data=image)
        by_position = net(image)
    assert by_name.keys() == by_position.keys()
    assert torch.equal(by_name["detection_out"], by_position["detection_out"])


def test_outputs_returns_and_runs_only_what_is_asked(net, image):
    calls = Calls(net)
    try:
        with torch.no_grad():
            out = net(image, outputs=["mbox_loc", "mbox_priorbox"])
        ran = list(calls.ran)
        calls.ran.clear()
        with torch.no_grad():
            det = net(image, outputs="detection_out")
    finally:
        calls.close()
    assert list(out) == ["mbox_loc", "mbox_priorbox"]
    assert "detection_out" not in ran and "mbox_conf" not in ran and "mbox_conf_softmax" not in ran
    assert set(ran) < set(net.layers)
    assert "detection_out" in calls.ran
    with torch.no_grad():
        full = net(image)
    assert torch.equal(out["mbox_loc"], full["mbox_loc"]) and torch.equal(det, full["detection_out"])


def test_input_errors_name_the_blob(net, image):
    with pytest.raises(ProtonetError, match="no blob 'nope'"):
        net(image, outputs=["nope"])
    with pytest.raises(ProtonetError, match="2 positional inputs given, the net has 1"):
        net(image, image)
    with pytest.raises(ProtonetError, match="given by position and by name"):
        net(image, data=image)


def test_state_dict_keys_are_layer_names_and_blob_indices(net):
    sd = net.state_dict()
    expected = [f"{name}.{i}" for name, layer in net.layers.items() for i in range(len(layer.blobs))]
    assert list(sd) == expected
    assert "conv1.0" in sd and "conv1.1" in sd and "conv3_norm.0" in sd
    assert sd["conv1.0"].shape == net.layers["conv1"].blobs[0].shape


def test_state_dict_round_trip_edits_by_prototxt_names(net, image):
    other = tiny_ssd()
    sd = net.state_dict()
    sd["conv1.1"] = sd["conv1.1"] + 1.0
    assert other.load_state_dict(sd).missing_keys == []
    assert torch.equal(other.layers["conv1"].blobs[1], net.layers["conv1"].blobs[1] + 1.0)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        other.load_state_dict({**sd, "conv99.0": sd["conv1.0"]})


def test_state_dict_keys_inside_a_parent_module(net):
    holder = torch.nn.Module()
    holder.detector = net
    sd = holder.state_dict()
    assert "detector.conv1.0" in sd
    twin = torch.nn.Module()
    twin.detector = tiny_ssd()
    twin.load_state_dict(sd)
    assert torch.equal(twin.detector.layers["conv1"].blobs[0], net.layers["conv1"].blobs[0])


def test_priorbox_returns_its_buffer_and_recomputes_for_other_sizes(net, image):
    layer = net.layers["conv3_norm_mbox_priorbox"]
    assert "prior" in dict(layer.named_buffers()) and "prior" not in layer.state_dict()
    feat, data = torch.zeros(1, 16, 38, 38), torch.zeros(1, 3, 300, 300)
    assert layer(feat, data).data_ptr() == layer.prior.data_ptr()
    other = layer(torch.zeros(1, 16, 19, 19), torch.zeros(1, 3, 150, 150))
    assert torch.equal(other, torch.from_numpy(layer.priors(19, 19, 150, 150)).unsqueeze(0))


def test_torch_compile_fullgraph_whole_detector(image):
    """One graph from the image to detection_out (PyTorch captures the data-dependent row count
    with fullgraph=True); the same rows as eager."""
    small = tiny_ssd(top_k=20)
    torch._dynamo.reset()
    compiled = torch.compile(small, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.equal(compiled(image, outputs="detection_out"), small(image, outputs="detection_out"))


def test_result_files_a_deploy_net_names_are_not_needed(tmp_path, image, caplog):
    """A deploy net whose DetectionOutput names result files that do not exist builds and runs;
    nothing is saved (a warning names the files)."""
    param = read_prototxt(FIX / "tiny_ssd_deploy.prototxt", caffe_pb2.NetParameter)
    (det,) = [layer for layer in param.layer if layer.type == "DetectionOutput"]
    sp = det.detection_output_param.save_output_param
    sp.output_directory = str(tmp_path / "results")
    sp.output_format = "VOC"
    sp.label_map_file = str(tmp_path / "missing_labelmap.prototxt")
    sp.name_size_file = str(tmp_path / "missing_name_size.txt")
    net = Net(param, weights=str(FIX / "tiny_ssd.caffemodel")).eval()
    assert "missing_labelmap.prototxt" in caplog.text
    with torch.no_grad():
        assert net(image, outputs="detection_out").shape[-1] == 7
    assert not (tmp_path / "results").exists()


TEST_NET_WITH_DATA = """
name: "test_net"
layer { name: "data" type: "AnnotatedData" top: "data" top: "label" include { phase: TEST }
  transform_param { mean_value: 104 mean_value: 117 mean_value: 123
                    resize_param { prob: 1 resize_mode: WARP height: 32 width: 32 interp_mode: LINEAR } }
  data_param { source: "%s" batch_size: 2 backend: LMDB }
  annotated_data_param { batch_sampler { } label_map_file: "%s" } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
"""


def test_data_sources_are_opened_when_the_data_layer_runs(tmp_path):
    """A TEST net whose LMDB is not on this machine builds (its transform fixes the data shape),
    runs on data fed by name, and names the missing source when its data layer has to run."""
    from google.protobuf import text_format

    missing = tmp_path / "no_such_lmdb"
    param = caffe_pb2.NetParameter()
    text_format.Merge(TEST_NET_WITH_DATA % (missing, tmp_path / "no_labelmap.prototxt"), param)
    net = Net(param, phase="TEST")
    assert net.blob_shapes["data"] == (2, 3, 32, 32)
    x = torch.randn(2, 3, 32, 32)
    assert net(data=x, label=torch.zeros(1, 1, 1, 8), outputs="conv").shape == (2, 4, 30, 30)
    with pytest.raises(ProtonetError, match="no_such_lmdb"):
        net(outputs="conv")
