"""Data layers: AnnotatedData (SSD's LMDB of AnnotatedDatum), Data (LMDB of Datum), ImageData (a
list file of images and labels) and VideoData (the SSD fork's frames of a video or webcam).

They take no bottoms; forward() returns the next prefetched batch, (data, label) or data
alone when the layer has one top. What feeds them is composed by protonet.data.pipeline_for:
records read sequentially like Caffe (shuffled per epoch with ctx.data_shuffle), sharded by
ctx.rank / ctx.world_size, transformed in ctx.data_workers worker processes with random streams
derived from ctx.seed; Caffe's JPEG round trips with ctx.reencode_jpeg.
"""
import os
import time

import torch

from protonet.data.device_transform import device_batch
from protonet.data.loader import DeviceFeeder
from protonet.data.pipeline import pipeline_for, source_path, static_top_shapes
from protonet.errors import ShapeError
from protonet.layers.base import TEST, Layer, register


class _PipelineLayer(Layer):
    """A data layer. Its source is opened when the net is built, as Caffe does, to shape the tops
    from the first record. In a TEST net whose source is not there and whose transform fixes
    the shapes (crop or fixed-size resize), the net is built without it and the source is opened
    (and the shapes checked) by the first forward that reads it, so a net whose data is fed by
    name, or whose outputs= do not need it, never needs the file."""

    is_data = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(0)
        self.n_tops = max(1, len(param.top))
        self.batches = None
        self._feeder = None
        self._device_transform = None   # (height, width, mean, scale) when the device finishes the pixels
        self._skip = 0
        self.wait_seconds = 0.0  # time forward() waited for its batch (the solver reports the share)
        source = source_path(param, ctx)
        deferred = self.phase == TEST and source and not os.path.exists(source)
        shapes = static_top_shapes(param, self.n_tops) if deferred else None
        if shapes is None:
            self._open()
        else:
            self.top_shapes = shapes
        self.register_buffer("_device", torch.zeros(0), persistent=False)

    def _open(self):
        pipeline = pipeline_for(self.param, self.ctx)
        shapes = pipeline.top_shapes(self.n_tops)
        if self.top_shapes and tuple(shapes[0]) != tuple(self.top_shapes[0]):
            raise ShapeError(f"layer {self.name}: its records give data {list(shapes[0])}, the net was built for "
                             f"{list(self.top_shapes[0])} (set transform_param force_color or force_gray)")
        self.top_shapes = self.top_shapes or shapes
        self.batches = pipeline.batches(self.ctx, with_labels=self.n_tops > 1)
        self.batches.next_batch += self._skip
        self._feeder = DeviceFeeder(self.batches)
        self._device_transform = pipeline.device_transform

    @property
    def corrupt_records(self):
        """How many corrupt records were skipped so far."""
        return self.batches.corrupt if self.batches is not None else 0

    def skip_batches(self, n):
        """Continue n batches further on (a resumed solver reads on where its snapshot left off);
        batches are a function of their number, so this is exact and costs nothing."""
        if self.batches is None:
            self._skip += int(n)
            return
        dropped = self._feeder.reset()   # a batch already sent ahead to the GPU
        self.batches.close()
        self.batches.next_batch += int(n) - dropped

    def forward(self):
        if self.batches is None:
            self._open()
        device = self._device.device
        start = time.perf_counter()
        data, label = self._feeder.next(device)   # on CUDA the next batch is already on its way
        self.wait_seconds += time.perf_counter() - start
        if self._device_transform is not None and isinstance(data, list):
            data = device_batch(data, *self._device_transform, device)
        if self.n_tops == 1:
            return data
        return data, label


@register("AnnotatedData")
class AnnotatedDataLayer(_PipelineLayer):
    """SSD's AnnotatedData: tops data [N, C, H, W] and label [1, 1, num_boxes, 8]."""


@register("Data")
class DataLayer(_PipelineLayer):
    """Caffe's Data layer over an LMDB of Datum: tops data and label [N]."""


@register("ImageData")
class ImageDataLayer(_PipelineLayer):
    """Caffe's ImageData: images named in a list file, with integer labels."""


@register("VideoData")
class VideoDataLayer(_PipelineLayer):
    """The SSD fork's VideoData: frames of a video file or webcam (video_data_param), batch_size of
    data_param, transformed by transform_param; label top all 0 (protonet.data.video)."""
