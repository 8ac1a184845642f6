"""Pixel operations of Caffe's SSD data path (im_transforms.cpp), with OpenCV and numpy.

Images are HxWxC (C = 1 or 3, BGR), uint8 unless a float Datum says otherwise. Random draws
come from a numpy Generator passed in, never from global state. Caffe's order of draws and its
probabilities are kept; its random numbers are not (Caffe's own generator is not reproduced).
"""
import cv2
import numpy as np

from protonet import caffe_pb2
from protonet.errors import ProtonetError

F32 = np.float32
R = caffe_pb2.ResizeParameter

INTERP = {R.LINEAR: cv2.INTER_LINEAR, R.AREA: cv2.INTER_AREA, R.NEAREST: cv2.INTER_NEAREST,
          R.CUBIC: cv2.INTER_CUBIC, R.LANCZOS4: cv2.INTER_LANCZOS4}
PAD = {R.CONSTANT: cv2.BORDER_CONSTANT, R.MIRRORED: cv2.BORDER_REFLECT101,
       R.REPEAT_NEAREST: cv2.BORDER_REPLICATE}


def hwc(img):
    """OpenCV drops the channel axis of one-channel images; put it back."""
    return img[:, :, None] if img.ndim == 2 else img


def uniform(rng, lo, hi):
    """A float32 draw in [lo, hi) like caffe_rng_uniform (lo == hi gives lo)."""
    return F32(rng.uniform(lo, hi)) if hi > lo else F32(lo)


def jpeg_round_trip(img, quality=95, color_mode=None):
    """Encode as JPEG and decode again: Caffe's accidental re-encode, kept as an option."""
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ProtonetError("JPEG encoding failed")
    flag = cv2.IMREAD_UNCHANGED if color_mode is None else (
        cv2.IMREAD_COLOR if color_mode else cv2.IMREAD_GRAYSCALE)
    return hwc(cv2.imdecode(buf, flag))


# ---- resize ---------------------------------------------------------------------------------

def resized_size(param, width, height):
    """(width, height) after ApplyResize (Caffe's InferNewSize)."""
    w, h = int(param.width), int(param.height)
    if param.resize_mode == R.FIT_SMALL_SIZE:
        orig_aspect = F32(width) / F32(height)
        if orig_aspect < F32(w) / F32(h):
            h = int(F32(w) / orig_aspect)
        else:
            w = int(orig_aspect * F32(h))
    return w, h


def pick_interp(param, rng):
    """The OpenCV interpolation: one of interp_mode chosen uniformly (the first when rng is
    None: the deterministic TEST phase), LINEAR when none."""
    modes = list(param.interp_mode)
    if not modes:
        return cv2.INTER_LINEAR
    pick = int(rng.integers(len(modes))) if rng is not None and len(modes) > 1 else 0
    return INTERP[modes[pick]]


def resize(img, param, interp):
    """Caffe's ApplyResize: WARP, FIT_SMALL_SIZE, FIT_LARGE_SIZE_AND_PAD (pad mode and values)."""
    nw, nh = int(param.width), int(param.height)
    mode = param.resize_mode
    if mode == R.WARP:
        return hwc(cv2.resize(img, (nw, nh), interpolation=interp))
    orig_aspect = F32(img.shape[1]) / F32(img.shape[0])
    new_aspect = F32(nw) / F32(nh)
    if mode == R.FIT_SMALL_SIZE:
        if orig_aspect < new_aspect:
            size = (nw, int(np.floor(F32(nw) / orig_aspect)))
        else:
            size = (int(np.floor(orig_aspect * F32(nh))), nh)
        return hwc(cv2.resize(img, size, interpolation=interp))
    if mode != R.FIT_LARGE_SIZE_AND_PAD:
        raise ProtonetError(f"resize_param: unknown resize_mode {mode}")
    channels = img.shape[2]
    values = list(param.pad_value) or [0.0]
    if len(values) not in (1, channels):
        raise ProtonetError(f"resize_param: give 1 pad_value or {channels}, got {len(values)}")
    if len(values) == 1:
        values = values * channels
    pad_val = tuple(float(v) for v in values) + (0.0,) * (4 - channels)
    border = PAD[param.pad_mode]
    if orig_aspect > new_aspect:
        h = int(np.floor(F32(nw) / orig_aspect))
        out = cv2.resize(img, (nw, h), interpolation=interp)
        top = int(np.floor((nh - h) / 2.0))
        out = cv2.copyMakeBorder(out, top, nh - h - top, 0, 0, border, value=pad_val)
    else:
        w = int(np.floor(orig_aspect * F32(nh)))
        out = cv2.resize(img, (w, nh), interpolation=interp)
        left = int(np.floor((nw - w) / 2.0))
        out = cv2.copyMakeBorder(out, 0, 0, left, nw - w - left, border, value=pad_val)
    return hwc(out)


def resize_boxes(param, old_width, old_height, boxes):
    """Caffe's UpdateBBoxByResizePolicy, in float32 with Caffe's order of operations."""
    new_h = F32(param.height)
    new_w = F32(param.width)
    ow, oh = F32(old_width), F32(old_height)
    orig_aspect = ow / oh
    new_aspect = new_w / new_h
    x0, y0 = boxes[:, 0] * ow, boxes[:, 1] * oh
    x1, y1 = boxes[:, 2] * ow, boxes[:, 3] * oh
    zero = F32(0)
    mode = param.resize_mode

    def warp_x(w):
        return np.maximum(zero, x0 * w / ow), np.minimum(w, x1 * w / ow)

    def warp_y(h):
        return np.maximum(zero, y0 * h / oh), np.minimum(h, y1 * h / oh)

    if mode == R.WARP:
        x0, x1 = warp_x(new_w)
        y0, y1 = warp_y(new_h)
    elif mode == R.FIT_LARGE_SIZE_AND_PAD:
        if orig_aspect > new_aspect:
            pad = (new_h - new_w / orig_aspect) / F32(2)
            x0, x1 = warp_x(new_w)
            inner = new_h - F32(2) * pad
            y0 = pad + np.maximum(zero, y0 * inner / oh)
            y1 = pad + np.minimum(new_h, y1 * inner / oh)
        else:
            pad = (new_w - orig_aspect * new_h) / F32(2)
            inner = new_w - F32(2) * pad
            x0 = pad + np.maximum(zero, x0 * inner / ow)
            x1 = pad + np.minimum(new_w, x1 * inner / ow)
            y0, y1 = warp_y(new_h)
    elif mode == R.FIT_SMALL_SIZE:
        if orig_aspect < new_aspect:
            new_h = new_w / orig_aspect
        else:
            new_w = orig_aspect * new_h
        x0, x1 = warp_x(new_w)
        y0, y1 = warp_y(new_h)
    else:
        raise ProtonetError(f"resize_param: unknown resize_mode {mode}")
    return np.stack([x0 / new_w, y0 / new_h, x1 / new_w, y1 / new_h], axis=1).astype(F32)


def extrapolate_boxes(param, height, width, crop_box, boxes):
    """Caffe's ExtrapolateBBox: only FIT_SMALL_SIZE with height_scale and width_scale set."""
    if not (param.height_scale > 0 and param.width_scale > 0
            and param.resize_mode == R.FIT_SMALL_SIZE):
        return boxes
    orig_aspect = F32(width) / F32(height)
    rh, rw = F32(param.height), F32(param.width)
    if orig_aspect < rw / rh:
        rh = rw / orig_aspect
    else:
        rw = rh * orig_aspect
    crop_h = rh * (crop_box[3] - crop_box[1])
    crop_w = rw * (crop_box[2] - crop_box[0])
    if crop_w < param.width_scale or crop_h < param.height_scale:
        raise ProtonetError("resize_param: the crop is smaller than width_scale/height_scale")
    sx = crop_w / F32(param.width_scale)
    sy = crop_h / F32(param.height_scale)
    out = boxes.copy()
    out[:, 0] = boxes[:, 0] * sx
    out[:, 2] = boxes[:, 2] * sx
    out[:, 1] = boxes[:, 1] * sy
    out[:, 3] = boxes[:, 3] * sy
    return out


# ---- photometric distortion -------------------------------------------------------------------
#
# Every distortion is a per-pixel map, so the random draws are made first (a "plan", in Caffe's
# order of draws) and the plan is applied later to only the pixels that survive the crop: the
# same pixels as distorting the whole image first, at a fraction of the cost -- up to OpenCV's
# rounding: its HSV->BGR rounds the SIMD body and the scalar tail of a row differently (+-1,
# which later steps of the same distortion can grow to a few grey levels).

_RAMP = np.arange(256, dtype=F32)


def convert_lut(alpha, beta):
    """OpenCV's Mat::convertTo(-1, alpha, beta) on 8-bit data as a table:
    saturate(round(x * alpha + beta))."""
    return np.clip(np.rint(_RAMP * F32(alpha) + F32(beta)), 0, 255).astype(np.uint8)


def _brightness(p, rng):
    if uniform(rng, 0, 1) < p.brightness_prob:
        delta = uniform(rng, -p.brightness_delta, p.brightness_delta)
        if abs(delta) > 0:
            return ("lut", convert_lut(1, delta))
    return None


def _contrast(p, rng):
    if uniform(rng, 0, 1) < p.contrast_prob:
        delta = uniform(rng, p.contrast_lower, p.contrast_upper)
        if abs(delta - 1) > 1e-3:
            return ("lut", convert_lut(delta, 0))
    return None


def _saturation(p, rng):
    if uniform(rng, 0, 1) < p.saturation_prob:
        # Caffe's test here (|delta - 1| != 1e-3) is always true: the HSV round trip always runs.
        delta = uniform(rng, p.saturation_lower, p.saturation_upper)
        return ("hsv", 1, convert_lut(delta, 0))
    return None


def _hue(p, rng):
    if uniform(rng, 0, 1) < p.hue_prob:
        delta = uniform(rng, -p.hue_delta, p.hue_delta)
        if abs(delta) > 0:
            return ("hsv", 0, convert_lut(1, delta))
    return None


def check_distort_param(p):
    if p.brightness_delta < 0 or p.hue_delta < 0:
        raise ProtonetError("distort_param: brightness_delta and hue_delta must be >= 0")
    for lo, hi, what in ((p.contrast_lower, p.contrast_upper, "contrast"),
                         (p.saturation_lower, p.saturation_upper, "saturation")):
        if hi < lo or lo < 0:
            raise ProtonetError(f"distort_param: need 0 <= {what}_lower <= {what}_upper")


def distort_plan(p, rng):
    """The random draws of Caffe's ApplyDistort: a coin picks one of two orders of
    brightness/contrast/saturation/hue, then maybe a channel permutation. Consecutive table
    lookups are composed into one (exactly the same result)."""
    if uniform(rng, 0, 1) > 0.5:
        steps = (_brightness, _contrast, _saturation, _hue)
    else:
        steps = (_brightness, _saturation, _hue, _contrast)
    plan = []
    for step in steps:
        op = step(p, rng)
        if op is None:
            continue
        if op[0] == "lut" and plan and plan[-1][0] == "lut":
            plan[-1] = ("lut", op[1][plan[-1][1]])
        else:
            plan.append(op)
    if uniform(rng, 0, 1) < p.random_order_prob:
        plan.append(("order", rng.permutation(3)))
    return plan


def apply_distort(img, plan):
    """Apply a distort_plan to 8-bit BGR pixels."""
    if not plan:
        return img
    if img.dtype != np.uint8 or img.shape[2] != 3:
        raise ProtonetError("distort_param needs 8-bit 3-channel images")
    img = np.ascontiguousarray(img)
    for op in plan:
        if op[0] == "lut":
            img = cv2.LUT(img, op[1])
        elif op[0] == "hsv":
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            hsv[:, :, op[1]] = cv2.LUT(np.ascontiguousarray(hsv[:, :, op[1]]), op[2])[:, :]
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        else:
            img = np.ascontiguousarray(img[:, :, op[1]])
    return img


def distort(img, p, rng):
    """Caffe's ApplyDistort on a whole image."""
    return apply_distort(img, distort_plan(p, rng))


# ---- noise ------------------------------------------------------------------------------------

def _ycrcb_luma(img, fn):
    if img.shape[2] == 1:
        return hwc(fn(np.ascontiguousarray(img[:, :, 0])))
    ycc = cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb)
    ycc[:, :, 0] = fn(np.ascontiguousarray(ycc[:, :, 0]))
    return cv2.cvtColor(ycc, cv2.COLOR_YCrCb2BGR)


def noise(img, p, rng):
    """Caffe's ApplyNoise, in its order. (Caffe applies it whenever noise_param is present.)
    rng None (TEST phase) leaves out the random salt-and-pepper noise."""
    out = img
    if p.decolorize:
        out = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    if p.gauss_blur:
        out = hwc(cv2.GaussianBlur(out, (7, 7), 1.5))
    if p.hist_eq:
        out = _ycrcb_luma(out, cv2.equalizeHist)
    if p.clahe:
        clahe = cv2.createCLAHE(clipLimit=4)
        out = _ycrcb_luma(out, clahe.apply)
    if p.jpeg > 0:
        out = jpeg_round_trip(out, int(p.jpeg), color_mode=True)
    if p.erode:
        out = hwc(cv2.erode(out, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3), (1, 1))))
    if p.posterize:
        lut = (np.arange(256) // 64 * 64 + 32).astype(np.uint8)
        out = hwc(cv2.LUT(out, lut))
    if p.inverse:
        out = hwc(cv2.bitwise_not(out))
    if p.saltpepper and rng is not None:
        values = [int(v) & 0xFF for v in p.saltpepper_param.value]
        channels = out.shape[2]
        if len(values) not in (1, channels):
            raise ProtonetError(f"noise_param: give 1 saltpepper value or {channels}")
        if len(values) == 1:
            values = values * channels
        n = int(np.floor(F32(p.saltpepper_param.fraction) * out.shape[1] * out.shape[0]))
        if n > 0:
            out = out.copy()
            cols = rng.integers(out.shape[1], size=n)
            rows = rng.integers(out.shape[0], size=n)
            out[rows, cols] = np.asarray(values, np.uint8)
    if p.convert_to_hsv:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2HSV)
    if p.convert_to_lab:
        out = cv2.cvtColor(out.astype(F32) * F32(1.0 / 255), cv2.COLOR_BGR2Lab)
    return hwc(out)
