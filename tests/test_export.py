"""Export round trips: ONNX run by onnxruntime and TorchScript run by torch.jit.load, each in a
fresh process where protonet cannot be imported, give protonet's detection_out rows (1e-4) on
real photos; trunk exports with their priors and settings; refusals in one line."""
import json
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import shared_path
from protonet import caffe_pb2
from protonet.detection_decode import DetectionSettings, detection_output
from protonet.errors import ProtonetError
from protonet.export import export_net
from protonet.io.prototxt import read_prototxt
from protonet.net import Net

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

FIX = pathlib.Path(__file__).parent / "fixtures"
# Run in a fresh interpreter whose imports of protonet fail.
NO_PROTONET = textwrap.dedent("""
    import importlib.abc, sys
    class NoProtonet(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "protonet" or name.startswith("protonet."):
                raise ImportError("protonet is not importable in this process")
    sys.meta_path.insert(0, NoProtonet())
    import numpy as np
    images = np.load(sys.argv[2])
""")
RUN_ONNX = NO_PROTONET + textwrap.dedent("""
    import onnxruntime as ort
    session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: images})
    np.savez(sys.argv[3], *outputs)
""")
RUN_TORCHSCRIPT = NO_PROTONET + textwrap.dedent("""
    import torch
    model = torch.jit.load(sys.argv[1])
    with torch.no_grad():
        out = model(torch.from_numpy(images))
    out = out if isinstance(out, tuple) else (out,)
    np.savez(sys.argv[3], *[t.numpy() for t in out])
""")


def run_elsewhere(script, model_path, images, tmp_path):
    """The model's outputs on `images`, computed in a fresh process without protonet."""
    np.save(tmp_path / "images.npy", images)
    out = tmp_path / "outputs.npz"
    run = subprocess.run([sys.executable, "-c", script, str(model_path), str(tmp_path / "images.npy"), str(out)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600, env={"PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-3000:]
    data = np.load(out)
    return [data[f"arr_{i}"] for i in range(len(data.files))]


def photos(shape, count=3, mean=(104.0, 117.0, 123.0), scale=1.0):
    """Real photos (../shared/data/voc-images) resized to the net's input, as Caffe's transform
    would give them: BGR, mean subtracted, scaled, [N, 3, H, W]."""
    folder = shared_path("data", "voc-images")
    out = []
    for path in sorted(folder.glob("*.jpg"))[:count]:
        img = cv2.resize(cv2.imread(str(path)), (shape[-1], shape[-2]), interpolation=cv2.INTER_LINEAR)
        out.append(((img.astype(np.float32) - np.array(mean, np.float32)) * scale).transpose(2, 0, 1))
    return np.ascontiguousarray(np.stack(out))


def assert_same_rows(ours, theirs, tol=1e-4):
    """Same rows within tol; rows whose scores tie to ~1e-7 may come in either order."""
    ours, theirs = ours.reshape(-1, 7), theirs.reshape(-1, 7)
    assert ours.shape == theirs.shape, f"{ours.shape[0]} rows vs {theirs.shape[0]}"
    dist = np.abs(ours[:, None, :] - theirs[None, :, :]).max(axis=2)
    match = dist.argmin(axis=1)
    assert len(set(match.tolist())) == len(match), "rows do not pair up one to one"
    assert dist[np.arange(len(match)), match].max() <= tol


def tiny_ssd():
    return Net(FIX / "net" / "tiny_ssd_deploy.prototxt", weights=str(FIX / "net" / "tiny_ssd.caffemodel")).eval()


@pytest.fixture(scope="module")
def tiny():
    net = tiny_ssd()
    images = photos(net.blob_shapes["data"])
    with torch.no_grad():
        rows = net(torch.from_numpy(images), outputs="detection_out").numpy()
    assert rows.shape[2] > 20 and set(rows[0, 0, :, 0].tolist()) == {0.0, 1.0, 2.0}
    return net, images, rows


def test_onnx_whole_detector_in_onnxruntime_without_protonet(tiny, tmp_path):
    net, images, rows = tiny
    result = export_net(net, "onnx", tmp_path / "tiny.onnx")
    model = onnx.load(str(result.path))
    ops = {node.op_type for node in model.graph.node}
    assert {"NonMaxSuppression", "TopK", "NonZero"} <= ops and model.opset_import[0].version >= 17
    assert all(node.domain in ("", "ai.onnx") for node in model.graph.node)
    (out,) = run_elsewhere(RUN_ONNX, result.path, images, tmp_path)
    assert_same_rows(rows, out)
    (one,) = run_elsewhere(RUN_ONNX, result.path, images[1:2], tmp_path)  # the batch size is free
    with torch.no_grad():
        assert_same_rows(net(torch.from_numpy(images[1:2]), outputs="detection_out").numpy(), one)


def test_torchscript_whole_detector_in_a_fresh_process_without_protonet(tiny, tmp_path):
    net, images, rows = tiny
    result = export_net(net, "torchscript", tmp_path / "tiny.pt")
    (out,) = run_elsewhere(RUN_TORCHSCRIPT, result.path, images, tmp_path)
    assert_same_rows(rows, out)


def test_trunk_export_writes_priors_and_settings_beside_it(tiny, tmp_path):
    """--no-detection-output: the model gives the heads; DetectionOutput run from the sidecar
    files on them gives the rows."""
    net, images, rows = tiny
    result = export_net(net, "onnx", tmp_path / "trunk.onnx", detection=False)
    assert result.plan.outputs == ["mbox_loc", "mbox_conf_flatten"]
    loc, conf = run_elsewhere(RUN_ONNX, result.path, images, tmp_path)
    prior = np.load(str(result.path) + ".priors.npy")
    info = json.loads(pathlib.Path(str(result.path) + ".detection.json").read_text())
    assert info["bottoms"] == {"loc": "mbox_loc", "conf": "mbox_conf_flatten", "prior": "mbox_priorbox"}
    settings = DetectionSettings.from_json(json.dumps(info))
    assert settings == net.layers["detection_out"].settings and info["num_priors"] == prior.shape[2] // 4
    with torch.no_grad():
        heads = net(torch.from_numpy(images), outputs=["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"])
    np.testing.assert_allclose(loc, heads["mbox_loc"].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(prior, heads["mbox_priorbox"].numpy())
    decoded = detection_output(*(torch.from_numpy(a) for a in (loc, conf, prior)), settings)
    assert_same_rows(rows, decoded.numpy())


def test_until_layer_exports_its_tops(tiny, tmp_path):
    net, images, _ = tiny
    result = export_net(net, "torchscript", tmp_path / "until.pt", until="conv3_norm")
    assert result.plan.outputs == ["conv3_norm"] and len(result.extra_files) == 2
    (out,) = run_elsewhere(RUN_TORCHSCRIPT, result.path, images, tmp_path)
    with torch.no_grad():
        np.testing.assert_allclose(out, net(torch.from_numpy(images), outputs="conv3_norm").numpy(), rtol=1e-4,
                                   atol=1e-4)


def with_detection_param(text):
    param = read_prototxt(FIX / "net" / "tiny_ssd_deploy.prototxt", caffe_pb2.NetParameter)
    (det,) = [layer for layer in param.layer if layer.type == "DetectionOutput"]
    det.detection_output_param.nms_param.MergeFrom(caffe_pb2.NonMaximumSuppressionParameter(eta=float(text)))
    return param


def test_adaptive_nms_is_refused_in_one_line(tmp_path):
    net = Net(with_detection_param("0.9")).eval()
    with pytest.raises(ProtonetError, match=r"layer detection_out \(DetectionOutput\): adaptive NMS \(nms_param.eta "
                                            r"0.9 < 1\) cannot be exported") as exc:
        export_net(net, "onnx", tmp_path / "eta.onnx")
    assert "\n" not in str(exc.value)
    # The trunk still exports.
    assert export_net(net, "onnx", tmp_path / "eta_trunk.onnx", detection=False).size > 0


def test_torchscript_needs_top_k_on_large_nets(tmp_path):
    param = read_prototxt(FIX / "net" / "tiny_ssd_deploy.prototxt", caffe_pb2.NetParameter)
    (det,) = [layer for layer in param.layer if layer.type == "DetectionOutput"]
    det.detection_output_param.nms_param.ClearField("top_k")
    net = Net(param).eval()
    with pytest.raises(ProtonetError, match=r"^layer detection_out \(DetectionOutput\): nms_param.top_k is unset, so "
                                            r"NMS would rank all 6376 priors in the traced graph; set top_k"):
        export_net(net, "torchscript", tmp_path / "x.pt")
    assert export_net(net, "onnx", tmp_path / "x.onnx").size > 0


def test_layers_that_cannot_be_shipped_are_named_in_one_line(tmp_path):
    param = read_prototxt(FIX / "net" / "tiny_ssd_deploy.prototxt", caffe_pb2.NetParameter)
    gt = param.layer.add(name="gt", type="Input", top=["gt"])
    gt.input_param.shape.add().dim.extend([1, 1, 4, 8])
    ev = param.layer.add(name="det_eval", type="DetectionEvaluate", bottom=["detection_out", "gt"], top=["eval"])
    ev.detection_evaluate_param.num_classes = 6
    param.layer.add(name="my_loss", type="EuclideanLoss", bottom=["conv1", "conv1"], top=["l"])
    net = Net(param)
    with pytest.raises(ProtonetError) as exc:
        export_net(net, "onnx", tmp_path / "x.onnx", until="det_eval")
    assert str(exc.value) == ("cannot export layer detection_out (DetectionOutput): feeds other layers (export up to "
                              "it with --until); layer det_eval (DetectionEvaluate): scores detections against "
                              "ground truth")
    with pytest.raises(ProtonetError, match=r"^cannot export layer my_loss \(EuclideanLoss\): a loss needs labels"):
        export_net(net, "torchscript", tmp_path / "x.pt", until="my_loss")


def test_export_command(tmp_path):
    from protonet.cli import main

    out = tmp_path / "cli.onnx"
    run = subprocess.run([sys.executable, "-m", "protonet", "export", "--model",
                          str(FIX / "net" / "tiny_ssd_deploy.prototxt"), "--weights", str(FIX / "net" / "tiny_ssd.caffemodel"),
                          "--format", "onnx", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"wrote onnx {out} (") and "detection_out (DetectionOutput) included" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "protonet", "export", "--model",
                          str(FIX / "net" / "tiny_ssd_deploy.prototxt"), "--format", "onnx", "--out",
                          str(tmp_path / "y.onnx"), "--until", "nope"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip() == "protonet: error: net tiny_ssd_deploy: --until: no layer 'nope'"
    del main


# --- the reference detectors with seeded weights (slow) ------------------------------------------


# Seeded weights keep activations of order 1 for inputs of order 1: photos scaled as a
# std-normalising transform would (VGG's Caffe weights expect raw pixels, seeded ones do not).
NETS = {
    "ssd300_vgg16": ("ssd300_vgg16_voc_deploy.prototxt", dict(scale=0.017)),
    "mobilenet_ssd": ("mobilenet_ssd_deploy.prototxt", dict(mean=(127.5, 127.5, 127.5), scale=0.007843)),
    "refinedet320_vgg16": ("refinedet320_vgg16_voc_deploy.prototxt", dict(scale=0.017)),
    "refinedet320_resnet101": ("refinedet320_resnet101_coco_deploy.prototxt", dict(scale=0.017)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NETS))
def test_reference_detectors_round_trip(name, tmp_path):
    from test_opencv_parity import deploy_param, randomize

    filename, transform = NETS[name]
    net = Net(deploy_param(filename)).eval()
    images = photos(net.blob_shapes["data"], count=2, **transform)
    randomize(net, torch.from_numpy(images[:1]), seed=1)
    with torch.no_grad():
        rows = net(torch.from_numpy(images), outputs="detection_out").numpy()
    assert rows.shape[2] > 10
    onnx_file = export_net(net, "onnx", tmp_path / f"{name}.onnx").path
    assert_same_rows(rows, run_elsewhere(RUN_ONNX, onnx_file, images, tmp_path)[0])
    script = export_net(net, "torchscript", tmp_path / f"{name}.pt").path
    assert_same_rows(rows, run_elsewhere(RUN_TORCHSCRIPT, script, images, tmp_path)[0])


# --- DetectionOutput's ONNX form alone, in onnxruntime ---------------------------------------------


def onnx_rows(settings, bottoms):
    from protonet.export.onnx_detection import detection_output_model

    model = detection_output_model(settings, bottoms[2].shape[-1] // 4, [tuple(b.shape) for b in bottoms],
                                   refinedet=len(bottoms) == 5)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = ["loc", "conf", "prior", "arm_conf", "arm_loc"]
    return session.run(None, {n: b.numpy() for n, b in zip(names, bottoms)})[0]


def onnx_cases():
    from test_detection_decode import RANDOM_CASES, golden_cases, settings
    from test_detection_layers import random_detection_inputs

    cases = [(name, DetectionSettings.from_param(p), bottoms) for name, p, bottoms, _ in golden_cases()]
    for name, text in sorted(RANDOM_CASES.items()):
        s, _ = settings(text)
        cases.append((name, s, list(random_detection_inputs(np.random.default_rng(11), 3, 80, 4, s.loc_classes))))
    gen = np.random.default_rng(8)
    s, _ = settings("code_type: CENTER_SIZE keep_top_k: 20 confidence_threshold: 0.2 objectness_score: 0.4 "
                    "nms_param { nms_threshold: 0.45 top_k: 50 }", num_classes=3)
    loc, conf, prior = random_detection_inputs(gen, 2, 60, 3, 1)
    arm_conf = torch.softmax(torch.tensor(gen.normal(0, 2, (2, 60, 2)), dtype=torch.float32), -1).view(2, -1)
    arm_loc = torch.tensor(gen.normal(0, 0.3, (2, 240)), dtype=torch.float32)
    cases.append(("refinedet", s, [loc, conf, prior, arm_conf, arm_loc]))
    s, _ = settings("code_type: CENTER_SIZE keep_top_k: 7 confidence_threshold: 0.1 "
                    "nms_param { nms_threshold: 0.99 top_k: 5 }", num_classes=3)
    loc, _, prior = random_detection_inputs(np.random.default_rng(3), 2, 30, 3, 1)
    tied = torch.full((2, 30, 3), 0.2)
    tied[:, ::4, 1] = 0.5
    tied[:, 1::5, 2] = 0.5
    cases.append(("ties", s, [loc, tied.view(2, -1), prior]))
    from test_detection_decode import OPENCV_CASES, pixel_inputs

    for name, text in sorted(OPENCV_CASES.items()):
        s, _ = settings(text)
        cases.append((name, s, list(pixel_inputs(np.random.default_rng(12), name, s))))
    return cases


@pytest.mark.parametrize("name,settings,bottoms", onnx_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_onnx_detection_output_equals_the_tensor_algorithm(name, settings, bottoms):
    expected = detection_output(*bottoms[:3], settings, *bottoms[3:]).numpy()
    out = onnx_rows(settings, bottoms)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_quickstart_trained_net_round_trip(tmp_path):
    """A short quickstart run (its own dataset, SSD 128x128 trained for a few dozen iterations):
    its deploy net and snapshot exported, run on its test photos."""
    root = tmp_path / "qs"
    run = subprocess.run([sys.executable, "-m", "protonet", "quickstart", "--root", str(root), "--train", "64",
                          "--test", "16", "--max-iter", "40"], capture_output=True, text=True, timeout=3000)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    model_dir = root / "models/quickstart/ssd_shapes_128x128"
    net = Net(model_dir / "deploy.prototxt", weights=str(model_dir / "shapes_ssd_shapes_128x128_iter_40.caffemodel"))
    net.eval()
    names = sorted((root / "data/shapes/JPEGImages").glob("*.jpg"))[:4]
    size = net.blob_shapes["data"][2:]
    images = np.stack([(cv2.resize(cv2.imread(str(p)), (size[1], size[0])).astype(np.float32)
                        - np.array([104, 117, 123], np.float32)).transpose(2, 0, 1) for p in names])
    with torch.no_grad():
        rows = net(torch.from_numpy(images), outputs="detection_out").numpy()
    onnx_file = export_net(net, "onnx", tmp_path / "quickstart.onnx").path
    assert_same_rows(rows, run_elsewhere(RUN_ONNX, onnx_file, images, tmp_path)[0])
    script = export_net(net, "torchscript", tmp_path / "quickstart.pt").path
    assert_same_rows(rows, run_elsewhere(RUN_TORCHSCRIPT, script, images, tmp_path)[0])
