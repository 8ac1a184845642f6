"""Per-sample box arithmetic for the data workers, in float32 numpy.

protonet/box.py holds the batched torch box math used by the loss, the output layer and the
evaluator. The data workers handle one image at a time with a handful of boxes, on the CPU,
inside worker processes, and must reproduce Caffe's float32 label values bit for bit, so they
use these small numpy versions of the same definitions (normalized coordinates, no +1).
A box array is float32 [N, 4] as (xmin, ymin, xmax, ymax).
"""
import numpy as np

from protonet import caffe_pb2

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


def overlaps(a, b):
    """Pairwise overlap measures of a [N,4] and b [M,4], each [N, M] float32:
    jaccard (IoU), cover_a (share of a inside b) and cover_b (share of b inside a).
    Boxes that only touch do not overlap (Caffe's JaccardOverlap / BBoxCoverage)."""
    a = as_boxes(a)[:, None, :]
    b = as_boxes(b)[None, :, :]
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    meet = (iw > 0) & (ih > 0)
    inter = np.where(meet, iw * ih, F32(0))
    area_a = box_area(a[:, 0])[:, None]
    area_b = box_area(b[0])[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"jaccard": np.where(meet, inter / (area_a + area_b - inter), F32(0)),
                "cover_a": np.where(meet, inter / area_a, F32(0)),
                "cover_b": np.where(meet, inter / area_b, F32(0))}


def clip(boxes):
    return np.clip(as_boxes(boxes), F32(0), F32(1))


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
    boxes = as_boxes(boxes)
    window = as_boxes(window)[0]
    if constraint.emit_type == caffe_pb2.EmitConstraint.CENTER:
        cx = (boxes[:, 0] + boxes[:, 2]) / F32(2)
        cy = (boxes[:, 1] + boxes[:, 3]) / F32(2)
        return (cx >= window[0]) & (cx <= window[2]) & (cy >= window[1]) & (cy <= window[3])
    return overlaps(boxes, window)["cover_a"][:, 0] > F32(constraint.emit_overlap)
