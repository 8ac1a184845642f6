"""Bad data is reported, not absorbed; untrusted files stay data (issue 13, items 5 and 6)."""
import contextlib
import io
import logging
import pathlib
import re
import shutil
import types

import lmdb
import numpy as np
import pytest
import torch

from protonet import caffe_pb2
from protonet.data.records import BadBoxes, decode_record
from protonet.errors import ProtonetError
from protonet.io.caffemodel import write_caffemodel
from protonet.io.prototxt import read_prototxt
from protonet.layers.base import NetContext, layer_class
from protonet.net import Net

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "protonet"
TINY = FIXTURES / "io" / "tiny_ssd_deploy.prototxt"


def protonet(*args, cwd=None):
    """`protonet ARGS` in this process: exit status, stdout, stderr."""
    import os

    from protonet.cli import main

    out, err = io.StringIO(), io.StringIO()
    here, code = os.getcwd(), 0
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code or 0
    finally:
        os.chdir(here)
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


# ------------------------------------------------------------------------------ boxes in records

def _record(boxes):
    anno = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
    anno.datum.CopyFrom(caffe_pb2.Datum(channels=1, height=2, width=2, data=bytes(4)))
    group = anno.annotation_group.add(group_label=3)
    for b in boxes:
        a = group.annotation.add()
        a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = b
    return anno.SerializeToString()


@pytest.mark.parametrize("box", [(float("nan"), 0, 1, 1), (0, 0, float("inf"), 1), (0, 0, 1e30, 1),
                                 (-1e30, 0.2, 0.5, 0.5), (0, 0, 2.5, 1)])
def test_boxes_not_finite_or_far_outside_are_bad_records(box):
    with pytest.raises(BadBoxes, match=r"record 00000004_a.jpg: box 1 \(label 3\) has coordinates"):
        decode_record(b"00000004_a.jpg", _record([(0.1, 0.1, 0.5, 0.5), box]), annotated=True)


def test_boxes_a_little_outside_the_image_are_kept():
    sample = decode_record(b"k", _record([(-0.01, 0, 1.02, 1), (0.5, 0.5, 0.4, 0.4)]), annotated=True)
    assert len(sample.boxes) == 2


def _lmdb_with_bad_box(fixtures_copy):
    env = lmdb.open(str(fixtures_copy), map_size=1 << 24)
    with env.begin(write=True) as txn:
        key = b"00000001_Images/2.jpg"
        anno = caffe_pb2.AnnotatedDatum.FromString(txn.get(key))
        anno.annotation_group[0].annotation[0].bbox.xmax = float("nan")
        txn.put(key, anno.SerializeToString())
    env.close()


def _data_layer(db, tmp_path, **ctx):
    net = read_prototxt(FIXTURES / "data/annotated_data_no_sampler.prototxt", caffe_pb2.NetParameter)
    lp = net.layer[0]
    lp.data_param.source = str(db)
    context = NetContext(phase=caffe_pb2.TRAIN, seed=1, root_dir=str(FIXTURES / "data"), data_workers=0, **ctx)
    return layer_class(lp.type)(lp, [], context)


def test_a_record_with_a_nan_box_is_skipped_with_a_warning(tmp_path, caplog):
    db = tmp_path / "db"
    shutil.copytree(FIXTURES / "data/lmdb/annoset_encoded_lmdb", db)
    _lmdb_with_bad_box(db)
    layer = _data_layer(db, tmp_path)
    g = np.load(FIXTURES / "data/annotated_data_no_sampler.npz")
    with caplog.at_level(logging.WARNING):
        data, label = layer()
    assert layer.corrupt_records == 1
    assert re.search(r"skipping bad record: record 00000001_Images/2.jpg: box 0 .* nan", caplog.text)
    assert np.array_equal(data[1].numpy(), g["data_batch1"][0])  # 3.jpg took its place
    strict = _data_layer(db, tmp_path, strict_data=True)
    with pytest.raises(ProtonetError, match=r"record 00000001_Images/2.jpg: box 0 .*\(--strict-data\)"):
        strict()


def test_a_worker_error_reaches_the_parent_as_one_line(tmp_path):
    db = tmp_path / "db"
    shutil.copytree(FIXTURES / "data/lmdb/annoset_encoded_lmdb", db)
    _lmdb_with_bad_box(db)
    layer = _data_layer(db, tmp_path, strict_data=True)
    layer.batches.workers = 1
    with pytest.raises(ProtonetError) as info:
        layer()
    assert "\n" not in str(info.value) and "00000001_Images/2.jpg" in str(info.value)


# ------------------------------------------------------------------------------ eval's label map

def test_eval_with_a_label_map_lacking_a_label_names_it(tmp_path):
    shutil.copytree(FIXTURES / "eval", tmp_path / "eval")
    labelmap = tmp_path / "lm.prototxt"
    labelmap.write_text('item { name: "bg" label: 0 } item { name: "a" label: 1 } item { name: "c" label: 3 }\n')
    run = protonet("eval", "--model", "eval/map_test.prototxt", "--iterations", "1", "--labelmap", labelmap,
                   cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == f"protonet: error: {labelmap}: no item for label 2, which the " \
                                                  "test data holds"
    labelmap.write_text('item { name: "bg" label: 0 } item { name: "a" label: 1 } item { name: "b" label: 2 } '
                        'item { name: "c" label: 3 }\n')
    ok = protonet("eval", "--model", "eval/map_test.prototxt", "--iterations", "1", "--labelmap", labelmap,
                  cwd=tmp_path)
    assert ok.returncode == 0 and "mAP" in ok.stdout


# ------------------------------------------------------------------------------ weights matching nothing

@pytest.fixture
def unrelated_weights(tmp_path):
    net = caffe_pb2.NetParameter(name="other")
    net.layer.add(name="fc_other", type="InnerProduct")
    path = tmp_path / "other.caffemodel"
    write_caffemodel(net, path, blobs={"fc_other": [np.ones((2, 3), np.float32)]})
    return path


def test_weights_matching_no_layer_warn_naming_both_files(unrelated_weights, caplog):
    net = Net(str(TINY), phase="TEST")
    with caplog.at_level(logging.WARNING, logger="protonet.net"):
        missing = net.load_weights(str(unrelated_weights))
    assert missing == list(net.params)
    assert f"{unrelated_weights}: none of its 1 layers with weights is a layer of {TINY}" in caplog.text
    with pytest.raises(ProtonetError, match=r"other.caffemodel: no layer matches a layer of .*tiny_ssd_deploy"
                                            r".*--strict-weights"):
        net.load_weights(str(unrelated_weights), strict=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="protonet.net"):
        net.load_weights(str(FIXTURES / "io" / "tiny_ssd.caffemodel"), strict=True)
    assert "none of its" not in caplog.text


def test_strict_weights_flag(unrelated_weights):
    run = protonet("time", "--model", TINY, "--weights", unrelated_weights, "--iterations", "1",
                   "--strict-weights")
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith("protonet: error: ")
    assert "--strict-weights" in run.stderr and "Traceback" not in run.stderr
    warned = protonet("time", "--model", TINY, "--weights", unrelated_weights, "--iterations", "1")
    assert warned.returncode == 0 and "none of its 1 layers with weights" in warned.stderr


# ------------------------------------------------------------------------------ inspect

def test_inspect_says_when_blob_values_do_not_fill_the_shape(tmp_path):
    net = caffe_pb2.NetParameter(name="x")
    blob = net.layer.add(name="conv", type="Convolution").blobs.add()
    blob.shape.dim.extend([1000000, 1000000])
    blob.data.extend([1, 2, 3, 4])
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(net.SerializeToString())
    run = protonet("inspect", path)
    assert run.returncode == 0
    assert "1 with blobs, 4 parameters" in run.stdout and "1000000000000 parameters" not in run.stdout
    assert ("warning: layer conv blob 0: its shape [1000000,1000000] needs 1000000000000 values, the file holds 4"
            in run.stdout)


def test_non_utf8_names_in_a_caffemodel_are_one_line(tmp_path):
    data = caffe_pb2.NetParameter(name="x", layer=[caffe_pb2.LayerParameter(name="conv", type="ReLU")])
    raw = data.SerializeToString().replace(b"conv", b"c\xffnv")
    path = tmp_path / "latin1.caffemodel"
    path.write_bytes(raw)
    run = protonet("inspect", path)
    assert run.returncode == 2 and "layer[0].name holds bytes that are not UTF-8" in run.stderr


# ------------------------------------------------------------------------------ detect

def test_detect_goes_on_past_an_unreadable_image(tmp_path):
    net = Net(str(FIXTURES / "quickstart" / "tiny_ssd_deploy.prototxt"), phase="TEST")
    weights = tmp_path / "w.caffemodel"
    net.save_weights(weights)
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "c.png"):
        cv2.imwrite(str(images / name), np.full((40, 50, 3), 128, np.uint8))
    (images / "b.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    run = protonet("detect", "--model", FIXTURES / "quickstart" / "tiny_ssd_deploy.prototxt", "--weights", weights,
                   images, "--out", out)
    assert run.returncode == 2
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png", "detections.jsonl"]
    last = run.stderr.strip().splitlines()[-1]
    assert last == f"protonet: error: detect: 1 of 3 images could not be read and were skipped: " \
                   f"{images / 'b.png'}: not an image OpenCV can read"


def _png(width, height):
    import cv2

    return cv2.imencode(".png", np.full((height, width, 3), 7, np.uint8))[1].tobytes()


def test_images_claiming_more_than_their_bytes_hold_are_refused_before_decoding(tmp_path):
    """OpenCV allocates what a header or a PNG chunk claims before reading: 3.6 GB and 5 s for 91 bytes."""
    import resource
    import time

    from protonet.data.image_header import claimed_size, implausible_size
    from protonet.data.records import CorruptRecord, imdecode, read_image_file

    good = _png(40, 30)
    assert claimed_size(good) == (40, 30) and implausible_size(good) is None
    jpeg = (FIXTURES / "data/lmdb/Dataset/Images/1.jpg").read_bytes()
    assert claimed_size(jpeg) == (500, 500) and implausible_size(jpeg) is None
    chunk = good[:33] + (3_500_000_000).to_bytes(4, "big") + good[37:]  # the IDAT length
    huge = good[:16] + (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big") + good[24:]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    for bad, why in ((chunk, "chunk claims 3500000000 bytes"), (huge, "claims 60000x60000 pixels")):
        assert why in implausible_size(bad)
        with pytest.raises(CorruptRecord, match="record k: image data does not decode"):
            imdecode(bad, None, "record k")
        path = tmp_path / "bad.png"
        path.write_bytes(bad)
        assert read_image_file(str(path)) is None
    assert time.monotonic() - start < 2
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 < 200 << 20


# ------------------------------------------------------------------------------ untrusted files stay data

def test_nothing_is_unpickled():
    """No pickle, no torch.load but with weights_only=True (import-weights' state_dicts), no numpy
    object arrays anywhere in the library."""
    pattern = re.compile(r"\bpickle\b|torch\.load\((?![^)]*weights_only=True)|allow_pickle\s*=\s*True|\bmarshal\b"
                         r"|\bshelve\b|yaml\.load\(")
    offenders = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py") if p.name != "caffe_pb2.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []
    assert pattern.search("x = torch.load(path)") and not pattern.search("torch.load(p, weights_only=True)")


def test_python_layers_are_refused_unless_asked(tmp_path):
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 } } }\n'
            'layer { name: "py" type: "Python" bottom: "data" top: "out" python_param { module: "os" layer: "system" '
            'param_str: "touch %s" } }\n' % (tmp_path / "ran"))
    model = tmp_path / "py.prototxt"
    model.write_text(text)
    run = protonet("time", "--model", model, "--iterations", "1")
    assert run.returncode == 2 and "--allow-python-layers" in run.stderr
    assert not (tmp_path / "ran").exists()


def test_paths_in_prototxts_are_not_expanded(tmp_path, monkeypatch):
    """A data source is a path, taken as Caffe takes it: no ~, no $VARIABLES, no globbing, no shell."""
    monkeypatch.setenv("PROTONET_SECRET_DIR", str(FIXTURES / "data" / "lmdb"))
    for source in ("$PROTONET_SECRET_DIR/annoset_encoded_lmdb", "~/annoset_encoded_lmdb",
                   str(FIXTURES / "data" / "lmdb" / "annoset_*_lmdb"), "`echo x`"):
        net = read_prototxt(FIXTURES / "data/annotated_data_no_sampler.prototxt", caffe_pb2.NetParameter)
        net.layer[0].data_param.source = source
        with pytest.raises(ProtonetError, match="no such LMDB"):
            Net(net, phase="TRAIN", ctx=NetContext(root_dir=str(tmp_path), data_workers=0))
