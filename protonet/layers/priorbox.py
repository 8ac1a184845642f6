"""PriorBox (SSD fork): the prior boxes of one feature map, with the fork's float32 arithmetic.

Other dialects' options: OpenCV's several cell offsets (offset_h/offset_w), explicit prior sizes
(width/height) and pixel priors (normalized_bbox: false); the TF converters' (Synopsys Caffe)
TensorFlow/Keras prior orders (tf, keras), y,x coordinates (yx_order) and explicit sizes
(box_width/box_height).

TextBoxes (MhLiao/TextBoxes prior_box_layer.cpp; OpenCV's `additional_y_offset`): every box a
second time, its centre half a step lower (cell offsets (0.5, 0.5) and (0.5, 1.0)), sizes not
truncated to int.

FaceBoxes (sfzhang15/FaceBoxes prior_box_layer.cpp; Synopsys Caffe's `faceboxes: true`): the
min_size box is pixel-inclusive (centre -/+ (size - 1) / 2), and with three min_sizes the 32 box
is tiled 4 x 4 (centre shifts -16, -8, 0, 8) and the 64 box 2 x 2 (-16, 0) in each cell: 21
priors per cell for 32, 64, 128."""
import math

import numpy as np
import torch

from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import Layer, register

_f32 = np.float32
# Synopsys' tf mode narrows the boxes of min_size 60 by this much on each side (normalized): its
# stand-in for TensorFlow's smaller first-layer anchors.
_TF_SHRINK = 0.05


def faceboxes_prior_boxes(net_param):
    """Names of the PriorBox layers that sfzhang15/FaceBoxes' fork densifies (three min_sizes, one
    of them 32 or 64; Synopsys' faceboxes field not given): the sign of a FaceBoxes net."""
    out = []
    for layer in net_param.layer:
        p = layer.prior_box_param
        if layer.type == "PriorBox" and not p.HasField("faceboxes") and len(p.min_size) == 3 and \
                {int(m) for m in p.min_size} & {32, 64}:
            out.append(layer.name)
    return out


# The PriorBoxParameter fields of TextBoxes' fork (MhLiao/TextBoxes, an early SSD fork)
_TEXTBOXES_FIELDS = {"min_size", "max_size", "aspect_ratio", "flip", "clip", "variance"}


def textboxes_prior_boxes(net_param):
    """Names of the PriorBox layers, when every one is of TextBoxes' fork (one min_size, only that
    fork's fields): a net that fork may have written, which doubles every prior."""
    out = []
    for layer in net_param.layer:
        if layer.type != "PriorBox":
            continue
        p = layer.prior_box_param
        if len(p.min_size) != 1 or len(p.max_size) > 1 or {fd.name for fd, _ in p.ListFields()} - _TEXTBOXES_FIELDS:
            return []
        out.append(layer.name)
    return out


# Other forks' prior tilings, tried in order when the SSD fork's priors do not fit a net's heads:
# (name, fork, the NetContext switch, the PriorBox layers that mark a net of that fork)
PRIOR_READINGS = (
    ("FaceBoxes'", "sfzhang15/FaceBoxes", "faceboxes_priors", faceboxes_prior_boxes),
    ("TextBoxes'", "MhLiao/TextBoxes", "textboxes_priors", textboxes_prior_boxes),
)


@register("PriorBox")
class PriorBoxLayer(Layer):
    """Prior boxes of one feature map: top [1, 2, H*W*num_priors*4] (boxes, then variances).

    Sizes are truncated to int as in the fork; the per-cell order is min, sqrt(min*max), then the
    aspect ratios (each flipped one right after its ratio), per min_size. With OpenCV's offsets
    every box is repeated at each (offset_w, offset_h) of the cell, boxes outer, offsets inner;
    OpenCV's explicit width/height list the boxes instead of min_size (no max_size or ratios)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(2)
        p = param.prior_box_param
        self.where = f"layer {self.name} (PriorBox)"
        self.yx_order, self.normalized = p.yx_order, p.normalized_bbox
        # FaceBoxes' fork: Synopsys' field, or the whole net read as sfzhang15/FaceBoxes' (Net decides)
        self.faceboxes = p.faceboxes or ctx.faceboxes_priors
        self.box_sizes = self._box_sizes(p)  # [(width, height, narrow, shift x, shift y, inclusive), ...]
        self.offsets = self._offsets(p)  # [(offset_x, offset_y), ...]
        self.num_priors = len(self.box_sizes) * len(self.offsets)
        if len(p.variance) > 1:
            if len(p.variance) != 4:
                raise ProtonetError(f"{self.where}: give 1 or 4 variances, got {len(p.variance)}")
        if any(not 0 < v < math.inf for v in p.variance):
            raise ProtonetError(f"{self.where}: variance must be positive and finite")
        self.variance = [float(v) for v in p.variance] or [0.1]
        self._image_and_step(p)
        self.clip = p.clip
        feat = self.bottom_shapes[0]
        if len(feat) < 2 or len(self.bottom_shapes[1]) < 2:
            raise ShapeError(f"{self.where}: bottoms need height and width axes")
        self.top_shapes = [(1, 2, feat[-1] * feat[-2] * self.num_priors * 4)]
        self._cache = {}
        # The priors of the build-time shapes, as a buffer: forward returns it without host work,
        # so torch.compile and the exporters see a constant (it follows .to(device)).
        image = self.bottom_shapes[1]
        self._built_key = (feat[-2], feat[-1], image[-2], image[-1])
        self.register_buffer("prior", torch.from_numpy(self.priors(*self._built_key)).unsqueeze(0), persistent=False)

    # -- the boxes of a cell --------------------------------------------------------------------
    def _aspect_ratios(self, p):
        ratios = [_f32(1.0)]
        for a in p.aspect_ratio:
            if not 0 < a < math.inf:
                raise ProtonetError(f"{self.where}: aspect_ratio {a:g} must be positive and finite")
        given = [_f32(a) for a in p.aspect_ratio]
        flipped = [_f32(1.0 / float(a)) for a in given] if p.flip else []
        # Keras (Synopsys): every ratio, then every flipped one; otherwise each flip follows its ratio.
        pairs = [(a,) for a in given] + [(f,) for f in flipped] if p.keras else \
            [(a, f) for a, f in zip(given, flipped)] if p.flip else [(a,) for a in given]
        for group in pairs:
            if any(abs(_f32(group[0] - e)) < 1e-6 for e in ratios):
                continue
            ratios.extend(group)
        return ratios

    def _box_sizes(self, p):
        explicit = [(p.width, p.height, "width/height"), (p.box_width, p.box_height, "box_width/box_height")]
        for widths, heights, what in explicit:
            if len(widths) or len(heights):
                if len(widths) != len(heights) or len(p.min_size) or len(p.max_size) or len(p.aspect_ratio):
                    raise ProtonetError(f"{self.where}: {what} need as many heights as widths and no "
                                        f"min_size, max_size or aspect_ratio")
                if any(not 0 < v < math.inf for v in list(widths) + list(heights)):
                    raise ProtonetError(f"{self.where}: {what} must be positive and finite")
                if self.faceboxes:
                    raise ProtonetError(f"{self.where}: faceboxes takes min_size, not {what}")
                return [(float(_f32(w)), float(_f32(h)), False, 0, 0, False) for w, h in zip(widths, heights)]
        if len(p.min_size) == 0:
            raise ProtonetError(f"{self.where}: must provide min_size")
        if any(not 0 < m < math.inf for m in list(p.min_size) + list(p.max_size)):
            raise ProtonetError(f"{self.where}: min_size and max_size must be positive and finite")
        # the SSD fork truncates sizes to int; TextBoxes' fork (a float min_size) does not
        keep = (lambda v: float(_f32(v))) if self.ctx.textboxes_priors else (lambda v: int(_f32(v)))
        min_sizes = [keep(m) for m in p.min_size]
        max_sizes = []
        if len(p.max_size) > 0:
            if len(p.max_size) != len(p.min_size):
                raise ProtonetError(f"{self.where}: max_size must be given once per min_size")
            if not all(mx > mn for mn, mx in zip(p.min_size, p.max_size)):
                raise ProtonetError(f"{self.where}: max_size must be greater than min_size")
            max_sizes = [keep(m) for m in p.max_size]
        ratios = self._aspect_ratios(p)
        sizes = []
        for s, m in enumerate(min_sizes):
            first = self._faceboxes_tiles(p, m, len(min_sizes)) if self.faceboxes else \
                [(float(_f32(m)), float(_f32(m)), p.tf and m == 60, 0, 0, False)]
            big = [(float(_f32(math.sqrt(m * max_sizes[s]))),) * 2 + (False, 0, 0, False)] if max_sizes else []
            rest = []
            for a in ratios:
                if abs(float(a) - 1.0) < 1e-6:
                    continue
                r = np.sqrt(a)  # float32 sqrt
                rest.append((float(_f32(_f32(m) * r)), float(_f32(_f32(m) / r)), False, 0, 0, False))
            # SSD: min, max, ratios; TensorFlow (tf): min, ratios, max; Keras: max, min, ratios
            sizes += big + first + rest if p.keras else first + rest + big if p.tf else first + big + rest
        if self.faceboxes and len(min_sizes) == 3:
            # the fork declares 21 priors (+ one per max_size) per cell whatever it writes
            declared = 21 + len(max_sizes)
            if len(sizes) != declared:
                raise ProtonetError(f"{self.where}: FaceBoxes' prior box declares {declared} priors per cell for "
                                    f"three min_sizes but writes {len(sizes)} (min_size 32, 64 and one more, "
                                    f"aspect ratio 1)")
        return sizes

    def _faceboxes_tiles(self, p, m, n_min):
        """FaceBoxes' min_size boxes in a cell: (size, size, -, shift x, shift y, inclusive), rows
        outer; 32 and 64 densified (only well defined with three min_sizes, as the fork sizes its
        output for those)."""
        tiles = {32: (range(-2, 2), 8), 64: (range(-1, 1), 16)}.get(m)
        if tiles is None:
            return [(float(_f32(m)), float(_f32(m)), False, 0, 0, True)]
        if n_min != 3:
            raise ProtonetError(f"{self.where}: FaceBoxes' densified min_size {m} needs three min_sizes (the fork "
                                f"sizes its output for 32, 64, 128)")
        if not self.normalized:
            raise ProtonetError(f"{self.where}: FaceBoxes' priors are normalized (normalized_bbox: false is OpenCV's)")
        shifts, step = tiles
        return [(float(_f32(m)), float(_f32(m)), False, j * step, i * step, True) for i in shifts for j in shifts]

    def _offsets(self, p):
        if len(p.offset_h) or len(p.offset_w):
            if p.HasField("offset") or len(p.offset_h) != len(p.offset_w) or p.additional_y_offset:
                raise ProtonetError(f"{self.where}: give offset_h and offset_w (as many of each), or offset "
                                    f"(with additional_y_offset)")
            return [(_f32(x), _f32(y)) for x, y in zip(p.offset_w, p.offset_h)]
        if p.additional_y_offset or self.ctx.textboxes_priors:
            # TextBoxes: each box again half a step lower (MhLiao/TextBoxes' center_y_offset_1)
            return [(_f32(p.offset), _f32(p.offset)), (_f32(p.offset), _f32(p.offset + 0.5))]
        return [(_f32(p.offset), _f32(p.offset))]

    def _image_and_step(self, p):
        if p.HasField("img_h") or p.HasField("img_w"):
            if p.HasField("img_size"):
                raise ProtonetError(f"{self.where}: give either img_size or img_h/img_w, not both")
            if p.img_h <= 0 or p.img_w <= 0:
                raise ProtonetError(f"{self.where}: img_h and img_w must be positive")
            self.img_h, self.img_w = p.img_h, p.img_w
        elif p.HasField("img_size"):
            if p.img_size <= 0:
                raise ProtonetError(f"{self.where}: img_size must be positive")
            self.img_h = self.img_w = p.img_size
        else:
            self.img_h = self.img_w = 0
        if p.HasField("step_h") or p.HasField("step_w"):
            if p.HasField("step"):
                raise ProtonetError(f"{self.where}: give either step or step_h/step_w, not both")
            if not (p.step_h > 0 and p.step_w > 0):
                raise ProtonetError(f"{self.where}: step_h and step_w must be positive")
            self.step_h, self.step_w = _f32(p.step_h), _f32(p.step_w)
        elif p.HasField("step"):
            if not p.step > 0:
                raise ProtonetError(f"{self.where}: step must be positive")
            self.step_h = self.step_w = _f32(p.step)
        else:
            self.step_h = self.step_w = _f32(0)

    # -- the priors of a map -----------------------------------------------------------------
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
        # [cells, boxes, offsets] broadcast: box sizes float32 as in the fork, centres float32
        bw = np.array([s[0] for s in self.box_sizes])[None, None, :, None]
        bh = np.array([s[1] for s in self.box_sizes])[None, None, :, None]
        off_x = np.array([o[0] for o in self.offsets], dtype=np.float32)
        off_y = np.array([o[1] for o in self.offsets], dtype=np.float32)
        cx = ((np.arange(layer_w, dtype=np.float32)[:, None] + off_x) * step_w).astype(np.float32)
        cy = ((np.arange(layer_h, dtype=np.float32)[:, None] + off_y) * step_h).astype(np.float32)
        # FaceBoxes' shifted centres: centre + j * 8 in float32, as there (float + int)
        shift_x = np.array([s[3] for s in self.box_sizes], dtype=np.float32)[None, None, :, None]
        shift_y = np.array([s[4] for s in self.box_sizes], dtype=np.float32)[None, None, :, None]
        cx = (cx[None, :, None, :] + shift_x).astype(np.float64)
        cy = (cy[:, None, None, :] + shift_y).astype(np.float64)
        # half sizes: w / 2, or FaceBoxes' pixel-inclusive (w - 1) / 2
        inclusive = np.array([s[5] for s in self.box_sizes])[None, None, :, None]
        half_w, half_h = np.where(inclusive, (bw - 1) / 2.0, bw / 2.0), np.where(inclusive, (bh - 1) / 2.0, bh / 2.0)
        shape = (layer_h, layer_w, len(self.box_sizes), len(self.offsets))
        if self.normalized:
            x1, y1 = (cx - half_w) / img_w, (cy - half_h) / img_h
            x2, y2 = (cx + half_w) / img_w, (cy + half_h) / img_h
        else:  # OpenCV's pixel priors: the max corner is the last pixel inside
            x1, y1, x2, y2 = cx - bw * 0.5, cy - bh * 0.5, cx + bw * 0.5 - 1, cy + bh * 0.5 - 1
        narrow = np.array([s[2] for s in self.box_sizes], dtype=np.float64)[None, None, :, None] * _TF_SHRINK
        x1, y1, x2, y2 = x1 + narrow, y1 + narrow, x2 - narrow, y2 - narrow
        corners = (y1, x1, y2, x2) if self.yx_order else (x1, y1, x2, y2)
        coords = np.stack([np.broadcast_to(c, shape) for c in corners], axis=-1).astype(np.float32).reshape(-1)
        if self.clip:
            coords = np.clip(coords, 0.0, 1.0)
        var = np.array(self.variance * (4 if len(self.variance) == 1 else 1), dtype=np.float32)
        variances = np.broadcast_to(var, (coords.size // 4, 4)).reshape(-1)
        out = np.stack([coords, variances]).astype(np.float32)
        self._cache[key] = out
        return out

    def forward(self, feat, image):
        dtype = feat.dtype if feat.dtype.is_floating_point else torch.float32
        key = (feat.shape[-2], feat.shape[-1], image.shape[-2], image.shape[-1])
        if key == self._built_key:
            return self.prior.to(device=feat.device, dtype=dtype)
        out = self.priors(*key)
        return torch.from_numpy(out).to(device=feat.device, dtype=dtype).unsqueeze(0)
