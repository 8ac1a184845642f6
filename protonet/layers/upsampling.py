"""Resampling layers of other forks: Upsample (nearest; the YOLO/SSD forks) and Interp (PSPNet's
corner-aligned bilinear resize)."""
import torch
import torch.nn.functional as F

from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import Layer, register


def _four_axes(layer):
    layer.check_bottoms(1)
    shape = layer.bottom_shapes[0]
    if len(shape) != 4:
        raise ShapeError(f"layer {layer.name} ({layer.param.type}): needs a 4-axis bottom, got {list(shape)}")
    return shape


@register("Upsample")
class UpsampleLayer(Layer):
    """Upsample of the YOLO/SSD forks (eric612/MobileNet-YOLO, upsample_layer.cpp): nearest
    neighbour, top[n, c, h, w] = bottom[n, c, h // scale, w // scale]; the gradient sums each
    scale x scale block, as there. `scale_h`/`scale_w` per axis, `pad_out_h/w` one row/column
    less, and an explicit output size `upsample_h`/`upsample_w` (Synopsys Caffe's fields), where
    output index o reads input floor(o * in / out). SegNet's Upsample with a pooling-mask bottom
    is another layer: refused."""

    dialect = "layer ports"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        if len(bottom_shapes) == 2:
            raise ProtonetError(f"layer {self.name} (Upsample): a second bottom (SegNet's max-unpooling with "
                                f"the pooling mask) is not supported; protonet runs the nearest Upsample of "
                                f"the YOLO/SSD forks")
        n, c, h, w = _four_axes(self)
        p = param.upsample_param
        if p.HasField("upsample_h") or p.HasField("upsample_w"):
            if not (p.upsample_h > 0 and p.upsample_w > 0):
                raise ProtonetError(f"layer {self.name} (Upsample): give both upsample_h and upsample_w (> 0)")
            out = (p.upsample_h, p.upsample_w)
        else:
            sh = p.scale_h if p.HasField("scale_h") else p.scale
            sw = p.scale_w if p.HasField("scale_w") else p.scale
            if sh < 1 or sw < 1:
                raise ProtonetError(f"layer {self.name} (Upsample): scale must be >= 1, got {sh}, {sw}")
            out = (h * sh - int(p.pad_out_h), w * sw - int(p.pad_out_w))
        self.out_hw = out
        # Source index of every output row/column, in integers (no float rounding).
        self.register_buffer("rows", torch.arange(out[0]) * h // out[0], persistent=False)
        self.register_buffer("cols", torch.arange(out[1]) * w // out[1], persistent=False)
        self.top_shapes = [(n, c, *out)]

    def forward(self, x):
        return x.index_select(2, self.rows).index_select(3, self.cols)


@register("Interp")
class InterpLayer(Layer):
    """PSPNet's Interp (hszhao/PSPNet interp_layer.cpp, from DeepLab v2): bilinear resize with
    aligned corners: output pixel o samples input position o * (in - 1) / (out - 1) (a float32
    ratio), weights the two neighbours by the fractional part. Size: shrink_factor s gives
    (in - 1) / s + 1, zoom_factor z gives in + (in - 1)(z - 1), both apply shrink then zoom,
    else height and width. pad_beg/pad_end (<= 0) crop the input first: it starts at -pad_beg on
    both axes and is in + pad_beg + pad_end long. The gradient is the adjoint of the same weights."""

    dialect = "layer ports"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
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
        if shrink:
            h, w = (h - 1) // p.shrink_factor + 1, (w - 1) // p.shrink_factor + 1
        if zoom:
            h, w = h + (h - 1) * (p.zoom_factor - 1), w + (w - 1) * (p.zoom_factor - 1)
        if not (shrink or zoom):
            if not (p.HasField("height") and p.HasField("width")):
                raise ProtonetError(f"layer {self.name} (Interp): give zoom_factor, shrink_factor, or height and "
                                    f"width")
            h, w = p.height, p.width
        if h <= 0 or w <= 0:
            raise ShapeError(f"layer {self.name} (Interp): output size {h}x{w} must be positive")
        return h, w

    def forward(self, x):
        (h, w), b = self.in_hw, self.begin
        x = x[:, :, b:b + h, b:b + w]
        if (h, w) == self.out_hw:
            return x
        return F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=True)
