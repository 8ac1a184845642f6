"""Text and binary protobuf files with errors that name the place."""
import contextlib
import os
import re
import tempfile

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from protonet.errors import ProtonetError, PrototxtError

_UMASK = os.umask(0)
os.umask(_UMASK)


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
    return " ".join(msg.split())


def parse_prototxt(text, message, filename="<string>"):
    """Merge prototxt `text` into `message`; a parse error names FILE:LINE:COL."""
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        msg = _clean_parse_message(str(exc), line, col, text)
        if line is None:
            raise PrototxtError(f"{filename}: {msg}") from None
        raise PrototxtError(f"{filename}:{line}:{col}: {msg}") from None
    return message


def _read_bytes(path):
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
    """The file as text; a binary file is an error naming the path."""
    data = _read_bytes(os.fspath(path))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise PrototxtError(f"{path}:1:1: not a text file (is it a binary proto?)") from None


def read_prototxt(path, message_cls):
    """Read a text proto file into a new `message_cls` message."""
    return parse_prototxt(read_text(path), message_cls(), filename=os.fspath(path))


def parse_binary_proto(data, message_cls, filename="<bytes>"):
    msg = message_cls()
    try:
        msg.ParseFromString(data)
    except DecodeError as exc:
        raise ProtonetError(f"{filename}: not a valid binary {message_cls.DESCRIPTOR.name} ({exc})") from None
    return msg


def read_binary_proto(path, message_cls):
    """Read a binary proto file (caffemodel, solverstate, binaryproto mean)."""
    return parse_binary_proto(_read_bytes(os.fspath(path)), message_cls, os.fspath(path))


@contextlib.contextmanager
def atomic_open(path):
    """A binary file handle whose content appears at `path` only when the block ends without error.

    The data goes to a temporary file beside `path`, is flushed to disk and renamed over `path`,
    so a crash never leaves half a file.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    except OSError as exc:
        raise ProtonetError(f"{path}: cannot write ({exc.strerror or exc})") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would.
        os.chmod(tmp, 0o666 & ~_UMASK)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            raise ProtonetError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write(path, data):
    """Write bytes to `path` through a temporary file and a rename: a crash never leaves half a file."""
    with atomic_open(path) as fh:
        fh.write(data)


# `key: 1.0` can only be a float field (strings are quoted, ints have no point, enums are names)
_INTEGRAL_FLOAT = re.compile(r"^(\s*\w+: -?\d+)\.0$", re.MULTILINE)


def format_prototxt(message):
    """The text form of `message` as Caffe prints it: integral floats without ".0" (`lr_mult: 1`)."""
    return _INTEGRAL_FLOAT.sub(r"\1", text_format.MessageToString(message))


def write_prototxt(message, path):
    atomic_write(path, format_prototxt(message).encode("utf-8"))


def write_binary_proto(message, path):
    atomic_write(path, message.SerializeToString())


def read_net_prototxt(path, input_fields_to_layer=False):
    """A net prototxt as an upgraded NetParameter (V0/V1 layers, old data and BatchNorm fields),
    as Caffe's ReadNetParamsFromTextFileOrDie; see protonet.io.upgrade.upgrade_net."""
    from protonet import caffe_pb2
    from protonet.io.upgrade import upgrade_net

    net = read_prototxt(path, caffe_pb2.NetParameter)
    upgrade_net(net, source=os.fspath(path), input_fields_to_layer=input_fields_to_layer)
    return net


def read_solver_prototxt(path):
    """A solver prototxt as a SolverParameter with the old `solver_type` enum upgraded to `type`."""
    from protonet import caffe_pb2
    from protonet.io.upgrade import upgrade_solver

    solver = read_prototxt(path, caffe_pb2.SolverParameter)
    upgrade_solver(solver, source=os.fspath(path))
    return solver
