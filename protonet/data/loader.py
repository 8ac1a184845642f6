"""Batches for the data layers, assembled in worker processes, pinned and prefetched.

A `BatchMaker` turns a batch number into a batch, deterministically: batch b takes the
records at stream positions b*batch_size ... of this rank's shard (the stream runs through the
shard epoch after epoch, sequentially like Caffe, or in a fresh permutation per epoch when
shuffling), and draws its random numbers from a generator seeded by (seed, rank, b). So the
batches are the same whatever the number of workers, and a seed reproduces a run.

A corrupt record is skipped with a warning naming its key, and counted; the batch takes the
next record of the stream instead.
"""
import functools
import itertools
import logging
import os

import cv2
import numpy as np
import torch

from protonet.data.records import CorruptRecord, close_lmdb_handles, decode_record, skip_or_raise
from protonet.data.workers import die_with_parent, leave_signals_to_parent
from protonet.errors import ProtonetError

log = logging.getLogger("protonet.data")


class LmdbSource:
    """Records of an LMDB, decoded to Samples."""

    def __init__(self, reader, annotated, color_mode=None):
        self.reader = reader
        self.annotated = annotated
        self.color_mode = color_mode

    def __len__(self):
        return len(self.reader)

    def load(self, index):
        key, value = self.reader.get(index)
        return decode_record(key, value, self.annotated, self.color_mode)


class BatchMaker(torch.utils.data.Dataset):
    """Map-style dataset whose items are whole batches: index = batch number.

    process(sample, rng) -> (CHW float32 array, transformed sample); labels(samples) -> the
    label array of the batch or None.
    """

    def __init__(self, source, batch_size, process, labels, seed, rank=0, world_size=1,
                 shuffle=False, skip=0, same_shape=True, name="data", strict=False):
        if batch_size <= 0:
            raise ProtonetError(f"layer {name}: batch_size must be positive")
        if not 0 <= rank < world_size:
            raise ProtonetError(f"layer {name}: rank {rank} outside world size {world_size}")
        self.source = source
        self.batch_size = int(batch_size)
        self.process = process
        self.labels = labels
        self.seed = int(seed)
        self.rank = rank
        self.shard = np.arange(rank, len(source), world_size)
        if not len(self.shard):
            raise ProtonetError(f"layer {name}: {len(source)} records cannot feed rank {rank} "
                                f"of {world_size}")
        self.shuffle = shuffle
        self.skip = int(skip)
        self.same_shape = same_shape
        self.name = name
        self.strict = strict
        self._orders = {}

    def record_at(self, position):
        """Index in the source of the record at a stream position."""
        n = len(self.shard)
        epoch, i = divmod(position, n)
        if not self.shuffle:
            return int(self.shard[i])
        order = self._orders.get(epoch)
        if order is None:
            order = np.random.default_rng([self.seed, self.rank, epoch, 0x5EED]).permutation(n)
            self._orders = {epoch: order}
        return int(self.shard[order[i]])

    def __len__(self):  # an endless stream; DataLoader only needs this for its own checks
        return 2**62

    def __getitem__(self, batch):
        """(data, label, corrupt record messages, error): a user error in a worker travels back as
        its message (a worker's exception would reach the parent wrapped in its traceback)."""
        try:
            return self._batch(batch) + (None,)
        except ProtonetError as exc:
            return None, None, [], str(exc)

    def _batch(self, batch):
        rng = np.random.default_rng([self.seed, self.rank, int(batch)])
        position = self.skip + int(batch) * self.batch_size
        datas, samples, corrupt = [], [], []
        extra = 0
        for item in range(self.batch_size):
            while True:
                index = self.record_at(position + item + extra)
                try:
                    sample = self.source.load(index)
                    break
                except CorruptRecord as exc:
                    skip_or_raise(exc, self.strict)
                    corrupt.append(str(exc))
                    extra += 1
                    if len(corrupt) > len(self.shard):
                        raise ProtonetError(f"layer {self.name}: no record decodes") from None
            data, out = self.process(sample, rng)
            if self.same_shape and datas and isinstance(data, np.ndarray) and data.shape != datas[0].shape:
                raise ProtonetError(f"layer {self.name}: record {sample.key} gives shape "
                                    f"{data.shape}, the batch has {datas[0].shape}; give a "
                                    f"resize_param or crop_size, or use batch_size 1")
            datas.append(data)
            samples.append(out)
        # Deferred pixels (protonet.data.device_transform) travel as a list: the device finishes them.
        data = datas if not isinstance(datas[0], np.ndarray) else torch.from_numpy(np.stack(datas))
        label = self.labels(samples)
        label = None if label is None else torch.from_numpy(np.ascontiguousarray(label))
        return data, label, corrupt


def _worker_init(parent_pid, _):
    # OpenCV already runs single-threaded here: the parent set that before forking (see _start).
    torch.set_num_threads(1)
    # signals are the parent's to act on; a worker ends with it, even after a kill -9
    leave_signals_to_parent(parent_pid)
    die_with_parent(parent_pid)


def default_workers():
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class Prefetcher:
    """Iterates the batches of a BatchMaker through a DataLoader (workers, pinning, prefetch)."""

    def __init__(self, maker, workers=None, prefetch=4, pin_memory=None):
        self.maker = maker
        self.workers = default_workers() if workers is None else int(workers)
        self.prefetch = max(1, int(prefetch))
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.corrupt = 0
        self.next_batch = 0
        self._it = None

    def _start(self):
        kwargs = dict(batch_size=None, sampler=itertools.count(self.next_batch),
                      num_workers=self.workers, pin_memory=self.pin_memory)
        if not self.workers:
            self._it = iter(torch.utils.data.DataLoader(self.maker, **kwargs))
            return
        close_lmdb_handles()
        kwargs.update(prefetch_factor=max(1, self.prefetch // self.workers + 1),
                      persistent_workers=False, worker_init_fn=functools.partial(_worker_init, os.getpid()),
                      multiprocessing_context="fork" if os.name == "posix" else None)
        # A forked child must not inherit OpenCV's thread pool: touching it there (even to shrink
        # it) waits forever on the parent's threads. Fork while OpenCV is single-threaded.
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            self._it = iter(torch.utils.data.DataLoader(self.maker, **kwargs))
        finally:
            cv2.setNumThreads(threads)

    def __next__(self):
        if self._it is None:
            self._start()
        data, label, corrupt, error = next(self._it)
        if error is not None:
            raise ProtonetError(error)
        self.next_batch += 1
        self.corrupt += len(corrupt)
        return data, label

    def __iter__(self):
        return self

    def close(self):
        self._it = None

    def __getstate__(self):  # a copied net gets its own workers
        state = dict(self.__dict__)
        state["_it"] = None
        return state


class DeviceFeeder:
    """Batches of a Prefetcher on a device. On CUDA the next batch's copy (from pinned memory,
    non-blocking, on a side stream) is issued as soon as the current one is handed out, so it
    overlaps the step that uses the current one; elsewhere batches are moved when asked for."""

    def __init__(self, batches):
        self.batches = batches
        self._ahead = None     # (device, stream, data, label) already on its way

    def reset(self):
        """Drop a batch sent ahead; returns how many were dropped (0 or 1): the stream position
        moves back by that much."""
        dropped = int(self._ahead is not None)
        self._ahead = None
        return dropped

    def _send(self, device):
        data, label = next(self.batches)
        if device.type != "cuda":
            return (device, None, _to(data, device), _to(label, device))
        stream = torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            return (device, stream, _to(data, device), _to(label, device))

    def next(self, device):
        ahead = self._ahead if self._ahead is not None and self._ahead[0] == device else self._send(device)
        _, stream, data, label = ahead
        if stream is not None:
            current = torch.cuda.current_stream(device)
            current.wait_stream(stream)
            for t in (data if isinstance(data, list) else [data]) + [label]:
                if isinstance(t, torch.Tensor):
                    t.record_stream(current)
            self._ahead = self._send(device)
        else:
            self._ahead = None
        return data, label


def _to(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    return value
