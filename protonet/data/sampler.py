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


MEASURES = (("jaccard_overlap", "jaccard"), ("sample_coverage", "cover_a"),
            ("object_coverage", "cover_b"))


class WindowSampler:
    """A list of BatchSamplers, prepared once: every trial of every sampler is drawn in one
    vectorised pass per image, and the first max_sample trials of each sampler that satisfy
    its constraint are kept -- in distribution the windows of Caffe's trial loop, which stops
    drawing once max_sample are found."""

    def __init__(self, batch_samplers):
        used = [bs for bs in batch_samplers if bs.use_original_image and bs.max_trials > 0]
        for bs in used:
            check_sampler(bs)
        counts = [int(bs.max_trials) for bs in used]
        self.slices = []
        start = 0
        for bs, n in zip(used, counts):
            cap = int(bs.max_sample) if bs.HasField("max_sample") else n
            self.slices.append((start, start + n, cap))
            start += n
        self.trials = start

        def per_trial(get):
            return np.repeat(np.array([get(bs) for bs in used], dtype=F32), counts)

        self.scale_lo = per_trial(lambda bs: bs.sampler.min_scale)
        self.scale_hi = per_trial(lambda bs: bs.sampler.max_scale)
        self.ratio_lo = per_trial(lambda bs: bs.sampler.min_aspect_ratio)
        self.ratio_hi = per_trial(lambda bs: bs.sampler.max_aspect_ratio)
        inf = float("inf")
        self.bounds = []
        for name, key in MEASURES:
            def bound(bs, side, default, name=name):
                c = bs.sample_constraint
                return getattr(c, f"{side}_{name}") if c.HasField(f"{side}_{name}") else default

            if any(bs.sample_constraint.HasField(f"{side}_{name}") for bs in used
                   for side in ("min", "max")):
                self.bounds.append((key, per_trial(lambda bs: bound(bs, "min", -inf))[:, None],
                                    per_trial(lambda bs: bound(bs, "max", inf))[:, None]))
        constrained = [any(bs.sample_constraint.HasField(f"{side}_{name}")
                           for name, _ in MEASURES for side in ("min", "max")) for bs in used]
        self.free = np.repeat(np.array(constrained, dtype=bool), counts) == False  # noqa: E712

    def windows(self, objects, rng):
        """[trials, 4] windows drawn in the unit square, and which satisfy their constraint."""
        n = self.trials
        u = rng.random((4, n))
        scale = (self.scale_lo + (self.scale_hi - self.scale_lo) * u[0]).astype(F32)
        ratio = (self.ratio_lo + (self.ratio_hi - self.ratio_lo) * u[1]).astype(F32)
        s64 = scale.astype(np.float64)
        # both sides within 1: ratio kept in [scale^2, 1/scale^2]
        ratio = np.minimum(np.maximum(ratio, (s64 ** 2).astype(F32)), (1 / s64 ** 2).astype(F32))
        root = np.sqrt(ratio)
        # clamped: Caffe aborts when rounding puts a side a hair above 1
        width = np.minimum(scale * root, F32(1))
        height = np.minimum(scale / root, F32(1))
        x0 = (u[2] * (1 - width)).astype(F32)
        y0 = (u[3] * (1 - height)).astype(F32)
        windows = np.stack([x0, y0, x0 + width, y0 + height], axis=1)
        ok = self.free.copy()
        if len(objects) and self.bounds:
            ov = bx.overlaps(windows, objects)
            fits = np.ones((n, len(objects)), dtype=bool)
            for key, lo, hi in self.bounds:
                fits &= (ov[key] >= lo) & (ov[key] <= hi)
            ok |= fits.any(axis=1)
        return windows, ok

    def __call__(self, objects, rng):
        """All kept windows, sampler by sampler (Caffe's GenerateBatchSamples)."""
        if not self.trials:
            return []
        windows, ok = self.windows(bx.as_boxes(objects), rng)
        kept = []
        for start, stop, cap in self.slices:
            idx = np.flatnonzero(ok[start:stop])[:cap]
            kept.extend(windows[start + idx])
        return kept


def generate_windows(objects, batch_samplers, rng):
    """All windows kept by the batch samplers for an image whose boxes are `objects` [N,4]."""
    return WindowSampler(batch_samplers)(objects, rng)
