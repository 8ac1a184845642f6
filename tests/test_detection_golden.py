"""Detection layers against numbers from the real SSD/RefineDet Caffe fork (CPU build).

Each fixture npz holds the net text it came from ('prototxt'); the layer under test is built
directly from its LayerParameter."""
import pathlib

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from protonet import caffe_pb2
from protonet.layers.base import NetContext, layer_class

FIX = pathlib.Path(__file__).parent / "fixtures" / "detection"
RTOL = 1e-5


def fixtures(prefix):
    return sorted(p.name for p in FIX.glob(prefix + "*.npz"))


def layer_from(text, type_name, bottoms, phase=caffe_pb2.TEST):
    net = caffe_pb2.NetParameter()
    text_format.Merge(str(text), net)
    (param,) = [layer for layer in net.layer if layer.type == type_name]
    cls = layer_class(type_name, param.name)
    return cls(param, [tuple(b.shape) for b in bottoms], NetContext(phase=phase)), param


def assert_close(actual, expected, rtol=RTOL, what=""):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = max(np.abs(expected).max(), 1e-12) if expected.size else 1.0
    err = np.abs(actual - expected).max() / scale if expected.size else 0.0
    assert err <= rtol, f"{what}: max relative error {err:.3g}"


@pytest.mark.parametrize("name", fixtures("priorbox_"))
def test_priorbox_golden(name):
    d = np.load(FIX / name)
    feat, data = torch.from_numpy(d["feat"]), torch.from_numpy(d["data"])
    layer, _ = layer_from(d["prototxt"], "PriorBox", [feat, data])
    out = layer(feat, data)
    assert tuple(out.shape) == layer.top_shapes[0]
    # The fork's float/double steps are reproduced: bit-identical.
    np.testing.assert_array_equal(out.numpy(), d["prior"])


@pytest.mark.parametrize("name", fixtures("normalize_"))
def test_normalize_golden(name):
    d = np.load(FIX / name)
    x = torch.tensor(d["x"], requires_grad=True)
    layer, _ = layer_from(d["prototxt"], "Normalize", [x])
    with torch.no_grad():
        layer.blobs[0].copy_(torch.from_numpy(d["scale"]).view(layer.blobs[0].shape))
    y = layer(x)
    assert_close(y.detach(), d["y"], what="y")
    y.backward(torch.from_numpy(d["dy"]))
    assert_close(x.grad, d["grad_x"], what="grad_x")
    assert_close(layer.blobs[0].grad.view(d["grad_scale"].shape), d["grad_scale"], what="grad_scale")


@pytest.mark.parametrize("name", fixtures("permute_"))
def test_permute_golden(name):
    d = np.load(FIX / name)
    x = torch.tensor(d["x"], requires_grad=True)
    layer, _ = layer_from(d["prototxt"], "Permute", [x])
    y = layer(x)
    assert tuple(y.shape) == layer.top_shapes[0]
    np.testing.assert_array_equal(y.detach().numpy(), d["y"])
    y.backward(torch.from_numpy(d["dy"]))
    np.testing.assert_array_equal(x.grad.numpy(), d["grad_x"])


@pytest.mark.parametrize("name", fixtures("multiboxloss_"))
def test_multiboxloss_golden(name):
    d = np.load(FIX / name)
    net = caffe_pb2.NetParameter()
    text_format.Merge(str(d["prototxt"]), net)
    (param,) = [layer for layer in net.layer if layer.type == "MultiBoxLoss"]
    bottoms = [torch.tensor(d[b]) for b in param.bottom]
    bottoms[0].requires_grad_(True)
    bottoms[1].requires_grad_(True)
    layer, _ = layer_from(d["prototxt"], "MultiBoxLoss", bottoms, phase=caffe_pb2.TRAIN)
    loss = layer(*bottoms)
    assert loss.shape == ()
    assert_close(loss.detach(), d["loss"], what="loss")
    loss.backward()
    assert_close(bottoms[0].grad, d["grad_loc"], what="grad_loc")
    assert_close(bottoms[1].grad, d["grad_conf"], what="grad_conf")


@pytest.mark.parametrize("name", fixtures("detectionoutput_"))
def test_detectionoutput_golden(name):
    d = np.load(FIX / name)
    net = caffe_pb2.NetParameter()
    text_format.Merge(str(d["prototxt"]), net)
    (param,) = [layer for layer in net.layer if layer.type == "DetectionOutput"]
    bottoms = [torch.tensor(d[b]) for b in param.bottom]
    layer, _ = layer_from(d["prototxt"], "DetectionOutput", bottoms)
    out = layer(*bottoms)
    # Same rows in the same order.
    assert_close(out, d["detection_out"], what="detection_out")


@pytest.mark.parametrize("key,text", [("detection_out", "deploy_prototxt"),
                                      ("detection_out_thr001_keepall", "deploy_thr001_keepall_prototxt")])
def test_detectionoutput_real_mbox_blobs(key, text):
    """The tiny SSD's real mbox blobs (one JPEG through Caffe): 170 rows at threshold 0.5 and
    all 901 rows, in Caffe's order, at threshold 0.01 with keep_top_k -1."""
    d = np.load(FIX / "tiny_ssd_mbox_1jpg.npz")
    bottoms = [torch.from_numpy(d[n]) for n in ("mbox_loc", "mbox_conf_flatten", "mbox_priorbox")]
    layer, _ = layer_from(d[text], "DetectionOutput", bottoms)
    assert_close(layer(*bottoms), d[key], what=key)


def test_tiny_ssd_priorbox_normalize_permute_blobs():
    """PriorBox, Normalize and Permute on the tiny SSD's real blobs."""
    d = np.load(FIX / "tiny_ssd_mbox_1jpg.npz")
    data = torch.zeros(1, 3, 300, 300)
    conv3 = torch.from_numpy(d["conv3"])
    pb, _ = layer_from(d["deploy_prototxt"], "Normalize", [conv3])
    with torch.no_grad():
        pb.blobs[0].copy_(torch.from_numpy(d["conv3_norm_scale"]))
    assert_close(pb(conv3).detach(), d["conv3_norm"], what="conv3_norm")
    net = caffe_pb2.NetParameter()
    text_format.Merge(str(d["deploy_prototxt"]), net)
    priors = []
    for param in net.layer:
        if param.type == "PriorBox":
            feat = torch.zeros(1, 16, 38, 38) if param.bottom[0] == "conv3_norm" else torch.zeros(1, 16, 10, 10)
            layer = layer_class("PriorBox")(param, [tuple(feat.shape), tuple(data.shape)], NetContext())
            priors.append(layer(feat, data))
        if param.name == "conv3_norm_mbox_loc_perm":
            x = torch.from_numpy(d["conv3_norm_mbox_loc"])
            layer = layer_class("Permute")(param, [tuple(x.shape)], NetContext())
            np.testing.assert_array_equal(layer(x).numpy(), d["conv3_norm_mbox_loc_perm"])
    np.testing.assert_array_equal(torch.cat(priors, dim=2).numpy(), d["mbox_priorbox"])


@pytest.mark.parametrize("name", fixtures("detectionevaluate_"))
def test_detectionevaluate_golden(name):
    d = np.load(FIX / name)
    det, gt = torch.from_numpy(d["det"]), torch.from_numpy(d["gt"])
    layer, _ = layer_from(d["prototxt"], "DetectionEvaluate", [det, gt])
    out = layer(det, gt)
    np.testing.assert_array_equal(out.numpy(), d["eval"])


def test_all_shared_goldens_are_copied():
    """Every detection golden in ../shared is among the fixtures (skips without ../shared)."""
    from conftest import SHARED

    layers = SHARED / "golden" / "layers"
    if not layers.exists():
        pytest.skip("../shared not present")
    wanted = [p.name for p in layers.glob("*.npz")
              if p.name.startswith(("priorbox_", "normalize_", "permute_", "multiboxloss_", "detectionoutput_"))]
    wanted += [p.name for p in (SHARED / "golden" / "eval").glob("detectionevaluate_*.npz")]
    missing = [n for n in wanted if not (FIX / n).exists()]
    assert not missing


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["multiboxloss_odm.npz", "multiboxloss_ssd.npz", "detectionoutput_refinedet.npz",
                                  "detectionoutput_ssd.npz"])
def test_goldens_on_cuda(name):
    d = np.load(FIX / name)
    net = caffe_pb2.NetParameter()
    text_format.Merge(str(d["prototxt"]), net)
    type_name = "MultiBoxLoss" if name.startswith("multibox") else "DetectionOutput"
    (param,) = [layer for layer in net.layer if layer.type == type_name]
    bottoms = [torch.tensor(d[b]).cuda() for b in param.bottom]
    layer, _ = layer_from(d["prototxt"], type_name, bottoms, phase=caffe_pb2.TRAIN)
    layer = layer.cuda()
    if type_name == "MultiBoxLoss":
        bottoms[0].requires_grad_(True)
        bottoms[1].requires_grad_(True)
        loss = layer(*bottoms)
        loss.backward()
        assert_close(loss.detach().cpu(), d["loss"], what="loss")
        assert_close(bottoms[0].grad.cpu(), d["grad_loc"], what="grad_loc")
        assert_close(bottoms[1].grad.cpu(), d["grad_conf"], what="grad_conf")
    else:
        assert_close(layer(*bottoms).cpu(), d["detection_out"], what="detection_out")
