"""COCO evaluation of detections with pycocotools (what the SSD fork's COCO scripts ran offline).

`detections_to_coco` turns DetectionOutput rows [image, label, score, xmin, ymin, xmax, ymax]
(normalised coordinates) into COCO result entries: boxes clipped to the image (Caffe's ClipBBox),
scaled to its pixel size, written [x, y, width, height]; `coco_evaluate` runs COCOeval over a
ground-truth annotation file and returns the 12 summary numbers (AP, AP50, AP75, ...).
"""
import contextlib
import io
import json
import os

import numpy as np
import torch

from protonet import box
from protonet.errors import ProtonetError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def detections_to_coco(rows, image_ids, image_sizes, label_to_category=None):
    """COCO result dicts from detection rows.

    rows: array [..., 7]; column 0 indexes `image_ids` / `image_sizes` ((height, width) each);
    label_to_category: dict label -> COCO category id (identity if None). Rows with label -1
    (the fork's "no detection" marker) are dropped.
    """
    rows = np.asarray(rows, dtype=np.float32).reshape(-1, 7)
    rows = rows[rows[:, 1] >= 0]
    if not len(rows):
        return []
    items = rows[:, 0].astype(np.int64)
    if items.max() >= len(image_ids):
        raise ProtonetError(f"detections name image {int(items.max())} but only {len(image_ids)} images are given")
    sizes = np.asarray(image_sizes, dtype=np.float32)[items]
    boxes = box.clip(torch.from_numpy(rows[:, 3:7].copy())).numpy()
    h, w = sizes[:, 0], sizes[:, 1]
    x0, y0 = boxes[:, 0] * w, boxes[:, 1] * h
    x1, y1 = boxes[:, 2] * w, boxes[:, 3] * h
    out = []
    for k in range(len(rows)):
        label = int(rows[k, 1])
        if label_to_category is not None and label not in label_to_category:
            raise ProtonetError(f"detection label {label} has no COCO category in the label map")
        out.append({"image_id": image_ids[items[k]],
                    "category_id": label_to_category[label] if label_to_category is not None else label,
                    "bbox": [round(float(x0[k]), 2), round(float(y0[k]), 2),
                             round(float(x1[k] - x0[k]), 2), round(float(y1[k] - y0[k]), 2)],
                    "score": float(rows[k, 2])})
    return out


def _checked_results(results, path):
    """A COCO results document: a list of {image_id, category_id, bbox, score}."""
    from protonet.io.json_files import check_box

    if not isinstance(results, list):
        raise ProtonetError(f"{path}: COCO results are a JSON list")
    for i, r in enumerate(results):
        if not isinstance(r, dict) or not all(k in r for k in ("image_id", "category_id", "bbox", "score")):
            raise ProtonetError(f"{path}: result {i} needs image_id, category_id, bbox and score")
        check_box(r["bbox"], f"{path}: result {i}")
    return results


def coco_evaluate(annotation_file, results, log=None):
    """COCOeval (bbox) of `results` (a list of dicts or a results .json) against `annotation_file`.
    Returns {stat name: value}; `log(line)` receives pycocotools' printed summary."""
    from pycocotools.cocoeval import COCOeval

    from protonet.io.json_files import load_coco, read_json

    if not os.path.exists(annotation_file):
        raise ProtonetError(f"{annotation_file}: no such annotation file")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        gt = load_coco(annotation_file, for_eval=True)
        if isinstance(results, (str, os.PathLike)):
            results = _checked_results(read_json(results), os.fspath(results))
        if not results:
            raise ProtonetError("COCO evaluation: no detections to evaluate")
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = sorted({r["image_id"] for r in results} | set(gt.getImgIds()))
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    if log is not None:
        for line in printed.getvalue().splitlines():
            if line.strip():
                log(line)
    return dict(zip(STAT_NAMES, (float(v) for v in ev.stats)))
