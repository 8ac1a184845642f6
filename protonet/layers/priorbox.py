"""PriorBox (SSD fork): the prior boxes of one feature map, with the fork's float32 arithmetic."""
import math

import numpy as np
import torch

from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import Layer, register

_f32 = np.float32


@register("PriorBox")
class PriorBoxLayer(Layer):
    """Prior boxes of one feature map: top [1, 2, H*W*num_priors*4] (boxes, then variances).

    Sizes are truncated to int as in the fork; the per-cell order is min, sqrt(min*max), then the
    aspect ratios (each flipped one right after its ratio), per min_size."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(2)
        p = param.prior_box_param
        where = f"layer {self.name} (PriorBox)"
        if len(p.min_size) == 0:
            raise ProtonetError(f"{where}: must provide min_size")
        if any(not 0 < m < math.inf for m in list(p.min_size) + list(p.max_size)):
            raise ProtonetError(f"{where}: min_size and max_size must be positive and finite")
        self.min_sizes = [int(_f32(m)) for m in p.min_size]
        ratios = [_f32(1.0)]
        for a in p.aspect_ratio:
            if not 0 < a < math.inf:
                raise ProtonetError(f"{where}: aspect_ratio {a:g} must be positive and finite")
            a = _f32(a)
            if any(abs(_f32(a - e)) < 1e-6 for e in ratios):
                continue
            ratios.append(a)
            if p.flip:
                ratios.append(_f32(1.0 / float(a)))
        self.aspect_ratios = ratios
        self.max_sizes = []
        if len(p.max_size) > 0:
            if len(p.max_size) != len(p.min_size):
                raise ProtonetError(f"{where}: max_size must be given once per min_size")
            for mn, mx in zip(p.min_size, p.max_size):
                if not mx > mn:
                    raise ProtonetError(f"{where}: max_size must be greater than min_size")
            self.max_sizes = [int(_f32(m)) for m in p.max_size]
        self.num_priors = len(ratios) * len(self.min_sizes) + len(self.max_sizes)
        if len(p.variance) > 1:
            if len(p.variance) != 4:
                raise ProtonetError(f"{where}: give 1 or 4 variances, got {len(p.variance)}")
        if any(not 0 < v < math.inf for v in p.variance):
            raise ProtonetError(f"{where}: variance must be positive and finite")
        self.variance = [float(v) for v in p.variance] or [0.1]
        if p.HasField("img_h") or p.HasField("img_w"):
            if p.HasField("img_size"):
                raise ProtonetError(f"{where}: give either img_size or img_h/img_w, not both")
            if p.img_h <= 0 or p.img_w <= 0:
                raise ProtonetError(f"{where}: img_h and img_w must be positive")
            self.img_h, self.img_w = p.img_h, p.img_w
        elif p.HasField("img_size"):
            if p.img_size <= 0:
                raise ProtonetError(f"{where}: img_size must be positive")
            self.img_h = self.img_w = p.img_size
        else:
            self.img_h = self.img_w = 0
        if p.HasField("step_h") or p.HasField("step_w"):
            if p.HasField("step"):
                raise ProtonetError(f"{where}: give either step or step_h/step_w, not both")
            if not (p.step_h > 0 and p.step_w > 0):
                raise ProtonetError(f"{where}: step_h and step_w must be positive")
            self.step_h, self.step_w = _f32(p.step_h), _f32(p.step_w)
        elif p.HasField("step"):
            if not p.step > 0:
                raise ProtonetError(f"{where}: step must be positive")
            self.step_h = self.step_w = _f32(p.step)
        else:
            self.step_h = self.step_w = _f32(0)
        self.offset = _f32(p.offset)
        self.clip = p.clip
        feat = self.bottom_shapes[0]
        if len(feat) < 2 or len(self.bottom_shapes[1]) < 2:
            raise ShapeError(f"{where}: bottoms need height and width axes")
        self.top_shapes = [(1, 2, feat[-1] * feat[-2] * self.num_priors * 4)]
        self._cache = {}

    def priors(self, layer_h, layer_w, img_h, img_w):
        """float32 numpy [2, layer_h*layer_w*num_priors*4], with the fork's float/double steps."""
        key = (layer_h, layer_w, img_h, img_w)
        if key in self._cache:
            return self._cache[key]
        if self.img_h and self.img_w:
            img_h, img_w = self.img_h, self.img_w
        if self.step_h == 0 or self.step_w == 0:
            step_w = _f32(_f32(img_w) / _f32(layer_w))
            step_h = _f32(_f32(img_h) / _f32(layer_h))
        else:
            step_w, step_h = self.step_w, self.step_h
        # Box sizes per cell: float32 as in the fork (the sqrt(min*max) one comes from double).
        widths, heights = [], []
        for s, m in enumerate(self.min_sizes):
            widths.append(_f32(m))
            heights.append(_f32(m))
            if self.max_sizes:
                v = _f32(math.sqrt(m * self.max_sizes[s]))
                widths.append(v)
                heights.append(v)
            for a in self.aspect_ratios:
                if abs(float(a) - 1.0) < 1e-6:
                    continue
                r = np.sqrt(a)  # float32 sqrt
                widths.append(_f32(_f32(m) * r))
                heights.append(_f32(_f32(m) / r))
        bw = np.array(widths, dtype=np.float32).astype(np.float64)
        bh = np.array(heights, dtype=np.float32).astype(np.float64)
        cx = ((np.arange(layer_w, dtype=np.float32) + self.offset) * step_w).astype(np.float32)
        cy = ((np.arange(layer_h, dtype=np.float32) + self.offset) * step_h).astype(np.float32)
        cx = cx.astype(np.float64)[None, :, None]
        cy = cy.astype(np.float64)[:, None, None]
        shape = (layer_h, layer_w, len(widths))
        coords = np.stack([
            np.broadcast_to((cx - bw / 2.0) / img_w, shape),
            np.broadcast_to((cy - bh / 2.0) / img_h, shape),
            np.broadcast_to((cx + bw / 2.0) / img_w, shape),
            np.broadcast_to((cy + bh / 2.0) / img_h, shape),
        ], axis=-1).astype(np.float32).reshape(-1)
        if self.clip:
            coords = np.clip(coords, 0.0, 1.0)
        var = np.array(self.variance * (4 if len(self.variance) == 1 else 1), dtype=np.float32)
        variances = np.broadcast_to(var, (coords.size // 4, 4)).reshape(-1)
        out = np.stack([coords, variances]).astype(np.float32)
        self._cache[key] = out
        return out

    def forward(self, feat, image):
        out = self.priors(feat.shape[-2], feat.shape[-1], image.shape[-2], image.shape[-1])
        dtype = feat.dtype if feat.dtype.is_floating_point else torch.float32
        return torch.from_numpy(out).to(device=feat.device, dtype=dtype).unsqueeze(0)
