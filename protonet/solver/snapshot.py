"""Snapshots: Caffe's PREFIX_iter_N.caffemodel + PREFIX_iter_N.solverstate pairs, and restoring them.

Two formats, as Caffe's `snapshot_format`: BINARYPROTO (.caffemodel / .solverstate, protobuf) and
HDF5 (.caffemodel.h5 / .solverstate.h5). HDF5 layouts as Caffe writes them: weights in group
`data` (and `diff` with snapshot_diff), one group per layer holding datasets "0", "1", ... in blob
order (only blobs a layer owns, as Net::ToHDF5); solver state as datasets iter, learned_net,
current_step, iter_last_event, minimum_loss and group `history` with "0".."n-1".
Every file is written to a temporary name beside its final one and renamed.
"""
import dataclasses
import os

import numpy as np
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError
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

    def filename(self, iteration, extension):
        prefix = self.param.snapshot_prefix
        if not prefix and self.solver_path:
            # newer Caffe: default prefix is the solver file name without extension
            prefix = os.path.splitext(self.solver_path)[0]
        return f"{prefix}_iter_{iteration}{extension}"

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

    def write(self, net, updater, progress, log):
        """Write the pair for `progress.iter`: the weights of `net`, then the state naming them."""
        if self.hdf5:
            model = self.filename(progress.iter, ".caffemodel.h5")
            log.info("Snapshotting to HDF5 file %s", model)
            write_weights_h5(net, model, with_diff=self.param.snapshot_diff)
            state_path = self.filename(progress.iter, ".solverstate.h5")
            log.info("Snapshotting solver state to HDF5 file %s", state_path)
            write_state_h5(state_path, progress, model, updater.history_arrays())
            return model, state_path
        model = self.filename(progress.iter, ".caffemodel")
        log.info("Snapshotting to binary proto file %s", model)
        _write_caffemodel(net, model, with_diff=self.param.snapshot_diff)
        state_path = self.filename(progress.iter, ".solverstate")
        log.info("Snapshotting solver state to binary proto file %s", state_path)
        write_solverstate(solver_state(progress, model, ()), state_path, history=updater.history_arrays())
        return model, state_path

    @staticmethod
    def read(state_file):
        """The SavedState of a .solverstate or .solverstate.h5; its learned_net resolved to a file
        that exists (the snapshot directory may have moved: then the weights beside the state)."""
        state_file = os.fspath(state_file)
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
                raise ProtonetError(f"{state_file}: its learned_net '{learned}' does not exist (nor does {beside})")
            learned = beside
        return SavedState(fields, history, learned or None)


def solver_state(progress, model_filename, history):
    """A SolverState message for `progress` naming `model_filename`, with `history` arrays."""
    state = make_solverstate(progress.iter, model_filename, progress.current_step, history)
    state.iter_last_event = progress.iter_last_event
    state.minimum_loss = progress.minimum_loss
    return state


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
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".tmp-{os.getpid()}-{os.path.basename(path)}")
    try:
        with h5py.File(tmp, "w") as f:
            fill(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
