"""Caffe's weight fillers (include/caffe/filler.hpp semantics), drawing from torch's RNG.

Fan-in/fan-out follow Caffe's legacy view of a blob: fan_in = count / shape[0],
fan_out = count / shape[1] (1 for a 1-axis blob).
"""
import math

import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.sizes import reserve_blob

_VALUE_FIELDS = ("value", "min", "max", "mean", "std")
_KINDS = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")


def _fans(shape):
    count = math.prod(shape)
    num = shape[0] if len(shape) >= 1 else 1
    channels = shape[1] if len(shape) >= 2 else 1
    return count // max(num, 1), count // max(channels, 1)


def _scale_n(filler, shape):
    fan_in, fan_out = _fans(shape)
    if filler.variance_norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if filler.variance_norm == caffe_pb2.FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


def _check_values(filler, where):
    """Refuse the filler values that make no sense (Caffe would fill NaNs or abort in its RNG)."""
    for name in _VALUE_FIELDS:
        value = getattr(filler, name)
        if not math.isfinite(value):
            raise ProtonetError(f"{where}: filler {name} is {value}; it must be a finite number")
    if filler.type == "gaussian" and filler.std < 0:
        raise ProtonetError(f"{where}: gaussian filler std must not be negative, got {filler.std:g}")
    if filler.type == "uniform" and filler.min > filler.max:
        raise ProtonetError(f"{where}: uniform filler min {filler.min:g} is greater than max {filler.max:g}")


def fill(shape, filler=None, where="?", generator=None):
    """A float32 tensor of `shape` filled as Caffe's `filler` (a FillerParameter; None = constant 0).

    `where` names the layer and blob for error messages.
    """
    shape = tuple(int(d) for d in shape)
    filler = filler if filler is not None else caffe_pb2.FillerParameter()
    kind = filler.type
    _check_values(filler, where)
    reserve_blob(shape, where)  # Caffe's blob limit and the net's memory budget, before allocating
    out = torch.empty(shape, dtype=torch.float32)
    count = out.numel()
    if kind != "gaussian" and filler.sparse != -1:
        raise ProtonetError(f"{where}: filler '{kind}' does not support sparse")
    if kind == "constant":
        return out.fill_(filler.value)
    if count == 0:  # nothing to draw (and no fan to divide by)
        if kind not in _KINDS:
            raise ProtonetError(f"{where}: unknown filler type '{kind}'")
        return out
    if kind == "uniform":
        return out.uniform_(filler.min, filler.max, generator=generator)
    if kind == "gaussian":
        out.normal_(filler.mean, filler.std, generator=generator)
        if filler.sparse < -1:
            raise ProtonetError(f"{where}: gaussian filler sparse must be >= -1, got {filler.sparse}")
        if filler.sparse >= 0:
            # Each weight is kept with probability sparse / num_outputs (num_outputs = shape[0]).
            if len(shape) < 1:
                raise ProtonetError(f"{where}: sparse gaussian filler needs a blob with at least 1 axis")
            if out.numel() == 0:
                return out
            keep = filler.sparse / float(shape[0])
            if keep > 1:  # Caffe's Bernoulli draw aborts (CHECK_LE(p, 1))
                raise ProtonetError(f"{where}: gaussian filler sparse {filler.sparse} is more than the "
                                    f"{shape[0]} outputs of the blob")
            mask = torch.empty(shape).bernoulli_(keep, generator=generator)
            out.mul_(mask)
        return out
    if kind == "positive_unitball":
        if count == 0:
            return out
        out.uniform_(0.0, 1.0, generator=generator)
        num = shape[0] if shape else 1
        rows = out.reshape(num, -1)
        rows.div_(rows.sum(dim=1, keepdim=True))
        return out
    if kind == "xavier":
        bound = math.sqrt(3.0 / _scale_n(filler, shape))
        return out.uniform_(-bound, bound, generator=generator)
    if kind == "msra":
        std = math.sqrt(2.0 / _scale_n(filler, shape))
        return out.normal_(0.0, std, generator=generator)
    if kind == "bilinear":
        if len(shape) != 4 or shape[2] != shape[3]:
            raise ProtonetError(f"{where}: bilinear filler needs a 4-axis blob with square kernels, got {list(shape)}")
        k = shape[3]
        f = math.ceil(k / 2.0)
        c = (2 * f - 1 - f % 2) / (2.0 * f)
        ramp = 1.0 - torch.abs(torch.arange(k, dtype=torch.float64) / f - c)
        kernel = (ramp[:, None] * ramp[None, :]).to(torch.float32)
        out.copy_(kernel.expand(shape))
        return out
    raise ProtonetError(f"{where}: unknown filler type '{kind}'")
