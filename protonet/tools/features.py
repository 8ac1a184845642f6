"""Blobs of a net over N batches, saved per image, as Caffe's tools/extract_features
(`protonet extract-features --model --weights --blobs a,b --out DB|.npy|.h5 --iterations N`).

An output named *.npy holds one float32 array [images, ...] per blob; *.h5 (or .hdf5) one dataset per
blob, named by the blob; any other name is an LMDB with Caffe's records: key "%010d" (the image's
number), a Datum with channels, height and width (the blob's legacy axes 1-3) and float_data.
Give one output per blob, comma-separated like the blobs, or one .h5 for all of them.
"""
import logging
import os

import h5py
import numpy as np
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.net import Net
from protonet.tools.lmdb_writer import NewLmdb

log = logging.getLogger("protonet.extract_features")
H5 = (".h5", ".hdf5")


def _legacy_dims(shape, blob):
    """Caffe's Blob::channels/height/width of a batch shape (axes past the end count as 1)."""
    if len(shape) > 4:
        raise ProtonetError(f"blob {blob}: {len(shape)} axes; Caffe's Datum holds at most 4")
    dims = list(shape[1:4]) + [1] * (4 - max(len(shape), 1))
    return dims[0], dims[1], dims[2]


class _Lmdb:
    def __init__(self, path, blob, redo):
        line = f"Extracted features of %d query images for feature blob {blob}"
        self.db = NewLmdb(path, redo, log=log, progress_line=line, log_last=False).__enter__()

    def add(self, blob, batch):
        channels, height, width = _legacy_dims(batch.shape, blob)
        for item in batch:
            datum = caffe_pb2.Datum(channels=channels, height=height, width=width)
            datum.float_data.extend(item.reshape(-1).tolist())
            self.db.put(f"{self.db.count:010d}", datum.SerializeToString())

    def close(self, failed):
        self.db.__exit__(*(failed or (None, None, None)))


class _Arrays:
    """Batches kept in memory and written at the end: .npy (one blob) or .h5 (one dataset per blob)."""

    def __init__(self, path, redo):
        if os.path.exists(path) and not redo:
            raise ProtonetError(f"{path} already exists; give --redo to recreate it")
        self.path = path
        self.batches = {}

    def add(self, blob, batch):
        self.batches.setdefault(blob, []).append(batch)

    def close(self, failed):
        if failed:
            return
        tmp = f"{self.path}.tmp{os.getpid()}"
        arrays = {blob: np.concatenate(parts) for blob, parts in self.batches.items()}
        if self.path.lower().endswith(H5):
            with h5py.File(tmp, "w") as fh:
                for blob, array in arrays.items():
                    fh.create_dataset(blob, data=array)
        else:
            with open(tmp, "wb") as fh:
                np.save(fh, next(iter(arrays.values())))
        os.replace(tmp, self.path)


def _sinks(blobs, outs, redo):
    """{blob: sink} for the outputs given."""
    if len(outs) == 1 and len(blobs) > 1 and outs[0].lower().endswith(H5):
        sink = _Arrays(outs[0], redo)
        return {blob: sink for blob in blobs}
    if len(outs) != len(blobs):
        raise ProtonetError(f"{len(blobs)} blobs and {len(outs)} outputs: give one output per blob "
                            "(or one .h5 for all)")
    sinks = {}
    for blob, out in zip(blobs, outs):
        if out.lower().endswith((".npy",) + H5):
            sinks[blob] = _Arrays(out, redo)
        else:
            log.info("Opening dataset %s", out)
            sinks[blob] = _Lmdb(out, blob, redo)
    return sinks


def extract_features(model, weights, blobs, outs, iterations, device="cpu", redo=False, progress=None):
    """Forward the TEST net `iterations` times and save `blobs` (names) into `outs`; returns the
    number of images saved per blob."""
    for path, what in ((model, "--model"), (weights, "--weights")):
        if not os.path.isfile(path):
            raise ProtonetError(f"{path}: no such file ({what})")
    net = Net(model, phase="TEST", weights=weights)
    net.eval()
    net.to(device)
    for blob in blobs:
        if blob not in net.blob_shapes:
            raise ProtonetError(f"Unknown feature blob name {blob} in the network {model}")
    sinks = _sinks(blobs, outs, redo)
    log.info("Extracting Features")
    images = dict.fromkeys(blobs, 0)
    failed = None
    steps = range(iterations)
    try:
        with torch.no_grad():
            for _ in (progress(steps) if progress else steps):
                values = net.forward()
                for blob in blobs:
                    batch = values[blob].detach().float().cpu().numpy()
                    batch = batch.reshape(1) if batch.ndim == 0 else batch
                    sinks[blob].add(blob, batch)
                    images[blob] += len(batch)
    except BaseException as exc:
        failed = (type(exc), exc, exc.__traceback__)
        raise
    finally:
        for sink in {id(s): s for s in sinks.values()}.values():
            sink.close(failed)
    for blob in blobs:
        log.info("Extracted features of %d query images for feature blob %s", images[blob], blob)
    log.info("Successfully extracted the features!")
    return images
