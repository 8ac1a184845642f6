"""Per-sample box arithmetic for the data workers, in float32 numpy.

protonet/box.py holds the batched torch box math used by the loss, the output layer and the
evaluator. The data workers handle one image at a time with a handful of boxes, on the CPU,
inside worker processes, and must reproduce Caffe's float32 label values bit for bit, so they
use these small numpy versions of the same definitions (normalized coordinates, no +1).
A box array is float32 [N, 4] as (xmin, ymin, xmax, ymax).
"""
import numpy as np

F32 = np.float32


def as_boxes(boxes):
    return np.asarray(boxes, dtype=F32).reshape(-1, 4)


def box_area(boxes):
    """Caffe's BBoxSize (normalized): 0 for an inverted box."""
    boxes = as_boxes(boxes)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    area = w * h
    area[(w < 0) | (h < 0)] = 0
    return area


def intersection(a, b):
    """Intersection boxes of a [N,4] with b [4] (all zeros where they do not meet)."""
    a = as_boxes(a)
    b = as_boxes(b)[0]
    apart = (b[0] > a[:, 2]) | (b[2] < a[:, 0]) | (b[1] > a[:, 3]) | (b[3] < a[:, 1])
    inter = np.stack([np.maximum(a[:, 0], b[0]), np.maximum(a[:, 1], b[1]),
                      np.minimum(a[:, 2], b[2]), np.minimum(a[:, 3], b[3])], axis=1)
    inter[apart] = 0
    return inter


def jaccard(a, b):
    """IoU of each box of a [N,4] with the box b [4]."""
    a = as_boxes(a)
    inter = intersection(a, b)
    iw = inter[:, 2] - inter[:, 0]
    ih = inter[:, 3] - inter[:, 1]
    isize = iw * ih
    union = box_area(a) + box_area(b)[0] - isize
    out = np.zeros(len(a), dtype=F32)
    ok = (iw > 0) & (ih > 0)
    out[ok] = isize[ok] / union[ok]
    return out


def coverage(a, b):
    """Fraction of each box of a [N,4] covered by the box b [4] (Caffe's BBoxCoverage(a, b))."""
    a = as_boxes(a)
    isize = box_area(intersection(a, b))
    out = np.zeros(len(a), dtype=F32)
    ok = isize > 0
    out[ok] = isize[ok] / box_area(a)[ok]
    return out


def coverage_of(a, boxes):
    """Fraction of the box a [4] covered by each box of boxes [N,4] (BBoxCoverage(a, box_i))."""
    isize = box_area(intersection(boxes, a))
    out = np.zeros(len(isize), dtype=F32)
    ok = isize > 0
    out[ok] = isize[ok] / box_area(a)[0]
    return out


def clip(boxes):
    return np.clip(as_boxes(boxes), F32(0), F32(1))


def locate(src, boxes):
    """Boxes given relative to src [4], expressed in src's own frame (Caffe's LocateBBox)."""
    src = as_boxes(src)[0]
    boxes = as_boxes(boxes)
    w = src[2] - src[0]
    h = src[3] - src[1]
    return np.stack([src[0] + boxes[:, 0] * w, src[1] + boxes[:, 1] * h,
                     src[0] + boxes[:, 2] * w, src[1] + boxes[:, 3] * h], axis=1).astype(F32)


def project(src, boxes):
    """Boxes in the frame of the window src [4], clipped to it (Caffe's ProjectBBox).

    Returns (projected [N,4], keep [N] bool): a box is kept if it meets the window and its
    clipped area is positive.
    """
    src = as_boxes(src)[0]
    boxes = as_boxes(boxes)
    meets = ~((boxes[:, 0] >= src[2]) | (boxes[:, 2] <= src[0])
              | (boxes[:, 1] >= src[3]) | (boxes[:, 3] <= src[1]))
    w = src[2] - src[0]
    h = src[3] - src[1]
    proj = np.stack([(boxes[:, 0] - src[0]) / w, (boxes[:, 1] - src[1]) / h,
                     (boxes[:, 2] - src[0]) / w, (boxes[:, 3] - src[1]) / h], axis=1)
    proj = clip(proj)
    keep = meets & (box_area(proj) > 0)
    return proj, keep


def meets_emit_constraint(window, boxes, constraint):
    """Which boxes a crop to `window` keeps under an EmitConstraint (CENTER or MIN_OVERLAP)."""
    from protonet import caffe_pb2

    boxes = as_boxes(boxes)
    window = as_boxes(window)[0]
    if constraint.emit_type == caffe_pb2.EmitConstraint.CENTER:
        cx = (boxes[:, 0] + boxes[:, 2]) / F32(2)
        cy = (boxes[:, 1] + boxes[:, 3]) / F32(2)
        return (cx >= window[0]) & (cx <= window[2]) & (cy >= window[1]) & (cy <= window[3])
    return coverage(boxes, window) > F32(constraint.emit_overlap)
