"""Layer fields whose values Caffe's own types cannot hold, refused before a layer is built.

caffe.proto declares sizes (num_output, kernel_size, pad, stride, batch_size, ...) as uint32 and blob
dims as int64, but Caffe reads every one of them into a C++ `int`: 2147483648 turns negative and a
CHECK aborts (or a blob dim fails Blob::Reshape's `shape[i] >= 0`). protonet refuses the same values,
naming the layer and the field, before anything is computed or allocated from them. A NaN in any
float field is refused too: no Caffe parameter means anything as NaN.
"""
import math

from google.protobuf.descriptor import FieldDescriptor

from protonet.errors import ProtonetError
from protonet.sizes import INT_MAX

# uint32 fields Caffe keeps unsigned (a random skip is taken modulo them): any uint32 value is fine.
_UNSIGNED_IN_CAFFE = {"rand_skip"}
_FLOATS = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)
_WIDE_INTS = (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64,
              FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
              FieldDescriptor.TYPE_SINT64)


def _value_problem(fd, value):
    if fd.type in _FLOATS and math.isnan(value):
        return "is NaN"
    if fd.type in _WIDE_INTS and fd.name not in _UNSIGNED_IN_CAFFE and value > INT_MAX:
        return f"is more than Caffe's int holds ({INT_MAX})"
    return None


def _check_message(message, path, where):
    for fd, value in message.ListFields():
        name = f"{path}.{fd.name}" if path else fd.name
        values = value if fd.is_repeated else [value]
        if fd.message_type is not None:
            if fd.message_type.name == "BlobProto":  # stored weights: values, not parameters
                continue
            for i, sub in enumerate(values):
                _check_message(sub, f"{name}[{i}]" if fd.is_repeated else name, where)
            continue
        for v in values:
            problem = _value_problem(fd, v)
            if problem:
                raise ProtonetError(f"{where}: {name} {v} {problem}")


def check_layer_fields(lparam):
    """ProtonetError naming the layer and field of the first value Caffe could not hold, or a NaN."""
    _check_message(lparam, "", f"layer {lparam.name} ({lparam.type})")
