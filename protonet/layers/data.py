"""Data layers: AnnotatedData (SSD's LMDB of AnnotatedDatum), Data (LMDB of Datum) and
ImageData (a list file of images and labels).

They take no bottoms; forward() returns the next prefetched batch, (data, label) or data
alone when the layer has one top. What feeds them is composed by protonet.data.pipeline_for:
records read sequentially like Caffe (shuffled per epoch with ctx.data_shuffle), sharded by
ctx.rank / ctx.world_size, transformed in ctx.data_workers worker processes with random streams
derived from ctx.seed; Caffe's JPEG round trips with ctx.reencode_jpeg.
"""
import time

import torch

from protonet.data.pipeline import pipeline_for
from protonet.layers.base import Layer, register


class _PipelineLayer(Layer):
    is_data = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(0)
        pipeline = pipeline_for(param, ctx)
        self.n_tops = max(1, len(param.top))
        self.top_shapes = pipeline.top_shapes(self.n_tops)
        self.batches = pipeline.batches(ctx, with_labels=self.n_tops > 1)
        self.wait_seconds = 0.0  # time forward() waited for its batch (the solver reports the share)
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
        start = time.perf_counter()
        data, label = next(self.batches)
        self.wait_seconds += time.perf_counter() - start
        device = self._device.device
        data = data.to(device, non_blocking=True)
        if self.n_tops == 1:
            return data
        return data, label.to(device, non_blocking=True)


@register("AnnotatedData")
class AnnotatedDataLayer(_PipelineLayer):
    """SSD's AnnotatedData: tops data [N, C, H, W] and label [1, 1, num_boxes, 8]."""


@register("Data")
class DataLayer(_PipelineLayer):
    """Caffe's Data layer over an LMDB of Datum: tops data and label [N]."""


@register("ImageData")
class ImageDataLayer(_PipelineLayer):
    """Caffe's ImageData: images named in a list file, with integer labels."""
