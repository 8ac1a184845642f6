"""Caffe's DataTransformer for SSD: distort, expand, batch-sampler crop, resize, noise, crop,
mirror, mean and scale, with the ground-truth boxes carried through every step.

Order for an AnnotatedData sample (as the fork's AnnotatedDataLayer::load_batch):
  distort_param -> expand_param -> batch_sampler crop -> transform
and the final transform is: resize_param -> noise_param -> crop_size/crop_h/crop_w ->
mirror -> (x - mean) * scale, HWC -> CHW float32.

Caffe, with an encoded datum, decodes and RE-ENCODES the image as JPEG (quality 95) after the
distortion, after an expansion and after a batch-sampler crop. protonet keeps the decoded
pixels; `reencode_jpeg=True` restores the round trips for bit-parity with Caffe's outputs.

Differences from Caffe kept on purpose (listed in the README):
- raw (non-encoded) datums go through the same path as decoded ones (Caffe skips resize and
  distortion for them, and then fails its own shape checks);
- a mean_file must match either the output size or the resized image size;
- in the TEST phase only the deterministic part runs: no distortion, expansion, batch-sampler
  crop, mirror or salt-and-pepper noise, the first interp_mode, the centre crop (Caffe, given a
  test transform_param with random parts, would draw them; SSD's test nets have none).
"""
import os

import cv2
import numpy as np

from protonet import caffe_pb2
from protonet.data import boxes as bx
from protonet.data import image_ops as ops
from protonet.data.sampler import WindowSampler
from protonet.errors import ProtonetError
from protonet.io.blobs import blob_to_array
from protonet.io.prototxt import read_binary_proto

F32 = np.float32


def load_mean_file(path):
    blob = read_binary_proto(path, caffe_pb2.BlobProto)
    arr = np.asarray(blob_to_array(blob), dtype=F32)
    if arr.ndim == 4:
        arr = arr[0]
    if arr.ndim != 3:
        raise ProtonetError(f"{path}: mean file must hold a [1, C, H, W] blob, got {arr.shape}")
    return arr


class Transformer:
    """One TransformationParameter in one phase; every random draw takes an explicit rng."""

    def __init__(self, param, phase=caffe_pb2.TRAIN, root_dir=None, reencode_jpeg=False,
                 where="transform_param"):
        self.param = param
        self.phase = phase
        self.random = phase == caffe_pb2.TRAIN
        self.reencode_jpeg = reencode_jpeg
        self.where = where
        if param.force_color and param.force_gray:
            raise ProtonetError(f"{where}: cannot set both force_color and force_gray")
        self.color_mode = True if param.force_color else (False if param.force_gray else None)
        self.mean_image = None
        self.mean_values = None
        if param.HasField("mean_file"):
            if len(param.mean_value):
                raise ProtonetError(f"{where}: cannot give both mean_file and mean_value")
            path = param.mean_file
            if root_dir and not os.path.isabs(path):
                path = os.path.join(root_dir, path)
            self.mean_image = load_mean_file(path)
        elif len(param.mean_value):
            self.mean_values = np.asarray(param.mean_value, dtype=F32)
        if param.HasField("resize_param"):
            rp = param.resize_param
            if rp.height <= 0 or rp.width <= 0:
                raise ProtonetError(f"{where}: resize_param needs height and width > 0")
        if param.HasField("expand_param") and not param.expand_param.max_expand_ratio > 1:
            raise ProtonetError(f"{where}: expand_param.max_expand_ratio must be > 1")
        if param.HasField("distort_param"):
            ops.check_distort_param(param.distort_param)
        self.crop_h = int(param.crop_size or param.crop_h)
        self.crop_w = int(param.crop_size or param.crop_w)

    # ---- shapes -------------------------------------------------------------------------------

    def output_shape(self, height, width, channels):
        """(C, H, W) of the transformed image for a source of that size (InferBlobShape)."""
        if self.param.HasField("resize_param"):
            width, height = ops.resized_size(self.param.resize_param, width, height)
        if height < self.crop_h or width < self.crop_w:
            raise ProtonetError(f"{self.where}: crop {self.crop_h}x{self.crop_w} larger than the "
                                f"image {height}x{width}")
        return (channels, self.crop_h or height, self.crop_w or width)

    # ---- the steps before the transform -------------------------------------------------------

    def _round_trip(self, sample, img):
        if self.reencode_jpeg and sample.encoded:
            return ops.jpeg_round_trip(img, 95, self.color_mode)
        return img

    def distort(self, sample, rng):
        """Draw the distortion now; apply it when the pixels are drawn (only those kept by the
        crop), or at once when Caffe's JPEG round trip needs the whole image."""
        plan = ops.distort_plan(self.param.distort_param, rng)
        img = sample.image
        if img.dtype != np.uint8 or img.shape[2] != 3:
            raise ProtonetError(f"{self.where}: distort_param needs 8-bit 3-channel images "
                                f"(record {sample.key})")
        if self.reencode_jpeg and sample.encoded:
            img = self._round_trip(sample, ops.apply_distort(img, plan))
            return sample.with_boxes(img, sample.boxes, slice(None))
        pending = (lambda pixels: ops.apply_distort(pixels, plan)) if plan else None
        return sample.with_boxes(img, sample.boxes, slice(None), pending=pending)

    def expand(self, sample, rng):
        """Place the image at a random spot of a canvas up to max_expand_ratio times larger,
        filled with the mean; boxes follow the pixels."""
        ep = self.param.expand_param
        if ops.uniform(rng, 0, 1) > ep.prob or abs(ep.max_expand_ratio - 1) < 1e-2:
            return sample
        ratio = ops.uniform(rng, 1, ep.max_expand_ratio)
        img = sample.image
        h, w, c = img.shape
        eh, ew = int(F32(h) * ratio), int(F32(w) * ratio)
        h_off = F32(np.floor(ops.uniform(rng, 0, eh - h)))
        w_off = F32(np.floor(ops.uniform(rng, 0, ew - w)))
        if self.mean_values is not None:
            fill = self._per_channel(self.mean_values, c, img.dtype)
        elif self.mean_image is not None:
            if self.mean_image.shape != (c, eh, ew):
                raise ProtonetError(f"{self.where}: mean_file {self.mean_image.shape} does not fit "
                                    f"the expanded image {(c, eh, ew)}")
            fill = self._cast(self.mean_image.transpose(1, 2, 0), img.dtype)
        else:
            fill = np.zeros(c, dtype=img.dtype)
        window = np.array([-w_off / F32(w), -h_off / F32(h), (F32(ew) - w_off) / F32(w),
                           (F32(eh) - h_off) / F32(h)], dtype=F32)
        boxes, keep = self.carry_boxes(sample, window, mirror=False, resize_from=None)
        # The canvas is drawn only where it is used (after the batch-sampler crop), unless
        # Caffe's JPEG round trip needs the whole of it now.
        out = sample.with_boxes(img, boxes, keep, canvas=(eh, ew, int(h_off), int(w_off), fill),
                                pending=sample.pending)
        if self.reencode_jpeg and sample.encoded:
            out = out.with_boxes(self._round_trip(sample, out.pixels()), out.boxes, slice(None))
        return out

    def crop_to_window(self, sample, window, with_offset=False):
        """Crop the image to a normalized window (a batch-sampler sample); with_offset: also
        the crop's (y, x) in the image."""
        window = bx.clip(window)[0]
        h, w = sample.size
        x0, y0 = F32(window[0]) * F32(w), F32(window[1]) * F32(h)
        x1, y1 = F32(window[2]) * F32(w), F32(window[3]) * F32(h)
        w_off, h_off = int(x0), int(y0)
        cw, ch = int(x1 - x0), int(y1 - y0)
        img = np.ascontiguousarray(sample.pixels(h_off, w_off, ch, cw))
        img = self._round_trip(sample, img)
        boxes, keep = self.carry_boxes(sample, window, mirror=False, resize_from=None)
        out = sample.with_boxes(img, boxes, keep)
        return (out, (h_off, w_off)) if with_offset else out

    # ---- boxes --------------------------------------------------------------------------------

    def carry_boxes(self, sample, window, mirror, resize_from):
        """Caffe's TransformAnnotation: (resize policy) -> emit constraint -> project into the
        window -> mirror -> extrapolate. Returns (boxes, keep)."""
        boxes = sample.boxes
        rp = self.param.resize_param if self.param.HasField("resize_param") else None
        if resize_from is not None and rp is not None:
            boxes = ops.resize_boxes(rp, resize_from[0], resize_from[1], boxes)
        keep = np.ones(len(boxes), dtype=bool)
        if self.param.HasField("emit_constraint"):
            keep &= bx.meets_emit_constraint(window, boxes, self.param.emit_constraint)
        proj, inside = bx.project(window, boxes)
        keep &= inside
        if mirror:
            proj = np.stack([F32(1) - proj[:, 2], proj[:, 1], F32(1) - proj[:, 0], proj[:, 3]],
                            axis=1)
        if resize_from is not None and rp is not None:
            proj = ops.extrapolate_boxes(rp, resize_from[1], resize_from[0], window, proj)
        return proj, keep

    # ---- the transform ------------------------------------------------------------------------

    @staticmethod
    def _cast(values, dtype):
        if dtype == np.uint8:
            return np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.asarray(values, dtype=dtype)

    def _per_channel(self, values, channels, dtype):
        if len(values) not in (1, channels):
            raise ProtonetError(f"{self.where}: give 1 mean_value or {channels}, got {len(values)}")
        return self._cast(np.broadcast_to(values, (channels,)), dtype)

    def transform(self, sample, rng):
        """The final transform: (CHW float32 array, sample with the boxes in output coords)."""
        p = self.param
        img = sample.pixels()
        src_h, src_w = img.shape[:2]
        mirror = bool(p.mirror and self.random and rng.integers(2))
        if p.HasField("resize_param"):
            img = ops.resize(img, p.resize_param,
                             ops.pick_interp(p.resize_param, rng if self.random else None))
        if p.HasField("noise_param"):
            img = ops.noise(img, p.noise_param, rng if self.random else None)
        h, w, c = img.shape
        out_h, out_w = h, w
        h_off = w_off = 0
        if self.crop_h and self.crop_w:
            if h < self.crop_h or w < self.crop_w:
                raise ProtonetError(f"record {sample.key}: image {h}x{w} smaller than the crop "
                                    f"{self.crop_h}x{self.crop_w}")
            out_h, out_w = self.crop_h, self.crop_w
            if self.phase == caffe_pb2.TRAIN:
                h_off = int(rng.integers(h - out_h + 1))
                w_off = int(rng.integers(w - out_w + 1))
            else:
                h_off, w_off = (h - out_h) // 2, (w - out_w) // 2
            img = img[h_off:h_off + out_h, w_off:w_off + out_w]
        if mirror:
            img = ops.hwc(cv2.flip(np.ascontiguousarray(img), 1))
        # (x - mean) * scale into CHW float32, plane by plane (OpenCV splits the channels)
        chw = np.empty((c, out_h, out_w), dtype=F32)
        if self.mean_values is not None:
            mean = self._per_channel(self.mean_values, c, F32)
        elif self.mean_image is not None:
            mi = self.mean_image
            if mi.shape == (c, out_h, out_w):
                mean = mi
            elif mi.shape == (c, h, w):
                mean = mi[:, h_off:h_off + out_h, w_off:w_off + out_w]
            else:
                raise ProtonetError(f"{self.where}: mean_file {mi.shape} fits neither the "
                                    f"output {(c, out_h, out_w)} nor the image {(c, h, w)}")
        else:
            mean = None
        planes = cv2.split(np.ascontiguousarray(img)) if c > 1 else [img[:, :, 0]]
        for ch, plane in enumerate(planes):
            chw[ch] = plane
            if mean is not None:
                chw[ch] -= mean[ch]
        if p.scale != 1:
            chw *= F32(p.scale)
        if not sample.annotated or not len(sample.boxes):
            return chw, sample
        window = np.array([F32(w_off) / F32(w), F32(h_off) / F32(h),
                           F32(w_off + out_w) / F32(w), F32(h_off + out_h) / F32(h)], dtype=F32)
        boxes, keep = self.carry_boxes(sample, window, mirror, resize_from=(src_w, src_h))
        return chw, sample.with_boxes(None, boxes, keep)


class AnnotatedPipeline:
    """A whole AnnotatedData sample: distort -> expand -> batch_sampler crop -> transform."""

    def __init__(self, transformer, batch_samplers=()):
        self.t = transformer
        self.sampler = WindowSampler(batch_samplers)

    def skipped_in_test(self):
        """The random steps this pipeline leaves out in the TEST phase."""
        p = self.t.param
        names = [n for n in ("distort_param", "expand_param") if p.HasField(n)]
        names += ["batch_sampler"] if self.sampler.trials else []
        names += ["mirror"] if p.mirror else []
        return names if not self.t.random else []

    def __call__(self, sample, rng):
        p = self.t.param
        if not self.t.random:
            return self.t.transform(sample, rng)
        if p.HasField("distort_param"):
            sample = self.t.distort(sample, rng)
        if p.HasField("expand_param"):
            sample = self.t.expand(sample, rng)
        if self.sampler.trials:
            windows = self.sampler(sample.boxes, rng)
            if windows:
                sample = self.t.crop_to_window(sample, windows[int(rng.integers(len(windows)))])
        return self.t.transform(sample, rng)


def label_rows(samples):
    """Caffe's AnnotatedData label blob [1, 1, N, 8] for transformed samples: rows
    (item_id, label, instance_id, xmin, ymin, xmax, ymax, difficult); one row of -1 if empty."""
    parts = []
    for item, s in enumerate(samples):
        n = len(s.boxes)
        if not n:
            continue
        rows = np.empty((n, 8), dtype=F32)
        rows[:, 0] = item
        rows[:, 1] = s.labels
        rows[:, 2] = s.instance_ids
        rows[:, 3:7] = s.boxes
        rows[:, 7] = s.difficult
        parts.append(rows)
    if not parts:
        return np.full((1, 1, 1, 8), -1, dtype=F32)
    return np.concatenate(parts)[None, None]


__all__ = ["Transformer", "AnnotatedPipeline", "label_rows"]
