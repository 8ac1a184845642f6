"""SSD's batch_sampler: random crop windows that satisfy overlap constraints with the boxes.

For each BatchSampler (in order, those with use_original_image), up to max_trials windows are
drawn (scale and aspect ratio uniform in the sampler's ranges) and kept when they satisfy the
sample_constraint, until max_sample are kept. The caller picks one kept window at random.

Deviations from Caffe, on purpose:
- Caffe's SampleBBox aborts when float rounding makes the width a hair above 1
  (weiliu89/caffe#669, #818); the window size is clamped to 1 here.
- Caffe's SatisfySampleConstraint returns true as soon as any object passes the first kind
  of constraint present, even if it fails the others (its `found` flag is never reset). Here a
  window is kept when one object satisfies every constraint given. SSD's and RefineDet's
  configurations use only jaccard constraints, where both read the same.
"""
import numpy as np

from protonet.data import boxes as bx
from protonet.errors import ProtonetError

F32 = np.float32


def check_sampler(batch_sampler):
    s = batch_sampler.sampler
    if not (0 < s.min_scale <= s.max_scale <= 1):
        raise ProtonetError(f"batch_sampler: need 0 < min_scale <= max_scale <= 1, got "
                            f"{s.min_scale}, {s.max_scale}")
    if not (0 < s.min_aspect_ratio <= s.max_aspect_ratio < np.finfo(F32).max):
        raise ProtonetError(f"batch_sampler: need 0 < min_aspect_ratio <= max_aspect_ratio, got "
                            f"{s.min_aspect_ratio}, {s.max_aspect_ratio}")


def sample_window(sampler, rng):
    """One window in the unit square: scale and aspect ratio drawn from the sampler's ranges."""
    scale = F32(rng.uniform(sampler.min_scale, sampler.max_scale)) \
        if sampler.max_scale > sampler.min_scale else F32(sampler.min_scale)
    ratio = F32(rng.uniform(sampler.min_aspect_ratio, sampler.max_aspect_ratio)) \
        if sampler.max_aspect_ratio > sampler.min_aspect_ratio else F32(sampler.min_aspect_ratio)
    # Keep both sides <= 1: ratio within [scale^2, 1/scale^2].
    ratio = min(max(ratio, F32(float(scale) ** 2)), F32(1 / float(scale) ** 2))
    root = np.sqrt(ratio, dtype=F32)
    width = min(scale * root, F32(1))
    height = min(scale / root, F32(1))
    x0 = F32(rng.uniform(0, 1 - width)) if width < 1 else F32(0)
    y0 = F32(rng.uniform(0, 1 - height)) if height < 1 else F32(0)
    return np.array([x0, y0, x0 + width, y0 + height], dtype=F32)


def satisfies(window, objects, constraint):
    """True when no constraint is set, or one object meets all the constraints that are set."""
    has = constraint.HasField
    checks = []
    if has("min_jaccard_overlap") or has("max_jaccard_overlap"):
        checks.append(("jaccard_overlap", lambda: bx.jaccard(objects, window)))
    if has("min_sample_coverage") or has("max_sample_coverage"):
        checks.append(("sample_coverage", lambda: bx.coverage_of(window, objects)))
    if has("min_object_coverage") or has("max_object_coverage"):
        checks.append(("object_coverage", lambda: bx.coverage(objects, window)))
    if not checks:
        return True
    ok = np.ones(len(objects), dtype=bool)
    for name, measure in checks:
        value = measure()
        if has("min_" + name):
            ok &= value >= F32(getattr(constraint, "min_" + name))
        if has("max_" + name):
            ok &= value <= F32(getattr(constraint, "max_" + name))
    return bool(ok.any())


def generate_windows(objects, batch_samplers, rng):
    """All windows kept by the batch samplers for an image whose boxes are `objects` [N,4]."""
    objects = bx.as_boxes(objects)
    unit = np.array([0, 0, 1, 1], dtype=F32)
    windows = []
    for bs in batch_samplers:
        if not bs.use_original_image:
            continue
        found = 0
        for _ in range(bs.max_trials):
            if bs.HasField("max_sample") and found >= bs.max_sample:
                break
            window = bx.locate(unit, sample_window(bs.sampler, rng))[0]
            if satisfies(window, objects, bs.sample_constraint):
                found += 1
                windows.append(window)
    return windows
