"""`protonet make-shapes`: layout, annotations, determinism."""
import hashlib
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from protonet import caffe_pb2
from protonet.io.prototxt import read_prototxt
from protonet.tools.shapes import CLASSES, DIFFICULT_FRACTION, make_shapes


def _digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            path = os.path.join(dirpath, f)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()


def _objects(xml_path):
    root = ET.parse(xml_path).getroot()
    size = root.find("size")
    width, height = int(size.find("width").text), int(size.find("height").text)
    out = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        coords = [int(box.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
        out.append((obj.find("name").text, coords, obj.find("difficult").text == "1"))
    return width, height, out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    paths = make_shapes(str(root), train=40, test=10, size=128, seed=3)
    return root, paths


def test_voc_layout_and_list_files(dataset):
    root, paths = dataset
    trainval = (root / "ImageSets/Main/trainval.txt").read_text().split()
    test = (root / "ImageSets/Main/test.txt").read_text().split()
    assert len(trainval) == 40 and len(test) == 10 and not set(trainval) & set(test)
    for split, names in (("trainval", trainval), ("test", test)):
        pairs = [line.split() for line in (root / f"{split}.txt").read_text().splitlines()]
        assert sorted(p[0] for p in pairs) == sorted(f"JPEGImages/{n}.jpg" for n in names)
        for img, xml in pairs:
            assert xml == img.replace("JPEGImages/", "Annotations/").replace(".jpg", ".xml")
            assert (root / img).is_file() and (root / xml).is_file()
    # create_list.sh shuffles trainval and keeps test in order
    assert [p.split()[0] for p in (root / "trainval.txt").read_text().splitlines()] != \
        [f"JPEGImages/{n}.jpg" for n in trainval]
    name_size = [line.split() for line in (root / "test_name_size.txt").read_text().splitlines()]
    assert name_size == [[n, "128", "128"] for n in test]
    assert paths["name_size"] == str(root / "test_name_size.txt")


def test_labelmap_is_a_caffe_labelmap(dataset):
    root, paths = dataset
    labelmap = read_prototxt(paths["labelmap"], caffe_pb2.LabelMap)
    assert [(i.name, i.label) for i in labelmap.item] == \
        [("none_of_the_above", 0)] + [(c, k) for k, c in enumerate(CLASSES, 1)]
    assert labelmap.item[0].display_name == "background"


def test_annotations_are_valid_voc_boxes(dataset):
    root, _ = dataset
    names = (root / "ImageSets/Main/trainval.txt").read_text().split()
    per_class, per_image, difficult = {c: 0 for c in CLASSES}, [], 0
    for name in names:
        img = cv2.imread(str(root / "JPEGImages" / f"{name}.jpg"))
        width, height, objects = _objects(root / "Annotations" / f"{name}.xml")
        assert img.shape == (height, width, 3) == (128, 128, 3)
        per_image.append(len(objects))
        for cls, (x0, y0, x1, y1), diff in objects:
            per_class[cls] += 1
            assert 1 <= x0 <= x1 <= width and 1 <= y0 <= y1 <= height  # VOC: 1-based, inclusive
            assert diff == (max(x1 - x0 + 1, y1 - y0 + 1) < DIFFICULT_FRACTION * width)
            difficult += diff
            # a shape is not the background: its box differs from the border around it
            patch = img[y0 - 1:y1, x0 - 1:x1].astype(np.float32)
            assert patch.std() > 3
    assert all(n >= 3 for n in per_class.values()), per_class
    assert max(per_image) >= 3 and min(per_image) >= 1
    assert 0 < difficult < sum(per_class.values()) / 3


def test_same_seed_same_bytes_and_counts_do_not_change_images(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_shapes(str(a), train=6, test=2, size=96, seed=11)
    make_shapes(str(b), train=6, test=2, size=96, seed=11)
    assert _digest(a) == _digest(b)
    make_shapes(str(c), train=3, test=1, size=96, seed=11)
    for name in ("train_000002.jpg", "test_000000.jpg"):
        assert (a / "JPEGImages" / name).read_bytes() == (c / "JPEGImages" / name).read_bytes()
    d = tmp_path / "d"
    make_shapes(str(d), train=6, test=2, size=96, seed=12)
    assert (a / "JPEGImages/train_000000.jpg").read_bytes() != (d / "JPEGImages/train_000000.jpg").read_bytes()


def test_cli_writes_and_rejects_bad_arguments(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "-m", "protonet", "make-shapes", str(out), "--train", "3", "--test", "2",
                          "--size", "64", "--seed", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "3 trainval and 2 test images" in run.stdout
    assert len(os.listdir(out / "JPEGImages")) == 5
    bad = subprocess.run([sys.executable, "-m", "protonet", "make-shapes", str(tmp_path / "x"), "--train", "0"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "protonet: error: make-shapes: --train" in bad.stderr
    assert "Traceback" not in bad.stderr
    afile = tmp_path / "afile"
    afile.write_text("")
    bad = subprocess.run([sys.executable, "-m", "protonet", "make-shapes", str(afile)], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
