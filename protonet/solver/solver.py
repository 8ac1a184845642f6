"""The training loop: Caffe's Solver (Step, Solve, TestAll, Snapshot, Restore) on a protonet Net.

What happens per iteration, in Caffe's order:
  test pass (every test_interval, and at iteration 0 with test_initialization) ->
  iter_size forward/backward passes accumulating gradients -> loss averaged over iter_size and
  smoothed over average_loss -> display -> (data-parallel: gradients averaged over processes) ->
  learning rate -> update -> ++iter -> signal request -> snapshot -> stop on request.
The log lines keep Caffe's shapes (see logger.py) so Caffe's log tools read them.
"""
import contextlib
import dataclasses
import math
import os
import random
import time

import numpy as np
import torch
from google.protobuf import text_format

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.eval.voc import DetectionAccumulator
from protonet.layers.base import NetContext
from protonet.solver.debug import DebugInfo
from protonet.solver.logger import format_float, get_logger
from protonet.solver.lr_policy import Progress, check_policy, learning_rate
from protonet.solver.updates import Updater, solver_type

log = get_logger("solver")

_f32 = np.float32

# What a signal (or a caller) may ask of the solver between iterations.
NONE, STOP, SNAPSHOT = "none", "stop", "snapshot"


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
    data_device_transform: bool = False  # AnnotatedData: photometric + resize/mean/scale on the device
    skip_data_on_resume: bool = True  # resume reads the data where the snapshot left it
    allow_python_layers: bool = False  # a prototxt's Python layers run code: only when asked


def read_solver(source):
    """A SolverParameter from a path or a message (copied), with the old enum type upgraded."""
    if isinstance(source, caffe_pb2.SolverParameter):
        param = caffe_pb2.SolverParameter()
        param.CopyFrom(source)
        if not param.HasField("type") and param.HasField("solver_type"):
            param.type = solver_type(param)
        return param
    from protonet.io.prototxt import read_solver_prototxt

    return read_solver_prototxt(os.fspath(source))


class Solver:
    """Caffe's SGDSolver family on protonet nets.

    `param`: SolverParameter or path of a solver prototxt. `action`: a callable returning
    NONE/STOP/SNAPSHOT, asked after every iteration and before every test batch (signals).
    """

    def __init__(self, param, options=None, action=None, net_factory=None):
        self.param = read_solver(param)
        self.solver_path = None if isinstance(param, caffe_pb2.SolverParameter) else os.fspath(param)
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
        self.updater = Updater(p, self.net.learnable_params, log=self._info)
        self.progress = Progress()
        self.smoothed_loss = _f32(0)
        self.losses = []
        self.requested_early_exit = False
        self.last_snapshot = None
        self._scaler = _LossScaler() if self.options.amp == "fp16" else None
        self._skip_batches = 0
        if self.is_root:
            self._check_snapshot_writable()
            log.info("Solver scaffolding done.")

    # ------------------------------------------------------------------ nets
    def _context(self, phase):
        o = self.options
        return NetContext(phase=phase, seed=self.seed, rank=o.rank, world_size=o.world_size,
                          data_workers=o.data_workers, allow_python_layers=o.allow_python_layers,
                          extras={"data_device_transform": True} if o.data_device_transform else {})

    def _make_net(self, net_param, phase):
        factory = self._net_factory
        if factory is None:
            from protonet.net.net import Net

            factory = Net
        net = factory(net_param, phase=phase, ctx=self._context(phase))
        net.to(self.device)
        if self.options.channels_last:
            _to_channels_last(net)
        return net

    def _read_net(self, path):
        from protonet.io.prototxt import read_prototxt

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
        return self._make_net(net_param, caffe_pb2.TRAIN)

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
            nets.append(self._make_net(copy, caffe_pb2.TEST))
        return nets

    # ------------------------------------------------------------------ weights and state
    def copy_weights(self, weights):
        """Caffe's CopyLayers: each file, in order, into the train net and every test net."""
        for path in weights.split(",") if isinstance(weights, str) else weights:
            path = os.fspath(path).strip()
            if self.is_root:
                log.info("Finetuning from %s", path)
            source = _weights_source(path)
            self.net.load_weights(source)
            for net in self.test_nets:
                net.load_weights(source)

    def _check_snapshot_writable(self):
        """Caffe's CheckSnapshotWritePermissions, at start rather than after hours of training
        (the directory is created if missing, where Caffe would stop)."""
        p = self.param
        if not (p.snapshot or p.snapshot_after_train):
            return
        directory = os.path.dirname(os.path.abspath(self.snapshot_filename(".tempfile")))
        probe = os.path.join(directory, f".protonet-probe-{os.getpid()}")
        try:
            os.makedirs(directory, exist_ok=True)
            with open(probe, "wb"):
                pass
            os.unlink(probe)
        except OSError as exc:
            raise ProtonetError(f"snapshot_prefix '{p.snapshot_prefix}': cannot write snapshots in {directory} "
                                f"({exc.strerror})") from None

    def snapshot_filename(self, extension):
        prefix = self.param.snapshot_prefix
        if not prefix and self.solver_path:
            # newer Caffe: default prefix is the solver file name without extension
            prefix = os.path.splitext(self.solver_path)[0]
        return f"{prefix}_iter_{self.progress.iter}{extension}"

    def snapshot(self):
        """Write PREFIX_iter_N.caffemodel and PREFIX_iter_N.solverstate, each atomically."""
        from protonet.io.caffemodel import write_caffemodel
        from protonet.io.solverstate import write_solverstate

        if self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5:
            return self._snapshot_hdf5()
        model = self.snapshot_filename(".caffemodel")
        log.info("Snapshotting to binary proto file %s", model)
        if self.param.snapshot_diff:
            net_param = self.net.to_proto(with_blobs=True)
            for layer in net_param.layer:
                for blob, tensor in zip(layer.blobs, self.net.layers[layer.name].blobs):
                    g = tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
                    blob.diff.extend(g.detach().float().cpu().numpy().ravel().tolist())
            write_caffemodel(net_param, model)
        else:
            # blobs streamed from the tensors, without building protobuf messages for them
            blobs = {name: [t.detach().to("cpu", torch.float32).contiguous() for t in layer.blobs]
                     for name, layer in self.net.layers.items() if len(layer.blobs)}
            write_caffemodel(self.net.to_proto(with_blobs=False), model, blobs=blobs)
        state_path = self.snapshot_filename(".solverstate")
        log.info("Snapshotting solver state to binary proto file %s", state_path)
        write_solverstate(self.solver_state(model, with_history=False), state_path,
                          history=self.updater.history_arrays())
        self.last_snapshot = (model, state_path)
        return model, state_path

    def _snapshot_hdf5(self):
        from protonet.solver.hdf5_snapshot import write_state_h5, write_weights_h5

        model = self.snapshot_filename(".caffemodel.h5")
        log.info("Snapshotting to HDF5 file %s", model)
        write_weights_h5(self.net, model, with_diff=self.param.snapshot_diff)
        state_path = self.snapshot_filename(".solverstate.h5")
        log.info("Snapshotting solver state to HDF5 file %s", state_path)
        write_state_h5(state_path, self.progress, model, self.updater.history_arrays())
        self.last_snapshot = (model, state_path)
        return model, state_path

    def solver_state(self, model_filename, with_history=True):
        from protonet.io.solverstate import make_solverstate

        state = make_solverstate(self.progress.iter, model_filename, self.progress.current_step,
                                 self.updater.history_arrays() if with_history else ())
        state.iter_last_event = self.progress.iter_last_event
        state.minimum_loss = self.progress.minimum_loss
        return state

    def restore(self, state_file):
        """Caffe's Restore: iteration, step, history, and the weights of `learned_net`."""
        from protonet.io.solverstate import read_solverstate, solverstate_history_arrays

        state_file = os.fspath(state_file)
        if state_file.endswith(".h5"):
            from protonet.solver.hdf5_snapshot import read_state_h5

            fields, history = read_state_h5(state_file)
            learned = fields.pop("learned_net")
            model_ext = ".caffemodel.h5"
        else:
            state = read_solverstate(state_file)
            learned = state.learned_net if state.HasField("learned_net") else None
            fields = dict(iter=int(state.iter), current_step=int(state.current_step),
                          iter_last_event=int(state.iter_last_event), minimum_loss=float(state.minimum_loss))
            history = solverstate_history_arrays(state)
            model_ext = ".caffemodel"
        if learned:
            if not os.path.exists(learned):
                # the snapshot directory may have moved: try the weights next to the state file
                stem = state_file[:-len(".solverstate.h5")] if state_file.endswith(".solverstate.h5") else \
                    os.path.splitext(state_file)[0]
                beside = stem + model_ext
                if not os.path.exists(beside):
                    raise ProtonetError(f"{state_file}: its learned_net '{learned}' does not exist "
                                        f"(nor does {beside})")
                learned = beside
            self.net.load_weights(_weights_source(learned))
        self.progress = Progress(**fields)
        self.updater.load_history(history, source=state_file)
        if self.options.skip_data_on_resume:
            self._skip_batches = self.progress.iter * self.param.iter_size
            _skip_data(self.net, self._skip_batches)

    # ------------------------------------------------------------------ running
    def _info(self, msg, *args):
        if self.is_root:
            log.info(msg, *args)

    def _request(self, collective=True):
        action = self.action() if self.action is not None else NONE
        if collective and self.options.world_size > 1:
            action = _agree_on_action(action, self.device)
        return action

    def _autocast(self):
        amp = self.options.amp
        if not amp:
            return contextlib.nullcontext()
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _forward_backward(self):
        with self._autocast():
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
        for name in self.net.output_names:
            values = blobs[name].detach().float().cpu().numpy().ravel()
            weight = self.net.loss_weights.get(name, 0.0)
            for v in values:
                suffix = ""
                if weight:
                    suffix = f" (* {format_float(weight)} = {format_float(_f32(weight) * _f32(v))} loss)"
                log.info("    %s net output #%d: %s = %s%s", kind, index, name, format_float(v), suffix)
                index += 1

    def step(self, iters):
        p = self.param
        start_iter = self.progress.iter
        stop_iter = start_iter + iters
        self.losses = []
        self.smoothed_loss = _f32(0)
        timer_start, timer_iter = time.perf_counter(), start_iter
        while self.progress.iter < stop_iter:
            it = self.progress.iter
            self.net.zero_grad(set_to_none=True)
            if (p.test_interval and it % p.test_interval == 0 and (it > 0 or p.test_initialization)
                    and self.is_root):
                self.test_all()
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
                bad = _average_gradients(self.updater.blobs, self.options.world_size, bad)
            if bad:
                self._diverged(it, loss)
            self._update_smoothed_loss(loss, start_iter)
            if display and self.is_root:
                log.info("Iteration %d, loss = %s", it, format_float(self.smoothed_loss))
                self._display_outputs(blobs)
            self._apply_update(display)
            self.progress.iter += 1
            if display and self.is_root and self.progress.iter > timer_iter + 1:
                elapsed = time.perf_counter() - timer_start
                n = self.progress.iter - timer_iter
                log.info("Speed: %.3g iter/s, %.4g s/iter over iterations %d to %d", n / elapsed, elapsed / n,
                         timer_iter, self.progress.iter - 1)
                timer_start, timer_iter = time.perf_counter(), self.progress.iter
            request = self._request()
            if (self.is_root and p.snapshot and self.progress.iter % p.snapshot == 0) or request == SNAPSHOT:
                if self.is_root:
                    self.snapshot()
            if request == STOP:
                self.requested_early_exit = True
                break

    def _apply_update(self, display):
        rate = learning_rate(self.param, self.progress, self.smoothed_loss, log=self._info)
        if display:
            self._info("Iteration %d, lr = %s", self.progress.iter, format_float(rate))
        if self._scaler is not None:
            if not self._scaler.unscale(self.updater.blobs):
                self._info("Iteration %d, fp16 gradients overflowed: update skipped, loss scale %g",
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

    def solve(self, resume_file=None):
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
            _broadcast_params(self.net)
        start_iter = self.progress.iter
        self.step(p.max_iter - self.progress.iter)
        if p.snapshot_after_train and (not p.snapshot or self.progress.iter % p.snapshot != 0) and self.is_root:
            self.snapshot()
        if self.requested_early_exit:
            self._info("Optimization stopped early.")
            return
        if p.display and self.progress.iter % p.display == 0:
            with torch.no_grad(), self._autocast():
                self.net.train()
                loss = _f32(self.net.loss(self.net(**{})).float().item())
            self._update_smoothed_loss(loss, start_iter)
            self._info("Iteration %d, loss = %s", self.progress.iter, format_float(self.smoothed_loss))
        if p.test_interval and self.progress.iter % p.test_interval == 0 and self.is_root:
            self.test_all()
        self._info("Optimization Done.")

    # ------------------------------------------------------------------ testing
    def test_all(self):
        results = []
        for i in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            if self.param.eval_type == "classification":
                results.append(self.test_classification(i))
            elif self.param.eval_type == "detection":
                results.append(self.test_detection(i))
            else:
                raise ProtonetError(f"solver: unknown eval_type '{self.param.eval_type}' "
                                    "(classification or detection)")
        return results

    def _test_batches(self, test_id):
        """Forward passes of test net `test_id`, sharing the train net's weights; stops on request."""
        net = self.test_nets[test_id]
        net.share_weights_from(self.net)
        net.eval()
        for _ in range(self.param.test_iter[test_id]):
            # only the root tests: ask the local handler, without a collective call
            request = self._request(collective=False)
            while request != NONE:
                if request == SNAPSHOT:
                    self.snapshot()
                elif request == STOP:
                    self.requested_early_exit = True
                request = self._request(collective=False)
            if self.requested_early_exit:
                return
            with torch.no_grad(), self._autocast():
                blobs = net(**{})
                loss = _f32(net.loss(blobs).float().item()) if net.loss_weights else _f32(0)
            yield net, blobs, loss

    def test_classification(self, test_id):
        log.info("Iteration %d, Testing net (#%d)", self.progress.iter, test_id)
        net = self.test_nets[test_id]
        scores = None
        sizes = []
        loss = _f32(0)
        for _, blobs, iter_loss in self._test_batches(test_id):
            if self.param.test_compute_loss:
                loss = _f32(loss + iter_loss)
            arrays = [blobs[n].detach().float().cpu().numpy().ravel() for n in net.output_names]
            sizes = [a.size for a in arrays]
            values = np.concatenate(arrays or [np.zeros(0, np.float32)]).astype(np.float32)
            scores = values if scores is None else (scores + values).astype(np.float32)
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return None
        n_iter = self.param.test_iter[test_id]
        if self.param.test_compute_loss:
            log.info("Test loss: %s", format_float(_f32(loss / _f32(n_iter))))
        out = {}
        index = 0
        for name, count in zip(net.output_names, sizes):
            weight = net.loss_weights.get(name, 0.0)
            for _ in range(count):
                mean = _f32(scores[index] / _f32(n_iter))
                suffix = f" (* {format_float(weight)} = {format_float(_f32(weight) * mean)} loss)" if weight else ""
                log.info("    Test net output #%d: %s = %s%s", index, name, format_float(mean), suffix)
                out.setdefault(name, []).append(float(mean))
                index += 1
        return out

    def test_detection(self, test_id):
        log.info("Iteration %d, Testing net (#%d)", self.progress.iter, test_id)
        net = self.test_nets[test_id]
        accumulators = [DetectionAccumulator() for _ in net.output_names]
        loss = _f32(0)
        for _, blobs, iter_loss in self._test_batches(test_id):
            if self.param.test_compute_loss:
                loss = _f32(loss + iter_loss)
            for acc, name in zip(accumulators, net.output_names):
                rows = blobs[name].detach().float().cpu().numpy()
                if rows.ndim < 2 or rows.shape[-1] != 5:
                    raise ProtonetError(f"test net #{test_id}: output '{name}' has shape {list(rows.shape)}; "
                                        "eval_type detection needs DetectionEvaluate rows of width 5")
                acc.add(rows)
        if self.requested_early_exit:
            log.info("Test interrupted.")
            return None
        if self.param.test_compute_loss:
            log.info("Test loss: %s", format_float(_f32(loss / _f32(self.param.test_iter[test_id]))))
        out = {}
        for j, (acc, name) in enumerate(zip(accumulators, net.output_names)):
            m_ap, aps = acc.evaluate(self.param.ap_version)
            for label in acc.missing:
                log.warning("Missing true_pos for label: %d", label)
            if self.param.show_per_class_result:
                for label, ap in aps.items():
                    log.info("class%d: %s", label, format_float(ap))
            log.info("    Test net output #%d: %s = %s", j, name, format_float(m_ap))
            out[name] = (float(m_ap), {k: float(v) for k, v in aps.items()})
        return out


# ---------------------------------------------------------------------- helpers

def _weights_source(path):
    """What Net.load_weights takes for a weights file: the path, or the blobs of a .caffemodel.h5."""
    if os.fspath(path).endswith(".h5"):
        from protonet.solver.hdf5_snapshot import read_weights_h5

        return read_weights_h5(path)
    return path


def _to_channels_last(net):
    for module in net.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=torch.channels_last)


def _skip_data(net, batches):
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


class _LossScaler:
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


def _average_gradients(blobs, world_size, bad=False):
    """Caffe's P2PSync: gradients summed over the processes, then scaled by 1/world_size.
    Returns whether any process flagged `bad` (a non-finite loss)."""
    import torch.distributed as dist

    for b in blobs:
        if b.requires_grad and b.grad is None:
            b.grad = torch.zeros_like(b)
    grads = [b.grad for b in blobs if b.requires_grad]
    device = grads[0].device if grads else (blobs[0].device if blobs else torch.device("cpu"))
    flag = torch.tensor([1.0 if bad else 0.0], device=device)
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [flag])
    dist.all_reduce(flat)
    flat[:-1].mul_(1.0 / world_size)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
    return bool(flat[-1].item() > 0)


def _broadcast_params(net):
    import torch.distributed as dist

    with torch.no_grad():
        for tensor, _, _ in net.learnable_params:
            dist.broadcast(tensor.data, src=0)


def _agree_on_action(action, device):
    """Every process takes the strongest request any of them got (stop > snapshot > none)."""
    import torch.distributed as dist

    code = {NONE: 0, SNAPSHOT: 1, STOP: 2}[action]
    t = torch.tensor([code], dtype=torch.int32, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return {0: NONE, 1: SNAPSHOT, 2: STOP}[int(t.item())]

