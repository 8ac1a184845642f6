"""`snapshot_format: HDF5`: Caffe's .caffemodel.h5 and .solverstate.h5 layouts (h5py).

Weights: group `data` (and `diff` with snapshot_diff) with one group per layer holding datasets
"0", "1", ... in blob order (only blobs a layer owns, as Net::ToHDF5). Solver state: datasets
iter, learned_net, current_step, iter_last_event, minimum_loss and group `history` with "0".."n-1".
"""
import os

import numpy as np

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.blobs import array_to_blob


def _h5py():
    import h5py

    return h5py


def _tmp(path):
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".tmp-{os.getpid()}-{os.path.basename(path)}")


def write_weights_h5(net, path, with_diff=False):
    h5py = _h5py()
    tmp = _tmp(path)
    owned = {(ln, i) for ln, i, _, _ in net._owners} if hasattr(net, "_owners") else None
    with h5py.File(tmp, "w") as f:
        groups = [("data", False)] + ([("diff", True)] if with_diff else [])
        for group_name, diff in groups:
            group = f.create_group(group_name)
            for name, layer in net.layers.items():
                g = group.create_group(name)
                for i, t in enumerate(layer.blobs):
                    if owned is not None and (name, i) not in owned:
                        continue
                    src = t.grad if diff else t
                    arr = (src.detach().float().cpu().numpy() if src is not None
                           else np.zeros(tuple(t.shape), np.float32))
                    g.create_dataset(str(i), data=np.ascontiguousarray(arr, dtype=np.float32))
    os.replace(tmp, path)


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
    h5py = _h5py()
    tmp = _tmp(path)
    with h5py.File(tmp, "w") as f:
        f.create_dataset("iter", data=np.array([progress.iter], np.int32))
        f.create_dataset("learned_net", data=np.bytes_(learned_net))
        f.create_dataset("current_step", data=np.array([progress.current_step], np.int32))
        f.create_dataset("iter_last_event", data=np.array([progress.iter_last_event], np.int32))
        f.create_dataset("minimum_loss", data=np.array([progress.minimum_loss], np.float32))
        g = f.create_group("history")
        for i, h in enumerate(history):
            g.create_dataset(str(i), data=np.asarray(h, np.float32))
    os.replace(tmp, path)


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
