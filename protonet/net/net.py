"""NetParameter -> torch.nn.Module with Caffe's numbers.

Caffe's graph rules are kept: phase/stage/level filtering, in-place tops (a top with the same
name as the bottom at the same index rebinds the name), a blob read by several layers is the
same tensor (autograd accumulates the gradients Caffe's Split layers would sum), shapes are
inferred when the net is built, parameters are shared by `param { name }`.
"""
import dataclasses
import logging
import math
import os
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from protonet import caffe_pb2, sizes
from protonet.errors import PriorCountError, ProtonetError, ShapeError
from protonet.io.blobs import array_to_blob
from protonet.io.caffemodel import write_caffemodel
from protonet.io.dialects import ignored_fields
from protonet.io.prototxt import count_layer_blocks, read_prototxt
from protonet.io.upgrade import upgrade_net
from protonet.layers.base import NetContext, layer_class
from protonet.layers.priorbox import PRIOR_READINGS
from protonet.net.field_limits import check_layer_fields
from protonet.net.filtering import filter_net, parse_phase
from protonet.net.inference import InferenceOptions, InferencePlan, check_precision
from protonet.net.weights import caffe_state_keys, copy_layers, module_state_keys, weight_sources

log = logging.getLogger("protonet.net")


def _shape_str(shape):
    return " ".join(str(d) for d in shape) + f" ({math.prod(shape)})"


@dataclasses.dataclass
class _Step:
    """One layer of the net as the forward pass walks it."""

    name: str
    layer: nn.Module
    bottoms: list
    tops: list
    detach: list      # per bottom: propagate_down is false
    is_input: bool
    overwrite: bool = False   # an in-place ReLU that may overwrite its bottom's storage (see _overwrites)


class Net(nn.Module):
    """A Caffe net as a torch module.

    Args:
        net: a prototxt path or a NetParameter.
        phase: 'TRAIN'/'TEST' or the enum (default: ctx's, else the file's state, else TEST).
        stages, level: the NetState rules of Caffe's include/exclude.
        weights: a caffemodel path (or several, comma-separated or a list) loaded after building.
        ctx: a NetContext (seed, data workers, data-parallel rank...); relative paths in data
            layers resolve against ctx.root_dir, else the working directory, as in Caffe.

    Attributes: .layers (name -> Layer), .params (name -> blob tensors in Caffe's order),
    .learnable_params ((tensor, lr_mult, decay_mult), each shared blob once, BatchNorm
    statistics included with lr_mult 0 as in Caffe), .blob_shapes, .input_names, .output_names,
    .loss_weights. `net(x)` / `net(data=x)` runs it (see forward); state_dict() keys are the
    prototxt's names, '<layer>.<blob index>' ('conv1_1.0', 'bn1.2').

    Under torch.inference_mode() (and with gradients off after set_inference()) the forward pass
    runs in inference mode (protonet/net/inference.py: BatchNorm/Scale folded into convolutions,
    ReLU fused, weights pre-packed, channels-last on the CPU, priors cached; same blobs within 1e-4).
    """

    def __init__(self, net: "str | os.PathLike | caffe_pb2.NetParameter", phase: "str | int | None" = None,
                 stages: Sequence[str] = (), level: int = 0, weights: "str | os.PathLike | Sequence | None" = None,
                 ctx: NetContext | None = None, source: str | None = None) -> None:
        super().__init__()
        # Every blob's bytes are reserved against this budget before they are allocated (protonet.sizes);
        # the layers' own Python objects first, from their count, before the file is even parsed.
        budget = sizes.MemoryBudget(ctx.max_memory if ctx is not None else None)
        param, where = self._read(net, budget)
        self.source = source or where  # the prototxt (or message) the net came from, for messages
        if phase is None:
            phase = ctx.phase if ctx is not None else (param.state.phase if param.state.HasField("phase")
                                                       else caffe_pb2.TEST)
        phase = parse_phase(phase)
        ctx = dataclasses.replace(ctx, phase=phase) if ctx is not None else NetContext(phase=phase)
        self.ctx = ctx
        self.phase = phase

        state = caffe_pb2.NetState()
        state.CopyFrom(param.state)
        state.phase = phase
        state.stage.extend(s for s in stages if s not in state.stage)
        if level:
            state.level = int(level)
        self.state = state

        # V0/V1 layers, old data fields, 3-param BatchNorm, and `input:` fields become an Input layer.
        upgrade_net(param, source=where, input_fields_to_layer=True)
        self.net_param = filter_net(param, state)
        for reason, names in ignored_fields(self.net_param).items():
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            (log.warning if "quantization" in reason else log.info)("%s (layers %s)", reason, shown)
        self.name = self.net_param.name
        self.force_backward = bool(self.net_param.force_backward)

        self.register_buffer("_device_probe", torch.zeros(()), persistent=False)
        self._plans = {}
        with sizes.active_budget(budget):
            used = budget.used
            try:
                self._build()
            except PriorCountError as ssd_error:
                self._build_with_other_priors(ssd_error, budget, used)
        self._inference = InferenceOptions()
        self._inference_plans = {}   # outputs wanted (None: all) -> InferencePlan
        # state_dict keys name the prototxt's layers: 'conv1_1.0' is blob 0 of layer conv1_1.
        self._state_keys = {f"_modules_list.{i}.{b}": f"{name}.{j}" for i, (name, layer) in
                            enumerate(self.layers.items()) for j, b in enumerate(layer._blob_names)}
        self.register_state_dict_post_hook(caffe_state_keys)
        self.register_load_state_dict_pre_hook(module_state_keys)
        if weights is not None:
            self.load_weights(weights)

    # ------------------------------------------------------------------ building
    @staticmethod
    def _reserve_layers(budget, count, where):
        budget.reserve(count * sizes.LAYER_BYTES, f"{where}: {count} layers (about "
                       f"{sizes.format_bytes(sizes.LAYER_BYTES)} of Python objects each)")

    @classmethod
    def _read(cls, net, budget):
        if isinstance(net, caffe_pb2.NetParameter):
            where = f"net {net.name or '?'}"
            cls._reserve_layers(budget, len(net.layer) + len(net.layers), where)
            param = caffe_pb2.NetParameter()
            param.CopyFrom(net)
            return param, where
        if isinstance(net, (str, os.PathLike)):
            where = os.fspath(net)
            cls._reserve_layers(budget, count_layer_blocks(where), where)
            return read_prototxt(net, caffe_pb2.NetParameter), where
        raise ProtonetError(f"Net: expected a prototxt path or a NetParameter, got {type(net).__name__}")

    def _build(self):
        """Build the layers in order; every blob's size is checked (and its bytes reserved against the
        active memory budget) before it is allocated: see protonet.sizes."""
        self.layers = OrderedDict()
        self.blob_shapes = OrderedDict()
        self.input_names = []
        self.loss_weights = OrderedDict()
        self._steps = []
        self._owners = []          # (layer name, blob index, lr_mult, decay_mult) per owned blob, Caffe order
        self._indices = {}         # layer name -> index of the first layer of that name
        self._modules_list = nn.ModuleList()
        shapes = self.blob_shapes
        available = OrderedDict()      # blobs not yet consumed: the net's outputs at the end
        shared = {}                     # param name -> (layer name, blob index, ParamSpec of owner)
        for index, lparam in enumerate(self.net_param.layer):
            name = self._layer_key(lparam.name, index)
            check_layer_fields(lparam)
            if not lparam.HasField("phase"):
                lparam.phase = self.phase
            bottoms = list(lparam.bottom)
            tops = list(lparam.top)
            for i, b in enumerate(bottoms):
                if b not in shapes:
                    raise ProtonetError(f"layer {name}: unknown bottom blob '{b}' (bottom index {i})")
            log.info("Creating Layer %s", name)
            for b in bottoms:
                log.info("%s <- %s", name, b)
            cls = layer_class(lparam.type, name)
            layer = cls(lparam, [shapes[b] for b in bottoms], self.ctx)
            top_shapes = [tuple(int(d) for d in s) for s in layer.top_shapes]
            if len(top_shapes) != len(tops):
                raise ShapeError(f"layer {name} ({lparam.type}): produces {len(top_shapes)} tops, "
                                 f"the prototxt names {len(tops)}")
            for i, t in enumerate(tops):
                in_place = i < len(bottoms) and bottoms[i] == t
                if t in shapes and not in_place:
                    raise ProtonetError(f"layer {name}: top blob '{t}' is produced by more than one layer")
                if in_place and top_shapes[i] != shapes[t]:
                    raise ShapeError(f"layer {name} ({lparam.type}): in-place top '{t}' would change shape "
                                     f"{list(shapes[t])} -> {list(top_shapes[i])}")
                if not in_place:
                    sizes.reserve_blob(top_shapes[i], f"layer {name} ({lparam.type}): top '{t}'")
            for b in bottoms:
                available.pop(b, None)
            for t, s in zip(tops, top_shapes):
                shapes[t] = s
                available[t] = True
                log.info("%s -> %s", name, t)
                log.info("Top shape: %s", _shape_str(s))

            if len(lparam.propagate_down) and len(lparam.propagate_down) != len(bottoms):
                raise ProtonetError(f"layer {name}: propagate_down must be given once per bottom "
                                    f"({len(bottoms)} bottoms, {len(lparam.propagate_down)} values)")
            detach = [not p for p in lparam.propagate_down] if len(lparam.propagate_down) else [False] * len(bottoms)

            weights = list(lparam.loss_weight)
            if not weights and getattr(layer, "is_loss", False) and tops:
                weights = [1.0]
            if len(lparam.loss_weight) and len(lparam.loss_weight) != len(tops):
                raise ProtonetError(f"layer {name}: loss_weight must be unspecified or given once per top")
            for t, w in zip(tops, weights):
                if w != 0:
                    self.loss_weights[t] = float(w)
                    log.info("    with loss weight %g", w)

            self._attach_params(layer, lparam, shared, name)
            is_input = lparam.type == "Input"
            if is_input:
                self.input_names.extend(tops)
            self.layers[name] = layer
            self._modules_list.append(layer)
            self._steps.append(_Step(name, layer, bottoms, tops, detach, is_input))
            self._steps[-1].overwrite = self._overwrites(self._steps[-1])
        self.output_names = sorted(available)

    def _build_with_other_priors(self, ssd_error, budget, used):
        """Forks with their own prior tiling (FaceBoxes', TextBoxes'; PRIOR_READINGS): a net marked as
        one's whose heads do not fit the SSD fork's priors is read with that fork's priors, the
        first that fits; `ssd_error` is raised (with what each reading gave) otherwise. Each try
        starts from the memory `used` before the first."""
        tried = []
        for name, fork, switch, marked in PRIOR_READINGS:
            layers = marked(self.net_param)
            if not layers or getattr(self.ctx, switch):
                continue
            base = self.ctx
            self.ctx = dataclasses.replace(base, **{switch: True})
            budget.used = used
            try:
                self._build()
            except PriorCountError as err:
                self.ctx = base
                tried.append(f"with {name} priors ({fork}): {err}")
                continue
            log.info("the heads fit %s priors (%s), not the SSD fork's: every PriorBox is read as that fork's "
                     "(%s)", name, fork, ", ".join(layers))
            return
        raise PriorCountError("; ".join([str(ssd_error)] + tried)) from None

    def _layer_key(self, name, index):
        """The key of layer `index` in .layers: its name, or for a second layer of the same name
        (Caffe accepts them: Net::Init does not check names) NAME#k. Weights named NAME load into
        the first one, as Caffe's CopyTrainedLayersFrom finds the first layer of a name."""
        if name not in self.layers:
            self._indices[name] = index
            return name
        k = 1
        while f"{name}#{k}" in self.layers:
            k += 1
        key = f"{name}#{k}"
        log.warning("layer %d and layer %d are both named '%s' (Caffe accepts this); the second is '%s' here "
                    "and weights named '%s' load into the first, as in Caffe", self._indices[name], index, name,
                    key, name)
        return key

    # Producers whose backward does not read their own output: an in-place ReLU right after them
    # may overwrite that output, as Caffe does, and save a tensor per ReLU (autograd would refuse
    # at backward, never compute wrong gradients, if this list were wrong).
    _OVERWRITABLE = {"Convolution", "Deconvolution", "InnerProduct", "Eltwise", "BatchNorm", "Scale", "Bias"}

    def _overwrites(self, step):
        if step.layer.param.type != "ReLU" or step.bottoms != step.tops or len(self._steps) < 2 or any(step.detach):
            return False
        before = self._steps[-2]
        return (before.layer.param.type in self._OVERWRITABLE and not before.is_input
                and step.bottoms[0] in before.tops)

    def _attach_params(self, layer, lparam, shared, name):
        blobs = layer.blobs
        if len(lparam.param) > len(blobs):
            raise ProtonetError(f"layer {name}: {len(lparam.param)} param specs given but the layer has "
                                f"{len(blobs)} blobs")
        if lparam.type == "BatchNorm":  # the first three blobs are statistics (then NVCaffe's scale, bias)
            for i, spec in enumerate(lparam.param[:3]):
                if spec.lr_mult != 0:
                    raise ProtonetError(f"layer {name}: BatchNorm statistics cannot be learned (param {i} "
                                        f"has lr_mult {spec.lr_mult})")
            while len(lparam.param) < min(3, len(blobs)):
                lparam.param.add().lr_mult = 0
        for i, tensor in enumerate(blobs):
            spec = lparam.param[i] if i < len(lparam.param) else caffe_pb2.ParamSpec()
            if spec.name and spec.name in shared:
                owner_layer, owner_idx, owner_spec = shared[spec.name]
                owner = self.layers[owner_layer].blobs[owner_idx]
                if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
                    if owner.numel() != tensor.numel():
                        raise ShapeError(f"layer {name}: shared param '{spec.name}' has {owner.numel()} values "
                                         f"(layer {owner_layer}) but blob {i} needs {tensor.numel()}")
                    if tuple(owner.shape) != tuple(tensor.shape):
                        raise ProtonetError(f"layer {name}: sharing param '{spec.name}' between shapes "
                                            f"{list(owner.shape)} and {list(tensor.shape)} (PERMISSIVE) "
                                            "is not supported")
                elif tuple(owner.shape) != tuple(tensor.shape):
                    raise ShapeError(f"layer {name}: shared param '{spec.name}' has shape {list(owner.shape)} "
                                     f"(layer {owner_layer}) but blob {i} has shape {list(tensor.shape)}")
                for field in ("lr_mult", "decay_mult"):
                    if spec.HasField(field):
                        if owner_spec.HasField(field) and getattr(owner_spec, field) != getattr(spec, field):
                            raise ProtonetError(f"layer {name}: shared param '{spec.name}' has {field} "
                                                f"{getattr(spec, field)}, layer {owner_layer} gives "
                                                f"{getattr(owner_spec, field)}")
                        setattr(owner_spec, field, getattr(spec, field))
                        self._set_owner_mult(owner_layer, owner_idx, owner_spec)
                layer.register_parameter(layer._blob_names[i], owner)
                continue
            owner_spec = caffe_pb2.ParamSpec()
            owner_spec.CopyFrom(spec)
            if spec.name:
                shared[spec.name] = (name, i, owner_spec)
            self._owners.append([name, i, owner_spec.lr_mult, owner_spec.decay_mult])

    def _set_owner_mult(self, layer_name, idx, spec):
        for rec in self._owners:
            if rec[0] == layer_name and rec[1] == idx:
                rec[2], rec[3] = spec.lr_mult, spec.decay_mult

    # ------------------------------------------------------------------ views
    @property
    def params(self):
        """Layer name -> list of its blob tensors in Caffe's order (layers with blobs only)."""
        return OrderedDict((n, l.blobs) for n, l in self.layers.items() if len(l.blobs))

    @property
    def learnable_params(self):
        """(tensor, lr_mult, decay_mult) for every blob the net owns, in Caffe's order; a shared blob once.
        Like Caffe's learnable_params this includes blobs with lr_mult 0 (BatchNorm statistics)."""
        return [(self.layers[ln].blobs[i], lr, decay) for ln, i, lr, decay in self._owners]

    @property
    def owned_blobs(self):
        """(layer name, blob index) of every blob the net owns (a shared blob at its owner), Caffe's order."""
        return [(ln, i) for ln, i, _, _ in self._owners]

    @property
    def learnable_param_names(self):
        """'layer/index' for each entry of learnable_params."""
        return [f"{ln}/{i}" for ln, i, _, _ in self._owners]

    # ------------------------------------------------------------------ running
    def set_inference(self, enabled: bool = True, precision: str = "fp32", channels_last: bool | None = None,
                      fuse: bool = True) -> None:
        """How forward runs with gradients off.

        Args:
            enabled: inference mode (the default) or, False, layer by layer as with gradients.
            precision: "fp32" or "bf16" (needs a CPU with native bfloat16, or a GPU).
            channels_last: activations channels-last; None picks it where it pays (the CPU).
            fuse: fold BatchNorm/Scale into convolutions and fuse their ReLU.
        """
        if enabled:
            check_precision(precision, self._device_probe.device)
            self._inference = InferenceOptions(precision, channels_last, fuse, explicit=True)
        else:
            self._inference = None
        self._inference_plans = {}

    def weights_changed(self) -> None:
        """Drop the packed inference weights. Needed only after writes that bypass a tensor's version
        counter (through `.data`, numpy views or collectives); in-place torch ops are seen."""
        self._inference_plans = {}

    def fused_layers(self) -> list:
        """The layer names of each fused group (convolution first) of the last whole-net inference pass."""
        plan = self._inference_plans.get(None)
        return plan.fused_groups if plan is not None else []

    def _inference_plan(self, wanted, steps):
        # Tracers and compilers see the layer-by-layer graph (checked first: dynamo cannot trace
        # is_inference_mode_enabled).
        if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
            return None
        if self._inference is None or torch.is_grad_enabled():
            return None
        if not self._inference.explicit and not torch.is_inference_mode_enabled():
            return None
        if torch.is_autocast_enabled(self._device_probe.device.type):
            return None
        plan = self._inference_plans.get(wanted)
        if plan is None or plan.stale():
            plan = self._inference_plans[wanted] = InferencePlan(self, self._inference, steps)
        return plan

    def forward(self, *args: torch.Tensor, outputs: str | Sequence[str] | None = None,
                **inputs: torch.Tensor) -> "dict[str, torch.Tensor] | torch.Tensor":
        """Run the net.

        Args:
            *args: input blobs in the order of `input_names` (`net(x)` for a one-input net).
            outputs: a blob name or a list of them: only the layers these need run (data layers
                and side effects such as result files included), and only these are returned.
            **inputs: input blobs by name; also the tops of data layers, which then do not run.

        Returns:
            Without `outputs`, a dict of every named blob; with a list, a dict of those blobs;
            with one name, that blob.
        """
        inputs = self._bind_positional(args, inputs)
        wanted = None if outputs is None else ([outputs] if isinstance(outputs, str) else list(outputs))
        steps = self._steps if wanted is None else self._plan(tuple(wanted))
        device = self._device_probe.device
        dtype = self._device_probe.dtype
        plan = self._inference_plan(None if wanted is None else tuple(wanted), steps)
        blobs = plan.run(inputs, device, dtype) if plan is not None else self._run_steps(steps, inputs, device, dtype)
        if wanted is None:
            return blobs
        return blobs[wanted[0]] if isinstance(outputs, str) else OrderedDict((n, blobs[n]) for n in wanted)

    def _run_steps(self, steps, inputs, device, dtype):
        """Layer by layer, as autograd needs it."""
        blobs = OrderedDict()
        for step in steps:
            is_data = getattr(step.layer, "is_data", False)
            if step.is_input or (is_data and all(t in inputs for t in step.tops)):
                for t in step.tops:
                    if t not in inputs:
                        raise ProtonetError(f"net {self.name or '?'}: missing input blob '{t}'")
                    blobs[t] = self._as_tensor(inputs[t], device, dtype)
                continue
            args = [blobs[b].detach() if cut else blobs[b] for b, cut in zip(step.bottoms, step.detach)]
            out = step.layer.forward_in_place(*args) if step.overwrite else step.layer(*args)
            out = () if out is None else ((out,) if isinstance(out, torch.Tensor) else out)
            if len(out) != len(step.tops):
                raise ProtonetError(f"layer {step.name}: returned {len(out)} tops, expected {len(step.tops)}")
            for t, v in zip(step.tops, out):
                if is_data:
                    v = torch.as_tensor(v)
                    v = v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                blobs[t] = v
        return blobs

    def _bind_positional(self, args, inputs):
        data_tops = {t for s in self._steps if getattr(s.layer, "is_data", False) for t in s.tops}
        for key in inputs:
            if key not in self.input_names and key not in data_tops:
                raise ProtonetError(f"net {self.name or '?'}: '{key}' is not an input blob "
                                    f"(inputs: {', '.join(self.input_names) or 'none'})")
        if not args:
            return inputs
        if len(args) > len(self.input_names):
            raise ProtonetError(f"net {self.name or '?'}: {len(args)} positional inputs given, the net has "
                                f"{len(self.input_names)} ({', '.join(self.input_names) or 'none'})")
        bound = dict(zip(self.input_names, args))
        twice = sorted(set(bound) & set(inputs))
        if twice:
            raise ProtonetError(f"net {self.name or '?'}: input '{twice[0]}' given by position and by name")
        return {**bound, **inputs}

    def _plan(self, wanted):
        """The steps that the blobs `wanted` need, in order (cached per tuple of names)."""
        plan = self._plans.get(wanted)
        if plan is None:
            unknown = [n for n in wanted if n not in self.blob_shapes]
            if unknown:
                raise ProtonetError(f"net {self.name or '?'}: no blob '{unknown[0]}' (blobs: "
                                    f"{', '.join(list(self.blob_shapes)[:12])}{', ...' if len(self.blob_shapes) > 12 else ''})")
            need, plan = set(wanted), []
            for step in reversed(self._steps):
                if any(t in need for t in step.tops):
                    plan.append(step)
                    need.difference_update(step.tops)
                    need.update(step.bottoms)  # an in-place top stays needed: its producer runs too
            plan = self._plans[wanted] = plan[::-1]
        return plan

    def _as_tensor(self, value, device, dtype):
        t = torch.as_tensor(value)
        if t.is_floating_point():
            t = t.to(device=device, dtype=dtype)
            if self.force_backward and not t.requires_grad:
                t = t.detach().requires_grad_(True)
        else:
            t = t.to(device=device)
        return t

    def loss(self, blobs: "dict[str, torch.Tensor]") -> torch.Tensor:
        """Sum over the loss blobs of weight * blob.sum() (Caffe's net loss)."""
        total = None
        for name, w in self.loss_weights.items():
            term = blobs[name].sum() * w
            total = term if total is None else total + term
        if total is None:
            return torch.zeros((), device=self._device_probe.device, dtype=self._device_probe.dtype)
        return total

    # ------------------------------------------------------------------ weights
    def load_weights(self, source: "str | os.PathLike | Sequence | caffe_pb2.NetParameter",
                     strict: bool = False) -> list[str]:
        """Caffe's CopyTrainedLayersFrom: blobs copied by layer name, every shape checked.

        Args:
            source: a NetParameter, a path, a list of paths, or 'a.caffemodel,b.caffemodel'
                (later files win).
            strict: (--strict-weights) an error when no layer at all was copied; otherwise a file
                none of whose layers is a layer of this net is a warning naming both (the net keeps
                its fillers).

        Returns:
            The names of the layers with blobs that no source provided.
        """
        sources = weight_sources(source)
        copied = set()
        for where, layers in sources:
            matched = copy_layers(self.layers, where, layers)
            copied |= matched
            with_blobs = sum(1 for _, blobs in layers if blobs)
            if with_blobs and not matched:
                log.warning("%s: none of its %d layers with weights is a layer of %s; nothing was copied from it",
                            where, with_blobs, self.source)
        if strict and not copied:
            raise ProtonetError(f"{', '.join(w for w, _ in sources)}: no layer matches a layer of {self.source} "
                                "(--strict-weights)")
        missing = [n for n, l in self.layers.items() if len(l.blobs) and n not in copied]
        if missing:
            log.info("Layers not in the weights file(s), keeping their fillers: %s", ", ".join(missing))
        return missing

    def to_proto(self, with_blobs: bool = True) -> caffe_pb2.NetParameter:
        """The net definition (the layers this state includes) with its blobs, as Caffe's Net::ToProto."""
        out = caffe_pb2.NetParameter()
        if self.name:
            out.name = self.name
        if self.force_backward:
            out.force_backward = True
        out.state.CopyFrom(self.state)
        for lparam, (name, layer) in zip(self.net_param.layer, self.layers.items()):
            dst = out.layer.add()
            dst.CopyFrom(lparam)
            del dst.blobs[:]
            if with_blobs:
                for t in layer.blobs:
                    blob = array_to_blob(t.detach().to("cpu", torch.float32), blob=dst.blobs.add())
                    blob.shape.SetInParent()
        return out

    def save_weights(self, path: "str | os.PathLike") -> None:
        """Write a .caffemodel (atomically) that Caffe and OpenCV read."""
        # One entry per layer in order: layers may share a name (Caffe writes each with its blobs).
        blobs = [[t.detach().to("cpu", torch.float32) for t in l.blobs] if len(l.blobs) else None
                 for l in self.layers.values()]
        write_caffemodel(self.to_proto(with_blobs=False), path, blobs=blobs)

    def share_weights_from(self, other: "Net") -> None:
        """Caffe's ShareTrainedLayersWith: every layer with the same name uses `other`'s blob tensors."""
        for name, src in other.layers.items():
            layer = self.layers.get(name)
            if layer is None:
                continue
            src_blobs = src.blobs
            if len(src_blobs) != len(layer.blobs):
                raise ShapeError(f"layer {name}: cannot share {len(src_blobs)} blobs with a layer of "
                                 f"{len(layer.blobs)} blobs")
            for i, (mine, theirs) in enumerate(zip(layer.blobs, src_blobs)):
                if tuple(mine.shape) != tuple(theirs.shape):
                    raise ShapeError(f"layer {name} blob {i}: cannot share shape {list(theirs.shape)} "
                                     f"with {list(mine.shape)}")
                layer.register_parameter(layer._blob_names[i], theirs)

    def extra_repr(self):
        return f"name={self.name!r}, phase={'TRAIN' if self.phase == caffe_pb2.TRAIN else 'TEST'}"
