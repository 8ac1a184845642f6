"""A Convolution with the BatchNorm, Scale and ReLU that follow it in place, as one operation.

Caffe's deploy and TEST nets run `conv -> BatchNorm(use_global_stats) -> Scale -> ReLU` on the
same blob. For inference the three are folded into the convolution's weights and bias
(W' = W * g, b' = (b - mean) * g + beta with g = gamma / sqrt(var + eps), computed in float64)
and the ReLU runs inside the convolution. On a CPU with oneDNN the folded weights are reordered
once into oneDNN's blocked layout for the input shape and reused until a source blob changes (its
tensor version or storage moves: the solver's updates, `load_weights`, `.to()`).
"""
import torch
import torch.nn.functional as F

from protonet import caffe_pb2


def _mkldnn_ops():
    """torch's oneDNN convolution with a fused post-op and its weight pre-packing, when present."""
    ops = getattr(torch.ops, "mkldnn", None)
    if ops is None or not torch.backends.mkldnn.is_available():
        return None
    try:
        return ops._convolution_pointwise, ops._reorder_convolution_weight
    except (AttributeError, RuntimeError):
        return None


MKLDNN_OPS = _mkldnn_ops()


def bf16_supported():
    """True when this CPU runs oneDNN bf16 convolutions natively (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def can_fold_batchnorm(layer, conv):
    return (layer.param.type == "BatchNorm" and layer.use_global_stats and len(layer.bottom_shapes[0]) == 4
            and layer.channels == conv.num_output)


def can_fold_scale(layer, conv):
    """A Scale with its own blob over the channel axis (Caffe's BatchNorm companion)."""
    return (layer.param.type == "Scale" and len(layer.bottom_shapes) == 1 and layer.axis == 1
            and tuple(layer.param_shape) == (conv.num_output,))


def can_fuse_relu(layer):
    """Caffe's ReLU (leaky or not); the capped ReLU6 variant runs as its own layer."""
    return layer.param.type == "ReLU" and not getattr(layer, "relu6", False)


def can_fuse_conv(layer):
    """2-D convolutions with one bottom and Caffe's symmetric pad; Deconvolution, N-D convolutions
    and the TF converters' asymmetric pads (pad_l..., pad_type, tf_pad) run as they are."""
    return (layer.param.type == "Convolution" and not layer.transposed and layer.n == 2
            and len(layer.bottom_shapes) == 1 and getattr(layer, "asym_pad", None) is None)


class FusedConvolution:
    """conv [+ BatchNorm] [+ Scale] [+ ReLU], all writing one blob; folded, packed, fused."""

    def __init__(self, conv, batchnorm=None, scale=None, relu=None, dtype=torch.float32, pack=True):
        self.conv, self.batchnorm, self.scale, self.relu = conv, batchnorm, scale, relu
        self.dtype = dtype
        self.pack = pack
        self.names = [l.name for l in (conv, batchnorm, scale, relu) if l is not None]
        self._key = None
        self._weight = self._bias = None
        if relu is None:
            self._attr, self._scalars = "none", []
        elif relu.slope == 0:
            self._attr, self._scalars = "relu", []
        else:
            self._attr, self._scalars = "leaky_relu", [float(relu.slope)]

    def _sources(self):
        layers = (self.conv, self.batchnorm, self.scale)
        return [t for l in layers if l is not None for t in l.blobs]

    def _folded(self):
        """(weight, bias) with BatchNorm and Scale folded in, float64 arithmetic, in the blobs' dtype."""
        conv = self.conv
        w = conv.blobs[0]
        b = conv.blobs[1] if conv.bias_term else None
        if self.batchnorm is None and self.scale is None:
            return w, b
        w64 = w.detach().double()
        b64 = b.detach().double() if b is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                       device=w.device)
        if self.batchnorm is not None:
            mean_sum, var_sum, factor = (t.detach().double() for t in self.batchnorm.blobs)
            inv = torch.where(factor == 0, torch.zeros_like(factor), 1.0 / factor)
            gain = 1.0 / torch.sqrt(var_sum * inv + self.batchnorm.eps)
            b64 = (b64 - mean_sum * inv) * gain
            w64 = w64 * gain.reshape(-1, 1, 1, 1)
        if self.scale is not None:
            blobs = self.scale.blobs
            gamma = blobs[0].detach().double()
            w64 = w64 * gamma.reshape(-1, 1, 1, 1)
            b64 = b64 * gamma
            if self.scale.bias_term:
                b64 = b64 + blobs[1].detach().double()
        return w64.to(w.dtype), b64.to(w.dtype)

    def _prepare(self, x):
        sources = self._sources()
        key = (tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources), tuple(x.shape),
               x.device, self.dtype)
        if key == self._key:
            return
        with torch.no_grad():
            w, b = self._folded()
            w = w.detach().to(self.dtype)
            b = b.detach().to(self.dtype) if b is not None else None
            if self._packed(x):
                conv = self.conv
                w = MKLDNN_OPS[1](w, list(conv.pad), list(conv.stride), list(conv.dilation), conv.group,
                                  list(x.shape))
        self._weight, self._bias, self._key = w, b, key

    def _packed(self, x):
        return self.pack and MKLDNN_OPS is not None and x.device.type == "cpu" and x.dtype in (
            torch.float32, torch.bfloat16)

    def __call__(self, x):
        if x.dtype != self.dtype:
            x = x.to(self.dtype)
        self._prepare(x)
        conv = self.conv
        if self._packed(x):
            return MKLDNN_OPS[0](x, self._weight, self._bias, list(conv.pad), list(conv.stride),
                                 list(conv.dilation), conv.group, self._attr, self._scalars, "")
        y = F.conv2d(x, self._weight, self._bias, conv.stride, conv.pad, conv.dilation, conv.group)
        if self._attr == "relu":
            return torch.relu_(y)
        if self._attr == "leaky_relu":
            return F.leaky_relu(y, self._scalars[0], inplace=True)
        return y


def is_max_pooling(layer):
    """MAX pooling without Caffe's mask top (SegNet's Upsample reads the argmax indices)."""
    return (layer.param.type == "Pooling" and layer.method == caffe_pb2.PoolingParameter.MAX
            and not layer.global_pooling and not getattr(layer, "with_mask", False))


_NEG_FLT_MAX = float(torch.finfo(torch.float32).min)


def max_pool_windows(layer, x):
    """Caffe's MAX pooling as the element-wise maximum of the kernel's strided views: no argmax
    indices (torch's CPU max_pool2d computes them even without gradients), vectorised over the
    channels of a channels-last tensor, -FLT_MAX padding as in Caffe."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.pad
    H, W = x.shape[-2:]
    oh, ow = layer._out_hw(H, W)
    need_h, need_w = (oh - 1) * sh + kh, (ow - 1) * sw + kw
    if ph or pw or need_h > H + ph or need_w > W + pw:
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        lowest = max(_NEG_FLT_MAX, torch.finfo(x.dtype).min)   # bfloat16 cannot hold -FLT_MAX
        padded = torch.empty((x.shape[0], x.shape[1], max(need_h, H + ph), max(need_w, W + pw)), dtype=x.dtype,
                             device=x.device, memory_format=fmt).fill_(lowest)
        padded[:, :, ph:ph + H, pw:pw + W] = x
        x = padded
    out = None
    for i in range(kh):
        for j in range(kw):
            view = x[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            out = view if out is None else torch.maximum(out, view)
    return out.clone() if kh * kw == 1 else out
