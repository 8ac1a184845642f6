"""convert-imageset, compute-image-mean, extract-features and draw-net against Caffe's tools."""
import shutil

import cv2
import h5py
import numpy as np
import pytest

from protonet import caffe_pb2
from protonet.cli import main
from protonet.data.records import LmdbReader
from protonet.io.prototxt import parse_prototxt, read_binary_proto
from protonet.layers.base import NetContext, layer_class
from protonet.net import Net
from solver_util import messages

LABELS = [3, 0, 7, 1, 2]


def run(args):
    try:
        main(args)
    except SystemExit as exc:
        return exc.code or 0
    return 0


def records(db):
    reader = LmdbReader(db)  # one handle per process and database, shared with the tools
    return [(key.decode(), value) for key, value in (reader.get(i) for i in range(len(reader)))]


@pytest.fixture
def images(fixtures, tmp_path):
    """The five images of the fork's convert_annoset goldens, listed with class labels."""
    root = fixtures / "data/lmdb/Dataset"
    lines = "".join(f"Images/{i}.jpg {label}\n" for i, label in enumerate(LABELS, 1))
    (tmp_path / "list.txt").write_text(lines)
    return root, tmp_path / "list.txt"


# ---------------------------------------------------------------------- convert-imageset

def test_encoded_records_equal_the_forks(fixtures, images, tmp_path):
    root, listing = images
    assert run(["convert-imageset", "-encoded", f"{root}/", str(listing), str(tmp_path / "db")]) == 0
    fork = records(fixtures / "data/lmdb/annoset_encoded_lmdb")  # the fork's ReadImageToDatum, label -1
    ours = records(tmp_path / "db")
    assert [k for k, _ in ours] == [k for k, _ in fork] == [f"{i:08d}_Images/{i + 1}.jpg" for i in range(5)]
    for (_, value), (_, fork_value), label in zip(ours, fork, LABELS):
        datum = caffe_pb2.AnnotatedDatum.FromString(fork_value).datum
        datum.label = label
        assert value == datum.SerializeToString()


def test_raw_resized_records(images, tmp_path):
    root, listing = images
    assert run(["convert-imageset", "--resize_height=20", "--resize_width", "30", "--shuffle=false",
                str(root), str(listing), str(tmp_path / "db")]) == 0
    for i, (key, value) in enumerate(records(tmp_path / "db")):
        img = cv2.resize(cv2.imread(str(root / f"Images/{i + 1}.jpg")), (30, 20))
        want = caffe_pb2.Datum(channels=3, height=20, width=30, data=img.transpose(2, 0, 1).tobytes(),
                               label=LABELS[i], encoded=False)  # Caffe's CVMatToDatum sets encoded: false
        assert key == f"{i:08d}_Images/{i + 1}.jpg" and value == want.SerializeToString()


def test_gray_png_and_list_lines(images, tmp_path):
    root, _ = images
    shutil.copy(root / "Images/1.jpg", tmp_path / "my photo.jpg")
    (tmp_path / "l.txt").write_text("my photo.jpg 5\n\nImages/2.jpg x\n")
    db = tmp_path / "db"
    assert run(["convert-imageset", "-gray", "-encode_type", "png", "-check_size", f"{tmp_path}/", "l.txt",
                str(db)]) != 0  # Images/2.jpg is not under tmp_path: one line names it, the rest is written
    (tmp_path / "Images").mkdir()
    shutil.copy(root / "Images/2.jpg", tmp_path / "Images/2.jpg")
    assert run(["convert-imageset", "-gray", "-encode_type", "png", "--redo", str(tmp_path),
                str(tmp_path / "l.txt"), str(db)]) == 0
    recs = records(db)
    assert [k for k, _ in recs] == ["00000000_my photo.jpg", "00000002_Images/2.jpg"]  # the blank line counts
    datum = caffe_pb2.Datum.FromString(recs[0][1])
    gray = cv2.imread(str(tmp_path / "my photo.jpg"), cv2.IMREAD_GRAYSCALE)
    assert (datum.encoded, datum.label, datum.channels) == (True, 5, 1)
    assert np.array_equal(cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED), gray)
    assert caffe_pb2.Datum.FromString(recs[1][1]).label == 0  # "x": Caffe's atoi


def test_convert_imageset_errors(images, tmp_path, capsys):
    root, listing = images
    (tmp_path / "db").mkdir()
    assert run(["convert-imageset", str(root), str(listing), str(tmp_path / "db")]) == 2
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "sizes.txt").write_text("Images/1.jpg 0\n")
    shutil.copytree(root, tmp_path / "root")
    cv2.imwrite(str(tmp_path / "root/Images/1.jpg"), np.zeros((5, 5, 3), np.uint8))
    (tmp_path / "two.txt").write_text("Images/1.jpg 0\nImages/2.jpg 1\n")
    assert run(["convert-imageset", "--check-size", str(tmp_path / "root"), str(tmp_path / "two.txt"),
                str(tmp_path / "db2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "two.txt:2:" in err and "--check-size" in err


# ---------------------------------------------------------------------- compute-image-mean

def test_mean_equals_caffes_arithmetic(images, tmp_path, capsys):
    root, listing = images
    db = tmp_path / "db"
    assert run(["convert-imageset", "--resize_height=20", "--resize_width=30", str(root), str(listing), str(db)]) == 0
    capsys.readouterr()
    assert run(["compute-image-mean", "-backend=lmdb", str(db), str(tmp_path / "mean.binaryproto")]) == 0
    msgs = messages(capsys.readouterr().err)
    # float32 sums of integers below 2^24 are exact, and float32 division is correctly rounded: the
    # exact quotient rounded once to float32 is Caffe's number
    stack = np.stack([cv2.resize(cv2.imread(str(root / f"Images/{i}.jpg")), (30, 20)).transpose(2, 0, 1)
                      for i in range(1, 6)]).astype(np.int64)
    mean = (stack.sum(0) / 5).astype(np.float32)
    want = caffe_pb2.BlobProto(num=1, channels=3, height=20, width=30, data=mean.ravel().tolist())
    assert (tmp_path / "mean.binaryproto").read_bytes() == want.SerializeToString()
    assert "Number of channels: 3" in msgs
    for c in range(3):
        line = next(m for m in msgs if m.startswith(f"mean_value channel [{c}]:"))
        assert float(line.split(":")[1]) == pytest.approx(float(mean[c].mean()), rel=1e-5)


def test_mean_of_encoded_and_annotated_databases(fixtures, images, tmp_path):
    root, listing = images
    assert run(["convert-imageset", "--encoded", str(root), str(listing), str(tmp_path / "enc")]) == 0
    assert run(["compute-image-mean", str(tmp_path / "enc"), str(tmp_path / "a.binaryproto")]) == 0
    # the fork's AnnotatedDatum database of the same images gives the same mean
    assert run(["compute-image-mean", str(fixtures / "data/lmdb/annoset_encoded_lmdb"),
                str(tmp_path / "b.binaryproto")]) == 0
    a, b = (tmp_path / "a.binaryproto").read_bytes(), (tmp_path / "b.binaryproto").read_bytes()
    assert a == b and len(caffe_pb2.BlobProto.FromString(a).data) == 3 * 500 * 500


def test_mean_file_feeds_a_data_layer(images, tmp_path):
    root, listing = images
    db = tmp_path / "db"
    assert run(["convert-imageset", "--resize_height=20", "--resize_width=30", str(root), str(listing), str(db)]) == 0
    assert run(["compute-image-mean", str(db), str(tmp_path / "mean.binaryproto")]) == 0
    lp = parse_prototxt('name: "d" type: "Data" top: "data" top: "label" '
                        'data_param { source: "db" batch_size: 5 backend: LMDB } '
                        'transform_param { mean_file: "mean.binaryproto" scale: 0.5 }',
                        caffe_pb2.LayerParameter(), "x")
    layer = layer_class("Data")(lp, [], NetContext(phase=caffe_pb2.TEST, root_dir=str(tmp_path), data_workers=0))
    data, label = layer()
    blob = read_binary_proto(tmp_path / "mean.binaryproto", caffe_pb2.BlobProto)
    mean = np.asarray(blob.data, np.float32).reshape(3, 20, 30)
    raw = np.stack([np.frombuffer(caffe_pb2.Datum.FromString(v).data, np.uint8).reshape(3, 20, 30)
                    for _, v in records(db)]).astype(np.float32)
    assert label.tolist() == LABELS
    assert np.array_equal(data.numpy(), (raw - mean) * np.float32(0.5))


def test_mean_needs_one_size(images, tmp_path, capsys):
    root, listing = images
    shutil.copytree(root, tmp_path / "root")
    cv2.imwrite(str(tmp_path / "root/Images/3.jpg"), np.zeros((5, 5, 3), np.uint8))
    assert run(["convert-imageset", str(tmp_path / "root"), str(listing), str(tmp_path / "db")]) == 0
    assert run(["compute-image-mean", str(tmp_path / "db")]) == 2
    assert "00000002_Images/3.jpg is 3x5x5" in capsys.readouterr().err


# ---------------------------------------------------------------------- extract-features

FEATURE_NET = """
name: "features"
layer { name: "data" type: "Data" top: "data" top: "label"
        data_param { source: "db" batch_size: 2 backend: LMDB } transform_param { scale: 0.01 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 3
        weight_filler { type: "gaussian" std: 0.5 } } }
"""


@pytest.fixture
def feature_net(images, tmp_path, monkeypatch):
    root, listing = images
    monkeypatch.chdir(tmp_path)
    assert run(["convert-imageset", "--resize_height=20", "--resize_width=30", str(root), str(listing), "db"]) == 0
    (tmp_path / "net.prototxt").write_text(FEATURE_NET)
    Net("net.prototxt", phase="TEST").save_weights("w.caffemodel")
    reference = Net("net.prototxt", phase="TEST", weights="w.caffemodel")
    batches = [reference.forward() for _ in range(3)]
    return {blob: np.concatenate([b[blob].detach().numpy() for b in batches]) for blob in ("conv", "fc", "label")}


def test_extract_features_to_caffes_lmdb_npy_and_h5(feature_net, capsys):
    assert run(["extract-features", "--model", "net.prototxt", "--weights", "w.caffemodel", "--blobs",
                "conv,fc,label", "--out", "conv_db,fc.npy,label.h5", "--iterations", "3"]) == 0
    recs = records("conv_db")
    assert [k for k, _ in recs] == [f"{i:010d}" for i in range(6)]  # 3 batches of 2, past the 5 images
    for (_, value), want in zip(recs, feature_net["conv"]):
        expected = caffe_pb2.Datum(channels=4, height=9, width=14, float_data=want.ravel().tolist())
        assert value == expected.SerializeToString()
    assert np.array_equal(np.load("fc.npy"), feature_net["fc"])
    with h5py.File("label.h5") as fh:
        assert fh["label"][:].tolist() == LABELS + LABELS[:1]
    assert "Successfully extracted the features!" in messages(capsys.readouterr().err)


def test_extract_features_caffe_arguments_and_one_h5(feature_net):
    # Caffe's order: weights, model, blobs, datasets, batches, db type, CPU
    assert run(["extract-features", "w.caffemodel", "net.prototxt", "fc", "fc_db", "3", "lmdb", "CPU"]) == 0
    assert len(records("fc_db")) == 6
    assert run(["extract-features", "-model=net.prototxt", "-weights=w.caffemodel", "-blobs=conv,fc",
                "-out=all.h5", "-iterations=3"]) == 0
    with h5py.File("all.h5") as fh:
        assert np.array_equal(fh["conv"][:], feature_net["conv"]) and np.array_equal(fh["fc"][:], feature_net["fc"])


def test_extract_features_errors(feature_net, capsys):
    assert run(["extract-features", "--model", "net.prototxt", "--weights", "w.caffemodel", "--blobs", "nope",
                "--out", "x.npy", "--iterations", "1"]) == 2
    assert "Unknown feature blob name nope in the network net.prototxt" in capsys.readouterr().err
    assert run(["extract-features", "--model", "net.prototxt", "--weights", "w.caffemodel", "--blobs", "fc,conv",
                "--out", "x.npy", "--iterations", "1"]) == 2
    assert "2 blobs and 1 outputs" in capsys.readouterr().err


# ---------------------------------------------------------------------- draw-net

def test_draw_net_dot_text_with_types_and_shapes(feature_net, capsys):
    assert run(["draw-net", "net.prototxt", "net.dot", "--rankdir", "TB", "-phase", "TEST"]) == 0
    text = open("net.dot").read()
    assert text.startswith('digraph "features" {') and "rankdir=TB;" in text
    assert '"conv (Convolution) kernel size: 3 stride: 2 pad: 0"' in text
    assert '"pool (AVE Pooling) kernel size: 0 stride: 1 pad: 0"' in text
    assert '"conv [2,4,9,14]"' in text and '"fc [2,3]"' in text
    assert '"conv_Convolution" -> "conv_blob" [label="4"];' in text
    assert '"data_blob" -> "conv_Convolution" [label=""];' in text


def test_draw_net_without_graphviz_or_data(feature_net, monkeypatch, capsys):
    import protonet.tools.draw_net as draw

    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    assert run(["draw-net", "net.prototxt", "net.png"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Graphviz" in err[0] and "apt install graphviz" in err[0]
    shutil.rmtree("db")  # the data is gone: drawn anyway, without the shapes, and said so
    assert run(["draw-net", "net.prototxt", "net.dot"]) == 0
    assert "without blob shapes" in capsys.readouterr().err and '"conv_blob" [label="conv"' in open("net.dot").read()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_draw_net_svg_with_graphviz(feature_net):
    assert run(["draw-net", "net.prototxt", "net.svg"]) == 0
    assert "<svg" in open("net.svg").read()
