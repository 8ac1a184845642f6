"""Text and binary protobuf files with errors that name the place."""
from __future__ import annotations

import os
import re
from typing import TypeVar

from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message

from protonet import caffe_pb2
from protonet.errors import ProtonetError, PrototxtError
from protonet.io.atomic import atomic_write
from protonet.io.foreign import foreign_field
from protonet.io.upgrade import upgrade_net, upgrade_solver

PathLike = str | os.PathLike
M = TypeVar("M", bound=Message)

# bytes below 32 other than \t \n \v \f \r: never in a text proto, always early in a binary one
_CONTROL_BYTE = re.compile(rb"[\x00-\x08\x0e-\x1f]")


def _clean_parse_message(msg, line, col, text):
    """text_format's description without its "LINE:COL : " prefix or a quoted copy of the line."""
    prefix = f"{line}:{col} : "
    if msg.startswith(prefix):
        msg = msg[len(prefix):]
    if line and text is not None and msg.startswith("'"):
        lines = text.splitlines()
        if 0 < line <= len(lines):
            quoted = f"'{lines[line - 1]}': "
            if msg.startswith(quoted):
                msg = msg[len(quoted):]
    if "surrogates not allowed" in msg:
        msg = "a string value that is not UTF-8"
    # bytes that were not UTF-8 stay printable as escapes
    return " ".join(msg.encode("utf-8", "backslashreplace").decode("utf-8").split())


_NO_FIELD = re.compile(r'Message type "caffe\.(\w+)" has no field named "(\w+)"')


def _with_fork(msg):
    """An unknown field's message, saying which fork has that field when one does."""
    m = _NO_FIELD.search(msg)
    fork = m and foreign_field(m.group(1), m.group(2))
    return f"{msg.rstrip('.')} (a field of {fork}, which protonet does not run)" if fork else msg


def parse_prototxt(text: str, message: Message, filename: str = "<string>") -> Message:
    """Merge prototxt `text` into `message`; a parse error names FILE:LINE:COL."""
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        msg = _with_fork(_clean_parse_message(str(exc), line, col, text))
        if line is None:
            raise PrototxtError(f"{filename}: {msg}") from None
        raise PrototxtError(f"{filename}:{line}:{col}: {msg}") from None
    return message


def read_bytes(path):
    """The bytes of a file; a missing or unreadable file is an error naming the path."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise ProtonetError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ProtonetError(f"{path}: is a directory, expected a file") from None
    except PermissionError:
        raise ProtonetError(f"{path}: permission denied") from None


def read_text(path):
    """The file as text; a binary file is an error naming the path (see looks_like_text)."""
    text = looks_like_text(read_bytes(os.fspath(path)))
    if text is None:
        raise PrototxtError(f"{path}:1:1: not a text file (is it a binary proto?)")
    return text


def read_prototxt(path: PathLike, message_cls: type[M]) -> M:
    """Read a text proto file into a new `message_cls` message."""
    return parse_prototxt(read_text(path), message_cls(), filename=os.fspath(path))


def looks_like_text(data):
    """The text of `data`, or None when it has control characters (binary protos always do).

    Bytes that are not UTF-8 (a comment in GBK or Latin-1) are kept as surrogates: the parser skips
    them in comments, as Caffe's does, and reports them where a string value holds them."""
    if _CONTROL_BYTE.search(data):
        return None
    return data.decode("utf-8", "surrogateescape")


def read_varint(buf, pos):
    """(value, position after it) of the base-128 varint at `pos`; ValueError past the end."""
    shift = value = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def iter_wire(buf, start=0, end=None):
    """(field number, wire type, value) of the fields of one serialized message in buf[start:end]:
    value is the int of a varint, or (offset, length) of a length-delimited or fixed-size payload.
    ValueError when the bytes are not a message."""
    pos, end = start, len(buf) if end is None else end
    while pos < end:
        key, pos = read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = read_varint(buf, pos)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = (pos, size), pos + size
        elif wire == 2:
            size, pos = read_varint(buf, pos)
            value, pos = (pos, size), pos + size
        else:
            raise ValueError(f"wire type {wire}")
        if pos > end:
            raise ValueError("truncated field")
        yield number, wire, value


def wire_fields(data):
    """The set of top-level (field number, wire type) of a serialized message, None if it is not one."""
    try:
        return {(number, wire) for number, wire, _ in iter_wire(data)}
    except ValueError:
        return None


_WIRE_TYPES = {  # FieldDescriptor type -> its unpacked wire type (others: varint, 0)
    1: 1, 6: 1, 16: 1,  # double, fixed64, sfixed64
    2: 5, 7: 5, 15: 5,  # float, fixed32, sfixed32
    9: 2, 11: 2, 12: 2,  # string, message, bytes
}


def wire_fits(fields, message_cls, allow_unknown=False):
    """Whether every (field number, wire type) is a field of `message_cls` with that wire type.

    With `allow_unknown`, numbers the schema does not know pass (protobuf keeps them as unknown
    fields, as Caffe's parser does with another fork's additions) as long as some field is known."""
    by_number = {fd.number: fd for fd in message_cls.DESCRIPTOR.fields}
    known = False
    for number, wire in fields:
        fd = by_number.get(number)
        if fd is None:
            if allow_unknown:
                continue
            return False
        if wire != _WIRE_TYPES.get(fd.type, 0) and not (fd.is_repeated and wire == 2):
            return False
        known = True
    return known or not fields


def parse_binary_proto(data, message_cls, filename="<bytes>"):
    """A `message_cls` from serialized bytes; bytes that are not that message are an error naming the file."""
    fields = wire_fields(data)
    if fields is None or not wire_fits(fields, message_cls, allow_unknown=True):
        hint = " (it looks like a text prototxt)" if looks_like_text(data) is not None else ""
        raise ProtonetError(f"{filename}: not a binary {message_cls.DESCRIPTOR.name} file{hint}")
    if message_cls.DESCRIPTOR.full_name == "caffe.NetParameter":
        from protonet.io.dialects import translate_net_bytes  # dialects imports this module

        try:
            data = translate_net_bytes(data)
        except ValueError as exc:
            raise ProtonetError(f"{filename}: not a valid binary NetParameter ({exc})") from None
    msg = message_cls()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise ProtonetError(f"{filename}: not a valid binary {message_cls.DESCRIPTOR.name} ({exc})") from None
    return msg


def read_binary_proto(path: PathLike, message_cls: type[M]) -> M:
    """Read a binary proto file (caffemodel, solverstate, binaryproto mean)."""
    return parse_binary_proto(read_bytes(os.fspath(path)), message_cls, os.fspath(path))


# `key: 1.0` can only be a float field (strings are quoted, ints have no point, enums are names)
_INTEGRAL_FLOAT = re.compile(r"^(\s*\w+: -?\d+)\.0$", re.MULTILINE)


def format_prototxt(message: Message) -> str:
    """The text form of `message` as Caffe prints it: integral floats without ".0" (`lr_mult: 1`)."""
    return _INTEGRAL_FLOAT.sub(r"\1", text_format.MessageToString(message))


def write_prototxt(message: Message, path: PathLike) -> None:
    """Write `message` as Caffe-style text at `path`, atomically."""
    atomic_write(path, format_prototxt(message).encode("utf-8"))


def write_binary_proto(message: Message, path: PathLike) -> None:
    """Write `message` in binary form at `path`, atomically."""
    atomic_write(path, message.SerializeToString())


def read_net_prototxt(path: PathLike, input_fields_to_layer: bool = False) -> caffe_pb2.NetParameter:
    """A net prototxt as an upgraded NetParameter (V0/V1 layers, old data and BatchNorm fields),
    as Caffe's ReadNetParamsFromTextFileOrDie; see protonet.io.upgrade.upgrade_net."""
    net = read_prototxt(path, caffe_pb2.NetParameter)
    upgrade_net(net, source=os.fspath(path), input_fields_to_layer=input_fields_to_layer)
    return net


def read_solver_prototxt(path: PathLike) -> caffe_pb2.SolverParameter:
    """A solver prototxt as a SolverParameter with the old `solver_type` enum upgraded to `type`."""
    solver = read_prototxt(path, caffe_pb2.SolverParameter)
    upgrade_solver(solver, source=os.fspath(path))
    return solver
