"""BlobProto <-> numpy, with the legacy num/channels/height/width shape.

Blob data travels as raw little-endian bytes in the packed `data` field (BlobProto field 5),
never as Python lists: VGG-sized nets hold 10^8 floats. NVCaffe's raw storage (`raw_data_type`
FLOAT16/FLOAT/DOUBLE with the values as bytes in `raw_data`, as in OpenCV's fp16 face detector)
is read into float32 (DOUBLE into float64, like `double_data`).
"""
from __future__ import annotations
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from protonet import caffe_pb2
from protonet.errors import ProtonetError

if TYPE_CHECKING:
    import torch

# wire tags (field number << 3 | length-delimited) of BlobProto's fields
_TAG_SHAPE = b"\x3a"  # shape = 7
_TAG_DATA = b"\x2a"  # data = 5, packed float
_TAG_DIFF = b"\x32"  # diff = 6, packed float
_TAG_DIM = b"\x0a"  # BlobShape.dim = 1, packed int64
_LEGACY_DIMS = ("num", "channels", "height", "width")


class BlobError(ProtonetError, ValueError):
    """A stored blob whose values do not fill its shape, or whose shape is not a shape."""


def shape_count(shape):
    """The number of values a shape needs, in Python ints (no int64 wrap-around); BlobError for a
    negative dimension."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise BlobError(f"shape {list(shape)} has a negative dimension")
    return math.prod(shape)


def varint(value):
    """Protobuf base-128 varint of a non-negative int."""
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


# NVCaffe's Type enum -> the little-endian dtype of raw_data (INT, UINT, BOOL hold no weights)
RAW_DTYPES = {caffe_pb2.FLOAT16: "<f2", caffe_pb2.FLOAT: "<f4", caffe_pb2.DOUBLE: "<f8"}


def raw_dtype(type_value, what="raw_data"):
    """The numpy dtype of NVCaffe raw data of Type `type_value`; ValueError for a type without weights."""
    dtype = RAW_DTYPES.get(type_value)
    if dtype is None:
        name = caffe_pb2.Type.Name(type_value) if type_value in caffe_pb2.Type.values() else str(type_value)
        raise BlobError(f"{what} of type {name}: only FLOAT16, FLOAT and DOUBLE blobs hold weights")
    return np.dtype(dtype)


def raw_values(data, type_value, what="raw_data"):
    """NVCaffe raw bytes as a float32 array (float64 for DOUBLE)."""
    dtype = raw_dtype(type_value, what)
    if len(data) % dtype.itemsize:
        raise BlobError(f"{what}: {len(data)} bytes is not a whole number of {dtype.itemsize}-byte values")
    arr = np.frombuffer(data, dtype=dtype)
    return arr.astype(np.float64 if dtype.itemsize == 8 else np.float32)


def _values(blob, diff):
    """(values, dtype) of the blob's data or diff, whichever field holds them."""
    if diff:
        if blob.HasField("raw_diff"):
            return raw_values(blob.raw_diff, blob.raw_diff_type, "raw_diff"), None
        return (blob.double_diff, np.float64) if len(blob.double_diff) else (blob.diff, np.float32)
    if blob.HasField("raw_data"):
        return raw_values(blob.raw_data, blob.raw_data_type), None
    return (blob.double_data, np.float64) if len(blob.double_data) else (blob.data, np.float32)


def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """The blob's shape; the legacy 4-D fields win over `shape`, as in Caffe's Blob::FromProto."""
    if any(blob.HasField(f) for f in _LEGACY_DIMS):
        return (blob.num, blob.channels, blob.height, blob.width)
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    if blob.HasField("raw_data"):
        n = len(blob.raw_data) // raw_dtype(blob.raw_data_type).itemsize
    else:
        n = len(blob.data) or len(blob.double_data)
    return (n,) if n else (0,)


def blob_fits_shape(blob: caffe_pb2.BlobProto, shape: Sequence[int]) -> bool:
    """Caffe's Blob::ShapeEquals(BlobProto): whether a stored blob fits a blob of `shape`.

    Legacy 4-D blobs count their axes from the end, so an InnerProduct weight stored as
    (1, 1, M, N) fits (M, N) and a bias (1, 1, 1, N) fits (N,)."""
    shape = tuple(int(d) for d in shape)
    if any(blob.HasField(f) for f in _LEGACY_DIMS):
        return len(shape) <= 4 and (1,) * (4 - len(shape)) + shape == blob_shape(blob)
    return tuple(int(d) for d in blob.shape.dim) == shape


def blob_to_array(blob: caffe_pb2.BlobProto, diff: bool = False, shape: Sequence[int] | None = None) -> np.ndarray:
    """The blob's data (or diff) as a float32 array (float64 if stored as double) of its shape;
    NVCaffe raw data (FLOAT16, FLOAT, DOUBLE) likewise.

    With `shape`, the blob must fit it as Caffe's ShapeEquals decides (else ValueError) and the array
    takes that shape, as when Caffe copies trained weights into a net's blobs."""
    if shape is not None and not blob_fits_shape(blob, shape):
        raise BlobError(f"stored shape {list(blob_shape(blob))} does not fit {list(shape)}")
    shape = blob_shape(blob) if shape is None else tuple(int(d) for d in shape)
    values, dtype = _values(blob, diff)
    need = shape_count(shape)
    if len(values) != need:
        raise BlobError(f"blob holds {len(values)} values but its shape {list(shape)} needs {need}")
    return np.asarray(values, dtype=dtype).reshape(shape)


def _as_float32(arr):
    if hasattr(arr, "detach"):
        arr = arr.detach().cpu().numpy()
    # ascontiguousarray turns a 0-axis array into a 1-axis one; keep the shape (PReLU/Normalize scalars).
    return np.ascontiguousarray(arr, dtype="<f4").reshape(np.shape(arr))


def _packed_field(tag, arr):
    """(header bytes, raw buffer) of one packed float field; nothing for an empty array."""
    if arr.size == 0:
        return []
    return [tag + varint(arr.nbytes), memoryview(arr).cast("B")]


def blob_pieces(arr, diff=None):
    """The serialized BlobProto of `arr` (shape + packed data [+ diff]) as a list of buffers.

    Written one after another they are the bytes protobuf (and Caffe) would write; the array data
    is not copied.
    """
    arr = _as_float32(arr)
    # Fields in number order (data 5, diff 6, shape 7), as protobuf and Caffe write them.
    pieces = _packed_field(_TAG_DATA, arr.reshape(-1))
    if diff is not None:
        diff = _as_float32(diff)
        if diff.size != arr.size:
            raise ValueError(f"diff holds {diff.size} values but the data holds {arr.size}")
        pieces += _packed_field(_TAG_DIFF, diff.reshape(-1))
    dims = b"".join(varint(int(d)) for d in arr.shape)
    shape_msg = (_TAG_DIM + varint(len(dims)) + dims) if dims else b""
    pieces.append(_TAG_SHAPE + varint(len(shape_msg)) + shape_msg)
    return pieces


def array_to_blob(arr: "np.ndarray | torch.Tensor", diff: "np.ndarray | torch.Tensor | None" = None,
                  blob: caffe_pb2.BlobProto | None = None) -> caffe_pb2.BlobProto:
    """A BlobProto with `shape` set (Caffe's current form) from a numpy array or tensor."""
    blob = blob if blob is not None else caffe_pb2.BlobProto()
    # protobuf parses packed floats with a memcpy: far faster than extending from a list.
    blob.MergeFromString(b"".join(blob_pieces(arr, diff)))
    return blob


def blob_field_pieces(field_number, arrays):
    """Buffers of a repeated BlobProto field (`field_number`) holding `arrays`, and their total length."""
    tag = varint((field_number << 3) | 2)
    out = []
    for arr in arrays:
        pieces = blob_pieces(arr)
        out.append(tag + varint(sum(len(p) for p in pieces)))
        out += pieces
    return out, sum(len(p) for p in out)


def serialize_around(message, field_number):
    """The serialized fields of `message` numbered below and above `field_number`, that field left out.

    Protobuf writes fields in number order, so `below + <the field> + above` are the bytes it would
    write for the whole message."""
    below, above = type(message)(), type(message)()
    for fd, value in message.ListFields():
        if fd.number == field_number:
            continue
        target = below if fd.number < field_number else above
        if fd.is_repeated:
            getattr(target, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(target, fd.name).CopyFrom(value)
        else:
            setattr(target, fd.name, value)
    return below.SerializeToString(), above.SerializeToString()
