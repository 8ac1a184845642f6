"""Weights in from PyTorch: a .caffemodel for a prototxt from a state_dict file and a mapping.

The state_dict is read with torch.load(weights_only=True) (tensors and plain containers only;
no code from the file runs). The mapping is a text file, one blob per line:

    # caffe blob        state_dict key                 transforms (optional)
    conv1_1.0           backbone.features.0.weight     flip:1     # RGB-trained filters, BGR input
    conv1_1.1           backbone.features.0.bias
    conv4_3_norm.0      backbone.scale_weight
    fc.0                classifier.weight              transpose
    bn1.2               =1                             # a constant (BatchNorm's scale factor)
    conv2               backbone.features.2            # a layer: its blobs from KEY.weight, KEY.bias, ...

A line names a blob as LAYER.INDEX (Caffe's order) or a whole layer, whose blobs then come from
the key plus the usual PyTorch suffixes of its type (weight/bias; BatchNorm: running_mean,
running_var and a factor of 1). Transforms apply left to right: `transpose` (swap the two axes
of a matrix), `permute:A,B,...`, `flip:AXIS` (reverse an axis), `reshape` (to the blob's shape,
same count). Every shape is checked against the net; a layer with blobs and no line is an error
unless allowed.
"""
import dataclasses
import os

import numpy as np
import torch

from protonet.errors import ProtonetError

# PyTorch names of a layer's blobs, in Caffe's order, by Caffe type ("=1": the constant 1).
SUFFIXES = {
    "Convolution": ("weight", "bias"), "Deconvolution": ("weight", "bias"), "InnerProduct": ("weight", "bias"),
    "Scale": ("weight", "bias"), "Bias": ("bias",), "PReLU": ("weight",), "Normalize": ("weight",),
    "BatchNorm": ("running_mean", "running_var", "=1"), "Embed": ("weight", "bias"),
}


@dataclasses.dataclass
class Line:
    layer: str
    index: int | None     # None: the whole layer
    key: str              # a state_dict key (or prefix), or "=VALUE"
    transforms: list
    where: str            # file:line


def read_mapping(path):
    """The mapping file's lines (comments after '#', blank lines skipped)."""
    if not os.path.isfile(path):
        raise ProtonetError(f"{path}: no such mapping file")
    lines = []
    with open(path) as f:
        for number, text in enumerate(f, 1):
            fields = text.split("#", 1)[0].split()
            if not fields:
                continue
            where = f"{path}:{number}"
            if len(fields) < 2:
                raise ProtonetError(f"{where}: expected 'LAYER[.INDEX] KEY [transforms]', got '{text.strip()}'")
            layer, index = fields[0], None
            head, _, tail = fields[0].rpartition(".")
            if head and tail.isdigit():
                layer, index = head, int(tail)
            for t in fields[2:]:
                if t.split(":")[0] not in ("transpose", "permute", "flip", "reshape"):
                    raise ProtonetError(f"{where}: unknown transform '{t}' (transpose, permute:A,B,..., flip:AXIS, reshape)")
            lines.append(Line(layer, index, fields[1], fields[2:], where))
    return lines


def load_state_dict(path):
    """name -> tensor from a torch.save'd state_dict (or a dict holding one under 'state_dict'
    or 'model'), read with weights_only=True."""
    if not os.path.isfile(path):
        raise ProtonetError(f"{path}: no such state_dict file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors of any kind: one line
        raise ProtonetError(f"{path}: not a state_dict that torch.load(weights_only=True) reads "
                            f"({str(exc).strip().splitlines()[0]})") from None
    for inner in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(inner), dict):
            obj = obj[inner]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ProtonetError(f"{path}: expected a dict of tensors (a state_dict)")
    return obj


def _transform(array, transforms, shape, where):
    for t in transforms:
        name, _, arg = t.partition(":")
        try:
            if name == "transpose":
                if array.ndim != 2:
                    raise ValueError(f"transpose needs a matrix, the tensor has {array.ndim} axes")
                array = array.T
            elif name == "permute":
                array = np.transpose(array, [int(a) for a in arg.split(",")])
            elif name == "flip":
                array = np.flip(array, int(arg))
            elif name == "reshape":
                array = array.reshape(shape)
        except ValueError as exc:
            raise ProtonetError(f"{where}: {t}: {exc}") from None
    return np.ascontiguousarray(array)


def _source(line, key, state, shape):
    if key.startswith("="):
        try:
            return np.full(shape, float(key[1:]), dtype=np.float32)
        except ValueError:
            raise ProtonetError(f"{line.where}: '{key}' is not a number") from None
    if key not in state:
        raise ProtonetError(f"{line.where}: no key '{key}' in the state_dict")
    return state[key].detach().to(torch.float32).numpy()


def _targets(net, line):
    """(blob index, state_dict key) pairs that `line` fills."""
    layer = net.layers.get(line.layer)
    if layer is None:
        raise ProtonetError(f"{line.where}: no layer '{line.layer}' in the net")
    count = len(layer.blobs)
    if line.index is not None:
        if line.index >= count:
            raise ProtonetError(f"{line.where}: layer {line.layer} has {count} blobs, no blob {line.index}")
        return [(line.index, line.key)]
    suffixes = SUFFIXES.get(layer.param.type)
    if suffixes is None:
        raise ProtonetError(f"{line.where}: name the blobs of layer {line.layer} ({layer.param.type}) one by "
                            "one, as LAYER.INDEX")
    return [(i, s if s.startswith("=") else f"{line.key}.{s}") for i, s in enumerate(suffixes[:count])]


def import_state_dict(net, state, mapping, allow_unmapped=False):
    """Copy the mapped tensors into the net's blobs (shapes checked); returns the blobs set."""
    done = {}
    for line in mapping:
        for index, key in _targets(net, line):
            blob = net.layers[line.layer].blobs[index]
            shape = tuple(blob.shape)
            array = _transform(_source(line, key, state, shape), line.transforms, shape, line.where)
            if tuple(array.shape) != shape:
                raise ProtonetError(f"{line.where}: '{key}' gives shape {list(array.shape)}, blob {index} of layer "
                                    f"{line.layer} has shape {list(shape)}")
            with torch.no_grad():
                blob.copy_(torch.from_numpy(array))
            done[(line.layer, index)] = line.where
    missing = [f"{name}.{i}" for name, layer in net.layers.items() for i in range(len(layer.blobs))
               if (name, i) not in done]
    if missing and not allow_unmapped:
        raise ProtonetError(f"no mapping for {len(missing)} blobs: {', '.join(missing[:8])}"
                            f"{', ...' if len(missing) > 8 else ''} (map them, or allow unmapped blobs to keep "
                            "their fillers)")
    return done


def import_weights(model, state_dict_path, mapping_path, out, allow_unmapped=False):
    """Write `out`, a .caffemodel of the prototxt `model`, from a state_dict file and a mapping file."""
    from protonet.net import Net

    net = Net(model, phase="TEST")
    done = import_state_dict(net, load_state_dict(state_dict_path), read_mapping(mapping_path), allow_unmapped)
    net.save_weights(out)
    return net, done
