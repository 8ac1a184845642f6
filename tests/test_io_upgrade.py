"""Old nets (V1 `layers`, V0 with padding layers) upgrade to the same layers and blobs as their current twin."""
import numpy as np
import pytest
from google.protobuf import text_format

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io import (
    caffemodel_arrays,
    parse_prototxt,
    read_caffemodel,
    read_net_prototxt,
    upgrade_net,
    write_caffemodel,
    write_prototxt,
)
from protonet.io.upgrade import V1_TYPE_NAMES

V1 = caffe_pb2.V1LayerParameter
RNG = np.random.default_rng(5)
W = {
    "conv1": [RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), RNG.standard_normal(4).astype(np.float32)],
    "ip1": [RNG.standard_normal((10, 64)).astype(np.float32), RNG.standard_normal(10).astype(np.float32)],
}


def _blob(arr):
    from protonet.io import array_to_blob

    return array_to_blob(arr)


def v1_net(with_blobs=True):
    """conv + relu + pool + ip + loss in the V1 form, with the old data-layer transform fields."""
    net = caffe_pb2.NetParameter(name="old")
    data = net.layers.add(name="data", type=V1.DATA, top=["data", "label"])
    data.include.add(phase=caffe_pb2.TRAIN)
    data.data_param.source = "train_lmdb"
    data.data_param.batch_size = 8
    data.data_param.scale = 0.00390625
    data.data_param.mean_file = "mean.binaryproto"
    data.data_param.crop_size = 8
    data.data_param.mirror = True
    conv = net.layers.add(name="conv1", type=V1.CONVOLUTION, bottom=["data"], top=["conv1"])
    conv.blobs_lr.extend([1, 2])
    conv.weight_decay.extend([1, 0])
    conv.convolution_param.num_output = 4
    conv.convolution_param.kernel_size.append(3)
    conv.convolution_param.weight_filler.type = "xavier"
    net.layers.add(name="relu1", type=V1.RELU, bottom=["conv1"], top=["conv1"])
    pool = net.layers.add(name="pool1", type=V1.POOLING, bottom=["conv1"], top=["pool1"])
    pool.pooling_param.pool = caffe_pb2.PoolingParameter.MAX
    pool.pooling_param.kernel_size = 2
    pool.pooling_param.stride = 2
    ip = net.layers.add(name="ip1", type=V1.INNER_PRODUCT, bottom=["pool1"], top=["ip1"])
    ip.param.extend(["ip1_w", "ip1_b"])
    ip.blob_share_mode.extend([V1.PERMISSIVE])
    ip.blobs_lr.extend([1, 2])
    ip.inner_product_param.num_output = 10
    loss = net.layers.add(name="loss", type=V1.SOFTMAX_LOSS, bottom=["ip1", "label"], top=["loss"])
    loss.loss_weight.append(1)
    if with_blobs:
        for layer in net.layers:
            layer.blobs.extend(_blob(a) for a in W.get(layer.name, []))
    return net


V2_TWIN = """
name: "old"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 mirror: true crop_size: 8 mean_file: "mean.binaryproto" }
  data_param { source: "train_lmdb" batch_size: 8 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  param { name: "ip1_w" share_mode: PERMISSIVE lr_mult: 1 } param { name: "ip1_b" lr_mult: 2 }
  inner_product_param { num_output: 10 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip1" bottom: "label" top: "loss" loss_weight: 1 }
"""


def v2_twin(with_blobs=True):
    net = parse_prototxt(V2_TWIN, caffe_pb2.NetParameter())
    if with_blobs:
        for layer in net.layer:
            layer.blobs.extend(_blob(a) for a in W.get(layer.name, []))
    return net


def test_v1_net_upgrades_to_its_v2_twin():
    net = v1_net()
    assert upgrade_net(net) == []
    assert net == v2_twin()


def test_v1_prototxt_upgrades_on_reading(tmp_path):
    write_prototxt(v1_net(with_blobs=False), tmp_path / "v1.prototxt")
    assert "layers {" in (tmp_path / "v1.prototxt").read_text()
    assert "type: CONVOLUTION" in (tmp_path / "v1.prototxt").read_text()
    assert read_net_prototxt(tmp_path / "v1.prototxt") == v2_twin(with_blobs=False)


def test_v1_caffemodel_upgrades_to_the_same_layers_and_blobs_as_its_v2_twin(tmp_path):
    write_caffemodel(v1_net(), tmp_path / "v1.caffemodel")
    write_caffemodel(v2_twin(), tmp_path / "v2.caffemodel")
    old, new = read_caffemodel(tmp_path / "v1.caffemodel"), read_caffemodel(tmp_path / "v2.caffemodel")
    assert old == new
    assert [(l.name, l.type) for l in old.layer] == [(l.name, l.type) for l in new.layer]
    old_arrays, new_arrays = caffemodel_arrays(old), caffemodel_arrays(new)
    from protonet.io import read_caffemodel_arrays

    for name, arrays in read_caffemodel_arrays(tmp_path / "v1.caffemodel").items():
        assert [a.tobytes() for a in arrays] == [a.tobytes() for a in old_arrays[name]]
    assert list(old_arrays) == ["conv1", "ip1"]
    for name in W:
        for got, want, orig in zip(old_arrays[name], new_arrays[name], W[name]):
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(got, orig)


def test_every_v1_enum_has_a_type_string():
    for value in V1.LayerType.values():
        layer = V1(name="x", type=value)
        net = caffe_pb2.NetParameter()
        net.layers.append(layer)
        upgrade_net(net)
        assert net.layer[0].type == V1_TYPE_NAMES[V1.LayerType.Name(value)]
    assert V1_TYPE_NAMES["SOFTMAX_LOSS"] == "SoftmaxWithLoss" and V1_TYPE_NAMES["TANH"] == "TanH"


V0_NET = """
name: "v0"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 10 input_dim: 10
layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 1 group: 1 biasterm: false
                 weight_filler { type: "gaussian" std: 0.01 } blobs_lr: 1 weight_decay: 1 }
         bottom: "pad1" top: "conv1" }
layers { layer { name: "relu1" type: "relu" dropout_ratio: 0.5 } bottom: "conv1" top: "conv1" }
layers { layer { name: "pad2" type: "padding" pad: 1 } bottom: "conv1" top: "pad2" }
layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 3 stride: 2 } bottom: "pad2" top: "pool1" }
layers { layer { name: "norm1" type: "lrn" local_size: 3 alpha: 0.0001 beta: 0.75 } bottom: "pool1" top: "norm1" }
layers { layer { name: "drop1" type: "dropout" dropout_ratio: 0.25 } bottom: "norm1" top: "norm1" }
layers { layer { name: "ip1" type: "innerproduct" num_output: 2 bias_filler { type: "constant" value: 0.1 } }
         bottom: "norm1" top: "ip1" }
layers { layer { name: "cat" type: "concat" concat_dim: 1 } bottom: "ip1" bottom: "ip1" top: "cat" }
layers { layer { name: "prob" type: "softmax" } bottom: "cat" top: "prob" }
"""

V0_EXPECTED = """
name: "v0"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 10 input_dim: 10
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  convolution_param { num_output: 4 bias_term: false pad: 2 kernel_size: 3 group: 1 stride: 1
                      weight_filler { type: "gaussian" std: 0.01 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 3 alpha: 0.0001 beta: 0.75 } }
layer { name: "drop1" type: "Dropout" bottom: "norm1" top: "norm1" dropout_param { dropout_ratio: 0.25 } }
layer { name: "ip1" type: "InnerProduct" bottom: "norm1" top: "ip1"
  inner_product_param { num_output: 2 bias_filler { type: "constant" value: 0.1 } } }
layer { name: "cat" type: "Concat" bottom: "ip1" bottom: "ip1" top: "cat" concat_param { concat_dim: 1 } }
layer { name: "prob" type: "Softmax" bottom: "cat" top: "prob" }
"""


def test_v0_net_folds_padding_layers_and_moves_flat_fields():
    net = parse_prototxt(V0_NET, caffe_pb2.NetParameter())
    problems = upgrade_net(net, source="v0.prototxt")
    assert problems == ["v0.prototxt: layer 'relu1': unknown parameter dropout_ratio for layer type relu"]
    assert net == parse_prototxt(V0_EXPECTED, caffe_pb2.NetParameter())


def test_v0_data_layer_fields():
    net = parse_prototxt("""
layers { layer { name: "d" type: "data" source: "db" batchsize: 16 rand_skip: 3 meanfile: "m.binaryproto"
                 cropsize: 5 mirror: true scale: 0.5 } top: "data" top: "label" }
layers { layer { name: "i" type: "images" source: "list.txt" batchsize: 2 shuffle_images: true new_height: 7
                 new_width: 9 } top: "img" top: "l2" }
""", caffe_pb2.NetParameter())
    assert upgrade_net(net) == []
    assert net == parse_prototxt("""
layer { name: "d" type: "Data" top: "data" top: "label"
  transform_param { scale: 0.5 mirror: true crop_size: 5 mean_file: "m.binaryproto" }
  data_param { source: "db" batch_size: 16 rand_skip: 3 } }
layer { name: "i" type: "ImageData" top: "img" top: "l2"
  image_data_param { source: "list.txt" batch_size: 2 shuffle: true new_height: 7 new_width: 9 } }
""", caffe_pb2.NetParameter())


@pytest.mark.parametrize("text, what", [
    ('layers { layer { name: "p" type: "padding" pad: 1 } bottom: "data" top: "p" }\n'
     'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }\ninput: "data"',
     "only conv and pool"),
    ('layers { layer { name: "c" type: "conv" } bottom: "nothing" top: "c" }', "unknown bottom blob 'nothing'"),
    ('layers { layer { name: "c" type: "convolution" } top: "c" }', "unknown V0 layer type 'convolution'"),
    ('layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }', "both 'layer' and 'layers'"),
])
def test_inconsistent_old_nets_are_errors_naming_file_and_layer(text, what):
    net = parse_prototxt(text, caffe_pb2.NetParameter())
    with pytest.raises(ProtonetError, match="^old.prototxt: ") as info:
        upgrade_net(net, source="old.prototxt")
    assert what in str(info.value)


def test_batchnorm_with_three_params_loses_them_as_in_caffe():
    net = parse_prototxt("""
layer { name: "bn" type: "BatchNorm" param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } }
layer { name: "bn2" type: "BatchNorm" }
layer { name: "sc" type: "Scale" param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 1 } }
""", caffe_pb2.NetParameter())
    upgrade_net(net)
    assert [len(layer.param) for layer in net.layer] == [0, 0, 3]


def test_current_net_is_unchanged(fixtures):
    from protonet.io import read_prototxt

    net = read_prototxt(fixtures / "io" / "ssd_pascal_train.prototxt", caffe_pb2.NetParameter)
    before = text_format.MessageToString(net)
    assert upgrade_net(net) == []
    assert text_format.MessageToString(net) == before


def test_v0_caffemodel_blobs_come_from_the_v0_layers(tmp_path):
    from protonet.io import array_to_blob, read_caffemodel_arrays

    net = parse_prototxt(V0_NET, caffe_pb2.NetParameter())
    conv = net.layers[1].layer
    conv.blobs.add().CopyFrom(array_to_blob(W["conv1"][0]))
    write_caffemodel(net, tmp_path / "v0.caffemodel")
    upgraded = read_caffemodel(tmp_path / "v0.caffemodel")
    assert [l.name for l in upgraded.layer][:2] == ["conv1", "relu1"]
    for arrays in (caffemodel_arrays(upgraded), read_caffemodel_arrays(tmp_path / "v0.caffemodel")):
        assert list(arrays) == ["conv1"]
        np.testing.assert_array_equal(arrays["conv1"][0], W["conv1"][0])
