"""The photometric distortion and the final resize/mirror/mean/scale on the GPU, per batch.

Off by default (NetContext.extras["data_device_transform"], `protonet train --data-on-device`):
for machines whose CPUs cannot keep up with the GPU. The workers still decode, draw every random
number (in the CPU path's order, so a seed gives the same draws), expand, crop and carry the
boxes; they hand over the uint8 crop with its draws (`Deferred`), and `device_batch` does the
rest on the device for the whole batch.

Against the CPU path: brightness/contrast (tables), channel order, NEAREST resize, mirror, mean
and scale are exact; the HSV round trip of saturation/hue is computed in float (OpenCV's 8-bit
conversion rounds its own way: levels differ by about one); LINEAR/CUBIC resize interpolate in
float and round (OpenCV uses fixed-point weights: about one level); AREA is an area average;
LANCZOS4 is drawn as CUBIC. tests/test_data_device_transform.py compares both paths.
"""
import dataclasses

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from protonet import caffe_pb2
from protonet.data import image_ops as ops
from protonet.errors import ProtonetError

R = caffe_pb2.ResizeParameter
# OpenCV's interpolation (image_ops.pick_interp) -> torch's; LANCZOS4 is drawn as bicubic.
_MODES = {cv2.INTER_LINEAR: "bilinear", cv2.INTER_NEAREST: "nearest", cv2.INTER_CUBIC: "bicubic",
          cv2.INTER_AREA: "area", cv2.INTER_LANCZOS4: "bicubic"}


@dataclasses.dataclass
class Deferred:
    """A crop with the draws still to apply: pixels uint8 HWC; rect (y0, x0, y1, x1) of the
    original image inside it (the expansion canvas around it is not distorted); plan from
    image_ops.distort_plan; interp; mirror."""

    pixels: np.ndarray
    rect: tuple
    plan: list
    interp: int
    mirror: bool


def check_supported(param, where):
    """The transforms the device path covers: SSD's (resize_param WARP, no crop, no noise)."""
    if not param.HasField("resize_param") or param.resize_param.resize_mode != R.WARP:
        raise ProtonetError(f"{where}: the data transform on the device needs resize_param with resize_mode WARP")
    if param.crop_size or param.crop_h or param.crop_w or param.HasField("noise_param") or param.HasField("mean_file"):
        raise ProtonetError(f"{where}: the data transform on the device supports no crop_size, noise_param "
                            "or mean_file")


def deferred_sample(pipeline, sample, rng):
    """AnnotatedPipeline.__call__ up to the pixels: (Deferred, sample with output boxes).
    The random draws are the CPU path's, in its order."""
    t = pipeline.t
    p = t.param
    plan = ops.distort_plan(p.distort_param, rng) if p.HasField("distort_param") else []
    h, w = sample.image.shape[:2]
    if p.HasField("expand_param"):
        sample = t.expand(sample, rng)
    rect = (0, 0, h, w) if sample.canvas is None else (sample.canvas[2], sample.canvas[3],
                                                      sample.canvas[2] + h, sample.canvas[3] + w)
    if pipeline.sampler.trials:
        windows = pipeline.sampler(sample.boxes, rng)
        if windows:
            sample, (y, x) = t.crop_to_window(sample, windows[int(rng.integers(len(windows)))],
                                              with_offset=True)
            rect = (rect[0] - y, rect[1] - x, rect[2] - y, rect[3] - x)
    img = np.ascontiguousarray(sample.pixels())
    src_h, src_w = img.shape[:2]
    rect = (max(rect[0], 0), max(rect[1], 0), min(rect[2], src_h), min(rect[3], src_w))
    mirror = bool(p.mirror and rng.integers(2))
    interp = ops.pick_interp(p.resize_param, rng)
    window = np.array([0, 0, 1, 1], dtype=np.float32)
    if sample.annotated and len(sample.boxes):
        boxes, keep = t.carry_boxes(sample, window, mirror, resize_from=(src_w, src_h))
        sample = sample.with_boxes(None, boxes, keep)
    return Deferred(img, rect, plan, interp, mirror), sample


def _bgr_to_hsv(x):
    """float BGR 0..255 -> OpenCV's 8-bit HSV scale (H 0..180, S and V 0..255), rounded."""
    b, g, r = x.unbind(-1)
    v, _ = x.max(-1)
    mn, _ = x.min(-1)
    diff = v - mn
    s = torch.where(v > 0, diff * 255.0 / v.clamp_min(1e-6), torch.zeros_like(v))
    safe = diff.clamp_min(1e-6)
    h = torch.where(v == r, (g - b) * 60.0 / safe,
                    torch.where(v == g, 120.0 + (b - r) * 60.0 / safe, 240.0 + (r - g) * 60.0 / safe))
    h = torch.where(diff == 0, torch.zeros_like(h), h)
    h = torch.where(h < 0, h + 360.0, h)
    return torch.stack([torch.round(h / 2.0), torch.round(s), v], -1).clamp(0, 255)


def _hsv_to_bgr(x):
    h, s, v = x.unbind(-1)
    s = s / 255.0
    h = (h * 2.0 / 60.0) % 6.0
    sector = torch.floor(h)
    f = h - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sector = sector.long()
    r = torch.stack([v, q, p, p, t, v], -1).gather(-1, sector[..., None])[..., 0]
    g = torch.stack([t, v, v, q, p, p], -1).gather(-1, sector[..., None])[..., 0]
    b = torch.stack([p, p, t, v, v, q], -1).gather(-1, sector[..., None])[..., 0]
    return torch.round(torch.stack([b, g, r], -1)).clamp(0, 255)


def _distort(img, plan):
    """img uint8 HWC tensor -> uint8, the plan's steps in order."""
    for op in plan:
        if op[0] == "lut":
            img = torch.as_tensor(op[1], device=img.device)[img.long()]
        elif op[0] == "hsv":
            hsv = _bgr_to_hsv(img.float())
            lut = torch.as_tensor(op[2], device=img.device)
            channel = lut[hsv[..., op[1]].long()].float()
            hsv = torch.cat([hsv[..., :op[1]], channel[..., None], hsv[..., op[1] + 1:]], -1)
            img = _hsv_to_bgr(hsv).to(torch.uint8)
        else:
            img = img[..., torch.as_tensor(op[1], device=img.device)]
    return img


def _resize(img, height, width, interp):
    """uint8 HWC -> float32 CHW of (height, width), rounded to 8-bit levels as OpenCV's resize."""
    x = img.permute(2, 0, 1)[None].float()
    if tuple(x.shape[-2:]) != (height, width) and interp == cv2.INTER_NEAREST:
        # OpenCV's source index floor(x / (dst/src)) in double (torch's float scale rounds some
        # boundaries the other way)
        rows = _nearest_index(x.shape[-2], height, x.device)
        cols = _nearest_index(x.shape[-1], width, x.device)
        return x[0].index_select(1, rows).index_select(2, cols)
    if tuple(x.shape[-2:]) != (height, width):
        mode = _MODES[interp]
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        x = F.interpolate(x, size=(height, width), mode=mode, **kwargs)
        x = torch.round(x).clamp_(0, 255)
    return x[0]


def _nearest_index(src, dst, device):
    scale = 1.0 / (dst / src)   # as OpenCV computes it: the inverse of dst/src, in double
    index = np.minimum(np.floor(np.arange(dst, dtype=np.float64) * scale).astype(np.int64), src - 1)
    return torch.from_numpy(index).to(device)


def device_batch(items, height, width, mean, scale, device):
    """A list of Deferred -> float32 N,C,H,W on `device`: distort (inside each rect), resize,
    mirror, subtract the mean, scale."""
    out = torch.empty((len(items), items[0].pixels.shape[2], height, width), dtype=torch.float32, device=device)
    mean_t = None if mean is None else torch.as_tensor(np.asarray(mean, np.float32), device=device).view(-1, 1, 1)
    for i, item in enumerate(items):
        img = torch.from_numpy(item.pixels).to(device, non_blocking=True)
        if item.plan:
            y0, x0, y1, x1 = item.rect
            if y1 > y0 and x1 > x0:
                img = img.clone()
                img[y0:y1, x0:x1] = _distort(img[y0:y1, x0:x1], item.plan)
        x = _resize(img, height, width, item.interp)
        if item.mirror:
            x = x.flip(-1)
        if mean_t is not None:
            x = x - mean_t
        if scale != 1:
            x = x * np.float32(scale)
        out[i] = x
    return out
