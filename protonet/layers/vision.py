"""Vision layers: Convolution, Deconvolution, Pooling, InnerProduct, LRN, SPP."""
import math

import torch
import torch.nn.functional as F

from protonet import caffe_pb2
from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import Layer, register
from protonet.layers.common import canonical_axis, count
from protonet.layers.fillers import fill

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV_FN = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}

# Caffe's MAX pooling starts from -FLT_MAX, so a window that covers only padding yields it.
_NEG_FLT_MAX = float(torch.finfo(torch.float32).min)


def _spatial(layer, values, h_value, w_value, has_hw, n, default, what):
    """One value per spatial axis from Caffe's repeated field or its _h/_w pair."""
    if has_hw:
        if n != 2:
            raise ProtonetError(f"layer {layer.name}: {what}_h/{what}_w are only for 2-D convolution")
        if len(values):
            raise ProtonetError(f"layer {layer.name}: give either {what} or {what}_h/{what}_w, not both")
        return [int(h_value), int(w_value)]
    values = [int(v) for v in values]
    if not values:
        if default is None:
            raise ProtonetError(f"layer {layer.name}: {what} is required")
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise ProtonetError(f"layer {layer.name}: {what} needs 1 or {n} values, got {len(values)}")
    return values


class _ConvBase(Layer):
    transposed = False

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.convolution_param
        if not bottom_shapes:
            raise ShapeError(f"layer {self.name} ({param.type}): needs a bottom")
        shape = self.bottom_shapes[0]
        axis = canonical_axis(self, p.axis, len(shape))
        if axis != 1:
            raise ProtonetError(f"layer {self.name} ({param.type}): only axis 1 is supported, got {p.axis}")
        n = len(shape) - 2
        if n not in (1, 2, 3):
            raise ShapeError(f"layer {self.name} ({param.type}): needs 1 to 3 spatial axes, bottom is {list(shape)}")
        if p.HasField("kernel_h") != p.HasField("kernel_w"):
            raise ProtonetError(f"layer {self.name}: give both kernel_h and kernel_w")
        self.kernel = _spatial(self, p.kernel_size, p.kernel_h, p.kernel_w, p.HasField("kernel_h"), n, None, "kernel")
        if p.HasField("stride_h") != p.HasField("stride_w"):
            raise ProtonetError(f"layer {self.name}: give both stride_h and stride_w")
        self.stride = _spatial(self, p.stride, p.stride_h, p.stride_w, p.HasField("stride_h"), n, 1, "stride")
        has_pad_hw = p.HasField("pad_h") or p.HasField("pad_w")
        self.pad = _spatial(self, p.pad, p.pad_h, p.pad_w, has_pad_hw, n, 0, "pad")
        self.dilation = _spatial(self, p.dilation, 0, 0, False, n, 1, "dilation")
        if any(k <= 0 for k in self.kernel) or any(s <= 0 for s in self.stride) or any(d <= 0 for d in self.dilation):
            raise ProtonetError(f"layer {self.name}: kernel, stride and dilation must be positive")
        if not p.HasField("num_output") or p.num_output == 0:
            raise ProtonetError(f"layer {self.name} ({param.type}): num_output must be given and > 0")
        self.num_output = p.num_output
        self.group = p.group
        channels = shape[1]
        if channels == 0:
            raise ShapeError(f"layer {self.name} ({param.type}): bottom {list(shape)} has no channels")
        if self.group < 1 or channels % self.group or self.num_output % self.group:
            raise ShapeError(f"layer {self.name} ({param.type}): group {self.group} must divide the "
                             f"{channels} input channels and num_output {self.num_output}")
        self.n = n
        for i, b in enumerate(self.bottom_shapes):
            if b[1:] != shape[1:]:
                raise ShapeError(f"layer {self.name} ({param.type}): bottom {i} shape {list(b)} differs from "
                                 f"bottom 0 {list(shape)}")
        if len(param.top) != len(bottom_shapes):
            raise ShapeError(f"layer {self.name} ({param.type}): needs one top per bottom")
        if self.transposed:
            wshape = (channels, self.num_output // self.group, *self.kernel)
        else:
            wshape = (self.num_output, channels // self.group, *self.kernel)
        self.add_blob(fill(wshape, p.weight_filler if p.HasField("weight_filler") else None,
                           f"layer {self.name} weight"))
        self.bias_term = p.bias_term
        if self.bias_term:
            self.add_blob(fill((self.num_output,), p.bias_filler if p.HasField("bias_filler") else None,
                               f"layer {self.name} bias"))
        out = []
        for i in range(n):
            ext = self.dilation[i] * (self.kernel[i] - 1) + 1
            size = shape[2 + i]
            if self.transposed:
                o = self.stride[i] * (size - 1) + ext - 2 * self.pad[i]
            else:
                o = (size + 2 * self.pad[i] - ext) // self.stride[i] + 1
            if o <= 0:
                raise ShapeError(f"layer {self.name} ({param.type}): output size {o} on spatial axis {i} "
                                 f"(bottom {list(shape)}, kernel {self.kernel}, pad {self.pad}, stride {self.stride})")
            out.append(o)
        self.top_shapes = [(b[0], self.num_output, *out) for b in self.bottom_shapes]

    def forward(self, *xs):
        w = self.blobs[0]
        b = self.blobs[1] if self.bias_term else None
        if self.transposed:
            fn = _DECONV_FN[self.n]
            outs = [fn(x, w, b, self.stride, self.pad, 0, self.group, self.dilation) for x in xs]
        else:
            fn = _CONV_FN[self.n]
            outs = [fn(x, w, b, self.stride, self.pad, self.dilation, self.group) for x in xs]
        return outs[0] if len(outs) == 1 else tuple(outs)


@register("Convolution")
class ConvolutionLayer(_ConvBase):
    """Weight (num_output, channels/group, *kernel); bias (num_output,)."""


@register("Deconvolution")
class DeconvolutionLayer(_ConvBase):
    """Weight (channels, num_output/group, *kernel), Caffe's (and torch's) transposed layout."""

    transposed = True


def pooled_size(size, kernel, stride, pad, any_pad):
    """Caffe's pooling output size: rounds up, then drops a last window that would start in the
    right padding (only when the layer has padding at all)."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_pooled_size(size, kernel, stride, pad):
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def caffe_pool2d(x, method, kernel, stride, pad, out_hw):
    """MAX or AVE pooling of an N,C,H,W tensor with Caffe's window rules and output size `out_hw`."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    H, W = x.shape[-2:]
    oh, ow = out_hw
    fast = (2 * ph <= kh and 2 * pw <= kw and _torch_pooled_size(H, kh, sh, ph) == oh
            and _torch_pooled_size(W, kw, sw, pw) == ow)
    P = caffe_pb2.PoolingParameter
    if method == P.MAX:
        if fast:
            return F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=True)
        right_h = max(0, (oh - 1) * sh + kh - H - ph)
        right_w = max(0, (ow - 1) * sw + kw - W - pw)
        xp = F.pad(x, (pw, right_w, ph, right_h), value=_NEG_FLT_MAX)
        return F.max_pool2d(xp, (kh, kw), (sh, sw))
    if fast:
        return F.avg_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=True, count_include_pad=True)
    # Window sums over the zero-padded input, divided by the window area clipped to the padded image.
    right_h = max(0, (oh - 1) * sh + kh - H - ph)
    right_w = max(0, (ow - 1) * sw + kw - W - pw)
    xp = F.pad(x, (pw, right_w, ph, right_h))
    sums = F.avg_pool2d(xp, (kh, kw), (sh, sw), divisor_override=1)[..., :oh, :ow]

    def areas(o, s, k, p, size):
        start = torch.arange(o, dtype=torch.float64) * s - p
        end = torch.clamp(start + k, max=size + p)
        return end - start

    div = areas(oh, sh, kh, ph, H)[:, None] * areas(ow, sw, kw, pw, W)[None, :]
    return sums / div.to(device=x.device, dtype=x.dtype)


@register("Pooling")
class PoolingLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        p = param.pooling_param
        P = caffe_pb2.PoolingParameter
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise ShapeError(f"layer {self.name} (Pooling): needs a 4-axis bottom, got {list(shape)}")
        if p.pool == P.STOCHASTIC:
            raise ProtonetError(f"layer {self.name} (Pooling): STOCHASTIC pooling is not supported")
        self.method = p.pool
        H, W = shape[2:]
        if p.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise ProtonetError(f"layer {self.name} (Pooling): global_pooling takes no kernel size")
            kernel = (H, W)
        elif p.HasField("kernel_size"):
            if p.HasField("kernel_h") or p.HasField("kernel_w"):
                raise ProtonetError(f"layer {self.name} (Pooling): give kernel_size or kernel_h/kernel_w, not both")
            kernel = (p.kernel_size, p.kernel_size)
        elif p.HasField("kernel_h") and p.HasField("kernel_w"):
            kernel = (p.kernel_h, p.kernel_w)
        else:
            raise ProtonetError(f"layer {self.name} (Pooling): kernel_size or kernel_h and kernel_w are required")
        if p.HasField("pad_h") or p.HasField("pad_w"):
            pad = (p.pad_h, p.pad_w)
        else:
            pad = (p.pad, p.pad)
        if p.HasField("stride_h") or p.HasField("stride_w"):
            stride = (p.stride_h, p.stride_w)
        else:
            stride = (p.stride, p.stride)
        if min(kernel) <= 0 or min(stride) <= 0:
            raise ProtonetError(f"layer {self.name} (Pooling): kernel and stride must be positive")
        if p.global_pooling and (pad != (0, 0) or stride != (1, 1)):
            raise ProtonetError(f"layer {self.name} (Pooling): global pooling needs pad 0 and stride 1")
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise ShapeError(f"layer {self.name} (Pooling): pad {list(pad)} must be smaller than kernel {list(kernel)}")
        if H + 2 * pad[0] < kernel[0] or W + 2 * pad[1] < kernel[1]:
            raise ShapeError(f"layer {self.name} (Pooling): kernel {list(kernel)} larger than the padded bottom "
                             f"{list(shape)}")
        self.kernel, self.stride, self.pad = kernel, stride, pad
        self.global_pooling = p.global_pooling
        self.top_shapes = [(shape[0], shape[1], *self._out_hw(H, W))]
        if len(param.top) == 2:
            raise ProtonetError(f"layer {self.name} (Pooling): the mask top is not supported")

    def _out_hw(self, H, W):
        any_pad = bool(self.pad[0] or self.pad[1])
        return (pooled_size(H, self.kernel[0], self.stride[0], self.pad[0], any_pad),
                pooled_size(W, self.kernel[1], self.stride[1], self.pad[1], any_pad))

    def forward(self, x):
        H, W = x.shape[-2:]
        if self.global_pooling:
            if self.method == caffe_pb2.PoolingParameter.MAX:
                return F.adaptive_max_pool2d(x, 1)
            return x.mean(dim=(2, 3), keepdim=True)
        return caffe_pool2d(x, self.method, self.kernel, self.stride, self.pad, self._out_hw(H, W))


@register("SPP")
class SPPLayer(Layer):
    """Spatial pyramid pooling: level l pools into 2^l x 2^l bins, flattened and concatenated."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        p = param.spp_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise ShapeError(f"layer {self.name} (SPP): needs a 4-axis bottom, got {list(shape)}")
        if p.pool == caffe_pb2.SPPParameter.STOCHASTIC:
            raise ProtonetError(f"layer {self.name} (SPP): STOCHASTIC pooling is not supported")
        self.method = {caffe_pb2.SPPParameter.MAX: caffe_pb2.PoolingParameter.MAX,
                       caffe_pb2.SPPParameter.AVE: caffe_pb2.PoolingParameter.AVE}[p.pool]
        self.height = p.pyramid_height
        if self.height < 1:
            raise ProtonetError(f"layer {self.name} (SPP): pyramid_height must be >= 1")
        N, C, H, W = shape
        levels = [self._level(i, H, W) for i in range(self.height)]
        if self.height == 1:
            self.top_shapes = [(N, C, *levels[0][3])]
        else:
            self.top_shapes = [(N, sum(C * math.prod(lv[3]) for lv in levels))]

    def _level(self, i, H, W):
        bins = 2 ** i
        kh, kw = math.ceil(H / bins), math.ceil(W / bins)
        ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
        if ph >= kh or pw >= kw:
            raise ShapeError(f"layer {self.name} (SPP): level {i} needs pad ({ph}, {pw}) >= kernel ({kh}, {kw}); "
                             f"bottom {H}x{W} too small for pyramid height {self.height}")
        any_pad = bool(ph or pw)
        out = (pooled_size(H, kh, kh, ph, any_pad), pooled_size(W, kw, kw, pw, any_pad))
        return (kh, kw), (kh, kw), (ph, pw), out

    def forward(self, x):
        H, W = x.shape[-2:]
        outs = []
        for i in range(self.height):
            kernel, stride, pad, out_hw = self._level(i, H, W)
            outs.append(caffe_pool2d(x, self.method, kernel, stride, pad, out_hw))
        if self.height == 1:
            return outs[0]
        return torch.cat([o.reshape(o.shape[0], -1) for o in outs], dim=1)


@register("InnerProduct")
class InnerProductLayer(Layer):
    """Weight (num_output, K), or (K, num_output) with transpose; K = count from `axis` on."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        p = param.inner_product_param
        shape = self.bottom_shapes[0]
        self.axis = canonical_axis(self, p.axis, len(shape))
        if not p.HasField("num_output") or p.num_output == 0:
            raise ProtonetError(f"layer {self.name} (InnerProduct): num_output must be given and > 0")
        self.N = p.num_output
        self.K = count(shape, self.axis)
        self.transpose = p.transpose
        wshape = (self.K, self.N) if self.transpose else (self.N, self.K)
        self.add_blob(fill(wshape, p.weight_filler if p.HasField("weight_filler") else None,
                           f"layer {self.name} weight"))
        self.bias_term = p.bias_term
        if self.bias_term:
            self.add_blob(fill((self.N,), p.bias_filler if p.HasField("bias_filler") else None,
                               f"layer {self.name} bias"))
        self.top_shapes = [tuple(shape[:self.axis]) + (self.N,)]

    def forward(self, x):
        lead = tuple(x.shape[:self.axis])
        if count(tuple(x.shape), self.axis) != self.K:
            raise ShapeError(f"layer {self.name} (InnerProduct): input has {count(tuple(x.shape), self.axis)} "
                             f"values per item, the weights expect {self.K}")
        flat = x.reshape(-1, self.K)
        w = self.blobs[0]
        out = flat @ w if self.transpose else flat @ w.t()
        if self.bias_term:
            out = out + self.blobs[1]
        return out.reshape(lead + (self.N,))


@register("LRN")
class LRNLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        p = param.lrn_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise ShapeError(f"layer {self.name} (LRN): needs a 4-axis bottom, got {list(shape)}")
        if p.local_size % 2 == 0:
            raise ProtonetError(f"layer {self.name} (LRN): local_size must be odd, got {p.local_size}")
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k
        self.region = p.norm_region
        self.top_shapes = [shape]

    def forward(self, x):
        pre = (self.size - 1) // 2
        sq = x * x
        if self.region == caffe_pb2.LRNParameter.ACROSS_CHANNELS:
            # Mean of squares over `size` channels centred on each channel (zero outside).
            channels = x.shape[1]
            if self.size <= channels:
                win = F.avg_pool3d(sq.unsqueeze(1), (self.size, 1, 1), stride=1, padding=(pre, 0, 0),
                                   count_include_pad=True).squeeze(1)
            else:  # a window wider than the channels (torch's pooling refuses it): sum what is there
                reach = min(pre, channels - 1)
                padded = F.pad(sq, (0, 0, 0, 0, reach, reach))
                win = F.avg_pool3d(padded.unsqueeze(1), (2 * reach + 1, 1, 1), stride=1).squeeze(1)
                win = win * ((2 * reach + 1) / self.size)
            return x * (self.k + self.alpha * win).pow(-self.beta)
        # WITHIN_CHANNEL: Caffe builds it from AVE pooling (padded area counted) and a Power layer
        # with shift 1: k is not used.
        win = F.avg_pool2d(sq, self.size, stride=1, padding=pre, count_include_pad=True)
        return x * (1.0 + self.alpha * win).pow(-self.beta)
