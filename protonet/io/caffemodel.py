""".caffemodel files: a binary NetParameter whose layers carry their learned blobs in Caffe's order.

Reading upgrades old (V0/V1) files as Caffe does. Writing streams the blob data straight from the
arrays into the file (packed little-endian floats), so a VGG-sized net never passes through Python
lists or a second in-memory copy of the whole file; the bytes are the ones Caffe's Net::ToProto +
WriteProtoToBinaryFile give.
"""
from __future__ import annotations
import collections
import contextlib
import mmap
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.atomic import atomic_open
from protonet.io.blobs import (BlobError, blob_field_pieces, blob_to_array, raw_dtype, raw_values, serialize_around,
                               shape_count, varint)
from protonet.io.prototxt import PathLike, describe_os_error, iter_wire, read_binary_proto, read_varint
from protonet.io.upgrade import upgrade_net

if TYPE_CHECKING:
    import torch

_NET_LAYER = 100  # NetParameter.layer, its last field
_LAYER_BLOBS = 7  # LayerParameter.blobs
_TAG_NET_LAYER = varint((_NET_LAYER << 3) | 2)


def read_caffemodel(path: PathLike, input_fields_to_layer: bool = False) -> caffe_pb2.NetParameter:
    """The NetParameter of a binary .caffemodel, upgraded to the current `layer` form."""
    net = read_binary_proto(path, caffe_pb2.NetParameter)
    upgrade_net(net, source=os.fspath(path), input_fields_to_layer=input_fields_to_layer)
    return net


def caffemodel_arrays(net_param: caffe_pb2.NetParameter) -> "dict[str, list[np.ndarray]]":
    """Layer name -> list of its blobs as float arrays, for the layers that have blobs, in file order."""
    return collections.OrderedDict(
        (layer.name, [blob_to_array(b) for b in layer.blobs]) for layer in net_param.layer if len(layer.blobs))


def _signed64(value):
    return value - (1 << 64) if value >= 1 << 63 else value


def _wire_dims(buf, offset, size):
    """The dims of a serialized BlobShape (field 1, packed or not), as signed ints."""
    dims = []
    for number, wire, value in iter_wire(buf, offset, offset + size):
        if number != 1:
            continue
        if wire == 0:
            dims.append(_signed64(value))
        elif wire == 2:
            pos, stop = value
            stop += pos
            while pos < stop:
                d, pos = read_varint(buf, pos)
                dims.append(_signed64(d))
    return dims


def _wire_blob(buf, start, size):
    """A BlobProto's array straight from its bytes (legacy 4-D fields win over `shape`, as in Caffe;
    NVCaffe's raw_data over data and double_data, as in NVCaffe). The shape the blob claims is
    checked against the values it holds before anything is copied."""
    legacy, dims = {}, []
    chunks = {"f": [], "d": []}
    raw, raw_type = None, caffe_pb2.DOUBLE  # raw_data_type's proto2 default (the enum's first value)
    for number, wire, value in iter_wire(buf, start, start + size):
        if number in (1, 2, 3, 4) and wire == 0:
            legacy[number] = _signed64(value)
        elif number == 7 and wire == 2:
            dims = _wire_dims(buf, *value)
        elif number == 5 and wire in (2, 5):  # float data, packed (wire 2) or one value (wire 5)
            chunks["f"].append(value)
        elif number == 8 and wire in (2, 1):  # double data
            chunks["d"].append(value)
        elif number == 10 and wire == 0:  # NVCaffe raw_data_type
            raw_type = value
        elif number == 12 and wire == 2:  # NVCaffe raw_data
            raw = value
    if raw is not None:
        held = raw[1] // raw_dtype(raw_type).itemsize
    else:
        held = sum(n for _, n in chunks["d" if chunks["d"] else "f"]) // (8 if chunks["d"] else 4)
    if legacy:
        shape = tuple(legacy.get(i, 0) for i in (1, 2, 3, 4))
    elif dims:
        shape = tuple(dims)
    else:
        shape = (held,)
    need = shape_count(shape)
    if held != need:
        raise BlobError(f"blob holds {held} values but its shape {list(shape)} needs {need}")
    if raw is not None:
        data = raw_values(memoryview(buf)[raw[0]:raw[0] + raw[1]], raw_type)
        kind = "d" if data.dtype == np.float64 else "f"
    else:
        kind, data = _packed_values(buf, chunks)
    if data.size != need:  # raw bytes or packed data that are not a whole number of values
        raise BlobError(f"blob holds {data.size} values but its shape {list(shape)} needs {need}")
    return data.astype(np.float64 if kind == "d" else np.float32, copy=False).reshape(shape)


def _packed_values(buf, chunks):
    """(kind, array) of the packed float ("f") or double ("d") chunks of a blob."""
    kind, dtype = ("d", "<f8") if chunks["d"] else ("f", "<f4")
    itemsize = np.dtype(dtype).itemsize
    if any(n % itemsize for _, n in chunks[kind]):
        raise ValueError("packed blob data of a length that is not a whole number of values")
    parts = [np.frombuffer(buf, dtype=dtype, count=n // itemsize, offset=off) for off, n in chunks[kind]]
    data = (np.concatenate(parts) if len(parts) != 1 else parts[0].copy()) if parts else np.zeros(0, dtype)
    return kind, data


def _wire_layer(buf, start, size, name_field, blobs_field):
    name, blobs = "", []
    for number, wire, value in iter_wire(buf, start, start + size):
        if number == name_field and wire == 2:
            # A name that is not UTF-8 can match no layer of a (UTF-8) prototxt: keep it printable.
            name = bytes(buf[value[0]:value[0] + value[1]]).decode("utf-8", "backslashreplace")
        elif number == blobs_field and wire == 2:
            try:
                blobs.append(_wire_blob(buf, *value))
            except ValueError as exc:
                raise ValueError(f"layer {name or '?'} blob {len(blobs)}: {exc}") from None
    return name, blobs


@contextlib.contextmanager
def _mapped(path):
    """The file's bytes, memory-mapped: a caffemodel is read through, never copied whole into memory."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise ProtonetError(describe_os_error(path, exc)) from None
    with fh:
        if os.fstat(fh.fileno()).st_size == 0:
            yield b""
            return
        try:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise ProtonetError(describe_os_error(path, exc)) from None
        try:
            yield buf
        finally:
            try:
                buf.close()
            except BufferError:  # an array view still refers to it (an error mid-blob): the GC closes it
                pass


def _wire_layers(buf, path):
    """(name, blob arrays) of every layer, in file order; V1/V0 layers as Caffe's upgrade reads them."""
    top = list(iter_wire(buf))
    current = [value for number, wire, value in top if number == 100 and wire == 2]
    old = [value for number, wire, value in top if number == 2 and wire == 2]
    if current and old:
        raise ProtonetError(f"{path}: the net has both 'layer' and 'layers' fields; refusing to read an "
                            f"inconsistent file")
    if current:
        return [_wire_layer(buf, off, n, 1, 7) for off, n in current]  # LayerParameter name, blobs
    # V1LayerParameter: name 4, blobs 6; one holding a V0 layer (field 1) takes name 1, blobs 50 from it,
    # and once any layer is V0 every layer is read that way, as Caffe's upgrade does.
    v0 = [next((v for num, w, v in iter_wire(buf, off, off + n) if num == 1 and w == 2), None)
          for off, n in old]
    if any(v is not None for v in v0):
        return [_wire_layer(buf, *v, 1, 50) if v is not None else ("", []) for v in v0]
    return [_wire_layer(buf, off, n, 4, 6) for off, n in old]


def read_caffemodel_arrays(path: PathLike) -> "dict[str, list[np.ndarray]]":
    """Layer name -> list of blob arrays of a .caffemodel (current, V1 or V0), read straight from the file
    bytes without building protobuf messages: the same as caffemodel_arrays(read_caffemodel(path)), a
    few times faster and with less memory for VGG-sized files."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ProtonetError(f"{path}: is a directory, expected a file")
    out = collections.OrderedDict()
    with _mapped(path) as buf:
        try:
            layers = _wire_layers(buf, path)
        except ValueError as exc:
            raise ProtonetError(f"{path}: not a valid binary caffemodel ({exc})") from None
    for name, blobs in layers:
        if blobs:
            out[name] = blobs
    return out


def write_caffemodel(net_param: caffe_pb2.NetParameter, path: PathLike,
                     blobs: "Mapping[str, Sequence[np.ndarray | torch.Tensor]] | None" = None) -> None:
    """Write `net_param` as a binary .caffemodel at `path`, atomically.

    `blobs` (optional): layer name -> list of arrays or tensors, or a list with one entry (a list of
    arrays, or None) per layer of `net_param` (layers may share a name, as Caffe allows). They
    replace the layers' blobs in the file and are streamed from memory without being copied into
    protobuf messages; this is the fast path for saving a net (pass a NetParameter without blobs).
    Without `blobs` the message is written as it is.
    """
    if blobs is None:
        with atomic_open(path) as fh:
            fh.write(net_param.SerializeToString())
        return
    if isinstance(blobs, dict):
        names = {layer.name for layer in net_param.layer}
        missing = [name for name in blobs if name not in names]
        if missing:
            raise ValueError(f"blobs given for layers not in the net: {', '.join(missing)}")
        per_layer = [blobs.get(layer.name) for layer in net_param.layer]
    else:
        per_layer = list(blobs)
        if len(per_layer) != len(net_param.layer):
            raise ValueError(f"blobs for {len(per_layer)} layers given, the net has {len(net_param.layer)}")
    with atomic_open(path) as fh:
        head, _ = serialize_around(net_param, _NET_LAYER)
        fh.write(head)
        for layer, arrays in zip(net_param.layer, per_layer):
            if arrays is None:
                body = layer.SerializeToString()
                fh.write(_TAG_NET_LAYER + varint(len(body)) + body)
                continue
            before, after = serialize_around(layer, _LAYER_BLOBS)
            pieces, size = blob_field_pieces(_LAYER_BLOBS, arrays)
            fh.write(_TAG_NET_LAYER + varint(len(before) + size + len(after)) + before)
            for piece in pieces:
                fh.write(piece)
            fh.write(after)
