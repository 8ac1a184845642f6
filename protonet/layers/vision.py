"""Vision layers: Convolution, Deconvolution, Pooling, InnerProduct, LRN, SPP; the depthwise
convolutions of the MobileNet ports (DepthwiseConvolution, ConvolutionDepthwise)."""
import math

import torch
import torch.nn.functional as F

from protonet import caffe_pb2
from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import Layer, register
from protonet.layers.common import canonical_axis, count
from protonet.layers.fillers import fill
from protonet.layers.padding import conv_tf_padding, pooling_tf_same, same_pooling_pads, tf_pads

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
        self.asym_pad = tf_pads(self, p, n)
        if p.pad_type or p.HasField("tf_pad"):
            self.asym_pad = conv_tf_padding(self, p, shape, has_pad_hw)
        if self.asym_pad is not None:
            if self.transposed:
                raise ProtonetError(f"layer {self.name} (Deconvolution): pad_l/pad_r/pad_t/pad_b are not "
                                    f"supported for deconvolution")
            self.pad = [0, 0]  # forward pads (or, negative, crops) with F.pad first
        if any(k <= 0 for k in self.kernel) or any(s <= 0 for s in self.stride) or any(d <= 0 for d in self.dilation):
            raise ProtonetError(f"layer {self.name}: kernel, stride and dilation must be positive")
        self.num_output, self.group = self._outputs_and_group(p, shape[1])
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
        out = [self._out_size(i, shape) for i in range(n)]
        self.top_shapes = [(b[0], self.num_output, *out) for b in self.bottom_shapes]

    def _out_size(self, i, shape):
        ext = self.dilation[i] * (self.kernel[i] - 1) + 1
        size = shape[2 + i]
        if self.transposed:
            o = self.stride[i] * (size - 1) + ext - 2 * self.pad[i]
        elif self.asym_pad is not None:
            o = (size + self.asym_pad[2 * i] + self.asym_pad[2 * i + 1] - ext) // self.stride[i] + 1
        else:
            o = (size + 2 * self.pad[i] - ext) // self.stride[i] + 1
        if o <= 0:
            pad = list(self.asym_pad) if self.asym_pad is not None else self.pad
            raise ShapeError(f"layer {self.name} ({self.param.type}): output size {o} on spatial axis {i} "
                             f"(bottom {list(shape)}, kernel {self.kernel}, pad {pad}, stride {self.stride})")
        return o

    def _outputs_and_group(self, p, channels):
        if not p.HasField("num_output") or p.num_output == 0:
            raise ProtonetError(f"layer {self.name} ({self.param.type}): num_output must be given and > 0")
        return p.num_output, p.group

    def forward(self, *xs):
        w = self.blobs[0]
        b = self.blobs[1] if self.bias_term else None
        if self.transposed:
            fn = _DECONV_FN[self.n]
            outs = [fn(x, w, b, self.stride, self.pad, 0, self.group, self.dilation) for x in xs]
        else:
            if self.asym_pad is not None:
                top, bottom, left, right = self.asym_pad
                xs = [F.pad(x, (left, right, top, bottom)) for x in xs]
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


@register("DepthwiseConvolution")
class DepthwiseConvolutionLayer(ConvolutionLayer):
    """yonghenglh6/DepthwiseConvolution (the MobileNet-SSD ports' fork): a faster kernel for Caffe's
    grouped convolution, on top of BaseConvolutionLayer. num_output and group are read as for
    Convolution (the deploys give group = channels), so the numbers are Convolution's."""

    dialect = "layer ports"


@register("ConvolutionDepthwise")
class ConvolutionDepthwiseLayer(ConvolutionLayer):
    """ConvolutionDepthwise of the MobileNet ports (conv_dw_layer.cpp, e.g. in sp2823's and
    Synopsys' Caffe): one kernel per channel whatever num_output and group say. Weight (C, 1, kh, kw),
    bias (C,); top C channels; kernel/stride/pad/dilation as in Convolution (pad defaults to 0)."""

    dialect = "layer ports"

    def _outputs_and_group(self, p, channels):
        if len(self.bottom_shapes[0]) != 4:
            raise ShapeError(f"layer {self.name} (ConvolutionDepthwise): needs a 4-axis bottom, got "
                             f"{list(self.bottom_shapes[0])}")
        return channels, channels


def pooled_size(size, kernel, stride, pad, any_pad, pad_end=None, ceil=True):
    """Caffe's pooling output size: rounds up (down with ceil=False: round_mode FLOOR), then drops
    a last window that would start in the right padding (only when the layer has padding at all).
    `pad_end`: the padding after, when it differs from `pad` (TF converters)."""
    pad_end = pad if pad_end is None else pad_end
    rounding = math.ceil if ceil else math.floor
    out = int(rounding((size + pad + pad_end - kernel) / stride)) + 1
    if any_pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_pooled_size(size, kernel, stride, pad):
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _max_pool_with_mask(x, kernel, stride, pad, out_hw, fast):
    """MAX pooling and Caffe's mask top: the flat index h * W + w of each window's first maximum in
    its plane (-1 where no value beats -FLT_MAX, Caffe's starting value), as a float tensor."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    H, W = x.shape[-2:]
    oh, ow = out_hw
    if fast:
        out, index = F.max_pool2d(x, (kh, kw), (sh, sw), (ph, pw), ceil_mode=True, return_indices=True)
        return out, index.to(x.dtype).detach()
    right_h = max(0, (oh - 1) * sh + kh - H - ph)
    right_w = max(0, (ow - 1) * sw + kw - W - pw)
    xp = F.pad(x, (pw, right_w, ph, right_h), value=_NEG_FLT_MAX)
    out, index = F.max_pool2d(xp, (kh, kw), (sh, sw), return_indices=True)
    out, index = out[..., :oh, :ow], index[..., :oh, :ow]
    wp = W + pw + right_w
    row, col = index // wp - ph, index % wp - pw
    inside = (row >= 0) & (row < H) & (col >= 0) & (col < W) & (out > _NEG_FLT_MAX)
    mask = torch.where(inside, row * W + col, torch.full_like(index, -1))
    return out, mask.to(x.dtype).detach()


def caffe_pool2d(x, method, kernel, stride, pad, out_hw, pad_end=None, with_mask=False):
    """MAX or AVE pooling of an N,C,H,W tensor with Caffe's window rules and output size `out_hw`.
    `pad` is the padding before (top, left), `pad_end` after (bottom, right; default `pad`): an AVE
    window's area is clipped to the image plus these pads. `with_mask` (MAX): also the mask top."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    (pbh, pbw) = pad if pad_end is None else pad_end
    H, W = x.shape[-2:]
    oh, ow = out_hw
    fast = ((pbh, pbw) == (ph, pw) and 2 * ph <= kh and 2 * pw <= kw and _torch_pooled_size(H, kh, sh, ph) == oh
            and _torch_pooled_size(W, kw, sw, pw) == ow)
    P = caffe_pb2.PoolingParameter
    if method == P.MAX and with_mask:
        return _max_pool_with_mask(x, kernel, stride, pad, out_hw, fast)
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

    def areas(o, s, k, p, p_end, size):
        start = torch.arange(o, dtype=torch.float64) * s - p
        end = torch.clamp(start + k, max=size + p_end)
        return end - start

    div = areas(oh, sh, kh, ph, pbh, H)[:, None] * areas(ow, sw, kw, pw, pbw, W)[None, :]
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
        self.asym_pad = tf_pads(self, p)
        if self.asym_pad is not None:
            if p.HasField("pad") or p.HasField("pad_h") or p.HasField("pad_w") or p.global_pooling:
                raise ProtonetError(f"layer {self.name} (Pooling): give pad_l/pad_r/pad_t/pad_b or pad "
                                    f"(and not with global_pooling), not both")
            pad = (self.asym_pad[0], self.asym_pad[2])
        if p.HasField("stride_h") or p.HasField("stride_w"):
            stride = (p.stride_h, p.stride_w)
        else:
            stride = (p.stride, p.stride)
        self.tf_same = pooling_tf_same(self, p)
        if self.tf_same and min(stride) > 0:
            self.asym_pad = same_pooling_pads(kernel, stride, H, W)
            pad = (self.asym_pad[0], self.asym_pad[2])
        if min(kernel) <= 0 or min(stride) <= 0:
            raise ProtonetError(f"layer {self.name} (Pooling): kernel and stride must be positive")
        if p.global_pooling and (pad != (0, 0) or stride != (1, 1)):
            raise ProtonetError(f"layer {self.name} (Pooling): global pooling needs pad 0 and stride 1")
        if self.asym_pad is None and (pad[0] >= kernel[0] or pad[1] >= kernel[1]):
            raise ShapeError(f"layer {self.name} (Pooling): pad {list(pad)} must be smaller than kernel {list(kernel)}")
        top, bottom, left, right = self.asym_pad or (pad[0], pad[0], pad[1], pad[1])
        if H + top + bottom < kernel[0] or W + left + right < kernel[1]:
            raise ShapeError(f"layer {self.name} (Pooling): kernel {list(kernel)} larger than the padded bottom "
                             f"{list(shape)}")
        self.kernel, self.stride, self.pad = kernel, stride, pad
        self.ceil = p.round_mode == P.CEIL if p.HasField("round_mode") else p.ceil_mode
        self.global_pooling = p.global_pooling
        self.top_shapes = [(shape[0], shape[1], *self._out_hw(H, W))]
        # Caffe's second top of MAX pooling: the mask of argmax indices (SegNet's Upsample reads it)
        self.with_mask = len(param.top) == 2
        if self.with_mask:
            if self.method != P.MAX:
                raise ProtonetError(f"layer {self.name} (Pooling): only MAX pooling has a second (mask) top")
            self.top_shapes.append(self.top_shapes[0])

    def _pad_end(self):
        return self.pad if self.asym_pad is None else (self.asym_pad[1], self.asym_pad[3])

    def _out_hw(self, H, W):
        """Caffe's pooled size; with TF converters' pads (Synopsys Caffe) the pad sum replaces 2 pad
        and the last window must start before the image's end plus the top/left pad."""
        if self.tf_same:  # Synopsys: ceil(size / stride), no window dropped
            return -(-H // self.stride[0]), -(-W // self.stride[1])
        (ph, pw), (pbh, pbw) = self.pad, self._pad_end()
        any_pad = bool(ph or pw or pbh or pbw)
        return (pooled_size(H, self.kernel[0], self.stride[0], ph, any_pad, pbh, self.ceil),
                pooled_size(W, self.kernel[1], self.stride[1], pw, any_pad, pbw, self.ceil))

    def forward(self, x):
        H, W = x.shape[-2:]
        if self.global_pooling and not self.with_mask:
            if self.method == caffe_pb2.PoolingParameter.MAX:
                return F.adaptive_max_pool2d(x, 1)
            return x.mean(dim=(2, 3), keepdim=True)
        kernel = (H, W) if self.global_pooling else self.kernel
        return caffe_pool2d(x, self.method, kernel, self.stride, self.pad, self._out_hw(H, W), self._pad_end(),
                            self.with_mask)


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
