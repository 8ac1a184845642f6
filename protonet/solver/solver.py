"""The training loop: Caffe's Solver (Step, Solve, TestAll) on a protonet Net.

What happens per iteration, in Caffe's order:
  test pass (every test_interval, and at iteration 0 with test_initialization) ->
  iter_size forward/backward passes accumulating gradients -> loss averaged over iter_size and
  smoothed over average_loss -> display -> (data-parallel: gradients averaged over processes) ->
  learning rate -> update -> ++iter -> signal request -> snapshot -> stop on request.
The log lines keep Caffe's shapes (see logger.py) so Caffe's log tools read them. Snapshots and
restoring are in snapshot.py, test passes in testing.py, the data-parallel collectives in parallel.py.
"""
import contextlib
import dataclasses
import math
import os
import random
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from google.protobuf import text_format

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.prototxt import read_prototxt, read_solver_prototxt
from protonet.layers.base import NetContext
from protonet.net.net import Net
from protonet.solver import parallel, testing
from protonet.solver.debug import DebugInfo
from protonet.solver.logger import format_float, get_logger
from protonet.solver.progress import TrainingClock
from protonet.solver.scalars import ScalarLog
from protonet.solver.lr_policy import Progress, check_policy, learning_rate
from protonet.solver.signals import NONE, SNAPSHOT, STOP
from protonet.solver.snapshot import Snapshots, weights_source
from protonet.solver.updates import LossScaler, Updater, solver_type

log = get_logger("solver")

_f32 = np.float32


class TrainingDiverged(ProtonetError):
    """The loss became NaN or infinite; training stopped before updating the weights."""


@dataclasses.dataclass
class RunOptions:
    """How to run, beside what the solver prototxt says (the command line's flags)."""

    device: str = "cpu"
    stages: tuple = ()
    level: int = 0
    amp: str | None = None          # None, "bf16" or "fp16": autocast the forward passes
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1
    data_workers: int | None = None
    data_shuffle: bool = False        # data layers shuffle their records every epoch
    reencode_jpeg: bool = False       # Caffe's JPEG round trips in AnnotatedData (bit-parity)
    data_on_device: bool = False      # AnnotatedData: photometric + resize/mean/scale on the device
    skip_data_on_resume: bool = True  # resume reads the data where the snapshot left it
    allow_python_layers: bool = False  # a prototxt's Python layers run code: only when asked
    max_memory: int | None = None      # bytes a net may need when built (None: the machine's memory)
    strict_data: bool = False          # a corrupt or bad record is an error, not skipped with a warning
    strict_weights: bool = False       # --weights of which no layer matches the net are an error
    progress_bars: bool = False       # test passes draw a bar (stderr is a terminal), else log lines
    tensorboard_dir: str | None = None  # also write the log's numbers as TensorBoard scalars here


def read_solver(source):
    """A SolverParameter from a path or a message (copied), with the old enum type upgraded."""
    if isinstance(source, caffe_pb2.SolverParameter):
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(source)
        if not param.HasField("type") and param.HasField("solver_type"):
            param.type = solver_type(param)
        return param
    return read_solver_prototxt(os.fspath(source))


class Solver:
    """Caffe's SGDSolver family (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam) on protonet nets.

    Args:
        param: a SolverParameter, or the path of a solver prototxt.
        options: how to run beside the prototxt (device, stages, amp, data-parallel rank...).
        action: a callable returning NONE/STOP/SNAPSHOT, asked after every iteration and before
            every test batch (the signal handlers' answer).
        net_factory: builds the train and test nets (default: Net).
        solver_path: the file a SolverParameter message came from.
    """

    def __init__(self, param: "caffe_pb2.SolverParameter | str | os.PathLike", options: "RunOptions | None" = None,
                 action: "Callable[[], int] | None" = None, net_factory: "Callable | None" = None,
                 solver_path: "str | os.PathLike | None" = None) -> None:
        self.param = read_solver(param)
        if solver_path is None and not isinstance(param, caffe_pb2.SolverParameter):
            solver_path = os.fspath(param)
        self.solver_path = solver_path  # names the snapshots when the solver has no snapshot_prefix
        self.options = options or RunOptions()
        self.action = action
        self.is_root = self.options.rank == 0
        self.device = torch.device(self.options.device)
        self._net_factory = net_factory
        p = self.param
        if p.average_loss < 1:
            raise ProtonetError("solver: average_loss must be at least 1")
        if p.iter_size < 1:
            raise ProtonetError("solver: iter_size must be at least 1")
        check_policy(p)
        self.type = solver_type(p)
        if self.is_root:
            log.info("Initializing solver from parameters: \n%s", text_format.MessageToString(p))
        self.seed = int(p.random_seed) if p.random_seed >= 0 else None
        if self.seed is not None:
            # Caffe's multi-GPU solvers add the device id; here the rank
            s = self.seed + self.options.rank
            torch.manual_seed(s)
            np.random.seed(s % 2**32)
            random.seed(s)
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets() if self.is_root else []
        self.updater = Updater(p, self.net.learnable_params, log=self.log_info)
        self.progress = Progress()
        self.smoothed_loss = _f32(0)
        self.losses = []
        self.requested_early_exit = False
        self.stop_signal = None      # the signal whose effect stopped training (set by launch.run_job)
        self.last_snapshot = None
        self._scaler = LossScaler() if self.options.amp == "fp16" else None
        self._skip_batches = 0
        self.rate = None
        self.clock = TrainingClock(self.net, self._images_per_iter(), p.max_iter, p.test_interval)
        self.scalars = None
        if self.is_root:
            snapshots = Snapshots(self.param, self.solver_path)
            snapshots.check_writable()
            snapshots.remove_stale(log)
            if self.options.tensorboard_dir:
                self.scalars = ScalarLog(self.options.tensorboard_dir)
            log.info("Solver scaffolding done.")

    def _images_per_iter(self):
        """Images one iteration trains on over every process (0 when the net has no data layer)."""
        batch = next((layer.top_shapes[0][0] for layer in self.net.layers.values()
                      if layer.is_data and layer.top_shapes and layer.top_shapes[0]), 0)
        return int(batch) * self.param.iter_size * self.options.world_size

    def close(self):
        """Flush and close what the solver writes beside its snapshots (TensorBoard scalars)."""
        if self.scalars is not None:
            self.scalars.close()
            self.scalars = None

    # ------------------------------------------------------------------ nets
    def _context(self, phase):
        o = self.options
        return NetContext(phase=phase, seed=self.seed, rank=o.rank, world_size=o.world_size,
                          data_workers=o.data_workers, data_shuffle=o.data_shuffle, reencode_jpeg=o.reencode_jpeg,
                          data_on_device=o.data_on_device, allow_python_layers=o.allow_python_layers,
                          max_memory=o.max_memory, strict_data=o.strict_data)

    def _make_net(self, net_param, phase, source=None):
        factory = self._net_factory
        if factory is None:
            factory = Net
        net = factory(net_param, phase=phase, ctx=self._context(phase))
        if source:
            net.source = source  # the file named in the solver, for messages
        net.to(self.device)
        if self.options.channels_last:
            to_channels_last(net)
        return net

    def _read_net(self, path):
        return read_prototxt(path, caffe_pb2.NetParameter)

    def _init_train_net(self):
        p = self.param
        fields = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        if len(fields) != 1:
            raise ProtonetError("solver: give the train net with exactly one of net, net_param, train_net, "
                                f"train_net_param (found {len(fields)}: {', '.join(fields) or 'none'})")
        field = fields[0]
        if field.endswith("_param"):
            net_param = caffe_pb2.NetParameter()
            net_param.CopyFrom(getattr(p, field))
            if self.is_root:
                log.info("Creating training net specified in %s.", field)
        else:
            if self.is_root:
                log.info("Creating training net from %s file: %s", field, getattr(p, field))
            net_param = self._read_net(getattr(p, field))
        state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
        state.MergeFrom(net_param.state)
        state.MergeFrom(p.train_state)
        if self.options.level:
            state.level = int(self.options.level)
        state.stage.extend(s for s in self.options.stages if s not in state.stage)
        net_param.state.CopyFrom(state)
        return self._make_net(net_param, caffe_pb2.TRAIN, source=getattr(p, field) if not field.endswith("_param")
                              else f"the solver's {field}")

    def _init_test_nets(self):
        p = self.param
        sources, params = [], []
        for net_param in p.test_net_param:
            sources.append("test_net_param")
            params.append(net_param)
        for path in p.test_net:
            sources.append(f"test_net file: {path}")
            params.append(self._read_net(path))
        generic = p.HasField("net") + p.HasField("net_param")
        n_specific = len(params)
        if generic:
            if len(p.test_iter) < n_specific:
                raise ProtonetError("solver: test_iter must be given for each test net")
        elif len(p.test_iter) != n_specific:
            raise ProtonetError(f"solver: test_iter must be given for each test net ({n_specific} test nets, "
                                f"{len(p.test_iter)} test_iter values)")
        for _ in range(len(p.test_iter) - n_specific):
            if p.HasField("net_param"):
                sources.append("net_param")
                params.append(p.net_param)
            else:
                sources.append(f"net file: {p.net}")
                params.append(self._read_net(p.net))
        if len(p.test_state) and len(p.test_state) != len(params):
            raise ProtonetError("solver: test_state must be unspecified or given once per test net")
        if params and p.test_interval <= 0:
            raise ProtonetError("solver: test nets need test_interval > 0")
        nets = []
        for i, (source, net_param) in enumerate(zip(sources, params)):
            copy = caffe_pb2.NetParameter()
            copy.CopyFrom(net_param)
            state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
            state.MergeFrom(copy.state)
            if len(p.test_state):
                state.MergeFrom(p.test_state[i])
            state.stage.extend(s for s in self.options.stages if s not in state.stage)
            copy.state.CopyFrom(state)
            log.info("Creating test net (#%d) specified by %s", i, source)
            nets.append(self._make_net(copy, caffe_pb2.TEST, source=source))
        return nets

    # ------------------------------------------------------------------ weights and state
    def copy_weights(self, weights: "str | Sequence[str | os.PathLike]") -> None:
        """Caffe's CopyLayers: each file, in order, into the train net and every test net. A file that
        matches no layer is a warning (Net.load_weights); none matching at all, with strict_weights, an error."""
        copied_any = False
        for path in weights.split(",") if isinstance(weights, str) else weights:
            path = os.fspath(path).strip()
            if self.is_root:
                log.info("Finetuning from %s", path)
            source = weights_source(path)
            missing = self.net.load_weights(source)
            copied_any = copied_any or len(missing) < len(self.net.params)
            for net in self.test_nets:
                net.load_weights(source)
        if self.options.strict_weights and not copied_any:
            raise ProtonetError(f"{weights}: no layer matches a layer of the train net {self.net.source} "
                                "(--strict-weights)")

    def snapshot_filename(self, extension: str) -> str:
        """PREFIX_iter_N.EXTENSION for the current iteration."""
        return Snapshots(self.param, self.solver_path).filename(self.progress.iter, extension)

    def snapshot(self) -> tuple:
        """Write PREFIX_iter_N.caffemodel and PREFIX_iter_N.solverstate (or the HDF5 pair), each atomically."""
        pair = Snapshots(self.param, self.solver_path).write(self.net, self.updater, self.progress, log)
        self.last_snapshot = pair
        return pair

    def restore(self, state_file: "str | os.PathLike") -> None:
        """Caffe's Restore: iteration, step, history, and the weights of `learned_net`."""
        state_file = os.fspath(state_file)
        saved = Snapshots.read(state_file)
        if saved.learned_net:
            self.net.load_weights(weights_source(saved.learned_net))
        self.progress = Progress(**saved.fields)
        self.updater.load_history(saved.history, source=state_file)
        if self.options.skip_data_on_resume:
            self._skip_batches = self.progress.iter * self.param.iter_size
            skip_data(self.net, self._skip_batches)

    # ------------------------------------------------------------------ running
    def log_info(self, msg, *args):
        """An info line, from the root process only."""
        if self.is_root:
            log.info(msg, *args)

    def request(self, collective: bool = True) -> int:
        """What the action callable asks now; with several processes, what any of them asks."""
        action = self.action() if self.action is not None else NONE
        if collective and self.options.world_size > 1:
            action = parallel.agree_on_action(action, self.device)
        return action

    def autocast(self) -> contextlib.AbstractContextManager:
        """The forward passes' autocast context (--amp), or none."""
        amp = self.options.amp
        if not amp:
            return contextlib.nullcontext()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _forward_backward(self):
        with self.autocast():
            blobs = self.net(**{})
            loss = self.net.loss(blobs)
        if loss.requires_grad:
            (self._scaler.scale(loss) if self._scaler else loss).backward()
        return blobs, _f32(loss.detach().float().item())

    def _update_smoothed_loss(self, loss, start_iter):
        n = self.param.average_loss
        if len(self.losses) < n:
            self.losses.append(loss)
            size = len(self.losses)
            self.smoothed_loss = _f32((self.smoothed_loss * _f32(size - 1) + loss) / _f32(size))
        else:
            idx = (self.progress.iter - start_iter) % n
            self.smoothed_loss = _f32(self.smoothed_loss + (loss - self.losses[idx]) / _f32(n))
            self.losses[idx] = loss

    def _display_outputs(self, blobs, kind="Train"):
        index = 0
        outputs = {}
        for name in self.net.output_names:
            values = blobs[name].detach().float().cpu().numpy().ravel()
            outputs[name] = values.tolist()
            weight = self.net.loss_weights.get(name, 0.0)
            for v in values:
                suffix = ""
                if weight:
                    suffix = f" (* {format_float(weight)} = {format_float(_f32(weight) * _f32(v))} loss)"
                log.info("    %s net output #%d: %s = %s%s", kind, index, name, format_float(v), suffix)
                index += 1
        return outputs

    def step(self, iters: int) -> None:
        """Caffe's Step: `iters` iterations (tests, display, snapshots and signals on their schedule)."""
        p = self.param
        start_iter = self.progress.iter
        stop_iter = start_iter + iters
        self.losses = []
        self.smoothed_loss = _f32(0)
        self.clock.restart(start_iter)
        while self.progress.iter < stop_iter:
            it = self.progress.iter
            self.net.zero_grad(set_to_none=True)
            if (p.test_interval and it % p.test_interval == 0 and (it > 0 or p.test_initialization)
                    and self.is_root):
                test_start = time.perf_counter()
                self.test_all()
                self.clock.tested(time.perf_counter() - test_start)
                if self.requested_early_exit:
                    break
            display = bool(p.display) and it % p.display == 0
            self.net.train()
            loss = _f32(0)
            blobs = None
            debug = DebugInfo(self.net, log) if display and p.debug_info and self.is_root else None
            try:
                for _ in range(p.iter_size):
                    blobs, one = self._forward_backward()
                    loss = _f32(loss + one)
                    if debug is not None:
                        debug.after_backward()
            finally:
                if debug is not None:
                    debug.remove()
            loss = _f32(loss / _f32(p.iter_size))
            bad = not math.isfinite(float(loss))
            if self.options.world_size > 1:
                # every process must stop together: the divergence flag travels with the gradients
                bad = parallel.average_gradients(self.updater.blobs, self.options.world_size, bad)
            if bad:
                self._diverged(it, loss)
            self._update_smoothed_loss(loss, start_iter)
            outputs = None
            if display and self.is_root:
                log.info("Iteration %d, loss = %s", it, format_float(self.smoothed_loss))
                outputs = self._display_outputs(blobs)
            self._apply_update(display)
            self.progress.iter += 1
            if display and self.is_root:
                self._after_display(it, outputs)
            request = self.request()
            if (self.is_root and p.snapshot and self.progress.iter % p.snapshot == 0) or request == SNAPSHOT:
                if self.is_root:
                    self.snapshot()
            if request == STOP:
                self.requested_early_exit = True
                break

    def _after_display(self, it, outputs):
        """The line after Caffe's display lines (speed, data wait, time left) and the scalars."""
        speed = {}
        if self.progress.iter > self.clock.iter + 1:  # a whole interval to measure
            line, speed = self.clock.report(self.progress.iter)
            log.info("%s", line)
        if self.scalars is not None:
            self.scalars.add("train/smoothed_loss", self.smoothed_loss, it)
            self.scalars.outputs("train", outputs, it)
            self.scalars.add("train/lr", self.rate, it)
            for name in ("images_per_s", "data_wait"):
                if name in speed:
                    self.scalars.add(f"speed/{name}", speed[name], it)

    def _apply_update(self, display):
        rate = learning_rate(self.param, self.progress, self.smoothed_loss, log=self.log_info)
        self.rate = rate
        if display:
            self.log_info("Iteration %d, lr = %s", self.progress.iter, format_float(rate))
        if self._scaler is not None:
            if not self._scaler.unscale(self.updater.blobs):
                self.log_info("Iteration %d, fp16 gradients overflowed: update skipped, loss scale %g",
                           self.progress.iter, self._scaler.scale_value)
                return
        self.updater.apply(rate, self.progress.iter)

    def _diverged(self, it, loss):
        last = self.last_snapshot[0] if self.last_snapshot else None
        msg = (f"Iteration {it}, loss = {format_float(loss)}: training stopped before updating the weights"
               + (f"; the last snapshot is {last}" if last else "; no snapshot was written"))
        if self.is_root:
            log.error(msg)
        raise TrainingDiverged(msg)

    def solve(self, resume_file: "str | os.PathLike | None" = None) -> None:
        """Caffe's Solve: train to max_iter (from a snapshot if given), snapshot, final display/test."""
        p = self.param
        if self.is_root:
            log.info("Solving %s", self.net.name)
            log.info("Learning Rate Policy: %s", p.lr_policy)
        self.requested_early_exit = False
        if resume_file:
            if self.is_root:
                log.info("Restoring previous solver status from %s", resume_file)
            self.restore(resume_file)
        if self.options.world_size > 1:
            parallel.broadcast_params(self.net)
        start_iter = self.progress.iter
        self.step(p.max_iter - self.progress.iter)
        if p.snapshot_after_train and (not p.snapshot or self.progress.iter % p.snapshot != 0) and self.is_root:
            self.snapshot()
        if self.requested_early_exit:
            self.log_info("Optimization stopped early.")
            return
        if p.display and self.progress.iter % p.display == 0:
            with torch.no_grad(), self.autocast():
                self.net.train()
                loss = _f32(self.net.loss(self.net(**{})).float().item())
            self._update_smoothed_loss(loss, start_iter)
            self.log_info("Iteration %d, loss = %s", self.progress.iter, format_float(self.smoothed_loss))
        if p.test_interval and self.progress.iter % p.test_interval == 0 and self.is_root:
            self.test_all()
        self.log_info("Optimization Done.")

    # ------------------------------------------------------------------ testing
    def test_all(self) -> list:
        """Caffe's TestAll: one pass of every test net; their outputs (and mAP) logged."""
        results = testing.test_all(self)
        if self.scalars is not None:
            for i, outputs in enumerate(results):
                if outputs is not None:
                    self.scalars.outputs("test" if len(results) == 1 else f"test{i}", outputs, self.progress.iter)
        return results


# ---------------------------------------------------------------------- helpers

def to_channels_last(net):
    for module in net.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)


def skip_data(net, batches):
    """Advance the data layers by `batches` batches so that a resumed run reads what an
    uninterrupted one would. Layers that cannot skip are left where Caffe leaves them: at the start."""
    if batches <= 0:
        return
    for name, layer in net.layers.items():
        if getattr(layer, "is_data", False):
            skip = getattr(layer, "skip_batches", None)
            if skip is not None:
                skip(batches)
                log.info("Data layer %s: resuming after %d batches", name, batches)
            else:
                log.info("Data layer %s cannot skip ahead: it restarts from its first record (as in Caffe)", name)
