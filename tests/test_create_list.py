"""`protonet create-list`: VOC/COCO list files and the name/size file."""
import json
import shutil

import pytest

from protonet.cli import main


def run(args):
    try:
        return main(args) or 0
    except SystemExit as exc:
        return exc.code


@pytest.fixture
def vocdevkit(fixtures, tmp_path):
    src = fixtures / "data/lmdb/Dataset"
    root = tmp_path / "VOCdevkit"
    for year, ids in (("VOC2007", {"trainval": ["1", "2"], "test": ["3"]}),
                      ("VOC2012", {"trainval": ["4", "5"]})):
        (root / year / "ImageSets/Main").mkdir(parents=True)
        (root / year / "JPEGImages").mkdir()
        (root / year / "Annotations").mkdir()
        for subset, names in ids.items():
            (root / year / f"ImageSets/Main/{subset}.txt").write_text("".join(n + "\n" for n in names))
            for n in names:
                shutil.copy(src / f"Images/{n}.jpg", root / year / f"JPEGImages/{n}.jpg")
                shutil.copy(src / f"Labels/{n}.xml", root / year / f"Annotations/{n}.xml")
    return root


def test_voc_lists(vocdevkit, tmp_path, fixtures):
    labelmap = fixtures / "data/lmdb/labelmap.prototxt"
    out = tmp_path / "lists"
    assert run(["create-list", "voc", str(vocdevkit), str(out), "--seed", "3"]) == 0
    trainval = (out / "trainval.txt").read_text().splitlines()
    assert sorted(trainval) == [f"VOC{y}/JPEGImages/{n}.jpg VOC{y}/Annotations/{n}.xml"
                                for y, n in (("2007", 1), ("2007", 2), ("2012", 4), ("2012", 5))]
    assert (out / "test.txt").read_text() == "VOC2007/JPEGImages/3.jpg VOC2007/Annotations/3.xml\n"
    assert (out / "test_name_size.txt").read_text() == "3 500 500\n"
    # the list feeds create-annoset as is
    assert run(["create-annoset", "--anno-type", "detection", "--label-map-file",
                str(labelmap),
                "--encode-type", "jpg", "--encoded", str(vocdevkit), str(out / "test.txt"),
                str(tmp_path / "db")]) == 0


def test_coco_list_and_name_size(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    doc = {"images": [{"id": 9, "file_name": "b.jpg", "height": 4, "width": 5},
                      {"id": 2, "file_name": "a.jpg", "height": 6, "width": 7}],
           "annotations": [], "categories": []}
    (root / "annotations/instances_val2017.json").write_text(json.dumps(doc))
    assert run(["create-list", "coco", str(root), str(tmp_path / "val.txt"), "--instances",
                "annotations/instances_val2017.json", "--name-size",
                str(tmp_path / "val_name_size.txt")]) == 0
    assert (tmp_path / "val.txt").read_text() == (
        "images/val2017/a.jpg annotations/instances_val2017.json\n"
        "images/val2017/b.jpg annotations/instances_val2017.json\n")
    assert (tmp_path / "val_name_size.txt").read_text() == "2 6 7\n9 4 5\n"


def test_name_size_errors_name_the_line(fixtures, tmp_path, capsys):
    root = fixtures / "data/lmdb/Dataset"
    (tmp_path / "l.txt").write_text("Images/1.jpg Labels/1.xml\nImages/nope.jpg Labels/1.xml\n")
    assert run(["create-list", "name-size", str(root), str(tmp_path / "l.txt"),
                str(tmp_path / "ns.txt")]) == 2
    assert "l.txt:2:" in capsys.readouterr().err
    (tmp_path / "l.txt").write_text("Images/1.jpg Labels/1.xml\n")
    assert run(["create-list", "name-size", str(root), str(tmp_path / "l.txt"),
                str(tmp_path / "ns.txt")]) == 0
    assert (tmp_path / "ns.txt").read_text() == "1 500 500\n"


def test_voc_shell_scripts(vocdevkit, tmp_path, fixtures):
    import os
    import pathlib
    import subprocess
    import sys

    scripts = pathlib.Path(__file__).resolve().parents[1] / "scripts/VOC0712"
    env = dict(os.environ, PATH=f"{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}")
    out = tmp_path / "lists"
    subprocess.run(["bash", str(scripts / "create_list.sh"), str(vocdevkit), str(out)],
                   check=True, env=env, capture_output=True)
    assert len((out / "trainval.txt").read_text().splitlines()) == 4
    subprocess.run(["bash", str(scripts / "create_data.sh"), str(vocdevkit), str(out),
                    str(fixtures / "data/lmdb/labelmap.prototxt")], check=True, env=env,
                   capture_output=True, cwd=tmp_path)
    from protonet.data.records import LmdbReader

    assert len(LmdbReader(vocdevkit / "VOC0712/lmdb/VOC0712_trainval_lmdb")) == 4
    assert (tmp_path / "examples/VOC0712/VOC0712_test_lmdb").is_symlink()
