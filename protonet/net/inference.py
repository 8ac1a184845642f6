"""Inference mode: the forward pass of a net without gradients, rewritten for speed.

`Net` runs through an `InferencePlan` under `torch.inference_mode()`, and whenever gradients are
off once `net.set_inference(...)` asked for it (`detect`, `test`, `eval` and `time --precision` do);
under a plain `torch.no_grad()` a new Net runs layer by layer, bit for bit as with gradients (what
exporters and torch.compile compare against). `net.set_inference(False)` turns it off. The plan keeps every
layer's semantics and the blob names of the net; it changes how the work is done:

- Convolution followed in place by BatchNorm (global statistics), Scale and ReLU becomes one
  oneDNN convolution with folded weights and the ReLU as a post-op (`protonet.net.fusion`); the
  weights are folded and pre-packed once and re-packed only when a source blob changes.
- MAX pooling is the maximum of the kernel's strided views: no argmax indices.
- On the CPU activations stay channels-last from the first convolution on (oneDNN's fast
  layout; pooling is vectorised over channels, and the heads' Permute to N,H,W,C costs nothing).
  Layers that are not known to accept any memory layout get contiguous inputs.
- PriorBox and what is computed from priors alone (their Concat, Flatten, Reshape) depend only on
  shapes: computed once per input shape and reused.
- precision "bf16" runs convolutions, pooling, ReLU, Eltwise and Concat in bfloat16 on CPUs with
  native bf16 (every other layer gets float32 inputs; the net's outputs are float32).

The intermediate value of a blob that a fused layer rewrites in place is not kept (it was
overwritten in the unfused net too), so the returned blobs are the same names as `Net.forward`'s
and equal within float32 rounding (1e-4 on whole nets; `tests/test_net_inference.py`).
"""
import dataclasses
from collections import OrderedDict

import torch

from protonet.errors import ProtonetError
from protonet.net.fusion import (FusedConvolution, bf16_supported, can_fold_batchnorm, can_fold_scale,
                                 can_fuse_conv, can_fuse_relu, is_max_pooling, max_pool_windows)

PRECISIONS = ("fp32", "bf16")

# Layer types that take any memory layout (channels-last stays channels-last through them).
_ANY_LAYOUT = {"Pooling", "ReLU", "Eltwise", "Concat", "BatchNorm", "Scale", "Bias", "Normalize", "Permute",
               "Flatten", "Reshape", "PriorBox", "Dropout", "Split", "Power", "Sigmoid", "TanH", "Convolution",
               "Deconvolution", "Silence"}
# Layer types that run in bfloat16 when the precision asks for it.
_BF16_TYPES = {"Convolution", "Pooling", "ReLU", "Eltwise", "Concat", "Split", "Dropout", "Silence"}
# Layer types whose outputs are constant when all their bottoms are (PriorBox needs only shapes).
_SHAPE_ONLY = {"PriorBox"}
_PURE = {"Concat", "Flatten", "Reshape", "Permute", "Split"}


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
    """precision: "fp32" or "bf16"; channels_last: None picks it where it pays (the CPU);
    fuse: fold BatchNorm/Scale into convolutions and fuse ReLU."""

    precision: str = "fp32"
    channels_last: bool | None = None
    fuse: bool = True
    # False (the default of a new Net): only under torch.inference_mode(); True (set_inference):
    # whenever gradients are off, torch.no_grad() included.
    explicit: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ProtonetError(f"precision must be one of {', '.join(PRECISIONS)}, got '{self.precision}'")


def check_precision(precision, device):
    """One clear line when bf16 inference cannot run natively here."""
    if precision == "bf16" and torch.device(device).type == "cpu" and not bf16_supported():
        raise ProtonetError("--precision bf16: this CPU has no native bfloat16 support (oneDNN needs "
                            "AVX512-BF16 or AMX); use fp32")


@dataclasses.dataclass
class _Op:
    kind: str              # "feed" (input/data blobs), "fused", "maxpool", "layer"
    step: object           # the net's _Step (first layer of a fused group)
    fn: object = None      # FusedConvolution for "fused"
    constant: bool = False


class InferencePlan:
    """The net's steps regrouped for inference; run(inputs) returns the blobs as Net.forward does."""

    def __init__(self, net, options=InferenceOptions(), steps=None):
        self.net = net
        self.options = options
        self.low = torch.bfloat16 if options.precision == "bf16" else None
        self.ops = self._compile(net._steps if steps is None else steps)
        self._cache = {}   # op index -> (key, outputs, serial) for constant ops
        self._serial = 0

    def stale(self):
        """True when a folded BatchNorm was switched to batch statistics since the plan was made."""
        return any(op.fn.batchnorm is not None and not op.fn.batchnorm.use_global_stats
                   for op in self.ops if op.kind == "fused")

    @property
    def fused_groups(self):
        """Names of the layers of each fused group (conv first)."""
        return [op.fn.names for op in self.ops if op.kind == "fused"]

    def _compile(self, steps):
        ops, constant_blobs = [], set()
        i = 0
        while i < len(steps):
            step = steps[i]
            if step.is_input or getattr(step.layer, "is_data", False):
                ops.append(_Op("feed", step))
                i += 1
                continue
            if self.options.fuse and can_fuse_conv(step.layer):
                group, i = self._conv_group(steps, i)
                dtype = self.low or torch.float32
                ops.append(_Op("fused", step, FusedConvolution(*group, dtype=dtype)))
                continue
            if is_max_pooling(step.layer) and len(step.bottoms) == 1:
                ops.append(_Op("maxpool", step))
                i += 1
                continue
            kind = step.layer.param.type
            constant = kind in _SHAPE_ONLY or (kind in _PURE and step.bottoms and
                                              all(b in constant_blobs for b in step.bottoms))
            if constant:
                constant_blobs.update(step.tops)
            else:
                constant_blobs.difference_update(step.tops)
            ops.append(_Op("layer", step, constant=constant))
            i += 1
        return ops

    @staticmethod
    def _conv_group(steps, i):
        """(conv, batchnorm, scale, relu) layers starting at steps[i], each following in place; next index."""
        conv = steps[i].layer
        top = steps[i].tops[0]
        group = [conv, None, None, None]
        j = i + 1
        for slot, fits in ((1, lambda l: can_fold_batchnorm(l, conv)), (2, lambda l: can_fold_scale(l, conv)),
                           (3, can_fuse_relu)):
            if j < len(steps) and _in_place_on(steps[j], top) and fits(steps[j].layer):
                group[slot] = steps[j].layer
                j += 1
        return group, j

    def _channels_last(self, device):
        if self.options.channels_last is not None:
            return self.options.channels_last
        return device.type == "cpu"

    def run(self, inputs, device, dtype):
        net = self.net
        channels_last = self._channels_last(device)
        blobs = OrderedDict()
        serials = {}
        for index, op in enumerate(self.ops):
            step = op.step
            if op.kind == "feed":
                self._feed(step, inputs, blobs, device, dtype)
                continue
            if op.kind == "fused":
                x = blobs[step.bottoms[0]]
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                blobs[step.tops[0]] = op.fn(x)
                continue
            if op.kind == "maxpool":
                blobs[step.tops[0]] = max_pool_windows(step.layer, blobs[step.bottoms[0]])
                continue
            if op.constant:
                self._run_constant(index, op, blobs, serials)
                continue
            out = step.layer(*self._layer_inputs(step, blobs))
            self._store(step, out, blobs, device, dtype)
        if self.low is not None:
            for name in net.output_names:
                t = blobs.get(name)
                if t is not None and t.dtype == self.low:
                    blobs[name] = t.float()
        return blobs

    def _layer_inputs(self, step, blobs):
        kind = step.layer.param.type
        args = [blobs[b] for b in step.bottoms]
        if self.low is not None and kind not in _BF16_TYPES:
            args = [a.float() if a.dtype == self.low else a for a in args]
        if kind not in _ANY_LAYOUT:
            args = [a.contiguous() for a in args]
        return args

    def _run_constant(self, index, op, blobs, serials):
        step = op.step
        key = tuple(("const", serials[b]) if b in serials else
                    (tuple(blobs[b].shape), blobs[b].device, self._dtype_for(step, blobs[b]))
                    for b in step.bottoms)
        cached = self._cache.get(index)
        if cached is None or cached[0] != key:
            out = step.layer(*self._layer_inputs(step, blobs))
            out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
            self._serial += 1
            cached = (key, out, self._serial)
            self._cache[index] = cached
        for t, v in zip(step.tops, cached[1]):
            blobs[t] = v
            serials[t] = cached[2]

    def _dtype_for(self, step, t):
        if self.low is not None and t.dtype == self.low and step.layer.param.type not in _BF16_TYPES:
            return torch.float32
        return t.dtype

    def _feed(self, step, inputs, blobs, device, dtype):
        net = self.net
        if step.is_input or all(t in inputs for t in step.tops):
            for t in step.tops:
                if t not in inputs:
                    raise ProtonetError(f"net {net.name or '?'}: missing input blob '{t}'")
                blobs[t] = _as_tensor(inputs[t], device, dtype)
            return
        out = step.layer()
        self._store(step, out, blobs, device, dtype)

    def _store(self, step, out, blobs, device, dtype):
        if out is None:
            out = ()
        elif isinstance(out, torch.Tensor):
            out = (out,)
        if len(out) != len(step.tops):
            raise ProtonetError(f"layer {step.name}: returned {len(out)} tops, expected {len(step.tops)}")
        is_data = getattr(step.layer, "is_data", False)
        for t, v in zip(step.tops, out):
            if is_data:
                v = torch.as_tensor(v)
                v = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
            blobs[t] = v


def _in_place_on(step, blob):
    return step.bottoms == [blob] and step.tops == [blob] and not step.is_input


def _as_tensor(value, device, dtype):
    t = torch.as_tensor(value)
    if t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device)
