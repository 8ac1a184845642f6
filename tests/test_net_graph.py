"""The Net graph: filtering rules, inputs, in-place tops, splits, shapes, sharing, loss weights,
propagate_down, force_backward, weights in and out."""
import numpy as np
import pytest
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError, ShapeError
from protonet.io.prototxt import parse_prototxt
from protonet.layers.base import NetContext
from protonet.net import Net
from protonet.net.filtering import state_meets_rule


def netp(text):
    return parse_prototxt(text, caffe_pb2.NetParameter())


FILTERED = '''
name: "f"
input: "data" input_shape { dim: 2 dim: 3 }
layer { name: "always" type: "ReLU" bottom: "data" top: "a" }
layer { name: "train_only" type: "ReLU" bottom: "data" top: "b" include { phase: TRAIN } }
layer { name: "not_test" type: "ReLU" bottom: "data" top: "c" exclude { phase: TEST } }
layer { name: "staged" type: "ReLU" bottom: "data" top: "d" include { stage: "s1" stage: "s2" } }
layer { name: "not_s1" type: "ReLU" bottom: "data" top: "e" include { not_stage: "s1" } }
layer { name: "level" type: "ReLU" bottom: "data" top: "g" include { min_level: 1 max_level: 2 } }
layer { name: "either" type: "ReLU" bottom: "data" top: "h" include { phase: TEST } include { stage: "s1" } }
'''


@pytest.mark.parametrize("phase,stages,level,expect", [
    ("TRAIN", (), 0, ["input", "always", "train_only", "not_test", "not_s1"]),
    ("TEST", (), 0, ["input", "always", "not_s1", "either"]),
    ("TEST", ("s1",), 1, ["input", "always", "level", "either"]),
    ("TRAIN", ("s1", "s2"), 3, ["input", "always", "train_only", "not_test", "staged", "either"]),
    (caffe_pb2.TEST, ("s2",), 2, ["input", "always", "not_s1", "level", "either"]),
])
def test_phase_stage_level_rules(phase, stages, level, expect):
    net = Net(netp(FILTERED), phase=phase, stages=stages, level=level)
    assert list(net.layers) == expect
    assert net.input_names == ["data"]


def test_state_meets_rule_directly():
    state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN, level=3, stage=["a"])
    assert state_meets_rule(state, caffe_pb2.NetStateRule(min_level=3, stage=["a"]))
    assert not state_meets_rule(state, caffe_pb2.NetStateRule(max_level=2))
    assert not state_meets_rule(state, caffe_pb2.NetStateRule(not_stage=["a"]))
    with pytest.raises(ProtonetError, match="phase"):
        Net(netp(FILTERED), phase="VAL")
    with pytest.raises(ProtonetError, match="layer x: specify either"):
        Net(netp('layer { name: "x" type: "Silence" include { phase: TRAIN } exclude { phase: TEST } }'), phase="TEST")


def test_input_dim_declaration_and_in_place_chain():
    net = Net(netp('''
        input: "data" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 3
        layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
                convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "constant" value: 1 } } }
        layer { name: "bn" type: "Scale" bottom: "conv" top: "conv" scale_param { filler { type: "constant" value: -2 } } }
        layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
        layer { name: "sig" type: "Sigmoid" bottom: "data" top: "sig" }'''), phase="TEST")
    assert net.blob_shapes["data"] == (1, 2, 3, 3) and net.blob_shapes["conv"] == (1, 2, 3, 3)
    x = torch.randn(1, 2, 3, 3)
    out = net(data=x)
    # conv = sum over channels; scaled by -2; ReLU: the final value of the in-place blob.
    expect = torch.relu(-2 * x.sum(1, keepdim=True).expand(1, 2, 3, 3))
    assert torch.allclose(out["conv"], expect, atol=1e-6)
    assert net.output_names == ["conv", "sig"]
    with pytest.raises(ProtonetError, match="missing input blob 'data'"):
        net()
    with pytest.raises(ProtonetError, match="'nope' is not an input blob"):
        net(data=x, nope=x)


def test_split_gradients_accumulate():
    net = Net(netp('''
        layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 3 } } }
        layer { name: "a" type: "Power" bottom: "w" top: "a" power_param { scale: 2 } }
        layer { name: "b" type: "Power" bottom: "w" top: "b" power_param { scale: 3 } }
        layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
        layer { name: "l" type: "Reduction" bottom: "s" top: "l" loss_weight: 1 }'''), phase="TRAIN")
    blobs = net()
    net.loss(blobs).backward()
    assert torch.allclose(net.params["p"][0].grad, torch.full((3,), 5.0))


def test_shape_and_graph_errors_name_the_layer():
    with pytest.raises(ShapeError, match="layer ip2"):
        Net(netp('''input: "x" input_shape { dim: 2 dim: 3 }
            layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 4 } }
            layer { name: "ip2" type: "Eltwise" bottom: "x" bottom: "y" top: "z" }'''))
    with pytest.raises(ProtonetError, match="layer c: unknown layer type 'Frobnicate'"):
        Net(netp('input: "x" input_shape { dim: 1 } layer { name: "c" type: "Frobnicate" bottom: "x" top: "y" }'))
    with pytest.raises(ProtonetError, match="layer r: unknown bottom blob 'q'"):
        Net(netp('input: "x" input_shape { dim: 1 } layer { name: "r" type: "ReLU" bottom: "q" top: "y" }'))
    with pytest.raises(ProtonetError, match="top blob 'x' is produced by more than one layer"):
        Net(netp('input: "x" input_shape { dim: 1 } layer { name: "r" type: "Sigmoid" bottom: "x" top: "y" }'
                 'layer { name: "t" type: "ReLU" bottom: "y" top: "x" }'))
    with pytest.raises(ProtonetError, match="Python layer .* refused"):
        Net(netp('layer { name: "py" type: "Python" top: "y" python_param { module: "os" layer: "x" } }'))


def test_shared_params_lr_mult_and_learnable_params():
    text = '''input: "x" input_shape { dim: 2 dim: 3 }
        layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "y1"
                param { name: "w" lr_mult: 2 decay_mult: 0 } param { name: "b" }
                inner_product_param { num_output: 3 weight_filler { type: "gaussian" } } }
        layer { name: "ip2" type: "InnerProduct" bottom: "y1" top: "y2" param { name: "w" } param { name: "b" }
                inner_product_param { num_output: 3 } }
        layer { name: "bn" type: "BatchNorm" bottom: "y2" top: "y2" }'''
    net = Net(netp(text), phase="TRAIN")
    assert net.params["ip1"][0] is net.params["ip2"][0]
    assert net.params["ip1"][1] is net.params["ip2"][1]
    lp = net.learnable_params
    assert [(tuple(t.shape), lr, d) for t, lr, d in lp] == [((3, 3), 2.0, 0.0), ((3,), 1.0, 1.0), ((3,), 0.0, 1.0),
                                                           ((3,), 0.0, 1.0), ((1,), 0.0, 1.0)]
    assert net.learnable_param_names == ["ip1/0", "ip1/1", "bn/0", "bn/1", "bn/2"]
    y = net(x=torch.randn(2, 3))["y2"].sum()
    y.backward()
    assert net.params["ip1"][0].grad is not None
    with pytest.raises(ShapeError, match="layer ip2: shared param 'w'"):
        Net(netp(text.replace("num_output: 3 } }\n        layer { name: \"bn\"", "num_output: 4 } }\n        layer { name: \"bn\"")))
    with pytest.raises(ProtonetError, match="lr_mult"):
        Net(netp(text.replace('param { name: "w" } param { name: "b" }', 'param { name: "w" lr_mult: 3 } param { name: "b" }')))
    with pytest.raises(ProtonetError, match="BatchNorm statistics cannot be learned"):
        Net(netp(text.replace('type: "BatchNorm"', 'type: "BatchNorm" param { lr_mult: 1 }')))


def test_loss_weights_propagate_down_force_backward():
    text = '''force_backward: true
        input: "x" input_shape { dim: 2 dim: 3 } input: "y" input_shape { dim: 2 dim: 3 }
        layer { name: "e" type: "EuclideanLoss" bottom: "x" bottom: "y" top: "l1" propagate_down: true propagate_down: false }
        layer { name: "r" type: "Reduction" bottom: "x" top: "l2" loss_weight: 0.5 }
        layer { name: "s" type: "Reduction" bottom: "x" top: "l3" }'''
    net = Net(netp(text), phase="TRAIN")
    assert net.loss_weights == {"l1": 1.0, "l2": 0.5}
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    blobs = net(x=x, y=y)
    loss = net.loss(blobs)
    assert loss.item() == pytest.approx(((x - y) ** 2).sum().item() / 4 + 0.5 * x.sum().item(), rel=1e-6)
    loss.backward()
    # force_backward: input blobs come back as leaves with gradients; y's bottom was cut.
    assert torch.allclose(blobs["x"].grad, (x - y) / 2 + 0.5, atol=1e-6)
    assert blobs["y"].grad is None
    with pytest.raises(ProtonetError, match="propagate_down"):
        Net(netp(text.replace("propagate_down: true propagate_down: false", "propagate_down: true")))
    with pytest.raises(ProtonetError, match="loss_weight"):
        Net(netp(text.replace('top: "l2" loss_weight: 0.5', 'top: "l2" loss_weight: 0.5 loss_weight: 1')))


def test_weights_roundtrip_share_and_errors(tmp_path):
    text = '''name: "w" input: "x" input_shape { dim: 1 dim: 2 dim: 4 dim: 4 }
        layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
                convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "xavier" } bias_filler { type: "gaussian" } } }
        layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
        layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
        layer { name: "pr" type: "PReLU" bottom: "c" top: "c" prelu_param { channel_shared: true } }
        layer { name: "ip" type: "InnerProduct" bottom: "c" top: "y" inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }'''
    torch.manual_seed(1)
    a = Net(netp(text), phase="TEST")
    with torch.no_grad():
        a.params["bn"][0].copy_(torch.tensor([0.1, 0.2, 0.3]))
        a.params["bn"][1].copy_(torch.tensor([1.0, 2.0, 3.0]))
        a.params["bn"][2].fill_(1.0)
    path = tmp_path / "w.caffemodel"
    a.save_weights(path)
    torch.manual_seed(2)
    b = Net(netp(text), phase="TEST", weights=str(path))
    for name in a.params:
        for s, t in zip(a.params[name], b.params[name]):
            assert torch.equal(s, t), name
    assert tuple(b.params["pr"][0].shape) == ()
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(a(x=x)["y"], b(x=x)["y"])
    proto = a.to_proto()
    assert [l.name for l in proto.layer] == ["input", "conv", "bn", "sc", "pr", "ip"]
    assert len(proto.layer[1].blobs) == 2 and len(a.to_proto(with_blobs=False).layer[1].blobs) == 0
    # Test net sharing the train net's tensors.
    c = Net(netp(text), phase="TEST")
    c.share_weights_from(a)
    assert c.params["conv"][0] is a.params["conv"][0] and c.params["bn"][2] is a.params["bn"][2]
    # A file whose blob shape differs names the layer and the blob.
    other = netp(text.replace("num_output: 2", "num_output: 5"))
    Net(other, phase="TEST").save_weights(tmp_path / "o.caffemodel")
    with pytest.raises(ShapeError, match=r"layer ip blob 0: the file has shape \[5, 12\], the net needs \[2, 12\]"):
        Net(netp(text), phase="TEST", weights=str(tmp_path / "o.caffemodel"))
    # Several files, the later ones win; legacy 4-D blob shapes match by padding.
    legacy = caffe_pb2.NetParameter()
    lay = legacy.layer.add(name="ip", type="InnerProduct")
    w = lay.blobs.add(num=1, channels=1, height=2, width=12)
    w.data.extend([0.5] * 24)
    bb = lay.blobs.add(num=1, channels=1, height=1, width=2)
    bb.data.extend([1.0, 2.0])
    b.load_weights(legacy)
    assert torch.all(b.params["ip"][0] == 0.5) and b.params["ip"][1].tolist() == [1.0, 2.0]
    missing = Net(netp(text), phase="TEST").load_weights(legacy)
    assert missing == ["conv", "bn", "sc", "pr"]


def test_hdf5_data_net_and_python_layer_opt_in(tmp_path):
    (tmp_path / "mylayer.py").write_text(
        "class Double:\n"
        "    def setup(self, bottom, top):\n        self.k = float(self.param_str or 2)\n"
        "    def reshape(self, bottom, top):\n        top[0].reshape(*bottom[0].data.shape)\n"
        "    def forward(self, bottom, top):\n        top[0].data[...] = self.k * bottom[0].data\n"
        "    def backward(self, top, propagate_down, bottom):\n        bottom[0].diff[...] = self.k * top[0].diff\n")
    text = '''input: "x" input_shape { dim: 2 dim: 3 }
        layer { name: "py" type: "Python" bottom: "x" top: "y" python_param { module: "mylayer" layer: "Double" param_str: "3" } }
        layer { name: "l" type: "Reduction" bottom: "y" top: "l" loss_weight: 1 }'''
    net = Net(netp(text), phase="TRAIN", ctx=NetContext(allow_python_layers=True, root_dir=str(tmp_path)))
    assert net.blob_shapes["y"] == (2, 3)
    x = torch.randn(2, 3, requires_grad=True)
    blobs = net(x=x)
    assert torch.allclose(blobs["y"], 3 * x)
    net.loss(blobs).backward()
    assert torch.allclose(x.grad, torch.full((2, 3), 3.0))


def test_shapeless_scalar_blob_loads_as_caffe_writes_it(tmp_path):
    """Caffe writes a 0-axis blob (PReLU channel_shared) with no shape at all."""
    from protonet.io.caffemodel import write_caffemodel

    text = 'input: "x" input_shape { dim: 1 dim: 2 } layer { name: "pr" type: "PReLU" bottom: "x" top: "y" ' \
           'prelu_param { channel_shared: true } }'
    src = caffe_pb2.NetParameter()
    src.layer.add(name="pr", type="PReLU").blobs.add().data.append(0.3)
    write_caffemodel(src, tmp_path / "p.caffemodel")
    for weights in (str(tmp_path / "p.caffemodel"), src):
        net = Net(netp(text), phase="TEST", weights=weights)
        assert net.params["pr"][0].item() == pytest.approx(0.3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_net_on_cuda_matches_cpu():
    text = '''input: "x" input_shape { dim: 2 dim: 3 dim: 8 dim: 8 }
        layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 kernel_size: 3
                weight_filler { type: "gaussian" } } }
        layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
        layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 } }
        layer { name: "s" type: "Softmax" bottom: "p" top: "s" }'''
    torch.manual_seed(0)
    net = Net(netp(text), phase="TRAIN")
    x = torch.randn(2, 3, 8, 8)
    cpu = net(x=x)["s"]
    gpu = net.to("cuda")(x=x.cuda())["s"]
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-5)
