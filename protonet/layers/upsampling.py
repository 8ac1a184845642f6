"""Resampling layers of other forks: Upsample (nearest, the YOLO/SSD forks; max-unpooling with a
pooling mask, SegNet), Interp (PSPNet's corner-aligned bilinear resize, with FSSD's size from a
second bottom and Synopsys' full zoom) and ResizeBilinear (Synopsys Caffe's TensorFlow resize)."""
import math

import numpy as np
import torch
import torch.nn.functional as F

from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import Layer, register

_f32 = np.float32


def _four_axes(layer, index=0):
    shape = layer.bottom_shapes[index]
    if len(shape) != 4:
        raise ShapeError(f"layer {layer.name} ({layer.param.type}): needs a 4-axis bottom, got {list(shape)}")
    return shape


class _Unpool(torch.autograd.Function):
    """SegNet's forward and backward: top[mask[i]] = bottom[i] in each plane (the last i wins where
    two share a target), bottom_diff[i] = top_diff[mask[i]]."""

    @staticmethod
    def forward(ctx, x, index, out_hw):
        n, c = x.shape[:2]
        flat = x.reshape(n, c, -1)
        idx = index.reshape(n, c, -1)
        # the source of each target cell: the largest i writing it (Caffe's loop order)
        order = torch.arange(flat.shape[-1], device=x.device).expand_as(idx)
        cells = out_hw[0] * out_hw[1]
        winner = torch.full((n, c, cells), -1, dtype=torch.long, device=x.device)
        winner.scatter_reduce_(2, idx, order, reduce="amax")
        taken = winner >= 0
        top = torch.where(taken, flat.gather(2, winner.clamp(min=0)), torch.zeros((), dtype=x.dtype, device=x.device))
        ctx.save_for_backward(idx)
        ctx.in_shape = x.shape
        return top.reshape(n, c, *out_hw)

    @staticmethod
    def backward(ctx, grad):
        (idx,) = ctx.saved_tensors
        n, c = grad.shape[:2]
        return grad.reshape(n, c, -1).gather(2, idx).reshape(ctx.in_shape), None, None


@register("Upsample")
class UpsampleLayer(Layer):
    """Upsample of the YOLO/SSD forks (eric612/MobileNet-YOLO, upsample_layer.cpp): nearest
    neighbour, top[n, c, h, w] = bottom[n, c, h // scale, w // scale]; the gradient sums each
    scale x scale block, as there. `scale_h`/`scale_w` per axis, `pad_out_h/w` one row/column
    less, and an explicit output size `upsample_h`/`upsample_w` (Synopsys Caffe's fields), where
    output index o reads input floor(o * in / out).

    With a second bottom it is SegNet's max-unpooling (alexgkendall/caffe-segnet upsample_layer.cpp):
    bottom 1 is a MAX Pooling layer's mask top (the flat index h * W + w of each maximum in its
    plane); the top, of size upsample_h x upsample_w or in * scale - pad_out (scale 2 unless given,
    SegNet's default), is zero except top[mask] = bottom; bottom_diff = top_diff[mask]."""

    dialect = "layer ports"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1, 2)
        n, c, h, w = _four_axes(self)
        self.unpool = len(bottom_shapes) == 2
        p = param.upsample_param
        if self.unpool:
            if _four_axes(self, 1) != (n, c, h, w):
                raise ShapeError(f"layer {self.name} (Upsample): the mask {list(self.bottom_shapes[1])} must have "
                                 f"the bottom's shape {[n, c, h, w]}")
        if p.HasField("upsample_h") or p.HasField("upsample_w"):
            if not (p.upsample_h > 0 and p.upsample_w > 0):
                raise ProtonetError(f"layer {self.name} (Upsample): give both upsample_h and upsample_w (> 0)")
            out = (p.upsample_h, p.upsample_w)
        else:
            default = p.scale if p.HasField("scale") or not self.unpool else 2  # SegNet's default scale
            sh = p.scale_h if p.HasField("scale_h") else default
            sw = p.scale_w if p.HasField("scale_w") else default
            if sh < 1 or sw < 1:
                raise ProtonetError(f"layer {self.name} (Upsample): scale must be >= 1, got {sh}, {sw}")
            out = (h * sh - int(p.pad_out_h), w * sw - int(p.pad_out_w))
        self.out_hw = out
        if not self.unpool:
            # Source index of every output row/column, in integers (no float rounding).
            self.register_buffer("rows", torch.arange(out[0]) * h // out[0], persistent=False)
            self.register_buffer("cols", torch.arange(out[1]) * w // out[1], persistent=False)
        self.top_shapes = [(n, c, *out)]

    def forward(self, x, mask=None):
        if not self.unpool:
            return x.index_select(2, self.rows).index_select(3, self.cols)
        index = mask.detach().to(torch.long)
        cells = self.out_hw[0] * self.out_hw[1]
        if bool(((index < 0) | (index >= cells)).any()):
            raise ProtonetError(f"layer {self.name} (Upsample): a mask index is outside the {self.out_hw[0]}x"
                                f"{self.out_hw[1]} top (check the scale against the pooling layer's)")
        return _Unpool.apply(x, index, self.out_hw)


@register("Interp")
class InterpLayer(Layer):
    """PSPNet's Interp (hszhao/PSPNet interp_layer.cpp, from DeepLab v2): bilinear resize with
    aligned corners: output pixel o samples input position o * (in - 1) / (out - 1) (a float32
    ratio), weights the two neighbours by the fractional part. Size: shrink_factor s gives
    (in - 1) / s + 1, zoom_factor z gives in + (in - 1)(z - 1), both apply shrink then zoom,
    else height and width. pad_beg/pad_end (<= 0) crop the input first: it starts at -pad_beg on
    both axes and is in + pad_beg + pad_end long. The gradient is the adjoint of the same weights.

    FSSD (lzx1413/CAFFE_SSD) adds a second bottom: with `use_blob_size` the output takes its height
    and width (before any other size field); otherwise it is not read. Synopsys Caffe adds
    `full_zoom_factor` f, out = in * f, when no other size is given."""

    dialect = "layer ports"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1, 2)
        n, c, h, w = _four_axes(self)
        p = param.interp_param
        if p.pad_beg > 0 or p.pad_end > 0:
            raise ProtonetError(f"layer {self.name} (Interp): only pad_beg/pad_end <= 0 (cropping) are supported, "
                                f"as in PSPNet")
        self.begin = -p.pad_beg
        h_eff, w_eff = h + p.pad_beg + p.pad_end, w + p.pad_beg + p.pad_end
        if h_eff <= 0 or w_eff <= 0:
            raise ShapeError(f"layer {self.name} (Interp): pads {p.pad_beg}, {p.pad_end} leave nothing of the "
                             f"{h}x{w} bottom")
        self.in_hw = (h_eff, w_eff)
        self.out_hw = self._out_size(p, h_eff, w_eff)
        self.top_shapes = [(n, c, *self.out_hw)]

    def _out_size(self, p, h, w):
        shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
        if shrink and p.shrink_factor < 1 or zoom and p.zoom_factor < 1:
            raise ProtonetError(f"layer {self.name} (Interp): shrink_factor and zoom_factor must be >= 1")
        if p.use_blob_size:
            if len(self.bottom_shapes) != 2 or len(self.bottom_shapes[1]) != 4:
                raise ShapeError(f"layer {self.name} (Interp): use_blob_size needs a 4-axis second bottom")
            h, w = self.bottom_shapes[1][2:]
        elif shrink or zoom:
            if shrink:
                h, w = (h - 1) // p.shrink_factor + 1, (w - 1) // p.shrink_factor + 1
            if zoom:
                h, w = h + (h - 1) * (p.zoom_factor - 1), w + (w - 1) * (p.zoom_factor - 1)
        elif p.HasField("height") and p.HasField("width"):
            h, w = p.height, p.width
        elif p.HasField("full_zoom_factor"):
            if p.full_zoom_factor < 1:
                raise ProtonetError(f"layer {self.name} (Interp): full_zoom_factor must be >= 1")
            h, w = h * p.full_zoom_factor, w * p.full_zoom_factor
        else:
            raise ProtonetError(f"layer {self.name} (Interp): give zoom_factor, shrink_factor, height and width, "
                                f"full_zoom_factor, or use_blob_size with a second bottom")
        if h <= 0 or w <= 0:
            raise ShapeError(f"layer {self.name} (Interp): output size {h}x{w} must be positive")
        return h, w

    def forward(self, x, size_ref=None):
        (h, w), b = self.in_hw, self.begin
        x = x[:, :, b:b + h, b:b + w]
        if (h, w) == self.out_hw:
            return x
        return F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=True)


def resize_weights(out_size, in_size, align_corners, half_pixel, pytorch_half_pixel):
    """Synopsys' compute_interpolation_weights in float32: (lower, upper, lerp) per output index."""
    if align_corners and out_size > 1:
        scale = _f32(in_size - 1) / _f32(out_size - 1)
    else:
        scale = _f32(in_size) / _f32(out_size)
    i = np.arange(out_size, dtype=np.float32)
    if align_corners:
        pos = i * scale
    elif pytorch_half_pixel:
        pos = (i + _f32(0.5)) * scale - _f32(0.5) if out_size > 1 else np.full(out_size, -0.5, np.float32)
    elif half_pixel:
        pos = (i + _f32(0.5)) * scale - _f32(0.5)
    else:
        pos = i * scale
    pos = pos.astype(np.float32)
    floor = np.floor(pos)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(pos), in_size - 1).astype(np.int64)
    return lower, upper, (pos - floor).astype(np.float32)


@register("ResizeBilinear")
class ResizeBilinearLayer(Layer):
    """Synopsys Caffe's ResizeBilinear (resize_bilinear_layer.cpp, TensorFlow's resize_bilinear):
    output output_height x output_width, or floor(in * scale_height/width); source position of
    output index i: i * s with s = in / out, or (in - 1) / (out - 1) with align_corners;
    (i + 0.5) * s - 0.5 with half_pixel_centers (pytorch_half_pixel: the same, -0.5 for a
    one-pixel output). Neighbours floor (>= 0) and ceil (<= in - 1), weight the fractional part:
    top = tl + (tr - tl) * dx, bottom = bl + (br - bl) * dx, out = top + (bottom - top) * dy, in
    float32. data_format NHWC (its default: the blob is N x H x W x C) or NCHW. Synopsys has no
    backward; protonet's gradient is the adjoint of these weights."""

    dialect = "TF converters"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        p = param.resize_bilinear_param
        where = f"layer {self.name} (ResizeBilinear)"
        if p.data_format not in ("NHWC", "NCHW"):
            raise ProtonetError(f"{where}: data_format '{p.data_format}' is not supported (NHWC or NCHW)")
        if sum((p.align_corners, p.half_pixel_centers, p.pytorch_half_pixel)) > 1:
            raise ProtonetError(f"{where}: align_corners, half_pixel_centers and pytorch_half_pixel exclude "
                                f"each other")
        shape = _four_axes(self)
        self.nhwc = p.data_format == "NHWC"
        self.h_axis = 1 if self.nhwc else 2
        in_hw = shape[self.h_axis:self.h_axis + 2]
        out_h = p.output_height if p.HasField("output_height") else math.floor(_f32(in_hw[0]) * _f32(p.scale_height))
        out_w = p.output_width if p.HasField("output_width") else math.floor(_f32(in_hw[1]) * _f32(p.scale_width))
        if out_h <= 0 or out_w <= 0:
            raise ShapeError(f"{where}: output size {out_h}x{out_w} must be positive")
        modes = (p.align_corners, p.half_pixel_centers, p.pytorch_half_pixel)
        for axis, (o, i) in enumerate(zip((out_h, out_w), in_hw)):
            lower, upper, lerp = resize_weights(o, i, *modes)
            self.register_buffer(f"lower{axis}", torch.from_numpy(lower), persistent=False)
            self.register_buffer(f"upper{axis}", torch.from_numpy(upper), persistent=False)
            self.register_buffer(f"lerp{axis}", torch.from_numpy(lerp), persistent=False)
        top = list(shape)
        top[self.h_axis:self.h_axis + 2] = [out_h, out_w]
        self.top_shapes = [tuple(top)]

    def forward(self, x):
        ha, wa = self.h_axis, self.h_axis + 1
        view = [1] * x.dim()
        view[ha] = -1
        dy = self.lerp0.to(x.dtype).reshape(view)
        view[ha], view[wa] = 1, -1
        dx = self.lerp1.to(x.dtype).reshape(view)
        rows_lo, rows_hi = x.index_select(ha, self.lower0), x.index_select(ha, self.upper0)
        tl, tr = rows_lo.index_select(wa, self.lower1), rows_lo.index_select(wa, self.upper1)
        bl, br = rows_hi.index_select(wa, self.lower1), rows_hi.index_select(wa, self.upper1)
        top = tl + (tr - tl) * dx
        bottom = bl + (br - bl) * dx
        return top + (bottom - top) * dy
