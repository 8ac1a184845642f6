"""AnnotatedData / Data / ImageData layers against the fork's batches and Caffe's conventions."""
import pathlib
import shutil

import cv2
import lmdb
import numpy as np
import pytest
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.prototxt import parse_prototxt, read_prototxt
from protonet.layers.base import NetContext, layer_class

GOLDENS = [
    # (golden, JPEG re-encode option)
    ("annotated_data_no_sampler", False),
    ("annotated_data_no_sampler_resize300lmdb", False),
    ("annotated_data_identity_sampler", True),
]


def build(lp, root, workers=0, seed=1, phase=caffe_pb2.TRAIN, **options):
    ctx = NetContext(phase=phase, seed=seed, root_dir=str(root), data_workers=workers, **options)
    return layer_class(lp.type)(lp, [], ctx)


def golden_layer(fixtures, name, **kw):
    net = read_prototxt(fixtures / "data" / f"{name}.prototxt", caffe_pb2.NetParameter)
    return build(net.layer[0], fixtures / "data", **kw)


@pytest.mark.parametrize("name,reencode", GOLDENS)
def test_batches_equal_fork_goldens(fixtures, name, reencode):
    g = np.load(fixtures / "data" / f"{name}.npz")
    layer = golden_layer(fixtures, name, reencode_jpeg=reencode)
    assert layer.top_shapes[0] == (2, 3, 300, 300)
    for b in range(2):
        data, label = layer()
        assert data.dtype == torch.float32 and label.dtype == torch.float32
        assert np.abs(data.numpy() - g[f"data_batch{b}"]).max() <= 1
        assert label.shape == g[f"label_batch{b}"].shape
        assert np.array_equal(label.numpy(), g[f"label_batch{b}"])  # labels exact


def test_identity_sampler_without_reencode_crops_decoded_pixels(fixtures):
    # protonet's default skips Caffe's JPEG round trip: the identity crop then equals no crop
    plain = np.load(fixtures / "data/annotated_data_no_sampler.npz")
    layer = golden_layer(fixtures, "annotated_data_identity_sampler")
    data, label = layer()
    assert np.array_equal(data.numpy(), plain["data_batch0"])
    assert np.array_equal(label.numpy(), plain["label_batch0"])


def test_workers_give_the_same_batches(fixtures):
    text = (fixtures / "data/annotated_data_no_sampler.prototxt").read_text()
    net = parse_prototxt(text, caffe_pb2.NetParameter(), "x")
    lp = net.layer[0]
    lp.transform_param.mirror = True
    lp.annotated_data_param.batch_sampler.add().CopyFrom(parse_prototxt(
        "sampler { min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 max_aspect_ratio: 2 } "
        "sample_constraint { min_jaccard_overlap: 0.1 } max_trials: 50 max_sample: 1",
        caffe_pb2.BatchSampler(), "s"))
    a = build(lp, fixtures / "data", workers=0, seed=5)
    b = build(lp, fixtures / "data", workers=2, seed=5)
    c = build(lp, fixtures / "data", workers=0, seed=6)
    differs = False
    for _ in range(3):
        (da, la), (db, lb), (dc, lc) = a(), b(), c()
        assert torch.equal(da, db) and torch.equal(la, lb)
        differs |= not torch.equal(da, dc)
    assert differs


def test_cycles_shards_and_shuffles(fixtures):
    net = read_prototxt(fixtures / "data/annotated_data_no_sampler.prototxt",
                        caffe_pb2.NetParameter)
    lp = net.layer[0]
    lp.data_param.batch_size = 1
    lp.transform_param.resize_param.height = lp.transform_param.resize_param.width = 8

    def first_boxes(layer, n):
        return [tuple(round(float(v), 4) for v in layer()[1][0, 0, 0, 3:7]) for _ in range(n)]

    seq = first_boxes(build(lp, fixtures / "data"), 7)
    assert seq[:5] == seq[5:] + seq[2:5] and len(set(seq[:5])) == 5  # 5 records, cycling
    shard0 = first_boxes(_sharded(lp, fixtures / "data", 0, 2), 3)
    shard1 = first_boxes(_sharded(lp, fixtures / "data", 1, 2), 2)
    assert shard0 == [seq[0], seq[2], seq[4]] and shard1 == [seq[1], seq[3]]
    shuf = first_boxes(build(lp, fixtures / "data", data_shuffle=True), 10)
    assert sorted(shuf[:5]) == sorted(seq[:5]) and sorted(shuf[5:]) == sorted(seq[:5])
    assert shuf[:5] != seq[:5] or shuf[5:] != seq[:5]


def _sharded(lp, root, rank, world):
    ctx = NetContext(phase=caffe_pb2.TRAIN, seed=1, root_dir=str(root), data_workers=0,
                     rank=rank, world_size=world)
    return layer_class(lp.type)(lp, [], ctx)


def test_one_top_and_missing_source(fixtures, tmp_path):
    net = read_prototxt(fixtures / "data/annotated_data_no_sampler.prototxt",
                        caffe_pb2.NetParameter)
    lp = net.layer[0]
    del lp.top[1:]
    layer = build(lp, fixtures / "data")
    assert len(layer.top_shapes) == 1 and layer().shape == (2, 3, 300, 300)
    lp.data_param.source = "nowhere_lmdb"
    with pytest.raises(ProtonetError, match="nowhere_lmdb: no such LMDB"):
        build(lp, tmp_path)


def test_placeholder_row_when_no_boxes(fixtures, tmp_path):
    db = tmp_path / "db"
    env = lmdb.open(str(db), map_size=1 << 24)
    img = cv2.imencode(".png", np.full((10, 12, 3), 50, np.uint8))[1].tobytes()
    with env.begin(write=True) as txn:
        for i in range(2):
            ad = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
            ad.datum.CopyFrom(caffe_pb2.Datum(channels=3, height=10, width=12, encoded=True,
                                              data=img, label=-1))
            txn.put(f"{i:08d}_x".encode(), ad.SerializeToString())
    env.close()
    lp = parse_prototxt(f'name: "d" type: "AnnotatedData" top: "data" top: "label" '
                        f'data_param {{ source: "{db}" batch_size: 2 backend: LMDB }} '
                        f'transform_param {{ scale: 0.5 mean_value: 10 }}',
                        caffe_pb2.LayerParameter(), "x")
    layer = build(lp, tmp_path)
    data, label = layer()
    assert layer.top_shapes == [(2, 3, 10, 12), (1, 1, 1, 8)]
    assert label.tolist() == [[[[-1.0] * 8]]]
    assert torch.all(data == 20)  # (50 - 10) * 0.5


def test_corrupt_record_is_skipped_and_counted(fixtures, tmp_path, caplog):
    src = fixtures / "data/lmdb/annoset_encoded_lmdb"
    db = tmp_path / "db"
    shutil.copytree(src, db)
    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"00000001_Images/2.jpg", b"\x08garbage")
    env.close()
    net = read_prototxt(fixtures / "data/annotated_data_no_sampler.prototxt",
                        caffe_pb2.NetParameter)
    lp = net.layer[0]
    lp.data_param.source = str(db)
    layer = build(lp, tmp_path)
    g = np.load(fixtures / "data/annotated_data_no_sampler.npz")
    data, label = layer()
    assert layer.corrupt_records == 1
    assert "00000001_Images/2.jpg" in caplog.text
    assert np.array_equal(data[0].numpy(), g["data_batch0"][0])
    assert np.array_equal(data[1].numpy(), g["data_batch1"][0])  # 3.jpg took its place


def make_datum_lmdb(path, n=3):
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(n):
            chw = np.full((1, 4, 6), 10 * i, np.uint8)
            d = caffe_pb2.Datum(channels=1, height=4, width=6, data=chw.tobytes(), label=i)
            txn.put(f"{i:08d}".encode(), d.SerializeToString())
    env.close()


def test_data_layer_crop_mirror_labels(tmp_path):
    make_datum_lmdb(tmp_path / "db")
    lp = parse_prototxt('name: "d" type: "Data" top: "data" top: "label" '
                        'data_param { source: "db" batch_size: 2 backend: LMDB } '
                        'transform_param { crop_size: 2 mirror: true mean_value: 5 }',
                        caffe_pb2.LayerParameter(), "x")
    layer = build(lp, tmp_path, phase=caffe_pb2.TEST)
    assert layer.top_shapes == [(2, 1, 2, 2), (2,)]
    data, label = layer()
    assert label.tolist() == [0, 1] and data[1].unique().tolist() == [5.0]
    data, label = layer()
    assert label.tolist() == [2, 0]


def test_image_data_layer(tmp_path, fixtures):
    imgs = fixtures / "data/lmdb/Dataset/Images"
    (tmp_path / "list.txt").write_text("1.jpg 3\n2.jpg 4\n")
    lp = parse_prototxt(f'name: "d" type: "ImageData" top: "data" top: "label" '
                        f'image_data_param {{ source: "list.txt" root_folder: "{imgs}/" '
                        f'batch_size: 2 new_height: 20 new_width: 30 }}',
                        caffe_pb2.LayerParameter(), "x")
    layer = build(lp, tmp_path)
    data, label = layer()
    assert layer.top_shapes == [(2, 3, 20, 30), (2,)]
    ref = cv2.resize(cv2.imread(str(imgs / "2.jpg")), (30, 20)).transpose(2, 0, 1)
    assert label.tolist() == [3, 4] and np.array_equal(data[1].numpy(), ref.astype(np.float32))
    (tmp_path / "bad.txt").write_text("1.jpg x\n")
    lp.image_data_param.source = "bad.txt"
    with pytest.raises(ProtonetError, match="bad.txt:1:"):
        build(lp, tmp_path)


def test_net_forward_gives_the_golden_blobs(fixtures):
    from protonet.net.net import Net

    ctx = NetContext(seed=1, data_workers=0, root_dir=str(fixtures / "data"),
                     reencode_jpeg=True)
    net = Net(str(fixtures / "data/annotated_data_identity_sampler.prototxt"), phase="TRAIN",
              ctx=ctx)
    g = np.load(fixtures / "data/annotated_data_identity_sampler.npz")
    assert net.blob_shapes["data"] == (2, 3, 300, 300)
    for b in range(2):
        blobs = net.forward()
        assert np.abs(blobs["data"].numpy() - g[f"data_batch{b}"]).max() <= 1
        assert np.array_equal(blobs["label"].numpy(), g[f"label_batch{b}"])


def test_ssd_train_transform_through_the_layer(fixtures):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_data", fixtures.parents[1] / "bench/bench_data.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    SAMPLERS, TRAIN_TRANSFORM = bench.SAMPLERS, bench.TRAIN_TRANSFORM

    text = (f'name: "data" type: "AnnotatedData" top: "data" top: "label" '
            f'data_param {{ source: "lmdb/annoset_encoded_lmdb" batch_size: 4 backend: LMDB }} '
            f'transform_param {{ {TRAIN_TRANSFORM} }} annotated_data_param {{ '
            + " ".join(f"batch_sampler {{ {s} }}" for s in SAMPLERS) + " }")
    lp = parse_prototxt(text, caffe_pb2.LayerParameter(), "x")
    lp.transform_param.resize_param.height = lp.transform_param.resize_param.width = 64
    layer = build(lp, fixtures / "data", workers=2, seed=3)
    assert layer.top_shapes[0] == (4, 3, 64, 64)
    for _ in range(4):
        data, label = layer()
        assert data.shape == (4, 3, 64, 64)
        rows = label[0, 0].numpy()
        if rows[0, 0] == -1:
            continue
        assert set(rows[:, 0]) <= {0, 1, 2, 3} and np.all(rows[:, 1] == 1)
        assert np.all((rows[:, 3:7] >= 0) & (rows[:, 3:7] <= 1))
        assert np.all(rows[:, 5] >= rows[:, 3]) and np.all(rows[:, 6] >= rows[:, 4])


FORK_AFTER_OPENCV_THREADS = """
import sys, cv2, numpy as np
sys.path.insert(0, sys.argv[2])
from test_data_layers import build, parse_prototxt, caffe_pb2
import pathlib
fixtures = pathlib.Path(sys.argv[1])
cv2.setNumThreads(2)
big = np.random.default_rng(0).integers(0, 255, (2000, 2000, 3), np.uint8)
for _ in range(5):  # spin up OpenCV's thread pool in the parent
    cv2.resize(big, (1500, 1500), interpolation=cv2.INTER_AREA)
lp = parse_prototxt((fixtures / "data/annotated_data_no_sampler.prototxt").read_text(),
                    caffe_pb2.NetParameter(), "x").layer[0]
layer = build(lp, fixtures / "data", workers=1, seed=3)
data, label = layer()
print("ok", tuple(data.shape), cv2.getNumThreads())
"""


def test_workers_start_after_opencv_used_its_threads(fixtures, tmp_path):
    # A forked worker that inherits OpenCV's live thread pool hangs on its first OpenCV call
    # that touches the pool; the loader must fork while OpenCV is single-threaded.
    import subprocess
    import sys

    script = tmp_path / "fork_after_threads.py"
    script.write_text(FORK_AFTER_OPENCV_THREADS)
    tests_dir = str(pathlib.Path(__file__).parent)
    proc = subprocess.run([sys.executable, str(script), str(fixtures), tests_dir],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == "ok" and proc.stdout.split()[-1] == "2"
