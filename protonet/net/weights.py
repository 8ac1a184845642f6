"""Weights in and out of a Net by Caffe's rules: CopyTrainedLayersFrom's copy by layer name with
Blob::ShapeEquals, and state_dict keys named after the prototxt ('<layer>.<blob index>')."""
import logging
import os

import torch

from protonet import caffe_pb2
from protonet.errors import ShapeError
from protonet.io.blobs import blob_to_array
from protonet.io.caffemodel import read_caffemodel_arrays
from protonet.io.upgrade import upgrade_net

log = logging.getLogger("protonet.net")


def copy_layers(net_layers, where: str, layers: list) -> set[str]:
    """Copy the blobs of [(layer name, [(array, stored shape or None)])] into the net's layers of the
    same name ({name: layer}); returns the names copied."""
    copied = set()
    for name, blobs in layers:
        layer = net_layers.get(name)
        if layer is None:
            log.info("Ignoring source layer %s", name)
            continue
        target = layer.blobs
        if len(target) != len(blobs):
            raise ShapeError(f"{where}: layer {name}: the file has {len(blobs)} blobs, "
                             f"the net's layer has {len(target)}")
        for i, (t, (arr, proto_shape)) in enumerate(zip(target, blobs)):
            shape = tuple(t.shape)
            ok = _shape_equals(proto_shape, shape) if proto_shape is not None else _array_fits(arr, shape)
            if not ok:
                raise ShapeError(f"{where}: layer {name} blob {i}: the file has shape "
                                 f"{list(arr.shape)}, the net needs {list(shape)}")
            with torch.no_grad():
                t.copy_(torch.tensor(arr.reshape(shape), dtype=t.dtype))
        copied.add(name)
    return copied



def caffe_state_keys(net, state, prefix, local_metadata):
    """state_dict post-hook: '<layer>.<blob index>' keys, in the dict's order."""
    items = list(state.items())
    state.clear()
    for key, value in items:
        inner = key[len(prefix):] if key.startswith(prefix) else None
        state[prefix + net._state_keys[inner] if inner in net._state_keys else key] = value


def module_state_keys(net, state, prefix, *_):
    """load_state_dict pre-hook: '<layer>.<blob index>' keys back to the module's own."""
    for inner, caffe in net._state_keys.items():
        if prefix + caffe in state and prefix + inner not in state:
            state[prefix + inner] = state.pop(prefix + caffe)


def weight_sources(source):
    """[(where, [(layer name, [(array, stored shape or None)])])] of the layers with blobs of each source."""
    if isinstance(source, caffe_pb2.NetParameter):
        if len(source.layers) and not len(source.layer):
            source = caffe_pb2.NetParameter.FromString(source.SerializeToString())
            upgrade_net(source, source=f"net {source.name or '?'}")
        where = f"net {source.name or '?'}"
        return [(where, [(l.name, [(blob_to_array(b), _proto_shape(b)) for b in l.blobs])
                         for l in source.layer])]
    paths = source.split(",") if isinstance(source, str) else (
        [source] if isinstance(source, os.PathLike) else list(source))
    # Straight from the file bytes: a file's blob arrays come with their stored shapes
    # (legacy num/channels/height/width as 4 axes).
    return [(os.fspath(p), [(name, [(a, None) for a in arrays])
                            for name, arrays in read_caffemodel_arrays(p).items()]) for p in paths]


def _proto_shape(blob):
    """(kind, dims) of a BlobProto's stored shape: ('shape', dims), ('legacy', 4 dims) or ('none', ())."""
    if blob.HasField("shape"):
        return ("shape", tuple(int(d) for d in blob.shape.dim))
    if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
        return ("legacy", (blob.num, blob.channels, blob.height, blob.width))
    return ("none", ())


def _shape_equals(stored, shape):
    """Caffe's Blob::ShapeEquals: a legacy num/channels/height/width blob matches a shape of at most
    4 axes padded with leading 1s; a blob without any shape matches only a 0-axis blob."""
    kind, dims = stored
    if kind == "legacy":
        return len(shape) <= 4 and (1,) * (4 - len(shape)) + tuple(shape) == dims
    return dims == tuple(shape)


def _array_fits(arr, shape):
    """ShapeEquals for an array read from file bytes, where a legacy blob arrives as 4 axes and a
    shapeless one (a 0-axis blob as Caffe writes it) as its values."""
    if tuple(arr.shape) == tuple(shape):
        return True
    if arr.ndim == 4 and len(shape) < 4:
        return (1,) * (4 - len(shape)) + tuple(shape) == tuple(arr.shape)
    return shape == () and arr.shape == (1,)
