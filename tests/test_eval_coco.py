"""COCO helper: detection rows to COCO results, and pycocotools' AP on a hand-made case."""
import json

import numpy as np
import pytest

from protonet.errors import ProtonetError
from protonet.eval.coco import coco_evaluate, detections_to_coco


def write_gt(path):
    gt = {"images": [{"id": 10, "width": 200, "height": 100}, {"id": 11, "width": 100, "height": 100}],
          "categories": [{"id": 3, "name": "car"}, {"id": 7, "name": "bus"}],
          "annotations": [
              {"id": 1, "image_id": 10, "category_id": 3, "bbox": [20, 10, 60, 40], "area": 2400, "iscrowd": 0},
              {"id": 2, "image_id": 11, "category_id": 7, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0}]}
    path.write_text(json.dumps(gt))


def test_rows_become_pixel_xywh_clipped():
    rows = np.array([[0, 1, 0.9, 0.1, 0.1, 0.4, 0.5], [1, 2, 0.8, -0.1, 0.1, 0.6, 1.2], [0, -1, -1, -1, -1, -1, -1]])
    res = detections_to_coco(rows, [10, 11], [(100, 200), (100, 100)], {1: 3, 2: 7})
    assert res[0] == {"image_id": 10, "category_id": 3, "bbox": [20.0, 10.0, 60.0, 40.0], "score": pytest.approx(0.9)}
    assert res[1]["bbox"] == [0.0, 10.0, 60.0, 90.0] and len(res) == 2
    with pytest.raises(ProtonetError, match="label 2"):
        detections_to_coco(rows, [10, 11], [(100, 200), (100, 100)], {1: 3})


def test_perfect_detections_give_ap_one_and_misses_lower_it(tmp_path):
    write_gt(tmp_path / "gt.json")
    rows = np.array([[0, 1, 0.9, 0.1, 0.1, 0.4, 0.5], [1, 2, 0.8, 0.1, 0.1, 0.6, 0.6]])
    stats = coco_evaluate(tmp_path / "gt.json", detections_to_coco(rows, [10, 11], [(100, 200), (100, 100)],
                                                                   {1: 3, 2: 7}))
    assert stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    rows[1, 3:] = [0.7, 0.7, 0.9, 0.9]  # the bus box misses
    lines = []
    stats = coco_evaluate(tmp_path / "gt.json", detections_to_coco(rows, [10, 11], [(100, 200), (100, 100)],
                                                                   {1: 3, 2: 7}), log=lines.append)
    assert stats["AP"] == pytest.approx(0.5) and any("Average Precision" in l for l in lines)
