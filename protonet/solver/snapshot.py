"""Snapshots: Caffe's PREFIX_iter_N.caffemodel + PREFIX_iter_N.solverstate pairs, and restoring them.

Two formats, as Caffe's `snapshot_format`: BINARYPROTO (.caffemodel / .solverstate, protobuf) and
HDF5 (.caffemodel.h5 / .solverstate.h5). HDF5 layouts as Caffe writes them: weights in group
`data` (and `diff` with snapshot_diff), one group per layer holding datasets "0", "1", ... in blob
order (only blobs a layer owns, as Net::ToHDF5); solver state as datasets iter, learned_net,
current_step, iter_last_event, minimum_loss and group `history` with "0".."n-1".
A snapshot is a pair: the model is written first, then the state naming it, each to a temporary
name beside its final one and renamed (io/atomic.py). When either cannot be written (a full disk,
a quota, a read-only or forbidden directory) the new model is removed again: the newest complete
pair is still the previous one, and the error is one line with the path and the space needed.
"""
import contextlib
import dataclasses
import os
import re

import numpy as np
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.atomic import WriteError, atomic_path, remove_stale, write_error
from protonet.io.blobs import array_to_blob
from protonet.io.caffemodel import write_caffemodel
from protonet.io.solverstate import (make_solverstate, read_solverstate, solverstate_history_arrays,
                                     write_solverstate)


@dataclasses.dataclass
class SavedState:
    """What a solverstate holds besides the weights: Progress fields, history, the model it names."""

    fields: dict          # iter, current_step, iter_last_event, minimum_loss (lr_policy.Progress)
    history: list         # float32 arrays in the solver's learnable-parameter order
    learned_net: str | None


class Snapshots:
    """Names, writes and reads the snapshot pairs of one solver (its SolverParameter and file)."""

    def __init__(self, param, solver_path=None):
        self.param = param
        self.solver_path = solver_path

    @property
    def hdf5(self):
        return self.param.snapshot_format == caffe_pb2.SolverParameter.HDF5

    @property
    def prefix(self):
        prefix = self.param.snapshot_prefix
        if not prefix and self.solver_path:
            # newer Caffe: default prefix is the solver file name without extension
            prefix = os.path.splitext(self.solver_path)[0]
        return prefix

    def filename(self, iteration, extension):
        return f"{self.prefix}_iter_{iteration}{extension}"

    def check_writable(self):
        """Caffe's CheckSnapshotWritePermissions, at start rather than after hours of training
        (the directory is created if missing, where Caffe would stop)."""
        p = self.param
        if not (p.snapshot or p.snapshot_after_train):
            return
        directory = os.path.dirname(os.path.abspath(self.filename(0, ".tempfile")))
        probe = os.path.join(directory, f".protonet-probe-{os.getpid()}")
        try:
            os.makedirs(directory, exist_ok=True)
            with open(probe, "wb"):
                pass
            os.unlink(probe)
        except OSError as exc:
            raise ProtonetError(f"snapshot_prefix '{p.snapshot_prefix}': cannot write snapshots in {directory} "
                                f"({exc.strerror})") from None

    def remove_stale(self, log):
        """Remove the temporaries of this prefix's snapshots that a killed run left behind."""
        directory = os.path.dirname(os.path.abspath(self.filename(0, "")))
        names = re.escape(os.path.basename(self.prefix)) + r"_iter_\d+\.(?:caffemodel|solverstate)(?:\.h5)?"
        removed = remove_stale(directory, names)
        if removed:
            log.info("Removed %d unfinished snapshot file(s) of an interrupted run: %s", len(removed),
                     ", ".join(os.path.basename(r) for r in removed))
        return removed

    def newest_pair(self):
        """(caffemodel, solverstate) of the highest iteration whose state and model both exist, or None."""
        directory = os.path.dirname(os.path.abspath(self.filename(0, "")))
        base = os.path.basename(self.prefix)
        pattern = re.compile(re.escape(base) + r"_iter_(\d+)\.solverstate(\.h5)?$")
        try:
            names = os.listdir(directory)
        except OSError:
            return None
        pairs = []
        for name in names:
            m = pattern.match(name)
            if not m:
                continue
            state = os.path.join(directory, name)
            model = state[:-len(".solverstate" + (m.group(2) or ""))] + ".caffemodel" + (m.group(2) or "")
            if os.path.isfile(model):
                pairs.append((int(m.group(1)), bool(m.group(2)), model, state))
        if not pairs:
            return None
        _, _, model, state = max(pairs)
        return model, state

    def write(self, net, updater, progress, log):
        """Write the pair for `progress.iter`: the weights of `net`, then the state naming them.
        Either both files are there afterwards, or neither (and a WriteError says why)."""
        ext = ".h5" if self.hdf5 else ""
        model = self.filename(progress.iter, ".caffemodel" + ext)
        state_path = self.filename(progress.iter, ".solverstate" + ext)
        kind = "HDF5 file" if self.hdf5 else "binary proto file"
        written = []
        try:
            log.info("Snapshotting to %s %s", kind, model)
            if self.hdf5:
                write_weights_h5(net, model, with_diff=self.param.snapshot_diff)
            else:
                _write_caffemodel(net, model, with_diff=self.param.snapshot_diff)
            written.append(model)
            log.info("Snapshotting solver state to %s %s", kind, state_path)
            if self.hdf5:
                write_state_h5(state_path, progress, model, updater.history_arrays())
            else:
                write_solverstate(solver_state(progress, model, ()), state_path, history=updater.history_arrays())
        except BaseException as exc:
            for path in written:  # half a pair is no snapshot: the previous pair stays the newest
                with contextlib.suppress(OSError):
                    os.unlink(path)
            if isinstance(exc, WriteError) and exc.errno is not None:
                needed = _pair_bytes(net, updater, self.param.snapshot_diff)
                raise write_error(OSError(exc.errno, os.strerror(exc.errno)), exc.path, needed) from None
            raise
        return model, state_path

    @staticmethod
    def read(state_file):
        """The SavedState of a .solverstate or .solverstate.h5; its learned_net resolved to a file
        that exists (the snapshot directory may have moved: then the weights beside the state)."""
        state_file = os.fspath(state_file)
        if state_file.endswith((".caffemodel", ".caffemodel.h5")):
            raise ProtonetError(f"{state_file}: is a model, not a solver state: give its .solverstate to "
                                "resume, or --weights to finetune from it")
        if not os.path.isfile(state_file):
            raise ProtonetError(f"{state_file}: no such solver state")
        if state_file.endswith(".h5"):
            fields, history = read_state_h5(state_file)
            learned = fields.pop("learned_net")
            stem, model_ext = state_file[:-len(".solverstate.h5")], ".caffemodel.h5"
        else:
            state = read_solverstate(state_file)
            learned = state.learned_net if state.HasField("learned_net") else None
            fields = dict(iter=int(state.iter), current_step=int(state.current_step),
                          iter_last_event=int(state.iter_last_event), minimum_loss=float(state.minimum_loss))
            history = solverstate_history_arrays(state, state_file)
            stem, model_ext = os.path.splitext(state_file)[0], ".caffemodel"
        if learned and not os.path.exists(learned):
            beside = stem + model_ext
            if not os.path.exists(beside):
                raise ProtonetError(f"{state_file}: incomplete snapshot pair: its model '{learned}' does not "
                                    f"exist (nor does {beside})")
            learned = beside
        return SavedState(fields, history, learned or None)


def solver_state(progress, model_filename, history):
    """A SolverState message for `progress` naming `model_filename`, with `history` arrays."""
    state = make_solverstate(progress.iter, model_filename, progress.current_step, history)
    state.iter_last_event = progress.iter_last_event
    state.minimum_loss = progress.minimum_loss
    return state


def _pair_bytes(net, updater, with_diff):
    """About the bytes a snapshot pair takes: 4 per value of every blob (twice with diffs) and of
    the history, the net definition, and a little per blob."""
    blobs = [t for layer in net.layers.values() for t in layer.blobs]
    values = sum(t.numel() for t in blobs) * (2 if with_diff else 1) + sum(h.numel() for h in updater.rule.history)
    definition = net.to_proto(with_blobs=False).ByteSize()
    return 4 * values + definition + 32 * (len(blobs) + len(updater.rule.history)) + 256


def _write_caffemodel(net, path, with_diff=False):
    if with_diff:
        net_param = net.to_proto(with_blobs=True)
        for layer in net_param.layer:
            for blob, tensor in zip(layer.blobs, net.layers[layer.name].blobs):
                g = tensor.grad if tensor.grad is not None else torch.zeros_like(tensor)
                blob.diff.extend(g.detach().float().cpu().numpy().ravel().tolist())
        write_caffemodel(net_param, path)
        return
    # blobs streamed from the tensors, without building protobuf messages for them
    blobs = {name: [t.detach().to("cpu", torch.float32).contiguous() for t in layer.blobs]
             for name, layer in net.layers.items() if len(layer.blobs)}
    write_caffemodel(net.to_proto(with_blobs=False), path, blobs=blobs)


def weights_source(path):
    """What Net.load_weights takes for a weights file: the path, or the blobs of a .caffemodel.h5."""
    if os.fspath(path).endswith(".h5"):
        return read_weights_h5(path)
    return path


# ---------------------------------------------------------------------- HDF5 (h5py)

def _h5py():
    import h5py  # optional dependency, needed only for snapshot_format: HDF5

    return h5py


def _write_h5(path, fill):
    """Write an HDF5 file through a temporary name and a rename: `fill(h5py.File)`."""
    h5py = _h5py()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            fill(f)
        fd = os.open(tmp, os.O_RDONLY)  # on disk before the rename, as atomic_open's files
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_weights_h5(net, path, with_diff=False):
    owned = set(net.owned_blobs)

    def fill(f):
        groups = [("data", False)] + ([("diff", True)] if with_diff else [])
        for group_name, diff in groups:
            group = f.create_group(group_name)
            for name, layer in net.layers.items():
                g = group.create_group(name)
                for i, t in enumerate(layer.blobs):
                    if (name, i) not in owned:
                        continue
                    src = t.grad if diff else t
                    arr = (src.detach().float().cpu().numpy() if src is not None
                           else np.zeros(tuple(t.shape), np.float32))
                    g.create_dataset(str(i), data=np.ascontiguousarray(arr, dtype=np.float32))

    _write_h5(path, fill)


def read_weights_h5(path):
    """A NetParameter holding the blobs of a .caffemodel.h5 (for Net.load_weights)."""
    h5py = _h5py()
    net = caffe_pb2.NetParameter()
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f:
                raise ProtonetError(f"{path}: not a Caffe HDF5 weights file (no 'data' group)")
            for name, group in f["data"].items():
                layer = net.layer.add(name=name)
                for key in sorted(group.keys(), key=int):
                    array_to_blob(np.asarray(group[key], dtype=np.float32), blob=layer.blobs.add())
    except OSError as exc:
        raise ProtonetError(f"{path}: cannot read HDF5 weights ({exc})") from None
    return net


def write_state_h5(path, progress, learned_net, history):
    def fill(f):
        f.create_dataset("iter", data=np.array([progress.iter], np.int32))
        f.create_dataset("learned_net", data=np.bytes_(learned_net))
        f.create_dataset("current_step", data=np.array([progress.current_step], np.int32))
        f.create_dataset("iter_last_event", data=np.array([progress.iter_last_event], np.int32))
        f.create_dataset("minimum_loss", data=np.array([progress.minimum_loss], np.float32))
        g = f.create_group("history")
        for i, h in enumerate(history):
            g.create_dataset(str(i), data=np.asarray(h, np.float32))

    _write_h5(path, fill)


def read_state_h5(path):
    """(fields dict, history arrays) of a .solverstate.h5."""
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as f:
            def scalar(name, default):
                return np.asarray(f[name]).reshape(-1)[0] if name in f else default

            learned = None
            if "learned_net" in f:
                raw = f["learned_net"][()]
                learned = raw.decode() if isinstance(raw, bytes) else str(raw)
            fields = dict(iter=int(scalar("iter", 0)), current_step=int(scalar("current_step", 0)),
                          iter_last_event=int(scalar("iter_last_event", 0)),
                          minimum_loss=float(scalar("minimum_loss", 1e38)), learned_net=learned)
            hist = f["history"] if "history" in f else {}
            history = [np.asarray(hist[k], np.float32) for k in sorted(hist.keys(), key=int)]
    except OSError as exc:
        raise ProtonetError(f"{path}: cannot read the HDF5 solver state ({exc})") from None
    return fields, history
