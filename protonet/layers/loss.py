"""Loss layers. Each returns a 0-axis loss (top 0 has loss_weight 1 unless the prototxt says otherwise)."""
import math

import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import Layer, register
from protonet.layers.common import canonical_axis, count

_LOG_FLT_MIN = math.log(float(torch.finfo(torch.float32).tiny))
_LOG_THRESHOLD = 1e-20


def _value_clamped(t, lo=None, hi=None):
    """`t` clamped in value, with the unclamped gradient: Caffe clamps in Forward only."""
    return t + (torch.clamp(t, min=lo, max=hi) - t).detach()


def normalization_mode(layer, loss_param, default):
    """The mode from `normalization`, else from the legacy `normalize` flag, else `default`."""
    N = caffe_pb2.LossParameter
    if loss_param.HasField("normalization"):
        return loss_param.normalization
    if loss_param.HasField("normalize"):
        return N.VALID if loss_param.normalize else N.BATCH_SIZE
    return default


def normalizer(mode, outer, inner, valid_count):
    """Caffe's LossLayer normalizer, never below 1."""
    N = caffe_pb2.LossParameter
    if mode == N.FULL:
        value = outer * inner
    elif mode == N.VALID:
        value = valid_count if valid_count is not None else outer * inner
    elif mode == N.BATCH_SIZE:
        value = outer
    else:
        value = 1
    if torch.is_tensor(value):
        return value.clamp(min=1)
    return max(1.0, float(value))


class _Loss(Layer):
    is_loss = True


@register("SoftmaxWithLoss")
class SoftmaxWithLossLayer(_Loss):
    """-log softmax(x)[label] summed over valid positions, divided by the normalizer
    (default VALID). An optional second top gives the softmax probabilities."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(2)
        shape, label_shape = self.bottom_shapes
        self.axis = canonical_axis(self, param.softmax_param.axis, len(shape))
        lp = param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        if lp.HasField("normalization"):
            self.mode = lp.normalization
        elif lp.HasField("normalize"):
            self.mode = caffe_pb2.LossParameter.VALID if lp.normalize else caffe_pb2.LossParameter.BATCH_SIZE
        else:
            self.mode = lp.normalization
        outer, inner = count(shape, 0, self.axis), count(shape, self.axis + 1)
        if count(label_shape) != outer * inner:
            raise ShapeError(f"layer {self.name} (SoftmaxWithLoss): label has {count(label_shape)} values, "
                             f"expected {outer * inner} (prediction {list(shape)}, axis {self.axis})")
        if len(param.top) not in (1, 2):
            raise ShapeError(f"layer {self.name} (SoftmaxWithLoss): has 1 or 2 tops")
        self.top_shapes = [()] + ([shape] if len(param.top) == 2 else [])

    def forward(self, x, label):
        C = x.shape[self.axis]
        logp = torch.log_softmax(x, dim=self.axis)
        outer = count(tuple(x.shape), 0, self.axis)
        inner = count(tuple(x.shape), self.axis + 1)
        flat = logp.reshape(outer, C, inner)
        lab = label.detach().reshape(outer, inner).to(torch.long)
        valid = torch.ones_like(lab, dtype=torch.bool) if self.ignore_label is None else lab != self.ignore_label
        safe = torch.where(valid, lab, torch.zeros_like(lab))
        if bool(((safe < 0) | (safe >= C)).any()):
            raise ProtonetError(f"layer {self.name} (SoftmaxWithLoss): label out of range [0, {C})")
        picked = _value_clamped(flat.gather(1, safe[:, None, :]).squeeze(1), lo=_LOG_FLT_MIN)
        total = -(picked * valid.to(x.dtype)).sum()
        valid_count = valid.sum() if self.ignore_label is not None else None
        norm = normalizer(self.mode, outer, inner, valid_count)
        loss = total / (norm.to(x.dtype) if torch.is_tensor(norm) else norm)
        if len(self.top_shapes) == 2:
            return loss, torch.softmax(x, dim=self.axis)
        return loss


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLossLayer(_Loss):
    """Cross-entropy of sigmoid(x) against targets in [0, 1]; the fork's default normalization is
    BATCH_SIZE; ignore_label skips targets equal to it."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(2)
        a, b = self.bottom_shapes
        if count(a) != count(b):
            raise ShapeError(f"layer {self.name} (SigmoidCrossEntropyLoss): inputs have {count(a)} and "
                             f"{count(b)} values")
        lp = param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        self.mode = normalization_mode(self, lp, caffe_pb2.LossParameter.BATCH_SIZE)
        self.top_shapes = [()] + ([a] if len(param.top) == 2 else [])

    def forward(self, x, target):
        t = target.detach().reshape(x.shape).to(x.dtype)
        pos = (x >= 0).to(x.dtype)
        per = -(x * (t - pos) - torch.log1p(torch.exp(x - 2 * x * pos)))
        if self.ignore_label is not None:
            valid = t.to(torch.long) != self.ignore_label
            per = per * valid.to(x.dtype)
            valid_count = valid.sum()
        else:
            valid_count = torch.tensor(x.numel(), device=x.device)
        outer = x.shape[0]
        norm = normalizer(self.mode, outer, x.numel() // max(outer, 1), valid_count)
        loss = per.sum() / (norm.to(x.dtype) if torch.is_tensor(norm) else norm)
        if len(self.top_shapes) == 2:
            return loss, torch.sigmoid(x)
        return loss


@register("EuclideanLoss")
class EuclideanLossLayer(_Loss):
    """sum((a - b)^2) / (2 N); both bottoms get gradients."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(2)
        a, b = self.bottom_shapes
        if count(a, 1) != count(b, 1):
            raise ShapeError(f"layer {self.name} (EuclideanLoss): inputs have {count(a, 1)} and {count(b, 1)} "
                             "values per item")
        self.top_shapes = [()]

    def forward(self, a, b):
        d = a - b.reshape(a.shape)
        return (d * d).sum() / (2.0 * a.shape[0])


@register("HingeLoss")
class HingeLossLayer(_Loss):
    """One-vs-all hinge: sum over classes of max(0, 1 - y_k x_k) with y = +1 for the label and -1
    otherwise; L1 sums, L2 sums squares; divided by N."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(2)
        a, b = self.bottom_shapes
        if count(b) != a[0]:
            raise ShapeError(f"layer {self.name} (HingeLoss): label has {count(b)} values for {a[0]} items")
        self.norm = param.hinge_loss_param.norm
        self.top_shapes = [()]

    def forward(self, x, label):
        n = x.shape[0]
        flat = x.reshape(n, -1)
        lab = label.detach().reshape(n).to(torch.long)
        sign = -torch.ones_like(flat)
        sign.scatter_(1, lab[:, None], 1.0)
        margin = torch.clamp(1.0 - sign * flat, min=0)
        if self.norm == caffe_pb2.HingeLossParameter.L2:
            return (margin * margin).sum() / n
        return margin.sum() / n


@register("MultinomialLogisticLoss")
class MultinomialLogisticLossLayer(_Loss):
    """-sum log(max(p[label], 1e-20)) / N over probabilities p."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(2)
        a, b = self.bottom_shapes
        if count(b) != a[0]:
            raise ShapeError(f"layer {self.name} (MultinomialLogisticLoss): label has {count(b)} values for "
                             f"{a[0]} items")
        self.top_shapes = [()]

    def forward(self, p, label):
        n = p.shape[0]
        flat = p.reshape(n, -1)
        lab = label.detach().reshape(n).to(torch.long)
        picked = _value_clamped(flat.gather(1, lab[:, None]).squeeze(1), lo=_LOG_THRESHOLD)
        return -torch.log(picked).sum() / n
