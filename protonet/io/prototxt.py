"""Text and binary protobuf files with errors that name the place."""
import os
import tempfile

from google.protobuf import text_format
from google.protobuf.message import DecodeError

from protonet.errors import ProtonetError, PrototxtError


def parse_prototxt(text, message, filename="<string>"):
    """Merge prototxt `text` into `message`; a parse error names FILE:LINE:COL."""
    try:
        text_format.Merge(text, message)
    except text_format.ParseError as exc:
        line, col = exc.GetLine(), exc.GetColumn()
        msg = str(exc)
        # text_format prefixes "LINE:COL : "; keep only the description.
        prefix = f"{line}:{col} : "
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
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


def read_prototxt(path, message_cls):
    """Read a text proto file into a new `message_cls` message."""
    data = _read_bytes(os.fspath(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PrototxtError(f"{path}:1:1: not a text file (is it a binary proto?)") from None
    return parse_prototxt(text, message_cls(), filename=os.fspath(path))


def read_binary_proto(path, message_cls):
    """Read a binary proto file (caffemodel, solverstate, binaryproto mean)."""
    msg = message_cls()
    try:
        msg.ParseFromString(_read_bytes(os.fspath(path)))
    except DecodeError as exc:
        raise ProtonetError(f"{path}: not a valid binary {message_cls.DESCRIPTOR.name} ({exc})") from None
    return msg


def atomic_write(path, data):
    """Write bytes to `path` through a temporary file and a rename: a crash never leaves half a file."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_prototxt(message, path):
    atomic_write(path, text_format.MessageToString(message).encode("utf-8"))


def write_binary_proto(message, path):
    atomic_write(path, message.SerializeToString())
