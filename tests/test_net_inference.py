"""Inference mode (protonet/net/inference.py): same blobs as the layer-by-layer forward within 1e-4,
BatchNorm/Scale/ReLU folded into convolutions, packed weights refreshed when the blobs change; on by
default under torch.inference_mode(), under torch.no_grad() once set_inference() asked for it."""
import pytest
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.net import Net
from protonet.net.fusion import bf16_supported
from protonet.io.prototxt import parse_prototxt
from test_opencv_parity import deploy_param, make_image, randomize


def _layer(name, kind, bottoms, tops, body=""):
    return (f'layer {{ name: "{name}" type: "{kind}" ' + " ".join(f'bottom: "{b}"' for b in bottoms) + " "
            + " ".join(f'top: "{t}"' for t in tops) + f" {body} }}\n")


GAUSS = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "gaussian" std: 0.1 }'


def conv_bn_net(batch=2):
    """conv -> BN -> Scale -> ReLU (in place), a non-in-place BN, pooling, leaky ReLU, eltwise."""
    text = ('input: "data" input_shape { dim: %d dim: 3 dim: 20 dim: 24 }\n' % batch
            + _layer("conv1", "Convolution", ["data"], ["conv1"],
                     f"convolution_param {{ num_output: 8 kernel_size: 3 pad: 1 bias_term: false {GAUSS.split(' bias_filler')[0]} }}")
            + _layer("conv1_bn", "BatchNorm", ["conv1"], ["conv1"])
            + _layer("conv1_scale", "Scale", ["conv1"], ["conv1"],
                     'scale_param { bias_term: true filler { type: "gaussian" std: 1 } '
                     'bias_filler { type: "gaussian" std: 0.2 } }')
            + _layer("conv1_relu", "ReLU", ["conv1"], ["conv1"])
            + _layer("pool1", "Pooling", ["conv1"], ["pool1"], "pooling_param { pool: MAX kernel_size: 3 stride: 2 }")
            + _layer("conv2", "Convolution", ["pool1"], ["conv2"],
                     f"convolution_param {{ num_output: 8 kernel_size: 3 pad: 2 dilation: 2 group: 2 {GAUSS} }}")
            + _layer("bn2", "BatchNorm", ["conv2"], ["bn2"])
            + _layer("conv2_relu", "ReLU", ["conv2"], ["conv2"], "relu_param { negative_slope: 0.1 }")
            + _layer("conv3", "Convolution", ["pool1"], ["conv3"],
                     f"convolution_param {{ num_output: 8 kernel_size: 1 {GAUSS} }}")
            + _layer("sum", "Eltwise", ["conv2", "conv3"], ["sum"])
            + _layer("pool2", "Pooling", ["sum"], ["pool2"], "pooling_param { pool: AVE kernel_size: 2 stride: 2 }"))
    return parse_prototxt(text, caffe_pb2.NetParameter(), "conv_bn_net")


def seeded_batchnorm(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers.values():
            if layer.param.type == "BatchNorm":
                mean, var, factor = layer.blobs
                mean.copy_(torch.randn(mean.shape, generator=g) * 2)
                var.copy_(torch.rand(var.shape, generator=g) * 3 + 0.2)
                factor.fill_(2.0)
                mean.mul_(2.0)
                var.mul_(2.0)


def layer_by_layer(net, **inputs):
    net.set_inference(False)
    try:
        with torch.no_grad():
            return net(**inputs)
    finally:
        net.set_inference(True)


def assert_close(ref, out, names, tol=1e-4):
    for name in names:
        a, b = ref[name].float(), out[name].float()
        assert a.shape == b.shape, name
        scale = max(1.0, float(a.abs().max()))
        diff = float((a - b).abs().max())
        assert diff <= tol * scale, f"{name}: differs by {diff} (scale {scale})"


def test_folded_net_matches_layer_by_layer():
    torch.manual_seed(0)
    net = Net(conv_bn_net(), phase="TEST")
    seeded_batchnorm(net)
    x = torch.randn(2, 3, 20, 24)
    ref = layer_by_layer(net, data=x)
    with torch.inference_mode():
        out = net(data=x)
    groups = net.fused_layers()
    # bn2 writes a blob of its own between conv2 and its ReLU: conv2 keeps its value, nothing is fused.
    assert groups == [["conv1", "conv1_bn", "conv1_scale", "conv1_relu"], ["conv2"], ["conv3"]]
    assert_close(ref, out, ["conv1", "conv2", "bn2", "conv3", "sum", "pool1", "pool2"])
    assert set(out) == set(ref)


def test_packed_weights_follow_in_place_updates():
    torch.manual_seed(0)
    net = Net(conv_bn_net(), phase="TEST")
    seeded_batchnorm(net)
    x = torch.randn(2, 3, 20, 24)
    with torch.inference_mode():
        before = net(data=x)["pool2"].clone()
        net.layers["conv3"].blobs[0].mul_(2.0)              # as the solver's update does
        net.layers["conv1_scale"].blobs[0].add_(0.5)
        after = net(data=x)["pool2"]
    ref = layer_by_layer(net, data=x)
    assert not torch.allclose(before, after)
    assert_close(ref, {"pool2": after}, ["pool2"])


def test_batch_statistics_are_never_folded():
    torch.manual_seed(0)
    net = Net(conv_bn_net(), phase="TEST")
    seeded_batchnorm(net)
    x = torch.randn(2, 3, 20, 24)
    with torch.no_grad():
        net(data=x)
    for layer in net.layers.values():
        if layer.param.type == "BatchNorm":
            layer.use_global_stats = False
    ref = layer_by_layer(net, data=x)
    seeded_batchnorm(net)
    with torch.no_grad():
        out = net(data=x)
    assert all(len(g) == 1 or net.layers[g[1]].param.type != "BatchNorm" for g in net.fused_layers())
    assert_close(ref, out, ["pool2"])


def test_gradients_on_run_layer_by_layer():
    net = Net(conv_bn_net(), phase="TEST")
    out = net(data=torch.randn(2, 3, 20, 24))
    assert net.fused_layers() == [] and out["pool2"].requires_grad


def test_no_grad_is_layer_by_layer_until_asked():
    """A new Net under torch.no_grad() gives the autograd forward's bits (exporters and
    torch.compile compare against it); set_inference() turns inference mode on there too."""
    torch.manual_seed(0)
    net = Net(conv_bn_net(), phase="TEST")
    seeded_batchnorm(net)
    x = torch.randn(2, 3, 20, 24)
    exact = net(data=x)["pool2"].detach()
    with torch.no_grad():
        assert torch.equal(net(data=x)["pool2"], exact) and net.fused_layers() == []
    net.set_inference(precision="fp32")
    with torch.no_grad():
        fast = net(data=x)["pool2"]
    assert net.fused_layers() and not torch.equal(fast, exact)
    assert_close({"pool2": exact}, {"pool2": fast}, ["pool2"])


@pytest.mark.parametrize("key", ["ssd300_vgg16_voc_deploy.prototxt", "mobilenet_ssd_deploy.prototxt"])
def test_deploy_nets_match_layer_by_layer(key):
    torch.manual_seed(0)
    net = Net(deploy_param(key), phase="TEST")
    image = make_image(net.blob_shapes[net.input_names[0]])
    randomize(net, image, seed=1)
    ref = layer_by_layer(net, data=image)
    with torch.no_grad():
        out = net(data=image)
        again = net(data=image)
    assert len(net.fused_layers()) >= 20
    assert_close(ref, out, ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"])
    rows_ref, rows = ref["detection_out"].reshape(-1, 7), out["detection_out"].reshape(-1, 7)
    assert rows.shape == rows_ref.shape and rows.shape[0] > 10
    assert float((rows - rows_ref).abs().max()) <= 1e-4
    assert again["mbox_priorbox"] is out["mbox_priorbox"]          # priors computed once
    assert torch.equal(again["detection_out"], out["detection_out"])


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bf16")
def test_bf16_precision_runs_and_keeps_float32_outputs():
    torch.manual_seed(0)
    net = Net(deploy_param("ssd300_vgg16_voc_deploy.prototxt"), phase="TEST")
    image = make_image(net.blob_shapes[net.input_names[0]])
    randomize(net, image, seed=1)
    ref = layer_by_layer(net, data=image)
    net.set_inference(precision="bf16")
    with torch.no_grad():
        out = net(data=image)
    assert out["detection_out"].dtype == torch.float32 and out["mbox_loc"].dtype == torch.float32
    rel = float((out["mbox_loc"] - ref["mbox_loc"]).abs().max() / ref["mbox_loc"].abs().max())
    assert rel < 0.05


def test_bf16_refused_without_cpu_support(monkeypatch):
    import protonet.net.inference as inference

    monkeypatch.setattr(inference, "bf16_supported", lambda: False)
    net = Net(conv_bn_net(), phase="TEST")
    with pytest.raises(ProtonetError, match="no native bfloat16"):
        net.set_inference(precision="bf16")
    with pytest.raises(ProtonetError, match="precision must be one of"):
        net.set_inference(precision="fp8")


def test_time_command_in_inference_mode(fixtures):
    import subprocess
    import sys

    model = fixtures / "net" / "tiny_ssd_deploy.prototxt"
    proc = subprocess.run([sys.executable, "-m", "protonet", "time", "--model", str(model), "--iterations", "2",
                           "--precision", "fp32"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "inference mode, fp32" in proc.stderr + proc.stdout
    assert "Average Forward pass" in proc.stderr + proc.stdout


@pytest.mark.parametrize("kernel,stride,pad,size", [(2, 2, 0, 75), (3, 1, 1, 19), (3, 2, 0, 20), (3, 2, 1, 9),
                                                   (2, 2, 1, 7), (1, 1, 0, 5)])
def test_max_pooling_without_indices_is_caffes(kernel, stride, pad, size):
    from protonet.layers.base import NetContext
    from protonet.layers.vision import PoolingLayer
    from protonet.net.fusion import max_pool_windows

    param = parse_prototxt(f'name: "p" type: "Pooling" pooling_param {{ pool: MAX kernel_size: {kernel} '
                           f'stride: {stride} pad: {pad} }}', caffe_pb2.LayerParameter(), "pool")
    layer = PoolingLayer(param, [(2, 5, size, size + 1)], NetContext())
    x = torch.randn(2, 5, size, size + 1)
    for t in (x, x.contiguous(memory_format=torch.channels_last)):
        with torch.no_grad():
            assert torch.equal(max_pool_windows(layer, t), layer(x))


def test_relu6_is_not_fused_and_keeps_its_cap():
    param = conv_bn_net()
    for layer in param.layer:
        if layer.name == "conv1_relu":
            layer.relu_param.relu6 = True
    torch.manual_seed(0)
    net = Net(param, phase="TEST")
    seeded_batchnorm(net)
    x = torch.randn(2, 3, 20, 24) * 20
    ref = layer_by_layer(net, data=x)
    with torch.no_grad():
        out = net(data=x)
    assert ["conv1", "conv1_bn", "conv1_scale"] in net.fused_layers()
    assert float(out["conv1"].max()) <= 6.0
    assert_close(ref, out, ["conv1", "pool2"])
    capped = Net(param, phase="TEST")(data=x)["conv1"]       # with gradients (the in-place path)
    assert float(capped.detach().max()) <= 6.0


def test_outputs_subset_runs_its_own_inference_plan():
    torch.manual_seed(0)
    net = Net(conv_bn_net(), phase="TEST")
    seeded_batchnorm(net)
    x = torch.randn(2, 3, 20, 24)
    ref = layer_by_layer(net, data=x)
    with torch.no_grad():
        pool1 = net(x, outputs="pool1")
        both = net(x, outputs=["conv3", "pool2"])
    assert_close(ref, {"pool1": pool1}, ["pool1"])
    assert_close(ref, both, ["conv3", "pool2"])
    assert list(both) == ["conv3", "pool2"]
