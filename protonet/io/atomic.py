"""Writing files so that a crash, a kill or a full disk never leaves half of one under its final name.

Everything protonet writes (snapshots, LMDBs, prototxts, detect's JSONL, parse-log tables) goes to
a temporary name beside its final one, `.tmp-NAME.XXXXXXXX`, is flushed to disk and renamed; on
any error the temporary is removed and the error is one line naming the path (for a full disk or
quota, also the space needed and the space free). A kill -9 can still leave a temporary behind:
`remove_stale` clears those of given names (the solver does it for its snapshots at start).
"""
import contextlib
import errno
import os
import re
import secrets
import shutil

from protonet.errors import ProtonetError

TMP_PREFIX = ".tmp-"
_SPACE_ERRORS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


class WriteError(ProtonetError):
    """A file could not be written (full disk, quota, read-only file system, permissions...)."""

    def __init__(self, message, path, errno_value=None):
        super().__init__(message)
        self.path = path
        self.errno = errno_value


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _megabytes(n):
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"


def write_error(exc, path, needed=None):
    """The one-line WriteError for an OSError `exc` met while writing `path` (`needed`: bytes)."""
    path = os.fspath(path)
    reason = exc.strerror or str(exc)
    if exc.errno in _SPACE_ERRORS:
        directory = os.path.dirname(os.path.abspath(path))
        try:
            free = shutil.disk_usage(directory).free
            room = f"{_megabytes(free)} free in {directory}"
        except OSError:
            room = f"free space in {directory} unknown"
        need = f"needs {_megabytes(needed)}, " if needed else ""
        reason = f"{reason} ({need}{room})"
    return WriteError(f"{path}: cannot write: {reason}", path, exc.errno)


def temporary_name(path):
    """A fresh name beside `path` for writing it: .tmp-NAME.XXXXXXXX."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, f"{TMP_PREFIX}{os.path.basename(path)}.{secrets.token_hex(4)}")


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _sync_directory(directory):
    """Make a rename in `directory` durable (where the platform allows opening a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace(tmp, path, sync=True):
    """Rename `tmp` over `path`; a directory replaces a directory (the old one removed after)."""
    if os.path.isdir(tmp) and os.path.isdir(path) and not os.path.islink(path):
        old = temporary_name(path)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    if sync:
        _sync_directory(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_path(path, needed=None, sync=True):
    """Yields a temporary path to write (a file, or a directory such as an LMDB); when the block
    ends without error it is renamed to `path`, else removed. OSErrors become one WriteError line."""
    path = os.fspath(path)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as exc:
        raise write_error(exc, path, needed) from None
    tmp = temporary_name(path)
    try:
        yield tmp
        replace(tmp, path, sync)
    except OSError as exc:
        _remove(tmp)
        raise write_error(exc, path, needed) from None
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path, mode="wb", needed=None, sync=True, **kwargs):
    """A file handle (`mode` "wb" or "w", open()'s keywords) whose content appears at `path` only
    when the block ends without error; flushed to disk before the rename unless `sync` is False
    (enough against a killed process, not against a power cut)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open: mode must be 'wb' or 'w', not {mode!r}")
    with atomic_path(path, needed=needed, sync=sync) as tmp:
        # a plain open() would give the file the umask's mode; O_EXCL: the fresh name is ours
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_UMASK)
        with open(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            if sync:
                os.fsync(fh.fileno())


def atomic_write(path, data, needed=None, sync=True):
    """Write bytes (or str) to `path` through a temporary file and a rename."""
    with atomic_open(path, "wb" if isinstance(data, (bytes, bytearray, memoryview)) else "w",
                     needed=needed, sync=sync) as fh:
        fh.write(data)


def atomic_write_image(path, image):
    """Write an image (BGR array) in the format its extension names, as atomic_write does (not
    synced: `detect` writes one per input image)."""
    import cv2  # OpenCV only for the commands that write images

    ok, encoded = cv2.imencode(os.path.splitext(os.fspath(path))[1] or ".png", image)
    if not ok:
        raise ProtonetError(f"{path}: OpenCV cannot encode an image for this extension")
    atomic_write(path, encoded.tobytes(), sync=False)


def remove_stale(directory, name_pattern):
    """Remove the temporaries a killed writer left in `directory` for files whose names match the
    regular expression `name_pattern` (whole names). Returns the removed paths."""
    stale = re.compile(re.escape(TMP_PREFIX) + f"(?:{name_pattern})" + r"\.[0-9a-f]{8}")
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    removed = []
    for name in sorted(names):
        if stale.fullmatch(name):
            full = os.path.join(directory, name)
            _remove(full)
            removed.append(full)
    return removed
