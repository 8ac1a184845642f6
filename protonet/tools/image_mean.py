"""The mean image of a database, as Caffe's tools/compute_image_mean computes it
(`protonet compute-image-mean DB [mean.binaryproto]`); a Data layer uses the file as mean_file.

Caffe's arithmetic is kept to the bit: records are decoded natively (DecodeDatumNative), summed in
float32 one record after the other in the database's key order, and divided by their count in
float32; the file is a BlobProto with num=1, channels, height, width and the data. The per-channel
means it logs are float32 sums over the plane, in order, divided by the plane size.
Beyond Caffe: a database of AnnotatedDatum (create-annoset's) is read through its datum.
"""
import logging

import numpy as np

from protonet import caffe_pb2
from protonet.data.records import CorruptRecord, LmdbReader, datum_image
from protonet.errors import ProtonetError
from protonet.io.prototxt import write_binary_proto
from protonet.solver.logger import format_float

log = logging.getLogger("protonet.compute_image_mean")
F32 = np.float32


def _datum(value, key):
    """The Datum of a record: a Datum, or the datum of an AnnotatedDatum."""
    try:
        datum = caffe_pb2.Datum.FromString(value)
        if datum.data or len(datum.float_data):
            return datum
        annotated = caffe_pb2.AnnotatedDatum.FromString(value)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ProtonetError(f"record {key}: does not parse as Datum or AnnotatedDatum ({exc})") from None
    return annotated.datum if annotated.datum.data or len(annotated.datum.float_data) else datum


def _values(datum, key):
    """The record's values in Caffe's CHW order (uint8, or float32 for float_data)."""
    try:
        image = datum_image(datum, key)
    except CorruptRecord as exc:
        raise ProtonetError(str(exc)) from None
    return np.ascontiguousarray(image.transpose(2, 0, 1)), image.dtype


def compute_image_mean(db_path, out_path=None, progress=None):
    """The mean BlobProto of every record of an LMDB (and, with `out_path`, the binaryproto written);
    returns (blob, per-channel means)."""
    reader = LmdbReader(db_path)
    keys = range(len(reader))
    total = None
    for index in (progress(keys) if progress else keys):
        key, value = reader.get(index)
        key = key.decode("utf-8", "replace")
        datum = _datum(value, key)
        chw, _ = _values(datum, key)
        if total is None:
            if datum.encoded:
                log.info("Decoding Datum")
            shape = chw.shape
            total = np.zeros(chw.size, F32)
            log.info("Starting Iteration")
        elif chw.shape != shape:
            raise ProtonetError(f"{db_path}: record {key} is {'x'.join(map(str, chw.shape))}, the first is "
                                f"{'x'.join(map(str, shape))}: Caffe's mean needs images of one size")
        total += chw.reshape(-1)  # float32 + uint8 in float32, as Caffe's sum_blob
        if (index + 1) % 10000 == 0:
            log.info("Processed %d files.", index + 1)
    count = len(reader)
    if count % 10000:
        log.info("Processed %d files.", count)
    mean = total / F32(count)
    channels, height, width = shape
    blob = caffe_pb2.BlobProto(num=1, channels=channels, height=height, width=width)
    blob.data.extend(mean.tolist())
    if out_path:
        log.info("Write to %s", out_path)
        write_binary_proto(blob, out_path)
    log.info("Number of channels: %d", channels)
    dim = height * width
    channel_means = []
    for c in range(channels):
        plane_sum = np.cumsum(mean[c * dim:(c + 1) * dim], dtype=F32)[-1]  # in order, as Caffe's loop
        channel_means.append(F32(plane_sum / F32(dim)))
        log.info("mean_value channel [%d]:%s", c, format_float(channel_means[-1]))
    return blob, channel_means
