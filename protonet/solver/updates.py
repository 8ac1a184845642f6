"""Caffe's update rules (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam), on torch tensors.

Caffe's order of operations is kept, in float32, because it differs from torch.optim:
clip the accumulated gradients by their global L2 norm, scale by 1/iter_size, add weight decay,
turn the gradient into an update with the rule's history (SGD: V = momentum*V + lr*lr_mult*g),
then w -= update. The history blobs are laid out as Caffe's `history_` vector so that a
.solverstate written by Caffe restores here and the other way round.
"""
import math

import numpy as np
import torch

from protonet.errors import ProtonetError
from protonet.solver.logger import format_float

_f32 = np.float32

# The deprecated SolverParameter.solver_type enum, as Caffe's upgrade maps it.
LEGACY_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


class UpdateRule:
    """Turns one blob's gradient into the value subtracted from it; owns the history blobs."""

    type_name = None
    history_sets = 1  # how many history blobs per learnable blob

    def __init__(self, param, blobs):
        self.param = param
        self.history = [torch.zeros_like(b, dtype=torch.float32) for _ in range(self.history_sets) for b in blobs]
        self.num_blobs = len(blobs)

    def compute(self, i, diff, local_rate, it):
        """Return the update for blob i from its (normalised, regularised) gradient `diff`."""
        raise NotImplementedError


class SGD(UpdateRule):
    type_name = "SGD"

    def compute(self, i, diff, local_rate, it):
        h = self.history[i]
        h.mul_(float(_f32(self.param.momentum))).add_(diff, alpha=local_rate)
        return h.clone()


class Nesterov(UpdateRule):
    type_name = "Nesterov"

    def compute(self, i, diff, local_rate, it):
        momentum = float(_f32(self.param.momentum))
        h = self.history[i]
        previous = h.clone()
        h.mul_(momentum).add_(diff, alpha=local_rate)
        # step back by the old momentum, then over-step along the new one
        return previous.mul_(-momentum).add_(h, alpha=float(_f32(1) + _f32(momentum)))


class AdaGrad(UpdateRule):
    type_name = "AdaGrad"

    def __init__(self, param, blobs):
        super().__init__(param, blobs)
        if param.momentum != 0:
            raise ProtonetError("solver: momentum must be 0 for AdaGrad (Caffe refuses it too)")

    def compute(self, i, diff, local_rate, it):
        h = self.history[i]
        h.add_(diff * diff)
        return diff / (torch.sqrt(h) + float(_f32(self.param.delta))) * local_rate


class RMSProp(UpdateRule):
    type_name = "RMSProp"

    def __init__(self, param, blobs):
        super().__init__(param, blobs)
        if param.momentum != 0:
            raise ProtonetError("solver: momentum must be 0 for RMSProp (use rms_decay)")
        if not 0 <= param.rms_decay <= 1:
            raise ProtonetError("solver: rms_decay must be in [0, 1] for RMSProp")

    def compute(self, i, diff, local_rate, it):
        decay = _f32(self.param.rms_decay)
        h = self.history[i]
        h.mul_(float(decay)).add_(diff * diff, alpha=float(_f32(1) - decay))
        return diff / (torch.sqrt(h) + float(_f32(self.param.delta))) * local_rate


class AdaDelta(UpdateRule):
    type_name = "AdaDelta"
    history_sets = 2  # squared gradients, then squared updates

    def compute(self, i, diff, local_rate, it):
        momentum = _f32(self.param.momentum)
        delta = float(_f32(self.param.delta))
        grad_sq = self.history[i]
        upd_sq = self.history[self.num_blobs + i]
        grad_sq.mul_(float(momentum)).add_(diff * diff, alpha=float(_f32(1) - momentum))
        step = diff * torch.sqrt((upd_sq + delta) / (grad_sq + delta))
        upd_sq.mul_(float(momentum)).add_(step * step, alpha=float(_f32(1) - momentum))
        return step.mul_(local_rate)


class Adam(UpdateRule):
    type_name = "Adam"
    history_sets = 2  # first moments m, then second moments v

    def compute(self, i, diff, local_rate, it):
        beta1 = _f32(self.param.momentum)
        beta2 = _f32(self.param.momentum2)
        m = self.history[i]
        v = self.history[self.num_blobs + i]
        m.mul_(float(beta1)).add_(diff, alpha=float(_f32(1) - beta1))
        v.mul_(float(beta2)).add_(diff * diff, alpha=float(_f32(1) - beta2))
        t = it + 1
        # Caffe: sqrt(1 - beta2^t) / (1 - beta1^t) in double, stored as float
        correction = _f32(math.sqrt(1.0 - math.pow(float(beta2), t)) / (1.0 - math.pow(float(beta1), t)))
        scale = float(_f32(local_rate) * correction)
        return (m / (torch.sqrt(v) + float(_f32(self.param.delta)))).mul_(scale)


RULES = {cls.type_name: cls for cls in (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)}


def solver_type(param):
    """The solver type name, upgrading the deprecated `solver_type` enum as Caffe does."""
    if param.HasField("type") or not param.HasField("solver_type"):
        name = param.type
    else:
        name = LEGACY_TYPES[param.solver_type]
    if name not in RULES:
        raise ProtonetError(f"solver: unknown solver type '{name}' (one of {', '.join(RULES)})")
    return name


def make_rule(param, blobs):
    return RULES[solver_type(param)](param, blobs)


class Updater:
    """Caffe's ApplyUpdate over a net's learnable blobs.

    `entries` is a list of (tensor, lr_mult, decay_mult). Gradients are read from tensor.grad
    (a blob without a gradient, such as BatchNorm statistics, counts as zero gradient).
    """

    def __init__(self, param, entries, log=None):
        self.param = param
        self.entries = list(entries)
        self.blobs = [e[0] for e in self.entries]
        self.rule = make_rule(param, self.blobs)
        self.log = log
        reg = param.regularization_type
        if reg not in ("L2", "L1"):
            raise ProtonetError(f"solver: unknown regularization_type '{reg}' (L2 or L1)")

    def gradients(self):
        return [b.grad if b.grad is not None else torch.zeros_like(b) for b in self.blobs]

    def clip(self, diffs):
        clip = float(_f32(self.param.clip_gradients))
        if clip < 0:
            return
        sumsq = _f32(0)
        for d in diffs:
            sumsq = _f32(sumsq + _f32(torch.sum(d.double() * d.double()).item()))
        norm = _f32(math.sqrt(float(sumsq)))
        if norm > clip:
            factor = _f32(clip) / norm
            if self.log is not None:
                ff = format_float
                self.log(f"Gradient clipping: scaling down gradients (L2 norm {ff(norm)} > {ff(clip)}) "
                         f"by scale factor {ff(factor)}")
            for d in diffs:
                d.mul_(float(factor))

    @torch.no_grad()
    def apply(self, rate, it):
        """Update every blob in place for iteration `it` at learning rate `rate`."""
        diffs = self.gradients()
        self.clip(diffs)
        iter_size = self.param.iter_size
        norm = float(_f32(1) / _f32(iter_size)) if iter_size != 1 else None
        weight_decay = _f32(self.param.weight_decay)
        l1 = self.param.regularization_type == "L1"
        for i, (blob, lr_mult, decay_mult) in enumerate(self.entries):
            diff = diffs[i]
            if diff.dtype != torch.float32:
                diff = diff.float()
            if norm is not None:
                diff.mul_(norm)
            local_decay = float(weight_decay * _f32(decay_mult))
            if local_decay:
                data = blob.detach().float()
                diff.add_(torch.sign(data) if l1 else data, alpha=local_decay)
            local_rate = float(_f32(rate) * _f32(lr_mult))
            update = self.rule.compute(i, diff, local_rate, it)
            blob.sub_(update.to(blob.dtype))  # moves the version counter: inference caches see it

    # -- solverstate history ------------------------------------------------------------------

    def history_arrays(self):
        return [h.detach().cpu().numpy() for h in self.rule.history]

    def load_history(self, arrays, source="solverstate"):
        hist = self.rule.history
        if len(arrays) != len(hist):
            raise ProtonetError(f"{source}: holds {len(arrays)} history blobs, this solver needs {len(hist)} "
                                f"({self.rule.type_name} over {len(self.blobs)} learnable blobs)")
        for i, (h, a) in enumerate(zip(hist, arrays)):
            a = np.asarray(a, dtype=np.float32)
            if a.size != h.numel():
                raise ProtonetError(f"{source}: history blob {i} has {a.size} values, expected "
                                    f"{h.numel()} (shape {list(h.shape)})")
            h.copy_(torch.from_numpy(a.reshape(tuple(h.shape))).to(h.device))


class LossScaler:
    """Dynamic loss scaling for fp16 autocast: halve on overflow, double after 2000 clean steps."""

    def __init__(self, scale=2.0 ** 16, growth_interval=2000):
        self.scale_value = scale
        self.growth_interval = growth_interval
        self._clean = 0

    def scale(self, loss):
        return loss * self.scale_value

    def unscale(self, blobs):
        """Divide the gradients by the scale; False (and the scale halved) if any is not finite."""
        grads = [b.grad for b in blobs if b.grad is not None]
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        if not finite:
            self.scale_value /= 2.0
            self._clean = 0
            for g in grads:
                g.zero_()
            return False
        inv = 1.0 / self.scale_value
        for g in grads:
            g.mul_(inv)
        self._clean += 1
        if self._clean >= self.growth_interval:
            self.scale_value *= 2.0
            self._clean = 0
        return True
