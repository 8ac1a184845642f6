"""A data layer's whole composition, built in one place: `pipeline_for(layer_param, ctx)`.

A pipeline is a source of records (an LMDB of AnnotatedDatum or Datum, or ImageData's image list),
the per-sample processing (SSD's AnnotatedPipeline or the plain Transformer), the label maker and
the batch geometry; `batches()` gives the stream of batches: sharded by rank, seeded, assembled in
worker processes and prefetched (protonet.data.loader).

`ctx` is the net's NetContext (protonet.layers.base). What a pipeline reads from it: phase, seed,
rank, world_size, data_workers, root_dir, data_shuffle (shuffle the records every epoch; Caffe
reads them in order) and reencode_jpeg (Caffe's JPEG round trip of every cropped, expanded or
distorted image, off by default; on for bit-parity with Caffe's batches).
"""
import logging
import os
import zlib
from dataclasses import dataclass

import numpy as np

from protonet import caffe_pb2
from protonet.data.device_transform import check_supported, deferred_sample
from protonet.data.image_list import ImageListSource
from protonet.data.loader import BatchMaker, LmdbSource, Prefetcher
from protonet.data.records import LmdbReader, Sample, first_good_record
from protonet.data.transform import AnnotatedPipeline, Transformer, label_rows
from protonet.data.video import VideoSource
from protonet.errors import ProtonetError
from protonet.sizes import FLOAT_BYTES, blob_count, reserve_bytes

R = caffe_pb2.ResizeParameter
log = logging.getLogger("protonet.data")


def resolve(ctx, path):
    """A relative path of the prototxt, against ctx.root_dir when the net has one."""
    if ctx.root_dir and path and not os.path.isabs(path):
        return os.path.join(ctx.root_dir, path)
    return path


# ---- per-sample processing (picklable: it runs in the worker processes) ---------------------------

class PlainProcess:
    """process(sample, rng) for Datum and image-list records: the Transformer alone."""

    def __init__(self, transformer):
        self.transformer = transformer

    def __call__(self, sample, rng):
        sample.annotated = False
        return self.transformer.transform(sample, rng)


class AnnotatedProcess:
    """process(sample, rng) for AnnotatedDatum records: distort, expand, batch_sampler crop, transform.
    on_device: hand over the crop with its draws instead (protonet.data.device_transform)."""

    def __init__(self, pipeline, annotated=True, on_device=False):
        self.pipeline = pipeline
        self.transformer = pipeline.t
        self.annotated = annotated
        self.on_device = on_device

    def __call__(self, sample, rng):
        sample.annotated = self.annotated
        if self.on_device:
            return deferred_sample(self.pipeline, sample, rng)
        return self.pipeline(sample, rng)


def transformer_for(layer_param, ctx, where=None):
    """The Transformer of a layer's transform_param in the net's phase."""
    return Transformer(layer_param.transform_param, ctx.phase, root_dir=ctx.root_dir,
                       reencode_jpeg=ctx.reencode_jpeg,
                       where=where or f"layer {layer_param.name}: transform_param")


def sample_processor(layer_param, ctx, where=None):
    """A layer's per-sample step, (sample, rng) -> (CHW float32 array, transformed sample); also
    what `protonet detect` runs on an image."""
    transformer = transformer_for(layer_param, ctx, where)
    if layer_param.type == "AnnotatedData":
        return AnnotatedProcess(AnnotatedPipeline(transformer, layer_param.annotated_data_param.batch_sampler))
    return PlainProcess(transformer)


def scalar_labels(samples):
    return np.array([s.label for s in samples], dtype=np.float32)


def no_labels(samples):
    return None


# ---- the pipeline -------------------------------------------------------------------------------

@dataclass
class Pipeline:
    name: str                     # the layer's name: error messages and the seed
    source: object                # len(source), source.load(i) -> Sample
    first: Sample                 # the first readable record: it shapes the tops
    process: object               # PlainProcess or AnnotatedProcess
    labels: object                # samples -> label array
    batch_size: int
    skip: int = 0                 # rand_skip: records skipped at the start
    shuffle: bool = False
    label_shape: tuple | None = None
    prefetch: int = 4
    device_transform: tuple | None = None   # (height, width, mean values, scale): the device finishes
    sequential: bool = False      # records must be read in order, in this process (a webcam)

    @property
    def transformer(self):
        return self.process.transformer

    @property
    def fits_small_size(self):
        tp = self.transformer.param
        return tp.HasField("resize_param") and tp.resize_param.resize_mode == R.FIT_SMALL_SIZE

    def top_shapes(self, n_tops):
        """[data shape] or [data shape, label shape], as Caffe's DataLayerSetUp infers them."""
        if self.fits_small_size and self.batch_size != 1:
            raise ProtonetError(f"layer {self.name}: FIT_SMALL_SIZE needs batch_size 1")
        height, width, channels = self.first.image.shape
        c, h, w = self.transformer.output_shape(height, width, channels)
        shapes = [(self.batch_size, c, h, w)]
        if n_tops > 1:
            shapes.append(self.label_shape or (self.batch_size,))
        # the prefetch queue holds `prefetch` batches besides the tops: reserved while the net is built
        batch_values = blob_count(shapes[0], f"layer {self.name}: data")
        reserve_bytes(self.prefetch * batch_values * FLOAT_BYTES, f"layer {self.name}: {self.prefetch} prefetched "
                      "batches", shapes[0])
        return shapes

    def batches(self, ctx, with_labels=True):
        """The prefetched stream of (data, label) batches of this rank."""
        seed = ctx.seed if ctx.seed is not None else int.from_bytes(os.urandom(4), "little")
        salt = zlib.crc32(f"{self.name}/{ctx.phase}".encode())
        maker = BatchMaker(self.source, self.batch_size, self.process, self.labels if with_labels else no_labels,
                           seed=(seed + salt) % 2**32, rank=ctx.rank, world_size=ctx.world_size,
                           shuffle=self.shuffle, skip=self.skip, name=self.name,
                           same_shape=not self.fits_small_size, strict=ctx.strict_data)
        return Prefetcher(maker, workers=0 if self.sequential else ctx.data_workers, prefetch=self.prefetch)


def _open_lmdb(layer_param, ctx):
    name, dp = layer_param.name, layer_param.data_param
    if not dp.source:
        raise ProtonetError(f"layer {name}: data_param.source is empty")
    path = resolve(ctx, dp.source)
    if dp.backend == caffe_pb2.DataParameter.LEVELDB and not os.path.exists(os.path.join(path, "data.mdb")):
        raise ProtonetError(f"layer {name}: {path}: LEVELDB is not supported, only LMDB")
    if dp.batch_size <= 0:
        raise ProtonetError(f"layer {name}: data_param.batch_size must be positive")
    try:
        return LmdbReader(path)
    except ProtonetError as exc:
        raise ProtonetError(f"layer {name}: data_param.source: {exc}") from None


def _rand_skip(rand_skip, ctx):
    if not rand_skip:
        return 0
    return int(np.random.default_rng(ctx.seed).integers(rand_skip))


def _annotated_data(lp, ctx):
    reader = _open_lmdb(lp, ctx)
    adp = lp.annotated_data_param
    process = sample_processor(lp, ctx)
    color_mode = process.transformer.color_mode
    first = first_good_record(reader, True, color_mode, strict=ctx.strict_data)
    process.annotated = first.annotated or adp.HasField("anno_type")
    if adp.HasField("anno_type") and adp.anno_type != caffe_pb2.AnnotatedDatum.BBOX:
        raise ProtonetError(f"layer {lp.name}: unknown anno_type {adp.anno_type}")
    skipped = process.pipeline.skipped_in_test()
    if skipped:
        log.warning("layer %s: TEST phase leaves out the random %s", lp.name, ", ".join(skipped))
    batch = lp.data_param.batch_size
    label_shape = (1, 1, max(len(first.boxes), 1), 8) if process.annotated else (batch,)
    device_transform = None
    if ctx.data_on_device and process.transformer.random:
        tp = lp.transform_param
        check_supported(tp, f"layer {lp.name}: transform_param")
        process.on_device = True
        device_transform = (tp.resize_param.height, tp.resize_param.width, process.transformer.mean_values, tp.scale)
    return Pipeline(lp.name, LmdbSource(reader, True, color_mode), first, process,
                    label_rows if process.annotated else scalar_labels, batch,
                    skip=_rand_skip(lp.data_param.rand_skip, ctx), shuffle=ctx.data_shuffle,
                    label_shape=label_shape, prefetch=lp.data_param.prefetch or 4,
                    device_transform=device_transform)


def _datum_data(lp, ctx):
    reader = _open_lmdb(lp, ctx)
    process = sample_processor(lp, ctx)
    color_mode = process.transformer.color_mode
    first = first_good_record(reader, False, color_mode, strict=ctx.strict_data)
    return Pipeline(lp.name, LmdbSource(reader, False, color_mode), first, process, scalar_labels,
                    lp.data_param.batch_size, skip=_rand_skip(lp.data_param.rand_skip, ctx),
                    shuffle=ctx.data_shuffle, prefetch=lp.data_param.prefetch or 4)


def _image_data(lp, ctx):
    ip = lp.image_data_param
    if (ip.new_height > 0) != (ip.new_width > 0):
        raise ProtonetError(f"layer {lp.name}: give both new_height and new_width, or neither")
    # Caffe concatenates root_folder and the listed path; a relative root (or none) resolves
    # against the net's directory.
    if ip.root_folder:
        root = resolve(ctx, ip.root_folder)
    else:
        root = os.path.join(ctx.root_dir, "") if ctx.root_dir else ""
    source = ImageListSource(resolve(ctx, ip.source), root, ip.new_height, ip.new_width, ip.is_color, lp.name)
    process = sample_processor(lp, ctx)
    first = source.first_good()
    return Pipeline(lp.name, source, first, process, scalar_labels, ip.batch_size,
                    skip=_rand_skip(ip.rand_skip, ctx), shuffle=ip.shuffle or ctx.data_shuffle,
                    prefetch=lp.data_param.prefetch or 4)


def _video_data(lp, ctx):
    if lp.data_param.batch_size <= 0:
        raise ProtonetError(f"layer {lp.name} (VideoData): data_param.batch_size must be positive")
    source = VideoSource(lp.video_data_param, resolve(ctx, lp.video_data_param.video_file), lp.name)
    return Pipeline(lp.name, source, source.first_good(), sample_processor(lp, ctx), scalar_labels,
                    lp.data_param.batch_size, prefetch=lp.data_param.prefetch or 4, sequential=source.webcam)


# Caffe type -> how its pipeline is composed
_COMPOSERS = {"AnnotatedData": _annotated_data, "Data": _datum_data, "ImageData": _image_data,
              "VideoData": _video_data}


def pipeline_for(layer_param, ctx):
    """The Pipeline of an AnnotatedData, Data, ImageData or VideoData layer."""
    compose = _COMPOSERS.get(layer_param.type)
    if compose is None:
        raise ProtonetError(f"layer {layer_param.name}: no data pipeline for type {layer_param.type} "
                            f"(one of {', '.join(_COMPOSERS)})")
    return compose(layer_param, ctx)


def source_path(layer_param, ctx):
    """The file or directory a data layer reads (LMDB or image list), resolved."""
    if layer_param.type == "ImageData":
        return resolve(ctx, layer_param.image_data_param.source)
    return resolve(ctx, layer_param.data_param.source)


def static_top_shapes(layer_param, n_tops):
    """The tops' shapes when the transform alone fixes them (crop, or a WARP / FIT_LARGE_SIZE_AND_PAD
    resize): channels 1 with force_gray, else 3, the colour images of detection datasets. None
    when only the records can tell (Caffe reads the first one)."""
    tp = layer_param.transform_param
    crop_h, crop_w = int(tp.crop_size or tp.crop_h), int(tp.crop_size or tp.crop_w)
    rp = tp.resize_param
    fixed = tp.HasField("resize_param") and rp.resize_mode in (R.WARP, R.FIT_LARGE_SIZE_AND_PAD) and rp.height > 0 \
        and rp.width > 0
    if not (crop_h and crop_w) and not fixed:
        return None
    height, width = (crop_h or int(rp.height)), (crop_w or int(rp.width))
    batch = int(layer_param.image_data_param.batch_size if layer_param.type == "ImageData"
                else layer_param.data_param.batch_size)
    shapes = [(batch, 1 if tp.force_gray else 3, height, width)]
    if n_tops > 1:
        shapes.append((1, 1, 1, 8) if layer_param.type == "AnnotatedData" else (batch,))
    return shapes
