"""VOC-style average precision from DetectionEvaluate rows, as Caffe's solver accumulates it.

DetectionEvaluate emits, per test batch, rows [item, label, value, tp, fp]: rows with item -1 carry
the number of positives of `label` (value), the others one detection (value = score). Caffe's
TestDetection sums the positives per label over batches, keeps every detection that is a TP or FP
(tp = fp = 0 marks a match to an ignored difficult box), and computes per-label AP with
ComputeAP (ap_version 11point, MaxIntegral or Integral) in float32; mAP is the mean over all labels
that have positives. The arithmetic here follows Caffe's float32 steps and summation order so that
the printed 6 significant digits agree.
"""
from collections import defaultdict

import numpy as np

from protonet.errors import ProtonetError

AP_VERSIONS = ("11point", "MaxIntegral", "Integral")

_f32 = np.float32
_EPS = _f32(1e-6)


def precision_recall(scores, tp, fp, num_pos):
    """Precision and recall (float32) after each detection, detections sorted by score, ties kept
    in the order given (Caffe's stable sort)."""
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
    tp_cum = np.cumsum(np.asarray(tp, dtype=np.int64)[order])
    fp_cum = np.cumsum(np.asarray(fp, dtype=np.int64)[order])
    prec = tp_cum.astype(np.float32) / (tp_cum + fp_cum).astype(np.float32)
    rec = tp_cum.astype(np.float32) / _f32(num_pos)
    return prec, rec


def average_precision(scores, tp, fp, num_pos, ap_version="Integral"):
    """Caffe's ComputeAP for one label; returns (ap, precision, recall) with float32 values."""
    if ap_version not in AP_VERSIONS:
        raise ProtonetError(f"unknown ap_version '{ap_version}' (one of {', '.join(AP_VERSIONS)})")
    tp = np.asarray(tp, dtype=np.int64)
    fp = np.asarray(fp, dtype=np.int64)
    if len(tp) != len(fp) or np.any(tp != 1 - fp):
        raise ProtonetError("average_precision: tp and fp must be complementary 0/1 flags per detection")
    if len(tp) == 0 or num_pos == 0:
        return _f32(0), np.zeros(0, np.float32), np.zeros(0, np.float32)
    prec, rec = precision_recall(scores, tp, fp, num_pos)
    if int(tp.sum()) > num_pos:
        raise ProtonetError(f"average_precision: {int(tp.sum())} true positives but only {num_pos} positives")
    if ap_version == "11point":
        ap = _eleven_point(prec, rec)
    elif ap_version == "MaxIntegral":
        ap = _max_integral(prec, rec)
    else:
        ap = _integral(prec, rec)
    return ap, prec, rec


def _sequential_sum(terms):
    """Float32 sum in the given order (np.cumsum accumulates sequentially, unlike np.sum)."""
    if len(terms) == 0:
        return _f32(0)
    return np.cumsum(np.asarray(terms, dtype=np.float32), dtype=np.float32)[-1]


def _eleven_point(prec, rec):
    # max precision over detections with recall >= t, t = 0, 0.1 .. 1 (t compared as a double)
    suffix_max = np.maximum.accumulate(prec[::-1])[::-1]
    thresholds = np.arange(11) / 10.0
    first = np.searchsorted(rec.astype(np.float64), thresholds, side="left")
    max_precs = np.where(first < len(prec), suffix_max[np.minimum(first, len(prec) - 1)], _f32(0))
    max_precs = max_precs.astype(np.float32)
    # Caffe adds max_precs[j] / 11 for j = 10 down to 0, in float
    return _sequential_sum((max_precs[::-1] / _f32(11)).astype(np.float32))


def _max_integral(prec, rec):
    n = len(prec)
    # running max of precision from the end: cur_prec when stepping down to index i
    cur_prec = np.maximum.accumulate(prec[::-1])[::-1]
    # step i (n-2 .. 0): width |rec[i+1] - rec[i]|, height max(prec[i:])
    widths = np.abs(rec[1:] - rec[:-1]).astype(np.float32)
    heights = cur_prec[:-1]
    keep = widths > _EPS
    terms = (heights * widths).astype(np.float32)
    terms = np.where(keep, terms, _f32(0))[::-1]
    last = _f32(rec[0] * cur_prec[0]) if n else _f32(0)
    return _sequential_sum(np.concatenate([terms, [last]]).astype(np.float32))


def _integral(prec, rec):
    prev = np.concatenate([[_f32(0)], rec[:-1]]).astype(np.float32)
    widths = np.abs(rec - prev).astype(np.float32)
    terms = np.where(widths > _EPS, (prec * widths).astype(np.float32), _f32(0))
    return _sequential_sum(terms)


class DetectionAccumulator:
    """Caffe's TestDetection bookkeeping for one DetectionEvaluate output blob."""

    def __init__(self):
        self.num_pos = {}
        self.scores = defaultdict(list)
        self.tp = defaultdict(list)
        self.fp = defaultdict(list)

    def add(self, rows):
        """Add one batch of DetectionEvaluate rows (any array whose last axis is 5)."""
        rows = np.asarray(rows, dtype=np.float32)
        if rows.size and rows.shape[-1] != 5:
            raise ProtonetError(f"detection evaluation: expected rows of width 5, got shape {list(rows.shape)}")
        rows = rows.reshape(-1, 5)
        items = rows[:, 0].astype(np.int64)
        labels = rows[:, 1].astype(np.int64)
        for label, count in zip(labels[items == -1], rows[items == -1, 2].astype(np.int64)):
            self.num_pos[int(label)] = self.num_pos.get(int(label), 0) + int(count)
        det = rows[items != -1]
        tp = det[:, 3].astype(np.int64)
        fp = det[:, 4].astype(np.int64)
        det_labels = det[:, 1].astype(np.int64)
        keep = ~((tp == 0) & (fp == 0))
        for label in np.unique(det_labels[keep]):
            sel = keep & (det_labels == label)
            self.scores[int(label)].extend(det[sel, 2].tolist())
            self.tp[int(label)].extend(tp[sel].tolist())
            self.fp[int(label)].extend(fp[sel].tolist())

    def evaluate(self, ap_version="Integral"):
        """(mAP, {label: AP}) with Caffe's float32 averaging; labels without detections are
        skipped in the per-class table but still count in the mean, as in Caffe."""
        aps = {}
        total = _f32(0)
        for label in sorted(self.num_pos):
            if label not in self.tp:
                continue
            ap, _, _ = average_precision(np.asarray(self.scores[label], np.float32), self.tp[label],
                                         self.fp[label], self.num_pos[label], ap_version)
            aps[label] = ap
            total = _f32(total + ap)
        self.missing = [label for label in sorted(self.num_pos) if label not in self.tp]
        # no positives at all: Caffe divides 0 by 0 and prints nan
        m_ap = _f32(total / _f32(len(self.num_pos))) if self.num_pos else _f32("nan")
        return m_ap, aps
