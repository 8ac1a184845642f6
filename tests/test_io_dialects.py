"""Other dialects in files: NVCaffe half-precision blobs, fields at their dialects' numbers in
binary files (the collision rule of proto/README.md), text round trips, dialect reports."""
import numpy as np
import pytest

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.blobs import blob_to_array, varint
from protonet.io.caffemodel import caffemodel_arrays, read_caffemodel, read_caffemodel_arrays
from protonet.io.dialects import net_dialects, translate_net_bytes
from protonet.io.prototxt import format_prototxt, parse_binary_proto, parse_prototxt


def _field(number, payload=None, value=None):
    """Wire bytes of one field: a varint `value`, or length-delimited `payload` bytes."""
    if payload is None:
        return varint(number << 3) + varint(value)
    return varint((number << 3) | 2) + varint(len(payload)) + payload


def _raw_blob(arr, type_value, dtype):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.raw_data_type = type_value
    blob.raw_data = np.ascontiguousarray(arr, dtype=dtype).tobytes()
    return blob


def _raw_net(arrays, type_value, dtype):
    net = caffe_pb2.NetParameter(name="raw")
    layer = net.layer.add(name="conv", type="Convolution")
    for arr in arrays:
        layer.blobs.add().CopyFrom(_raw_blob(arr, type_value, dtype))
    return net


@pytest.mark.parametrize("type_name,dtype", [("FLOAT16", "<f2"), ("FLOAT", "<f4"), ("DOUBLE", "<f8")])
def test_raw_blobs_read_as_float(tmp_path, type_name, dtype):
    rng = np.random.RandomState(0)
    arrays = [rng.randn(4, 3, 3, 3), rng.randn(4)]
    path = tmp_path / "raw.caffemodel"
    path.write_bytes(_raw_net(arrays, getattr(caffe_pb2, type_name), dtype).SerializeToString())
    want = [a.astype(dtype) for a in arrays]  # the values as stored (fp16 rounds)
    fast = read_caffemodel_arrays(path)["conv"]
    slow = caffemodel_arrays(read_caffemodel(path))["conv"]
    for got in (fast, slow):
        for g, w in zip(got, want):
            assert g.shape == w.shape
            assert g.dtype == (np.float64 if type_name == "DOUBLE" else np.float32)
            np.testing.assert_array_equal(g, w.astype(g.dtype))


def test_raw_blob_of_int_type_is_refused(tmp_path):
    blob = caffe_pb2.BlobProto(raw_data_type=caffe_pb2.INT, raw_data=b"\0" * 8)
    blob.shape.dim.append(2)
    with pytest.raises(ValueError, match="of type INT: only FLOAT16, FLOAT and DOUBLE"):
        blob_to_array(blob)
    net = caffe_pb2.NetParameter()
    net.layer.add(name="l").blobs.add().CopyFrom(blob)
    path = tmp_path / "int.caffemodel"
    path.write_bytes(net.SerializeToString())
    with pytest.raises(ProtonetError, match="int.caffemodel: not a valid binary caffemodel .*INT"):
        read_caffemodel_arrays(path)


def test_nvcaffe_types_by_number_and_wire_type():
    # NVCaffe's forward_type / backward_type are varints at 145 / 146, where the base has messages.
    layer = (_field(1, b"conv1") + _field(2, b"Convolution") + _field(145, value=caffe_pb2.FLOAT16)
             + _field(146, value=caffe_pb2.FLOAT16) + _field(147, value=caffe_pb2.FLOAT))
    param = caffe_pb2.NetParameter.FromString(translate_net_bytes(_field(100, layer)))
    got = param.layer[0]
    assert got.forward_type == caffe_pb2.FLOAT16 and got.backward_type == caffe_pb2.FLOAT16
    assert got.forward_math == caffe_pb2.FLOAT and not got.HasField("parameter_param")
    # The base's parameter_param (a message at 145) stays where it is.
    base = caffe_pb2.NetParameter()
    base.layer.add(name="p", type="Parameter").parameter_param.shape.dim.extend([2, 3])
    data = base.SerializeToString()
    assert translate_net_bytes(data) is data


def test_opencv_detection_output_collision():
    """OpenCV's normalized_bbox is field 10 of its DetectionOutputParameter, which it numbers 147 in
    LayerParameter; the SSD fork's field 10 is visualize, in its DetectionOutputParameter at 204."""
    opencv_det = _field(1, value=21) + _field(10, value=0)  # num_classes 21, normalized_bbox false
    ssd_det = _field(1, value=21) + _field(10, value=1)  # num_classes 21, visualize true
    net = (_field(100, _field(1, b"det_cv") + _field(147, opencv_det))
           + _field(100, _field(1, b"det_ssd") + _field(204, ssd_det)))
    param = parse_binary_proto(net, caffe_pb2.NetParameter, "mixed.caffemodel")
    cv, ssd = (layer.detection_output_param for layer in param.layer)
    assert cv.num_classes == 21 and cv.HasField("normalized_bbox") and not cv.normalized_bbox
    assert not cv.HasField("visualize")
    assert ssd.visualize and not ssd.HasField("normalized_bbox")


def test_field_149_intel_engine_or_opencv_normalize():
    norm = _field(1, value=0) + _field(3, value=1)  # across_spatial false, channel_shared true
    net = (_field(100, _field(1, b"conv") + _field(149, b"MKL2017"))
           + _field(100, _field(1, b"norm") + _field(149, norm)))
    param = caffe_pb2.NetParameter.FromString(translate_net_bytes(net))
    assert param.layer[0].engine == "MKL2017"
    assert param.layer[1].norm_param.channel_shared and not param.layer[1].norm_param.across_spatial


def test_layer_port_parameters_at_their_forks_numbers():
    net = (_field(100, _field(1, b"shuffle") + _field(166, _field(1, value=3)))  # Synopsys
           + _field(100, _field(1, b"up") + _field(150, _field(1, value=2)))  # eric612
           + _field(100, _field(1, b"interp") + _field(163, _field(3, value=2)))  # Synopsys
           + _field(100, _field(1, b"relu6") + _field(211, _field(1, value=0))))  # eric612
    param = caffe_pb2.NetParameter.FromString(translate_net_bytes(net))
    assert param.layer[0].shuffle_channel_param.group == 3
    assert param.layer[1].upsample_param.scale == 2 and not param.layer[1].HasField("prior_box_param")
    assert param.layer[2].interp_param.zoom_factor == 2
    assert param.layer[3].HasField("relu6_param")


TEXT = """
name: "dialects"
default_forward_type: FLOAT16
layer {
  name: "conv"
  type: "Convolution"
  forward_type: FLOAT16
  backward_type: FLOAT
  engine: "MKL2017"
  convolution_param { num_output: 2 kernel_size: 3 pad_l: 1 pad_r: 0 engine: MKLDNN }
  quantization_param { bw_layer_in: 8 scale_in: 0.5 }
}
layer {
  name: "det"
  type: "DetectionOutput"
  detection_output_param { num_classes: 2 normalized_bbox: false clip: 1 visualize: false }
}
"""


def test_text_names_fields_and_round_trips_both_ways():
    param = parse_prototxt(TEXT, caffe_pb2.NetParameter())
    conv, det = param.layer
    assert conv.forward_type == caffe_pb2.FLOAT16 and conv.engine == "MKL2017"
    assert conv.convolution_param.pad_l == 1 and conv.convolution_param.HasField("pad_r")
    assert det.detection_output_param.clip and not det.detection_output_param.normalized_bbox
    again = parse_prototxt(format_prototxt(param), caffe_pb2.NetParameter())
    assert again == param
    assert "forward_type: FLOAT16" in format_prototxt(param)
    binary = caffe_pb2.NetParameter.FromString(translate_net_bytes(param.SerializeToString()))
    assert binary == param


def test_net_dialects_names_each_use():
    found = net_dialects(parse_prototxt(TEXT, caffe_pb2.NetParameter()))
    assert set(found) == {"NVCaffe", "Intel Caffe", "OpenCV", "TF converters"}
    assert "net: default_forward_type" in found["NVCaffe"]
    assert "layer conv: forward_type" in found["NVCaffe"]
    assert "layer conv: quantization_param" in found["Intel Caffe"]
    assert "layer conv: convolution_param.engine: MKLDNN" in found["Intel Caffe"]
    assert found["OpenCV"] == ["layer det: detection_output_param.normalized_bbox",
                               "layer det: detection_output_param.clip"]
    assert found["TF converters"] == ["layer conv: convolution_param.pad_l", "layer conv: convolution_param.pad_r"]


def test_every_dialect_mark_names_a_known_dialect():
    from protonet.io.dialects import DIALECTS, field_dialect, value_dialect

    marks = set()
    for message in caffe_pb2.DESCRIPTOR.message_types_by_name.values():
        for fd in message.fields:
            marks.add(field_dialect(fd))
        for enum in message.enum_types:
            marks.update(value_dialect(v) for v in enum.values)
    marks.update(value_dialect(v) for v in caffe_pb2.Type.DESCRIPTOR.values)
    assert marks - {""} == set(DIALECTS)


def _f32_field(number, value):
    """Wire bytes of a 32-bit float field."""
    return varint((number << 3) | 5) + np.float32(value).tobytes()


def test_bvlc_master_clip_and_swish_against_opencvs_numbers():
    """BVLC master's swish_param (147) and clip_param (148) are messages of floats; OpenCV's
    detection_output_param / permute_param at the same numbers start with varints."""
    clip = _field(148, _f32_field(1, -1) + _f32_field(2, 6))
    swish = _field(147, _f32_field(1, 2.5))
    opencv_permute = _field(148, _field(1, value=0) + _field(1, value=2) + _field(1, value=3) + _field(1, value=1))
    opencv_detection = _field(147, _field(1, value=21) + _field(10, value=0))
    layers = [_field(1, b"c") + _field(2, b"Clip") + clip, _field(1, b"s") + _field(2, b"Swish") + swish,
              _field(1, b"e") + _field(2, b"Swish") + _field(147, b""), _field(1, b"p") + _field(2, b"Permute") + opencv_permute,
              _field(1, b"d") + _field(2, b"DetectionOutput") + opencv_detection,
              _field(1, b"y") + _field(2, b"Clip") + _field(248, _f32_field(1, 0) + _f32_field(2, 1))]
    param = caffe_pb2.NetParameter.FromString(translate_net_bytes(b"".join(_field(100, l) for l in layers)))
    c, s, e, p, d, y = param.layer
    assert (c.clip_param.min, c.clip_param.max) == (-1, 6) and not c.HasField("permute_param")
    assert s.swish_param.beta == 2.5 and e.HasField("swish_param") and e.swish_param.beta == 1
    assert list(p.permute_param.order) == [0, 2, 3, 1] and not p.HasField("clip_param")
    d_param = d.detection_output_param
    assert d_param.num_classes == 21 and d_param.HasField("normalized_bbox") and not d_param.normalized_bbox
    assert (y.clip_param.min, y.clip_param.max) == (0, 1)  # Synopsys Caffe's number


def test_synopsys_faceboxes_against_opencvs_offset_h():
    """PriorBoxParameter 14: Synopsys' faceboxes (a varint) or OpenCV's offset_h (floats)."""
    synopsys = _field(203, _f32_field(1, 32) + _field(14, value=1))
    opencv = _field(203, _f32_field(1, 32) + _f32_field(14, 0.25))
    layers = [_field(1, b"a") + _field(2, b"PriorBox") + synopsys, _field(1, b"b") + _field(2, b"PriorBox") + opencv]
    a, b = caffe_pb2.NetParameter.FromString(translate_net_bytes(b"".join(_field(100, l) for l in layers))).layer
    assert a.prior_box_param.faceboxes and list(a.prior_box_param.offset_h) == []
    assert list(b.prior_box_param.offset_h) == [0.25] and not b.prior_box_param.faceboxes
