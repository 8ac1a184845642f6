"""Element-wise (neuron) layers. Each keeps the bottom's shape; in-place use is handled by the net."""
import math

import torch
import torch.nn.functional as F

from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import Layer, register
from protonet.layers.fillers import fill
from protonet import caffe_pb2


class _Neuron(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        self.top_shapes = [self.bottom_shapes[0]]


class _ReLU6(torch.autograd.Function):
    """min(max(x, 0) + slope * min(x, 0), 6), with the forks' gradient
    top_diff * ((x > 0) + slope * (x <= 0)) * (x < 6): 0 at x = 0 and from x = 6 on."""

    @staticmethod
    def forward(ctx, x, slope):
        ctx.save_for_backward(x)
        ctx.slope = slope
        y = torch.clamp(x, min=0) + slope * torch.clamp(x, max=0) if slope else torch.clamp(x, min=0)
        return torch.clamp(y, max=6.0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        local = (x > 0).to(grad.dtype)
        if ctx.slope:
            local = local + ctx.slope * (x <= 0).to(grad.dtype)
        return grad * local * (x < 6).to(grad.dtype), None


@register("ReLU")
class ReLULayer(_Neuron):
    """Caffe's ReLU; `relu_param { relu6: true }` (TF converters, Synopsys Caffe) caps it at 6 as
    ReLU6 does."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.slope = param.relu_param.negative_slope
        self.relu6 = param.relu_param.relu6

    def forward(self, x):
        if self.relu6:
            return _ReLU6.apply(x, self.slope)
        if self.slope == 0:
            return torch.relu(x)
        return F.leaky_relu(x, self.slope)

    def forward_in_place(self, x):
        """The same values written over x (the net calls this for Caffe's in-place ReLU when x's
        producer does not need x for its backward)."""
        if self.relu6:
            return self.forward(x)
        if self.slope == 0:
            return torch.relu_(x)
        return F.leaky_relu_(x, self.slope)


@register("ReLU6")
class ReLU6Layer(_Neuron):
    """ReLU6 of the MobileNet ports (chuanqi305/ssd, which MobileNetv2-SSDLite needs; eric612's
    forks add `relu6_param { negative_slope }`): min(max(x, 0) + slope * min(x, 0), 6)."""

    dialect = "layer ports"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.slope = param.relu6_param.negative_slope

    def forward(self, x):
        return _ReLU6.apply(x, self.slope)


@register("PReLU")
class PReLULayer(_Neuron):
    """One slope per channel (axis 1), or a single 0-axis blob when channel_shared."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.prelu_param
        shape = self.bottom_shapes[0]
        if len(shape) < 2:
            raise ShapeError(f"layer {self.name} (PReLU): needs a bottom with at least 2 axes, got {list(shape)}")
        self.shared = p.channel_shared
        filler = p.filler if p.HasField("filler") else caffe_pb2.FillerParameter(type="constant", value=0.25)
        self.add_blob(fill(() if self.shared else (shape[1],), filler, f"layer {self.name} slope"))

    def forward(self, x):
        a = self.blobs[0]
        if not self.shared:
            a = a.reshape((1, -1) + (1,) * (x.dim() - 2))
        return torch.clamp(x, min=0) + a * torch.clamp(x, max=0)


@register("ELU")
class ELULayer(_Neuron):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.alpha = param.elu_param.alpha

    def forward(self, x):
        return torch.where(x > 0, x, self.alpha * torch.expm1(torch.clamp(x, max=0)))


@register("Sigmoid")
class SigmoidLayer(_Neuron):
    def forward(self, x):
        return torch.sigmoid(x)


@register("TanH")
class TanHLayer(_Neuron):
    def forward(self, x):
        return torch.tanh(x)


@register("AbsVal")
class AbsValLayer(_Neuron):
    def forward(self, x):
        return torch.abs(x)


@register("Power")
class PowerLayer(_Neuron):
    """(shift + scale * x) ^ power."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.power_param
        self.power, self.scale, self.shift = p.power, p.scale, p.shift

    def forward(self, x):
        base = x * self.scale + self.shift if (self.scale != 1 or self.shift != 0) else x
        if self.power == 1:
            return base
        if self.power == 0:
            return torch.ones_like(x)
        return base.pow(self.power)


def _exp_or_inf(x):
    """exp as Caffe's float arithmetic gives it: inf where it overflows (math.exp raises)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


@register("Exp")
class ExpLayer(_Neuron):
    """base ^ (shift + scale * x); base -1 means e."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.exp_param
        if p.base != -1 and p.base <= 0:
            raise ProtonetError(f"layer {self.name} (Exp): base must be -1 or > 0, got {p.base}")
        log_base = 1.0 if p.base == -1 else math.log(p.base)
        self.inner_scale = log_base * p.scale
        self.outer_scale = 1.0 if p.shift == 0 else _exp_or_inf(log_base * p.shift)

    def forward(self, x):
        y = torch.exp(x * self.inner_scale) if self.inner_scale != 1 else torch.exp(x)
        return y * self.outer_scale if self.outer_scale != 1 else y


@register("Log")
class LogLayer(_Neuron):
    """log_base(shift + scale * x); base -1 means e."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.log_param
        if p.base != -1 and (p.base <= 0 or p.base == 1):
            raise ProtonetError(f"layer {self.name} (Log): base must be -1 or > 0 and not 1, got {p.base}")
        self.base_scale = 1.0 if p.base == -1 else 1.0 / math.log(p.base)
        self.scale, self.shift = p.scale, p.shift

    def forward(self, x):
        y = torch.log(x * self.scale + self.shift) if (self.scale != 1 or self.shift != 0) else torch.log(x)
        return y * self.base_scale if self.base_scale != 1 else y


@register("BNLL")
class BNLLLayer(_Neuron):
    """log(1 + exp(x)), computed stably."""

    def forward(self, x):
        return F.softplus(x, beta=1, threshold=float("inf"))


@register("Threshold")
class ThresholdLayer(_Neuron):
    """1 where x > threshold, else 0 (no gradient, as in Caffe)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.threshold = param.threshold_param.threshold

    def forward(self, x):
        return (x.detach() > self.threshold).to(x.dtype)


@register("Dropout")
class DropoutLayer(_Neuron):
    """TRAIN: keep with probability 1 - ratio and scale kept values by 1 / (1 - ratio); TEST: identity.
    (The fork's DropoutParameter has no scale_train field: kept values are always scaled in TRAIN.)"""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.ratio = param.dropout_param.dropout_ratio
        if not 0.0 < self.ratio < 1.0:
            raise ProtonetError(f"layer {self.name} (Dropout): dropout_ratio must be in (0, 1), got {self.ratio}")

    def forward(self, x):
        if self.phase != caffe_pb2.TRAIN:
            return x
        mask = torch.empty_like(x).bernoulli_(1.0 - self.ratio)
        return x * mask * (1.0 / (1.0 - self.ratio))


@register("Clip")
class ClipLayer(_Neuron):
    """BVLC Caffe's Clip (master, clip_layer.cpp): max(min, min(x, max)); the gradient passes where
    min <= x <= max (ends included), as there. min and max are required."""

    dialect = "BVLC master"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise ProtonetError(f"layer {self.name} (Clip): clip_param needs min and max")
        self.min, self.max = float(p.min), float(p.max)

    def forward(self, x):
        return torch.clamp(x, self.min, self.max)


@register("Swish")
class SwishLayer(_Neuron):
    """BVLC Caffe's Swish (master, swish_layer.cpp): x * sigmoid(beta * x), beta from swish_param
    (default 1); its gradient is the derivative, beta * y + sigmoid(beta * x) * (1 - beta * y)."""

    dialect = "BVLC master"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.beta = float(param.swish_param.beta)

    def forward(self, x):
        return x * torch.sigmoid(x * self.beta if self.beta != 1 else x)


@register("Mish")
class MishLayer(_Neuron):
    """Mish of the YOLOv4 ports (ChenYingpeng/darknet2caffe mish_layer.cpp, also Synopsys Caffe):
    x * tanh(softplus(x)); its gradient is the derivative."""

    dialect = "layer ports"

    def forward(self, x):
        return x * torch.tanh(F.softplus(x))
