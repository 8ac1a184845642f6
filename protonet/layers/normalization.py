"""Normalisation layers: BatchNorm, Scale, Bias, MVN, and the SSD fork's Normalize (L2 with a learnt scale)."""
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import Layer, register
from protonet.layers.common import canonical_axis
from protonet.layers.fillers import fill


@register("BatchNorm")
class BatchNormLayer(Layer):
    """Caffe's BatchNorm: blobs (mean sum, variance sum, scale factor); the statistics are the blobs
    divided by the factor. With batch statistics (TRAIN by default) the blobs are updated in place:
    factor = maf * factor + 1, mean = maf * mean + batch_mean,
    var = maf * var + m / (m - 1) * batch_var (m values per channel). NVCaffe's scale_bias (or a
    scale_filler/bias_filler) adds learnable blobs scale and bias (fillers 1 and 0): y = scale *
    normalized + bias, as NVCaffe's batch_norm_layer.cpp and OpenCV compute it."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        p = param.batch_norm_param
        shape = self.bottom_shapes[0]
        self.use_global_stats = p.use_global_stats if p.HasField("use_global_stats") else ctx.phase == caffe_pb2.TEST
        self.maf = p.moving_average_fraction
        self.eps = p.eps
        self.channels = 1 if len(shape) == 1 else shape[1]
        for i, blob_shape in enumerate(((self.channels,), (self.channels,), (1,))):
            self.add_blob(fill(blob_shape, None, f"layer {self.name} (BatchNorm) blob {i}"), learnable=False)
        self.scale_bias = p.scale_bias or p.HasField("scale_filler") or p.HasField("bias_filler")
        if self.scale_bias:
            one = caffe_pb2.FillerParameter(type="constant", value=1)
            self.add_blob(fill((self.channels,), p.scale_filler if p.HasField("scale_filler") else one,
                               f"layer {self.name} scale"))
            self.add_blob(fill((self.channels,), p.bias_filler if p.HasField("bias_filler") else None,
                               f"layer {self.name} bias"))
        self.top_shapes = [shape]

    def _view(self, t, x):
        return t.reshape((1, -1) + (1,) * (x.dim() - 2)) if x.dim() >= 2 else t

    def forward(self, x):
        y = self._normalize(x)
        if self.scale_bias:
            return y * self._view(self.blobs[3], x) + self._view(self.blobs[4], x)
        return y

    def _normalize(self, x):
        mean_sum, var_sum, factor = self.blobs[:3]
        if x.dim() >= 2 and x.shape[1] != self.channels:
            raise ShapeError(f"layer {self.name} (BatchNorm): bottom has {x.shape[1]} channels, the layer "
                             f"{self.channels}")
        if self.use_global_stats:
            inv = torch.where(factor == 0, torch.zeros_like(factor), 1.0 / factor)
            mean = (mean_sum * inv).to(x.dtype)
            var = (var_sum * inv).to(x.dtype)
        else:
            dims = [d for d in range(x.dim()) if d != 1] if x.dim() >= 2 else [0]
            mean = x.mean(dim=dims)
            var = (x - self._view(mean, x)).pow(2).mean(dim=dims)
            m = x.numel() // self.channels
            correction = m / (m - 1) if m > 1 else 1.0
            with torch.no_grad():
                factor.mul_(self.maf).add_(1.0)
                mean_sum.mul_(self.maf).add_(mean.detach().to(mean_sum.dtype))
                var_sum.mul_(self.maf).add_(var.detach().to(var_sum.dtype) * correction)
        return (x - self._view(mean, x)) / self._view(torch.sqrt(var + self.eps), x)


def _broadcast_shape(layer, x_shape, axis, p_shape):
    """Shape that broadcasts a (p_shape) blob against x starting at `axis`."""
    return (1,) * axis + tuple(p_shape) + (1,) * (len(x_shape) - axis - len(p_shape))


class _AffineBase(Layer):
    """Shared shape logic of Scale and Bias: the blob (or second bottom) covers
    bottom[0].shape[axis : axis + num_axes] and broadcasts over the rest."""

    def _setup(self, axis, num_axes, filler, what):
        shape = self.bottom_shapes[0]
        if len(self.bottom_shapes) == 2:
            other = self.bottom_shapes[1]
            self.axis = 0 if len(other) == 0 else canonical_axis(self, axis, len(shape))
            if tuple(shape[self.axis:self.axis + len(other)]) != tuple(other):
                raise ShapeError(f"layer {self.name} ({self.param.type}): bottom 1 shape {list(other)} does not "
                                 f"match bottom 0 {list(shape)} from axis {self.axis}")
            self.param_shape = tuple(other)
            return None
        if num_axes < -1:
            raise ProtonetError(f"layer {self.name} ({self.param.type}): num_axes must be >= -1")
        self.axis = canonical_axis(self, axis, len(shape)) if len(shape) else 0
        end = len(shape) if num_axes == -1 else self.axis + num_axes
        if end > len(shape):
            raise ShapeError(f"layer {self.name} ({self.param.type}): axis {self.axis} + num_axes {num_axes} "
                             f"exceeds the bottom's {len(shape)} axes")
        self.param_shape = tuple(shape[self.axis:end])
        if num_axes == 0:
            self.axis = 0
        return self.add_blob(fill(self.param_shape, filler, f"layer {self.name} {what}"))

    def _b(self, t, x):
        return t.reshape(_broadcast_shape(self, x.shape, self.axis, self.param_shape))


@register("Scale")
class ScaleLayer(_AffineBase):
    """x * scale (+ bias). Scale comes from bottom[1] or blob 0 (filler default constant 1);
    the bias blob comes last."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1, 2)
        p = param.scale_param
        filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=1)
        self._setup(p.axis, p.num_axes, filler, "scale")
        self.bias_term = p.bias_term
        if self.bias_term:
            self.add_blob(fill(self.param_shape, p.bias_filler if p.HasField("bias_filler") else None,
                               f"layer {self.name} bias"))
        self.top_shapes = [self.bottom_shapes[0]]

    def forward(self, x, scale=None):
        blobs = self.blobs
        if scale is None:
            scale, blobs = blobs[0], blobs[1:]
        y = x * self._b(scale, x)
        if self.bias_term:
            y = y + self._b(blobs[0], x)
        return y


@register("Bias")
class BiasLayer(_AffineBase):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1, 2)
        p = param.bias_param
        self._setup(p.axis, p.num_axes, p.filler if p.HasField("filler") else None, "bias")
        self.top_shapes = [self.bottom_shapes[0]]

    def forward(self, x, bias=None):
        if bias is None:
            bias = self.blobs[0]
        return x + self._b(bias, x)


@register("MVN")
class MVNLayer(Layer):
    """Subtract the mean (per item and channel, or per item across channels) and optionally divide by
    sqrt(variance) + eps (eps added after the square root, as Caffe does)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        p = param.mvn_param
        self.normalize_variance = p.normalize_variance
        self.across_channels = p.across_channels
        self.eps = p.eps
        self.top_shapes = [self.bottom_shapes[0]]

    def forward(self, x):
        lead = 1 if self.across_channels else min(2, x.dim())
        flat = x.reshape(tuple(x.shape[:lead]) + (-1,))
        centred = flat - flat.mean(dim=-1, keepdim=True)
        if self.normalize_variance:
            std = centred.pow(2).mean(dim=-1, keepdim=True).sqrt()
            centred = centred / (std + self.eps)
        return centred.reshape(x.shape)


def _normalize(x, scale, across_spatial, eps):
    """(y, norm): x divided by its L2 norm (per position, or per image across_spatial), times scale."""
    n = x.shape[0]
    if across_spatial:
        norm = (x.reshape(n, -1).pow(2).sum(dim=1) + eps).sqrt().reshape((n,) + (1,) * (x.dim() - 1))
    else:
        norm = (x.pow(2).sum(dim=1, keepdim=True) + eps).sqrt()
    y = x / norm
    s = scale.reshape((1, -1) + (1,) * (x.dim() - 2)) if scale.dim() > 0 else scale
    return y * s, norm


class _CaffeNormalize(torch.autograd.Function):
    """L2 normalisation with a learnt scale, with the fork's backward.

    The fork's bottom gradient is scale * (dy - x * <x, dy> / norm^2) / norm, which equals the
    true gradient only when the scale is shared (or equal across channels); it is kept here so
    that training gives Caffe's numbers."""

    @staticmethod
    def forward(ctx, x, scale, across_spatial, eps):
        y, norm = _normalize(x, scale, across_spatial, eps)
        ctx.save_for_backward(x, scale, norm, y)
        ctx.across_spatial = across_spatial
        return y

    @staticmethod
    def backward(ctx, dy):
        x, scale, norm, y = ctx.saved_tensors
        n = x.shape[0]
        s = scale.view((1, -1) + (1,) * (x.dim() - 2)) if scale.dim() > 0 else scale
        grad_x = grad_scale = None
        if ctx.needs_input_grad[1]:
            yd = y * dy
            if scale.dim() == 0:
                grad_scale = yd.sum() / scale
            else:
                dims = [0] + list(range(2, x.dim()))
                grad_scale = yd.sum(dim=dims) / scale
        if ctx.needs_input_grad[0]:
            if ctx.across_spatial:
                a = (x * dy).reshape(n, -1).sum(dim=1).view(norm.shape)
            else:
                a = (x * dy).sum(dim=1, keepdim=True)
            grad_x = (dy - x * (a / norm / norm)) / norm * s
        return grad_x, grad_scale, None, None


@register("Normalize")
class NormalizeLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        # OpenCV's earlier normalize_bbox_param is the same message as the SSD fork's norm_param
        use_opencv = param.HasField("normalize_bbox_param") and not param.HasField("norm_param")
        p = param.normalize_bbox_param if use_opencv else param.norm_param
        shape = self.bottom_shapes[0]
        if len(shape) < 2:
            raise ShapeError(f"layer {self.name} (Normalize): bottom needs at least 2 axes, got {shape}")
        self.across_spatial = p.across_spatial
        self.channel_shared = p.channel_shared
        self.eps = float(p.eps)
        if p.HasField("scale_filler"):
            filler = p.scale_filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=1.0)
        blob_shape = () if self.channel_shared else (shape[1],)
        self.add_blob(fill(blob_shape, filler, where=f"layer {self.name} blob 0"))
        self.top_shapes = [shape]

    def forward(self, x):
        scale = self.blobs[0]
        if scale.dtype != x.dtype:
            scale = scale.to(x.dtype)
        if torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad):
            return _CaffeNormalize.apply(x, scale, self.across_spatial, self.eps)
        # Without gradients, plain tensor operations (which tracers and exporters record).
        return _normalize(x, scale, self.across_spatial, self.eps)[0]


@register("NormalizeBBox")
class NormalizeBBoxLayer(NormalizeLayer):
    """OpenCV's early name of the SSD fork's Normalize (its 2016-17 samples, with
    normalize_bbox_param or norm_param): the same layer."""

    dialect = "OpenCV"
