"""Text and binary protobuf files with errors that name the place."""
from __future__ import annotations
import mmap
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


def _clean_parse_message(msg, line, col, line_text):
    """text_format's description without its "LINE:COL : " prefix or a quoted copy of the line."""
    prefix = f"{line}:{col} : "
    if msg.startswith(prefix):
        msg = msg[len(prefix):]
    if line_text is not None and msg.startswith("'"):
        for quoted in (f"'{line_text}': ", f"'{line_text.rstrip(chr(10))}': ", f"'{line_text.rstrip()}': "):
            if msg.startswith(quoted):
                msg = msg[len(quoted):]
                break
    if "surrogates not allowed" in msg:
        msg = "a string value that is not UTF-8"
    # bytes that were not UTF-8 (kept as surrogates) are shown as the bytes they were: \xff
    msg = re.sub("[\udc80-\udcff]", lambda m: f"\\x{ord(m.group()) - 0xdc00:02x}", msg)
    return " ".join(msg.encode("utf-8", "backslashreplace").decode("utf-8").split())


_NO_FIELD = re.compile(r'Message type "caffe\.(\w+)" has no field named "(\w+)"')


def _with_fork(msg):
    """An unknown field's message, saying which fork has that field when one does."""
    m = _NO_FIELD.search(msg)
    fork = m and foreign_field(m.group(1), m.group(2))
    return f"{msg.rstrip('.')} (a field of {fork}, which protonet does not run)" if fork else msg


# Nesting deeper than any Caffe message (NetParameter > LayerParameter > ... is under 10 levels):
# refuse it with a parse error instead of running out of Python's stack.
_MAX_NESTING = 64
# Caffe reads binary protos through a CodedInputStream limited to INT_MAX bytes.
_MAX_BINARY_PROTO_BYTES = 2**31 - 1


def _first_non_utf8(lines):
    """(line, column) of the first byte that is not UTF-8 outside a comment in {lineno: text}, or None."""
    for lineno, line in sorted(lines.items()):
        code = line.split("#", 1)[0]
        for col, ch in enumerate(code, 1):
            if "\udc80" <= ch <= "\udcff":
                return lineno, col
    return None


def _merge(lines, message, filename, known_lines):
    """text_format.MergeLines with every failure a PrototxtError naming FILE:LINE:COL.

    `known_lines()` gives {line number: text} of the lines still at hand, for the error message."""
    try:
        text_format.MergeLines(lines, message, max_recursion_depth=_MAX_NESTING)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        msg = _with_fork(_clean_parse_message(str(exc), line, col, known_lines().get(line)))
        if line is None:
            raise PrototxtError(f"{filename}: {msg}") from None
        raise PrototxtError(f"{filename}:{line}:{col}: {msg}") from None
    except (SystemError, UnicodeError, ValueError, TypeError, OverflowError, RecursionError) as exc:
        # upb fails this way on a name holding bytes that are not UTF-8 (an enum value, a field name)
        where = _first_non_utf8(known_lines())
        if where is not None:
            raise PrototxtError(f"{filename}:{where[0]}:{where[1]}: a byte that is not UTF-8 outside a "
                                "string or comment") from None
        raise PrototxtError(f"{filename}: does not parse ({type(exc).__name__}: {exc})") from None
    return message


def parse_prototxt(text: str, message: Message, filename: str = "<string>") -> Message:
    """Merge prototxt `text` into `message`; a parse error names FILE:LINE:COL."""
    lines = text.split("\n")
    return _merge(lines, message, filename, lambda: dict(enumerate(lines, 1)))


def read_bytes(path):
    """The bytes of a file; a missing or unreadable file is an error naming the path."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise ProtonetError(describe_os_error(path, exc)) from None


def describe_os_error(path, exc):
    """One line naming `path` and what the system said (no such file, permission denied, ...)."""
    if isinstance(exc, FileNotFoundError):
        return f"{path}: no such file"
    if isinstance(exc, IsADirectoryError):
        return f"{path}: is a directory, expected a file"
    if isinstance(exc, PermissionError):
        return f"{path}: permission denied"
    return f"{path}: cannot read ({exc.strerror or exc})"


def read_text(path):
    """The file as text; a binary file is an error naming the path (see looks_like_text)."""
    text = looks_like_text(read_bytes(os.fspath(path)))
    if text is None:
        raise PrototxtError(f"{path}:1:1: not a text file (is it a binary proto?)")
    return text


def read_utf8_lines(path):
    """The lines of a small text file (a list, a label file), without their line ends; a line that
    is not UTF-8 or holds a NUL byte is an error naming it."""
    path = os.fspath(path)
    lines = read_bytes(path).split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline ending the last line does not start another
    out = []
    for lineno, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtonetError(f"{path}:{lineno}: not UTF-8 text") from None
        if "\x00" in line:
            raise ProtonetError(f"{path}:{lineno}: a NUL byte: not a text file")
        out.append(line.rstrip("\r"))
    return out


class _TextLines:
    """The lines of a text file, read one at a time (a 200 MB prototxt never sits in memory as
    text, nor as a list of lines); the last few are kept for error messages."""

    def __init__(self, path):
        self.path = path
        self.recent = {}

    def __iter__(self):
        try:
            with open(self.path, "rb") as fh:
                if looks_like_text(fh.read(4096)) is None:
                    raise PrototxtError(f"{self.path}:1:1: not a text file (is it a binary proto?)")
                fh.seek(0)
                for lineno, raw in enumerate(fh, 1):
                    line = looks_like_text(raw)
                    if line is None:
                        raise PrototxtError(f"{self.path}:{lineno}:1: a control character: not a text file")
                    self.recent[lineno] = line
                    self.recent.pop(lineno - 4, None)
                    yield line
        except OSError as exc:
            raise ProtonetError(describe_os_error(self.path, exc)) from None



# a line opening a layer of a net (current `layer {` or V1 `layers {`)
_LAYER_BLOCK = re.compile(rb"^[ \t]*layers?[ \t]*[{<]", re.MULTILINE)


def count_layer_blocks(path):
    """How many lines of a net prototxt open a `layer {` (or `layers {`) block, counted without
    parsing: an upper bound of its layers, to refuse a net too large for memory before reading it."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return 0
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return sum(1 for _ in _LAYER_BLOCK.finditer(buf))
    except (OSError, ValueError) as exc:
        if isinstance(exc, OSError):
            raise ProtonetError(describe_os_error(path, exc)) from None
        return 0


def read_prototxt(path: PathLike, message_cls: type[M]) -> M:
    """Read a text proto file into a new `message_cls` message, streaming its lines."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ProtonetError(f"{path}: is a directory, expected a file")
    lines = _TextLines(path)
    return _merge(lines, message_cls(), path, lambda: lines.recent)


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


def _non_utf8_string(message, path=""):
    """The field path ("layer[3].top[0]") of the first string field holding bytes that are not UTF-8
    (protobuf hands those back as bytes), or None. Blob data is not walked: it holds no strings."""
    for fd, value in message.ListFields():
        name = f"{path}.{fd.name}" if path else fd.name
        values = value if fd.is_repeated else [value]
        if fd.type == fd.TYPE_STRING:
            for i, v in enumerate(values):
                if isinstance(v, bytes):
                    return f"{name}[{i}]" if fd.is_repeated else name
        elif fd.message_type is not None and fd.message_type.name != "BlobProto":
            for i, v in enumerate(values):
                found = _non_utf8_string(v, f"{name}[{i}]" if fd.is_repeated else name)
                if found:
                    return found
    return None


def parse_binary_proto(data, message_cls, filename="<bytes>"):
    """A `message_cls` from serialized bytes; bytes that are not that message are an error naming the file."""
    what = message_cls.DESCRIPTOR.name
    if len(data) > _MAX_BINARY_PROTO_BYTES:
        raise ProtonetError(f"{filename}: {len(data)} bytes, more than a binary {what} can hold "
                            f"({_MAX_BINARY_PROTO_BYTES}, Caffe's limit too)")
    fields = wire_fields(data)
    if fields is None or not wire_fits(fields, message_cls, allow_unknown=True):
        hint = " (it looks like a text prototxt)" if looks_like_text(data) is not None else ""
        raise ProtonetError(f"{filename}: not a binary {what} file{hint}")
    if message_cls.DESCRIPTOR.full_name == "caffe.NetParameter":
        from protonet.io.dialects import translate_net_bytes  # dialects imports this module

        try:
            data = translate_net_bytes(data)
        except ValueError as exc:
            raise ProtonetError(f"{filename}: not a valid binary NetParameter ({exc})") from None
    msg = message_cls()
    try:
        msg.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError, SystemError) as exc:
        raise ProtonetError(f"{filename}: not a valid binary {what} ({exc})") from None
    bad = _non_utf8_string(msg)
    if bad is not None:
        raise ProtonetError(f"{filename}: {bad} holds bytes that are not UTF-8 text")
    return msg


def read_binary_proto(path: PathLike, message_cls: type[M]) -> M:
    """Read a binary proto file (caffemodel, solverstate, binaryproto mean)."""
    path = os.fspath(path)
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise ProtonetError(describe_os_error(path, exc)) from None
    if size > _MAX_BINARY_PROTO_BYTES:  # refused before reading it
        raise ProtonetError(f"{path}: {size} bytes, more than a binary {message_cls.DESCRIPTOR.name} can hold "
                            f"({_MAX_BINARY_PROTO_BYTES}, Caffe's limit too)")
    return parse_binary_proto(read_bytes(path), message_cls, path)


# `key: 1.0` can only be a float field (strings are quoted, ints have no point, enums are names)
_INTEGRAL_FLOAT = re.compile(r"^(\s*\w+: -?\d+)\.0$", re.MULTILINE)


def format_prototxt(message: Message) -> str:
    """The text form of `message` as Caffe prints it: integral floats without ".0" (`lr_mult: 1`)."""
    return _INTEGRAL_FLOAT.sub(r"\1", text_format.MessageToString(message))


def write_prototxt(message: Message, path: PathLike) -> None:
    atomic_write(path, format_prototxt(message).encode("utf-8"))


def write_binary_proto(message: Message, path: PathLike) -> None:
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
