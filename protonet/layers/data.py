"""Data layers: AnnotatedData (SSD's LMDB of AnnotatedDatum), Data (LMDB of Datum) and
ImageData (a list file of images and labels).

They take no bottoms; forward() returns the next prefetched batch, (data, label) or data
alone when the layer has one top. The batches come from protonet.data: records are read
sequentially like Caffe (shuffle per epoch on request: ctx.extras["data_shuffle"] or
PROTONET_DATA_SHUFFLE=1), sharded by ctx.rank / ctx.world_size, transformed in
ctx.data_workers worker processes with random streams derived from ctx.seed.

Caffe's JPEG re-encode of every cropped/expanded/distorted image is off by default; turn it on
with ctx.extras["data_reencode_jpeg"] = True or PROTONET_DATA_REENCODE_JPEG=1 to reproduce
Caffe's pixels exactly.
"""
import logging
import os
import zlib

import cv2
import numpy as np
import torch

from protonet import caffe_pb2
from protonet.data.loader import BatchMaker, LmdbSource, Prefetcher
from protonet.data.records import CorruptRecord, LmdbReader, Sample, first_good_record, read_image_file
from protonet.data.transform import AnnotatedPipeline, Transformer, label_rows
from protonet.errors import ProtonetError
from protonet.io.prototxt import read_utf8_lines
from protonet.layers.base import Layer, register

R = caffe_pb2.ResizeParameter
log = logging.getLogger("protonet.data")


def _flag(ctx, extra, env):
    if extra in ctx.extras:
        return bool(ctx.extras[extra])
    return os.environ.get(env, "").lower() in ("1", "true", "yes", "on")


def _resolve(ctx, path):
    if ctx.root_dir and path and not os.path.isabs(path):
        return os.path.join(ctx.root_dir, path)
    return path


class _Transform:
    """Picklable process(sample, rng) for plain Datum / image records."""

    def __init__(self, transformer):
        self.t = transformer

    def __call__(self, sample, rng):
        sample.annotated = False
        return self.t.transform(sample, rng)


class _Annotated:
    """Picklable process(sample, rng) for AnnotatedDatum records."""

    def __init__(self, pipeline, annotated):
        self.pipeline = pipeline
        self.annotated = annotated

    def __call__(self, sample, rng):
        sample.annotated = self.annotated
        return self.pipeline(sample, rng)


def _scalar_labels(samples):
    return np.array([s.label for s in samples], dtype=np.float32)


def _no_labels(samples):
    return None


class _PipelineLayer(Layer):
    is_data = True

    def _setup(self, source, first, process, labels, batch_size, transformer, skip=0,
               shuffle=None, label_shape=None):
        self.check_bottoms(0)
        ctx = self.ctx
        rp = self.param.transform_param.resize_param
        if (self.param.transform_param.HasField("resize_param")
                and rp.resize_mode == R.FIT_SMALL_SIZE and batch_size != 1):
            raise ProtonetError(f"layer {self.name}: FIT_SMALL_SIZE needs batch_size 1")
        c, h, w = transformer.output_shape(first.image.shape[0], first.image.shape[1],
                                           first.image.shape[2])
        self.n_tops = max(1, len(self.param.top))
        self.top_shapes = [(batch_size, c, h, w)]
        if self.n_tops > 1:
            self.top_shapes.append(label_shape or (batch_size,))
        seed = ctx.seed if ctx.seed is not None else int.from_bytes(os.urandom(4), "little")
        salt = zlib.crc32(f"{self.name}/{self.phase}".encode())
        if shuffle is None:
            shuffle = _flag(ctx, "data_shuffle", "PROTONET_DATA_SHUFFLE")
        maker = BatchMaker(source, batch_size, process, labels if self.n_tops > 1 else _no_labels,
                           seed=(seed + salt) % 2**32, rank=ctx.rank, world_size=ctx.world_size,
                           shuffle=shuffle, skip=skip, name=self.name, strict=ctx.strict_data,
                           same_shape=not (rp.resize_mode == R.FIT_SMALL_SIZE))
        self.batches = Prefetcher(maker, workers=ctx.data_workers,
                                  prefetch=self.param.data_param.prefetch or 4)
        self.register_buffer("_device", torch.zeros(0), persistent=False)

    @property
    def corrupt_records(self):
        """How many corrupt records were skipped so far."""
        return self.batches.corrupt

    def skip_batches(self, n):
        """Continue n batches further on (a resumed solver reads on where its snapshot left off);
        batches are a function of their number, so this is exact and costs nothing."""
        self.batches.close()
        self.batches.next_batch += int(n)

    def forward(self):
        data, label = next(self.batches)
        device = self._device.device
        data = data.to(device, non_blocking=True)
        if self.n_tops == 1:
            return data
        return data, label.to(device, non_blocking=True)


def _open_lmdb(layer, ctx):
    dp = layer.param.data_param
    if not dp.source:
        raise ProtonetError(f"layer {layer.name}: data_param.source is empty")
    path = _resolve(ctx, dp.source)
    if dp.backend == caffe_pb2.DataParameter.LEVELDB and not os.path.exists(
            os.path.join(path, "data.mdb")):
        raise ProtonetError(f"layer {layer.name}: {path}: LEVELDB is not supported, only LMDB")
    if dp.batch_size <= 0:
        raise ProtonetError(f"layer {layer.name}: data_param.batch_size must be positive")
    try:
        return LmdbReader(path)
    except ProtonetError as exc:
        raise ProtonetError(f"layer {layer.name}: data_param.source: {exc}") from None


def _skip(param_rand_skip, ctx):
    if not param_rand_skip:
        return 0
    seed = ctx.seed if ctx.seed is not None else None
    return int(np.random.default_rng(seed).integers(param_rand_skip))


@register("AnnotatedData")
class AnnotatedData(_PipelineLayer):
    """SSD's AnnotatedData: tops data [N, C, H, W] and label [1, 1, num_boxes, 8]."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        reader = _open_lmdb(self, ctx)
        tp = param.transform_param
        adp = param.annotated_data_param
        transformer = Transformer(tp, ctx.phase, root_dir=ctx.root_dir,
                                  reencode_jpeg=_flag(ctx, "data_reencode_jpeg",
                                                      "PROTONET_DATA_REENCODE_JPEG"),
                                  where=f"layer {self.name}: transform_param")
        first = first_good_record(reader, True, transformer.color_mode, strict=ctx.strict_data)
        annotated = first.annotated or adp.HasField("anno_type")
        if adp.HasField("anno_type") and adp.anno_type != caffe_pb2.AnnotatedDatum.BBOX:
            raise ProtonetError(f"layer {self.name}: unknown anno_type {adp.anno_type}")
        pipeline = AnnotatedPipeline(transformer, adp.batch_sampler)
        if pipeline.skipped_in_test():
            log.warning("layer %s: TEST phase leaves out the random %s", self.name,
                        ", ".join(pipeline.skipped_in_test()))
        batch = param.data_param.batch_size
        label_shape = (1, 1, max(len(first.boxes), 1), 8) if annotated else (batch,)
        self._setup(LmdbSource(reader, True, transformer.color_mode), first,
                    _Annotated(pipeline, annotated), label_rows if annotated else _scalar_labels,
                    batch, transformer, skip=_skip(param.data_param.rand_skip, ctx),
                    label_shape=label_shape)


@register("Data")
class Data(_PipelineLayer):
    """Caffe's Data layer over an LMDB of Datum: tops data and label [N]."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        reader = _open_lmdb(self, ctx)
        transformer = Transformer(param.transform_param, ctx.phase, root_dir=ctx.root_dir,
                                  where=f"layer {self.name}: transform_param")
        first = first_good_record(reader, False, transformer.color_mode, strict=ctx.strict_data)
        self._setup(LmdbSource(reader, False, transformer.color_mode), first,
                    _Transform(transformer), _scalar_labels, param.data_param.batch_size,
                    transformer, skip=_skip(param.data_param.rand_skip, ctx))


class ImageListSource:
    """`path label` lines of an ImageData source file, read like Caffe's ReadImageToCVMat."""

    def __init__(self, list_path, root_folder, new_height, new_width, is_color, name):
        if not os.path.isfile(list_path):
            raise ProtonetError(f"layer {name}: {list_path}: no such image list")
        self.lines = []
        for lineno, line in enumerate(read_utf8_lines(list_path), 1):
            if not line.strip():
                continue
            path, _, label = line.rpartition(" ")
            try:
                self.lines.append((path, int(label), lineno))
            except ValueError:
                raise ProtonetError(f"{list_path}:{lineno}: expected 'path label', "
                                    f"got {line!r}") from None
        if not self.lines:
            raise ProtonetError(f"layer {name}: {list_path}: the image list is empty")
        self.list_path = list_path
        self.root = root_folder
        self.size = (new_width, new_height) if new_height > 0 and new_width > 0 else None
        self.flag = cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE

    def __len__(self):
        return len(self.lines)

    def load(self, index):
        path, label, lineno = self.lines[index]
        img = read_image_file(self.root + path, self.flag)
        if img is None:
            raise CorruptRecord(f"{self.list_path}:{lineno}: cannot read image {self.root + path}")
        if self.size:
            img = cv2.resize(img, self.size)
        if img.ndim == 2:
            img = img[:, :, None]
        return Sample(path, img, label=label)


@register("ImageData")
class ImageData(_PipelineLayer):
    """Caffe's ImageData: images named in a list file, with integer labels."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        ip = param.image_data_param
        if (ip.new_height > 0) != (ip.new_width > 0):
            raise ProtonetError(f"layer {self.name}: give both new_height and new_width, or neither")
        # Caffe concatenates root_folder and the listed path; a relative root (or none)
        # resolves against the net's directory.
        if ip.root_folder:
            root = _resolve(ctx, ip.root_folder)
        else:
            root = os.path.join(ctx.root_dir, "") if ctx.root_dir else ""
        source = ImageListSource(_resolve(ctx, ip.source), root, ip.new_height, ip.new_width,
                                 ip.is_color, self.name)
        transformer = Transformer(param.transform_param, ctx.phase, root_dir=ctx.root_dir,
                                  where=f"layer {self.name}: transform_param")
        first = None
        for i in range(len(source)):
            try:
                first = source.load(i)
                break
            except CorruptRecord:
                continue
        if first is None:
            raise ProtonetError(f"layer {self.name}: no image of {source.list_path} can be read")
        self._setup(source, first, _Transform(transformer), _scalar_labels, ip.batch_size,
                    transformer, skip=_skip(ip.rand_skip, ctx),
                    shuffle=ip.shuffle or _flag(ctx, "data_shuffle", "PROTONET_DATA_SHUFFLE"))
