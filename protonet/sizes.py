"""Blob sizes, checked in Python integers before anything is allocated.

Caffe's Blob holds at most INT_MAX values (Blob::Reshape refuses more: "blob size exceeds INT_MAX"),
and its layers read their uint32 size fields into an int. A net must also fit the memory it is built
in: while a net is built, every blob's bytes are reserved against a `MemoryBudget` (the machine's
memory unless NetContext.max_memory says otherwise) before the blob is allocated, so a size typo is
one line naming the layer, the shape and the bytes, not a 120 GB allocation or a torch traceback.

The budget is a lower bound of what running the net takes: each top and parameter blob once, float32
(gradients, the data layers' prefetch queues and the framework's own buffers come on top).
"""
import contextlib
import contextvars
import math
import os

from protonet.errors import ProtonetError

INT_MAX = 2**31 - 1
FLOAT_BYTES = 4
# Python objects behind one built layer (module, messages, shapes): measured 7.4 KB a layer
# building a 68,000-layer net from its file.
LAYER_BYTES = 10 << 10

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class SizeError(ProtonetError):
    """A blob too large for Caffe's types, or a net too large for the memory limit."""


def _cgroup_limit():
    """The memory limit of this process's cgroup (a container, a Slurm job), or None."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max" or a huge number: no limit
            return int(text)
    return None


def machine_memory():
    """Bytes of memory this process may use: the machine's physical memory, or less where a cgroup
    (container, scheduler job) or an address-space rlimit says so; None when the system does not say."""
    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    limits.append(_cgroup_limit())
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        limits.append(soft if soft != resource.RLIM_INFINITY else None)
    except (ImportError, ValueError, OSError):
        pass
    limits = [n for n in limits if n]
    return min(limits) if limits else None


def format_bytes(n):
    """`n` bytes in the largest binary unit that keeps it at least 1 (1536 -> '1.5 KiB')."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def parse_bytes(text):
    """'64G', '512M', '1.5T', '1000000' -> bytes (binary units, an optional trailing 'B' or 'iB')."""
    value = str(text).strip().upper().replace("IB", "").rstrip("B") if str(text).strip() else ""
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[:-1] if unit else value
    try:
        amount = float(number)
    except ValueError:
        raise ProtonetError(f"memory size '{text}': expected a number with an optional unit K, M, G or T") from None
    if not math.isfinite(amount) or amount <= 0:
        raise ProtonetError(f"memory size '{text}': must be a positive number")
    return int(amount * _UNITS[unit])


def blob_count(shape, where):
    """The number of values of a blob of `shape`, refused as Caffe's Blob::Reshape refuses it:
    a negative dimension, or more than INT_MAX values."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise SizeError(f"{where}: shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if count > INT_MAX:
        raise SizeError(f"{where}: shape {list(shape)} has {count} values, more than a Caffe blob holds "
                        f"({INT_MAX}, INT_MAX); {format_bytes(count * FLOAT_BYTES)} as float32")
    return count


class MemoryBudget:
    """Bytes reserved so far against a limit; `reserve` fails with one line naming what went over."""

    def __init__(self, limit=None, what="the net"):
        self.from_machine = limit is None
        self.limit = machine_memory() if limit is None else int(limit)
        self.used = 0
        self.what = what

    def reserve(self, nbytes, where, shape=None):
        self.used += int(nbytes)
        if self.limit is not None and self.used > self.limit:
            source = "this machine's memory" if self.from_machine else "the memory limit"
            shape_text = f" of shape {list(shape)}" if shape is not None else ""
            raise SizeError(f"{where}{shape_text} needs {format_bytes(nbytes)} ({int(nbytes)} bytes): "
                            f"{self.what} would need at least {format_bytes(self.used)}, more than "
                            f"{source} ({format_bytes(self.limit)}; see --max-memory)")


_ACTIVE = contextvars.ContextVar("protonet_memory_budget", default=None)


@contextlib.contextmanager
def active_budget(budget):
    """Make `budget` the one `reserve_blob` charges while the block runs (a net being built)."""
    token = _ACTIVE.set(budget)
    try:
        yield budget
    finally:
        _ACTIVE.reset(token)


def reserve_blob(shape, where, itemsize=FLOAT_BYTES):
    """Check a blob about to be allocated: Caffe's count limit, then the active budget (if any).
    Returns its number of values."""
    count = blob_count(shape, where)
    reserve_bytes(count * itemsize, where, shape)
    return count


def reserve_bytes(nbytes, where, shape=None):
    """Charge `nbytes` to the active budget, if a net is being built."""
    budget = _ACTIVE.get()
    if budget is not None:
        budget.reserve(nbytes, where, shape)
