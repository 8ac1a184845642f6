"""`protonet detect` (against OpenCV's Caffe importer) and `protonet eval` (against Caffe's printed mAP)."""
import contextlib
import io
import json
import os
import shutil
import types

import cv2
import numpy as np
import pytest

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.tools.detect import collect_images, find_transform, inference_transform

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "quickstart")
DEPLOY = os.path.join(FIXTURES, "tiny_ssd_deploy.prototxt")


def _protonet(*args, cwd=None):
    """`protonet ARGS` in this process (the CLI's own main, exit status included): no interpreter start-up."""
    from protonet.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    code = 0
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exc:
                code = exc.code or 0
    finally:
        os.chdir(here)
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The tiny SSD deploy net with seeded random weights, plus a few test images."""
    import torch

    from protonet.net import Net

    root = tmp_path_factory.mktemp("detect")
    torch.manual_seed(0)
    net = Net(DEPLOY, phase="TEST")
    weights = str(root / "tiny.caffemodel")
    net.save_weights(weights)
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir()
    for k, (h, w) in enumerate([(48, 64), (40, 40), (90, 30)]):
        img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        cv2.circle(img, (w // 2, h // 2), min(h, w) // 4, (20, 200, 30), -1)
        cv2.imwrite(str(images / f"img{k}.png"), img)
    return root, weights, images


def _opencv_detections(weights, image_path, threshold):
    """The same deploy net through cv2.dnn, the image prepared as Caffe's test transform does."""
    net = cv2.dnn.readNetFromCaffe(DEPLOY, weights)
    img = cv2.imread(image_path)
    blob = cv2.dnn.blobFromImage(img, 0.0078125, (32, 32), (104, 117, 123), swapRB=False, crop=False)
    net.setInput(blob)
    rows = net.forward().reshape(-1, 7)
    h, w = img.shape[:2]
    out = []
    for _, label, score, x0, y0, x1, y1 in rows:
        if label >= 0 and score >= threshold:
            box = np.clip([x0, y0, x1, y1], 0, 1) * [w, h, w, h]
            out.append((int(label), float(score), box))
    return out


def test_detections_match_opencv_and_files_are_written(tiny_model, tmp_path):
    root, weights, images = tiny_model
    out = tmp_path / "out"
    run = _protonet("detect", "--model", DEPLOY, "--weights", weights, "--threshold", "0.3",
                    str(images / "img0.png"), str(images), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "transform from the transform_param comment" in run.stdout
    # 1 file + 3 from the directory; the repeated name gets a suffix
    assert sorted(os.listdir(out)) == ["detections.jsonl", "img0.png", "img0_1.png", "img1.png", "img2.png"]
    records = [json.loads(line) for line in (out / "detections.jsonl").read_text().splitlines()]
    assert records, "the random tiny net should give detections above 0.3"
    for record in records:
        assert set(record) == {"image", "class", "label", "score", "box"}
        assert record["class"] == {1: "disc", 2: "block"}[record["label"]]  # from the # labelmap: comment
    for k in range(3):
        path = str(images / f"img{k}.png")
        ours = [r for r in records if r["image"] == path]
        if k == 0:  # given twice: once by name, once in the directory
            assert ours[:len(ours) // 2] == ours[len(ours) // 2:]
            ours = ours[:len(ours) // 2]
        theirs = _opencv_detections(weights, path, 0.3)
        assert len(ours) == len(theirs) > 0
        for label, score, box in theirs:
            close = [r for r in ours if r["label"] == label and abs(r["score"] - score) < 1e-4
                     and np.allclose(r["box"], box, atol=0.02)]
            assert close, (label, score, box, ours)
    drawn = cv2.imread(str(out / "img1.png"))
    plain = cv2.resize(cv2.imread(str(images / "img1.png")), drawn.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    assert drawn.shape[0] >= 480 and (drawn != plain).any()


def test_threshold_and_options_override_the_comment(tiny_model, tmp_path):
    root, weights, images = tiny_model
    out = tmp_path / "out"
    run = _protonet("detect", "--model", DEPLOY, "--weights", weights, "--threshold", "1.01", "--mean", "0,0,0",
                    "--scale", "0.5", "--resize", "32x32", str(images / "img1.png"), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert (out / "detections.jsonl").read_text() == ""
    assert "mean_value: 0" in run.stdout and "scale: 0.5" in run.stdout


def test_a_killed_runs_temporaries_are_removed(tiny_model, tmp_path):
    root, weights, images = tiny_model
    out = tmp_path / "out"
    out.mkdir()
    stale = [".tmp-detections.jsonl.0123abcd", ".tmp-img1.png.89abcdef"]
    for name in stale + [".tmp-notes.txt.0123abcd"]:
        (out / name).write_text("half")
    run = _protonet("detect", "--model", DEPLOY, "--weights", weights, str(images / "img1.png"), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert sorted(os.listdir(out)) == [".tmp-notes.txt.0123abcd", "detections.jsonl", "img1.png"]


def test_transform_sources(tmp_path):
    net = caffe_pb2.NetParameter()
    # 1. the comment line of the quickstart's deploy.prototxt
    param, labelmap, where = find_transform(DEPLOY, net)
    assert list(param.mean_value) == [104, 117, 123] and param.resize_param.height == 32
    assert labelmap == "labelmap.prototxt" and "comment" in where
    # 4. a test.prototxt beside a deploy.prototxt without the comment (Caffe's example scripts)
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text('name: "x"\ninput: "data"\n')
    (tmp_path / "test.prototxt").write_text(
        'layer { name: "data" type: "AnnotatedData" top: "data" top: "label" include { phase: TRAIN }\n'
        '  transform_param { mirror: true mean_value: 1 } }\n'
        'layer { name: "data" type: "AnnotatedData" top: "data" top: "label" include { phase: TEST }\n'
        '  transform_param { mean_value: 7 mean_value: 8 mean_value: 9 scale: 0.25 resize_param { resize_mode: WARP'
        ' height: 20 width: 30 interp_mode: LINEAR interp_mode: CUBIC } }\n'
        '  annotated_data_param { label_map_file: "lm.prototxt" } }\n')
    param, labelmap, where = find_transform(str(deploy), net)
    assert list(param.mean_value) == [7, 8, 9] and labelmap == "lm.prototxt" and "test.prototxt" in where
    final = inference_transform(param, (1, 3, 20, 30))
    assert final.scale == 0.25 and list(final.resize_param.interp_mode) == [caffe_pb2.ResizeParameter.LINEAR]
    # options replace parts; 5. nothing found: warp to the input size
    (tmp_path / "test.prototxt").unlink()
    param, labelmap, where = find_transform(str(deploy), net)
    final = inference_transform(param, (1, 3, 24, 36), mean=[1, 2, 3])
    assert (final.resize_param.height, final.resize_param.width) == (24, 36) and list(final.mean_value) == [1, 2, 3]
    bad = caffe_pb2.TransformationParameter()
    bad.resize_param.resize_mode = caffe_pb2.ResizeParameter.FIT_LARGE_SIZE_AND_PAD
    with pytest.raises(ProtonetError, match="WARP"):
        inference_transform(bad, (1, 3, 8, 8))


def test_user_errors_are_one_line(tiny_model, tmp_path):
    root, weights, images = tiny_model
    missing = _protonet("detect", "--model", DEPLOY, "--weights", weights, str(tmp_path / "nope.jpg"),
                        "--out", str(tmp_path / "o"))
    assert missing.returncode == 2 and "nope.jpg: no such file or directory" in missing.stderr
    assert "Traceback" not in missing.stderr
    (tmp_path / "empty").mkdir()
    with pytest.raises(ProtonetError, match="no images"):
        collect_images([str(tmp_path / "empty")])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    bad = _protonet("detect", "--model", DEPLOY, "--weights", weights, str(broken), "--out", str(tmp_path / "o"))
    assert bad.returncode == 2 and "broken.jpg: not an image" in bad.stderr


def test_eval_matches_caffe_printed_map(tmp_path):
    """The golden test pass of the real fork (HDF5Data -> DetectionEvaluate): same mAP and per-class AP."""
    shutil.copytree(os.path.join(FIXTURES, "eval"), tmp_path / "eval")
    results = {}
    with open(os.path.join(FIXTURES, "eval", "map_results.txt")) as fh:
        next(fh)
        for line in fh:
            version, m_ap, per_class = line.strip().split(",")
            results[version] = (float(m_ap), {int(k): float(v) for k, v in (p.split(":") for p in per_class.split())})
    for version, (m_ap, per_class) in results.items():
        run = _protonet("eval", "--model", "eval/map_test.prototxt", "--iterations", "1", "--ap-version", version,
                        cwd=tmp_path)
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        printed = float(next(line for line in lines if line.startswith("mAP")).split("=")[1])
        assert f"{printed:.6g}" == f"{m_ap:.6g}"
        for label, ap in per_class.items():
            row = next(line.split() for line in lines if line.split()[:1] == [str(label)])
            assert f"{float(row[-1]):.6g}" == f"{ap:.6g}"


def test_eval_needs_iterations_without_name_size_file(tmp_path):
    shutil.copytree(os.path.join(FIXTURES, "eval"), tmp_path / "eval")
    run = _protonet("eval", "--model", "eval/map_test.prototxt", cwd=tmp_path)
    assert run.returncode == 2 and "give --iterations" in run.stderr
