"""The LMDB reader against the database written by the fork's convert_annoset."""
import hashlib
import json

import cv2
import lmdb
import numpy as np
import pytest

from protonet import caffe_pb2
from protonet.data.records import CorruptRecord, LmdbReader, decode_record
from protonet.errors import ProtonetError


def golden(fixtures):
    return json.loads((fixtures / "data/lmdb/lmdb_contents.json").read_text())


@pytest.mark.parametrize("db", ["annoset_encoded_lmdb", "annoset_resize300_encoded_lmdb"])
def test_reader_matches_convert_annoset(fixtures, db):
    reader = LmdbReader(fixtures / "data/lmdb" / db)
    want = golden(fixtures)[db]
    assert [k.decode() for k in reader.keys] == [r["key"] for r in want]
    for i, rec in enumerate(want):
        key, value = reader.get(i)
        msg = caffe_pb2.AnnotatedDatum.FromString(value)
        assert hashlib.sha1(msg.datum.data).hexdigest() == rec["datum"]["data_sha1"]
        sample = decode_record(key, value, annotated=True)
        # pixels: OpenCV's own decode of the datum bytes (<= 1 grey level)
        ref = cv2.imdecode(np.frombuffer(msg.datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert sample.image.shape == (rec["datum"]["height"], rec["datum"]["width"], 3)
        assert np.abs(sample.image.astype(int) - ref.astype(int)).max() <= 1
        assert sample.label == rec["datum"]["label"] and sample.annotated == rec["has_type"]
        rows = [(g["group_label"], a["instance_id"], a["xmin"], a["ymin"], a["xmax"], a["ymax"],
                 a["difficult"]) for g in rec["annotation_group"] for a in g["annotations"]]
        got = list(zip(sample.labels.tolist(), sample.instance_ids.tolist(),
                       *[sample.boxes[:, j].astype(np.float64).tolist() for j in range(4)],
                       sample.difficult.tolist()))
        assert got == rows  # exact: float32 values widened, as the JSON holds them


def test_missing_and_empty_database(tmp_path):
    with pytest.raises(ProtonetError, match="no such LMDB"):
        LmdbReader(tmp_path / "nope")
    env = lmdb.open(str(tmp_path / "empty"))
    env.close()
    with pytest.raises(ProtonetError, match="empty"):
        LmdbReader(tmp_path / "empty")


def test_corrupt_record_names_key():
    with pytest.raises(CorruptRecord, match="record 00000007_x.jpg"):
        decode_record(b"00000007_x.jpg", b"\xff\x00garbage", annotated=True)
    datum = caffe_pb2.Datum(channels=3, height=2, width=2, encoded=True, data=b"notajpeg")
    with pytest.raises(CorruptRecord, match="record k1: image data does not decode"):
        decode_record(b"k1", datum.SerializeToString(), annotated=False)


def test_raw_and_float_datums():
    chw = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    datum = caffe_pb2.Datum(channels=2, height=3, width=4, data=chw.tobytes(), label=7)
    s = decode_record(b"k", datum.SerializeToString(), annotated=False)
    assert s.label == 7 and np.array_equal(s.image, chw.transpose(1, 2, 0))
    fl = caffe_pb2.Datum(channels=1, height=2, width=2, float_data=[0.5, 1.5, 2.5, 3.5])
    s = decode_record(b"k", fl.SerializeToString(), annotated=False)
    assert s.image.dtype == np.float32 and s.image[:, :, 0].tolist() == [[0.5, 1.5], [2.5, 3.5]]
    short = caffe_pb2.Datum(channels=3, height=2, width=2, data=b"\x00" * 5)
    with pytest.raises(CorruptRecord, match="record k: data holds 5 bytes"):
        decode_record(b"k", short.SerializeToString(), annotated=False)
