"""`protonet create-annoset` against the databases written by the fork's convert_annoset."""
import hashlib
import json
import os
import shutil

import cv2
import lmdb
import numpy as np
import pytest

from protonet import caffe_pb2
from protonet.cli import main
from protonet.data.records import LmdbReader, decode_record
from protonet.errors import ProtonetError
from protonet.tools.create_annoset import create_annoset


def dump(db):
    """The decoded view lmdb_contents.json holds."""
    out = []
    env = lmdb.open(str(db), readonly=True, lock=False)
    with env.begin() as txn:
        for key, value in txn.cursor():
            ad = caffe_pb2.AnnotatedDatum.FromString(value)
            d = ad.datum
            out.append({
                "key": key.decode(), "type": ad.type, "has_type": ad.HasField("type"),
                "datum": {"channels": d.channels, "height": d.height, "width": d.width,
                          "encoded": d.encoded, "label": d.label, "data_len": len(d.data),
                          "data_sha1": hashlib.sha1(d.data).hexdigest(),
                          "float_data_len": len(d.float_data)},
                "annotation_group": [
                    {"group_label": g.group_label, "annotations": [
                        {"instance_id": a.instance_id, "xmin": a.bbox.xmin, "ymin": a.bbox.ymin,
                         "xmax": a.bbox.xmax, "ymax": a.bbox.ymax,
                         "difficult": a.bbox.difficult, "label": a.bbox.label,
                         "has_score": a.bbox.HasField("score")} for a in g.annotation]}
                    for g in ad.annotation_group]})
    env.close()
    return out


def run_cli(args):
    with pytest.raises(SystemExit) as exc:
        main(args)
    return exc.value.code


@pytest.mark.parametrize("db,resize", [("annoset_encoded_lmdb", []),
                                       ("annoset_resize300_encoded_lmdb",
                                        ["--resize-height", "300", "--resize-width", "300"])])
def test_same_records_as_convert_annoset(fixtures, tmp_path, monkeypatch, db, resize):
    src = fixtures / "data/lmdb"
    monkeypatch.chdir(src)
    out = tmp_path / db
    args = ["create-annoset", "--anno-type", "detection", "--label-type", "xml",
            "--label-map-file", "labelmap.prototxt", "--check-label", "--encode-type", "jpg",
            "--encoded", *resize, "Dataset/", "list.txt", str(out)]
    assert (main(args) or 0) == 0
    want = json.loads((src / "lmdb_contents.json").read_text())[db]
    got = dump(out)
    if resize:
        # re-encoded by this OpenCV's libjpeg: same fields, pixels within JPEG noise
        ref = LmdbReader(src / db)
        for i, (g, w) in enumerate(zip(got, want)):
            for rec in (g, w):
                rec["datum"].pop("data_sha1"), rec["datum"].pop("data_len")
            a = decode_record(*LmdbReader(out).get(i), True).image.astype(int)
            b = decode_record(*ref.get(i), True).image.astype(int)
            assert np.abs(a - b).mean() < 1.0
    assert got == want


def test_csv_coco_and_txt_sources(fixtures, tmp_path):
    src = fixtures / "data/lmdb"
    root = src / "Dataset"
    # CSV: path,x1,y1,x2,y2,class (image 2 without boxes)
    (tmp_path / "l.csv").write_text("Images/1.jpg,297,275,322,291,car\n"
                                    "Images/1.jpg,10,20,30,40,bus\n"
                                    "Images/1.jpg,214,270,248,293,car\n"
                                    "Images/2.jpg,,,,,\n")
    n, _ = create_annoset(str(root), str(tmp_path / "l.csv"), str(tmp_path / "csv_db"),
                          anno_type="detection", label_type="csv",
                          label_map_file=str(src / "labelmap.prototxt"), encoded=True,
                          progress=False)
    recs = dump(tmp_path / "csv_db")
    assert n == 2 and [r["key"] for r in recs] == ["00000000_Images/1.jpg", "00000001_Images/2.jpg"]
    groups = recs[0]["annotation_group"]
    assert [(g["group_label"], [a["instance_id"] for a in g["annotations"]]) for g in groups] == \
        [(1, [0, 1]), (2, [0])]
    assert groups[0]["annotations"][0]["xmin"] == float(np.float32(297) / np.float32(500))
    assert recs[1]["annotation_group"] == []
    # COCO instances JSON through pycocotools (category ids through the label map by number)
    coco = {"images": [{"id": 7, "file_name": "2.jpg", "height": 500, "width": 500}],
            "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "iscrowd": 1,
                             "bbox": [10, 20, 30, 40], "area": 1200}],
            "categories": [{"id": 3, "name": "motorcycle"}]}
    (root / "..").resolve()
    ann_dir = tmp_path / "root"
    shutil.copytree(root, ann_dir)
    (ann_dir / "instances.json").write_text(json.dumps(coco))
    (tmp_path / "coco.txt").write_text("Images/2.jpg instances.json\n")
    create_annoset(str(ann_dir), str(tmp_path / "coco.txt"), str(tmp_path / "coco_db"),
                   anno_type="detection", label_type="json",
                   label_map_file=str(src / "labelmap.prototxt"), encoded=True, progress=False)
    (a,) = dump(tmp_path / "coco_db")[0]["annotation_group"][0]["annotations"]
    assert dump(tmp_path / "coco_db")[0]["annotation_group"][0]["group_label"] == 3
    assert (a["xmin"], a["ymax"], a["difficult"]) == (float(np.float32(10 / 500)),
                                                      float(np.float32(60) / np.float32(500)), True)
    # txt: label xmin ymin xmax ymax
    (ann_dir / "1.txt").write_text("2 50 60 70 80\n2 1 2 3 4\n")
    (tmp_path / "txt.txt").write_text("Images/1.jpg 1.txt\n")
    create_annoset(str(ann_dir), str(tmp_path / "txt.txt"), str(tmp_path / "txt_db"),
                   anno_type="detection", label_type="txt", progress=False)
    g = dump(tmp_path / "txt_db")[0]["annotation_group"]
    assert len(g) == 1 and g[0]["group_label"] == 2 and len(g[0]["annotations"]) == 2


def test_errors_name_the_list_line(fixtures, tmp_path, capsys):
    src = fixtures / "data/lmdb"
    root = tmp_path / "root"
    shutil.copytree(src / "Dataset", root)
    (root / "Labels/9.xml").write_text((root / "Labels/1.xml").read_text()
                                       .replace("<name>car</name>", "<name>tram</name>", 1))
    (tmp_path / "list.txt").write_text("Images/1.jpg Labels/1.xml\nImages/1.jpg Labels/9.xml\n")
    code = run_cli(["create-annoset", "--anno-type", "detection", "--label-map-file",
                    str(src / "labelmap.prototxt"), "--check-label", str(root),
                    str(tmp_path / "list.txt"), str(tmp_path / "db")])
    err = capsys.readouterr().err
    assert code == 2 and "list.txt:2:" in err and "tram" in err
    assert not (tmp_path / "db").exists()
    # unreadable image: reported with its line, the rest written, exit 2
    (tmp_path / "list2.txt").write_text("Images/404.jpg Labels/1.xml\nImages/2.jpg Labels/2.xml\n")
    code = run_cli(["create-annoset", "--anno-type", "detection", "--label-map-file",
                    str(src / "labelmap.prototxt"), str(root), str(tmp_path / "list2.txt"),
                    str(tmp_path / "db2")])
    err = capsys.readouterr().err
    assert code == 2 and "list2.txt:1" in err and "404.jpg" in err
    assert [r["key"] for r in dump(tmp_path / "db2")] == ["00000001_Images/2.jpg"]
    # existing output without --redo
    with pytest.raises(ProtonetError, match="--redo"):
        create_annoset(str(root), str(tmp_path / "list2.txt"), str(tmp_path / "db2"),
                       anno_type="detection", label_map_file=str(src / "labelmap.prototxt"),
                       progress=False)
    # classification list with a non-integer label
    (tmp_path / "cls.txt").write_text("Images/1.jpg 3\nImages/2.jpg x\n")
    with pytest.raises(ProtonetError, match="cls.txt:2: label 'x'"):
        create_annoset(str(root), str(tmp_path / "cls.txt"), str(tmp_path / "db3"),
                       progress=False)


def test_classification_raw_and_min_dim(fixtures, tmp_path):
    root = fixtures / "data/lmdb/Dataset"
    (tmp_path / "cls.txt").write_text("Images/1.jpg 3\n")
    create_annoset(str(root), str(tmp_path / "cls.txt"), str(tmp_path / "db"), max_dim=100,
                   gray=True, progress=False)
    env = lmdb.open(str(tmp_path / "db"), readonly=True, lock=False)
    with env.begin() as txn:
        ad = caffe_pb2.AnnotatedDatum.FromString(txn.get(b"00000000_Images/1.jpg"))
    env.close()
    d = ad.datum
    assert (d.channels, d.height, d.width, d.label, d.encoded) == (1, 100, 100, 3, False)
    ref = cv2.resize(cv2.imread(str(root / "Images/1.jpg"), cv2.IMREAD_GRAYSCALE), (0, 0),
                     fx=0.2, fy=0.2)
    assert np.frombuffer(d.data, np.uint8).reshape(100, 100).tolist() == ref.tolist()
    assert not ad.HasField("type")


def test_an_interrupted_run_leaves_no_database_under_the_final_name(fixtures, tmp_path, monkeypatch):
    import protonet.tools.create_annoset as module

    root = fixtures / "data/lmdb/Dataset"
    (tmp_path / "cls.txt").write_text("Images/1.jpg 3\nImages/1.jpg 4\n")
    os.mkdir(tmp_path / ".tmp-db.0123abcd")  # what a kill -9 of an earlier run left
    real = module.image_to_datum
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(module, "image_to_datum", interrupted)
    with pytest.raises(KeyboardInterrupt):
        create_annoset(str(root), str(tmp_path / "cls.txt"), str(tmp_path / "db"), progress=False)
    assert sorted(os.listdir(tmp_path)) == ["cls.txt"]
    monkeypatch.setattr(module, "image_to_datum", real)
    assert create_annoset(str(root), str(tmp_path / "cls.txt"), str(tmp_path / "db"), progress=False)[0] == 2
    assert sorted(os.listdir(tmp_path)) == ["cls.txt", "db"]
