"""`protonet detect`: run a deploy net on image files, draw the detections, write them as JSON lines.

    protonet detect --model deploy.prototxt --weights W.caffemodel [--labelmap L] [--threshold T]
                    [--gpu G] [--mean B,G,R] [--scale S] [--resize WxH] IMAGES_OR_DIRS... --out DIR

An image becomes the net's `data` blob through the model's test transform (Caffe's
DataTransformer in TEST phase: resize, mean, scale). The transform is taken from, first found:
  1. the options --mean/--scale/--resize (each replaces that part of what is found below);
  2. a comment line `# transform_param { ... }` in the model file (the quickstart's deploy.prototxt
     and protonet's examples write one);
  3. the TEST-phase data layer of the model itself (when --model is a test net);
  4. the TEST-phase data layer of test.prototxt beside the model (Caffe's example scripts write
     deploy.prototxt and test.prototxt into the same directory);
  5. nothing: the image is resized (WARP) to the input blob's size, no mean, scale 1.
The label map is --labelmap, else a `# labelmap: PATH` comment, else the data layer's
label_map_file; without one, classes are shown by number.

Output: DIR/<image name>.jpg with the boxes, class names and scores drawn, and
DIR/detections.jsonl with one line per detection:
  {"image": path, "class": name, "label": n, "score": s, "box": [xmin, ymin, xmax, ymax]}
with the box in pixels of the original image (continuous coordinates, 0 at the left edge).
"""
import json
import logging
import os
import re

import cv2
import numpy as np
import torch

from protonet import caffe_pb2
from protonet.data.pipeline import sample_processor
from protonet.data.records import Sample, read_image_file
from protonet.errors import ProtonetError
from protonet.io.atomic import atomic_open, atomic_write_image, remove_stale
from protonet.io.labelmap import label_names
from protonet.io.prototxt import parse_prototxt, read_prototxt
from protonet.layers.base import LAYERS, NetContext
from protonet.net import Net
from protonet.net.filtering import layer_included

logger = logging.getLogger("protonet.detect")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
TRANSFORM_COMMENT = re.compile(r"^#\s*transform_param\s*\{(.*)\}\s*$")
LABELMAP_COMMENT = re.compile(r"^#\s*labelmap:\s*(\S+)\s*$")
# Colours (BGR) for up to 20 classes, then they repeat.
PALETTE = [(75, 25, 230), (75, 180, 60), (25, 225, 255), (200, 130, 0), (48, 130, 245), (180, 30, 145),
           (240, 240, 70), (230, 50, 240), (60, 245, 210), (212, 190, 250), (128, 128, 0), (255, 190, 220),
           (40, 110, 170), (200, 250, 255), (0, 0, 128), (195, 255, 170), (0, 128, 128), (180, 215, 255),
           (128, 0, 0), (128, 128, 128)]


# ---------------------------------------------------------------- where the transform comes from

def _comment_values(model_path):
    """(transform_param text or None, labelmap path or None) from the model file's comment lines."""
    transform, labelmap = None, None
    with open(model_path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            stripped = line.strip()
            m = TRANSFORM_COMMENT.match(stripped)
            if m and transform is None:
                transform = (m.group(1), lineno)
            m = LABELMAP_COMMENT.match(stripped)
            if m and labelmap is None:
                labelmap = m.group(1)
    return transform, labelmap


def _test_data_layer(net_param):
    """The first data layer (a type whose class has `is_data`) that a TEST net includes, or None."""
    state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
    for layer in net_param.layer:
        if getattr(LAYERS.get(layer.type), "is_data", False) and layer_included(layer, state):
            return layer
    return None


def find_transform(model_path, net_param):
    """(TransformationParameter, labelmap path or None, description of where they came from)."""
    text, labelmap = _comment_values(model_path)
    if text is not None:
        param = parse_prototxt(text[0], caffe_pb2.TransformationParameter(), filename=f"{model_path}:{text[1]}")
        return param, labelmap, f"the transform_param comment of {model_path}"
    layer = _test_data_layer(net_param)
    where = model_path
    if layer is None:
        sibling = os.path.join(os.path.dirname(model_path), "test.prototxt")
        if os.path.exists(sibling) and os.path.abspath(sibling) != os.path.abspath(model_path):
            layer = _test_data_layer(read_prototxt(sibling, caffe_pb2.NetParameter))
            where = sibling
    if layer is not None:
        lm = labelmap or (layer.annotated_data_param.label_map_file
                          if layer.HasField("annotated_data_param") else "") or None
        return layer.transform_param, lm, f"the TEST data layer '{layer.name}' of {where}"
    return caffe_pb2.TransformationParameter(), labelmap, "none found (resize to the input size only)"


def inference_transform(param, input_shape, mean=None, scale=None, resize=None):
    """The deterministic part of `param` for one image, with the options applied."""
    out = caffe_pb2.TransformationParameter()
    out.CopyFrom(param)
    # TEST phase: nothing random (Caffe's test nets have no mirror/distort/expand/noise either).
    out.mirror = False
    for field in ("distort_param", "expand_param", "noise_param", "emit_constraint"):
        out.ClearField(field)
    if mean is not None:
        out.ClearField("mean_file")
        del out.mean_value[:]
        out.mean_value.extend(mean)
    if scale is not None:
        out.scale = scale
    _, channels, height, width = input_shape
    if resize is not None:
        width, height = resize
    if resize is not None or not out.HasField("resize_param"):
        out.resize_param.CopyFrom(caffe_pb2.ResizeParameter(prob=1, resize_mode=caffe_pb2.ResizeParameter.WARP,
                                                            height=height, width=width))
    rp = out.resize_param
    if rp.resize_mode != caffe_pb2.ResizeParameter.WARP:
        raise ProtonetError(f"detect: resize_mode {caffe_pb2.ResizeParameter.Resize_mode.Name(rp.resize_mode)} "
                            "is not supported (only WARP maps boxes back to the image one to one)")
    if len(rp.interp_mode) > 1:  # a list of modes is a training-time random choice: use the first
        modes = list(rp.interp_mode)[:1]
        del rp.interp_mode[:]
        rp.interp_mode.extend(modes)
    rp.prob = 1
    return out


# ---------------------------------------------------------------- inputs and labels

def collect_images(paths):
    images = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ProtonetError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this directory")
            images.extend(found)
        elif os.path.isfile(path):
            images.append(path)
        else:
            raise ProtonetError(f"{path}: no such file or directory")
    if not images:
        raise ProtonetError("detect: no images given")
    return images


def _output_name(image, used):
    stem, ext = os.path.splitext(os.path.basename(image))
    ext = ext.lower() if ext.lower() in (".jpg", ".jpeg", ".png", ".bmp") else ".jpg"
    name, k = stem + ext, 1
    while name in used:
        name, k = f"{stem}_{k}{ext}", k + 1
    used.add(name)
    return name


# ---------------------------------------------------------------- drawing

def draw(image, detections, names):
    """A copy of `image`, enlarged to at least 480 px on its long side, with the detections drawn."""
    h, w = image.shape[:2]
    zoom = max(1, int(np.ceil(480 / max(h, w))))
    canvas = cv2.resize(image, (w * zoom, h * zoom), interpolation=cv2.INTER_NEAREST) if zoom > 1 else image.copy()
    if canvas.ndim == 2 or canvas.shape[2] == 1:
        canvas = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)
    thickness = max(1, round(max(canvas.shape[:2]) / 320))
    font_scale = 0.4 * thickness
    for det in sorted(detections, key=lambda d: d["score"]):
        colour = PALETTE[(det["label"] - 1) % len(PALETTE)]
        x0, y0, x1, y1 = (int(round(v * zoom)) for v in det["box"])
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thickness)
        text = f"{names.get(det['label'], det['label'])} {det['score']:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y0 - 2 if y0 - th - base - 2 >= 0 else y0 + th + base + 2
        cv2.rectangle(canvas, (x0, ty - th - base), (x0 + tw + 2, ty + 1), colour, -1)
        cv2.putText(canvas, text, (x0 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return canvas


# ---------------------------------------------------------------- the detector

class Detector:
    """A deploy net plus its test transform: `detect(image)` gives detections in image pixels."""

    def __init__(self, model, weights, device="cpu", mean=None, scale=None, resize=None, labelmap=None,
                 max_memory=None, strict_weights=False, precision="fp32"):
        for path, what in ((model, "--model"), (weights, "--weights")):
            if not os.path.isfile(path):
                raise ProtonetError(f"{path}: no such file ({what})")
        self.net = Net(model, phase="TEST", ctx=NetContext(phase=caffe_pb2.TEST, max_memory=max_memory))
        self.net.load_weights(weights, strict=strict_weights)
        self.net.eval()
        self.net.to(device)
        self.net.set_inference(precision=precision)
        self.device = device
        if len(self.net.input_names) != 1:
            raise ProtonetError(f"{model}: detect needs a deploy net with one input blob, "
                                f"found {self.net.input_names or 'none'}")
        self.input_name = self.net.input_names[0]
        self.input_shape = tuple(self.net.blob_shapes[self.input_name])
        if len(self.input_shape) != 4:
            raise ProtonetError(f"{model}: input blob '{self.input_name}' must be N x C x H x W, "
                                f"got {list(self.input_shape)}")
        outputs = [layer.param.top[0] for layer in self.net.layers.values() if layer.param.type == "DetectionOutput"]
        if not outputs:
            raise ProtonetError(f"{model}: no DetectionOutput layer: not a detection deploy net")
        self.output_name = outputs[-1]
        found, found_labelmap, self.transform_source = find_transform(model, self.net.net_param)
        self.transform_param = inference_transform(found, self.input_shape, mean, scale, resize)
        root = os.path.dirname(os.path.abspath(model))
        # the data layers' own per-sample step, in the TEST phase (mean_file relative to here, as in Caffe)
        layer = caffe_pb2.LayerParameter(name="detect", type="Data", transform_param=self.transform_param)
        self.process = sample_processor(layer, NetContext(phase=caffe_pb2.TEST, root_dir=os.getcwd()),
                                        where=f"{model}: transform_param")
        self.names = label_names(labelmap or self._resolve(found_labelmap, root), display=True)
        self._rng = np.random.default_rng(0)

    @staticmethod
    def _resolve(path, model_dir):
        """A label map path from a prototxt: relative to the working directory as in Caffe, else to the model."""
        if not path or os.path.exists(path):
            return path
        beside = os.path.join(model_dir, path)
        return beside if os.path.exists(beside) else path

    def read(self, path):
        flag = cv2.IMREAD_GRAYSCALE if self.input_shape[1] == 1 else cv2.IMREAD_COLOR
        img = read_image_file(path, flag)
        if img is None:
            raise ProtonetError(f"{path}: not an image OpenCV can read")
        return img if img.ndim == 3 else img[:, :, None]

    def transform(self, img, key):
        chw, _ = self.process(Sample(key, img), self._rng)
        if chw.shape != self.input_shape[1:]:
            raise ProtonetError(f"detect: the transform gives {list(chw.shape)} but the net's input "
                                f"'{self.input_name}' is {list(self.input_shape[1:])} (see --resize)")
        return chw

    def detect(self, img, key="image", threshold=0.0):
        """Detections of one image (H, W, C uint8): dicts with label, class, score, box (pixels)."""
        data = torch.from_numpy(self.transform(img, key))[None].to(self.device)
        with torch.no_grad():
            rows = self.net.forward(**{self.input_name: data})[self.output_name]
        rows = rows.detach().reshape(-1, 7).cpu().numpy()
        h, w = img.shape[:2]
        out = []
        for _, label, score, x0, y0, x1, y1 in rows:
            if label < 0 or score < threshold:  # Caffe's "no detection" row has label -1
                continue
            box = [float(np.clip(x0, 0, 1) * w), float(np.clip(y0, 0, 1) * h),
                   float(np.clip(x1, 0, 1) * w), float(np.clip(y1, 0, 1) * h)]
            label = int(label)
            out.append({"label": label, "class": self.names.get(label, str(label)), "score": float(score),
                        "box": [round(v, 2) for v in box]})
        out.sort(key=lambda d: -d["score"])
        return out


def run_detect(model, weights, inputs, out_dir, labelmap=None, threshold=0.5, device="cpu", mean=None,
               scale=None, resize=None, progress=None, log=None, max_memory=None, strict_weights=False,
               precision="fp32"):
    """Detect on every image of `inputs`; writes the drawn images and detections.jsonl.

    An image that cannot be read is skipped (with a warning) and the others go on. Returns (images,
    detection records, one line per skipped image: "PATH: why")."""
    images = collect_images(inputs)
    detector = Detector(model, weights, device=device, mean=mean, scale=scale, resize=resize, labelmap=labelmap,
                        max_memory=max_memory, strict_weights=strict_weights, precision=precision)
    if log:
        log(f"detect: transform from {detector.transform_source}: "
            f"{' '.join(str(detector.transform_param).split())}")
    os.makedirs(out_dir, exist_ok=True)
    # what a killed run left: the temporaries of detections.jsonl and of the drawn images
    remove_stale(out_dir, r"detections\.jsonl|.+(?i:" + "|".join(re.escape(e) for e in IMAGE_EXTENSIONS) + ")")
    used, records, skipped = set(), [], []
    jsonl = os.path.join(out_dir, "detections.jsonl")
    with atomic_open(jsonl, "w") as fh:  # a killed run leaves no half file under the final name
        for path in (progress(images) if progress else images):
            try:
                img = detector.read(path)
            except ProtonetError as exc:
                logger.warning("skipped: %s", exc)
                skipped.append(str(exc))
                continue
            dets = detector.detect(img, key=path, threshold=threshold)
            atomic_write_image(os.path.join(out_dir, _output_name(path, used)), draw(img, dets, detector.names))
            for det in dets:
                record = {"image": path, "class": det["class"], "label": det["label"], "score": round(det["score"], 6),
                          "box": det["box"]}
                fh.write(json.dumps(record) + "\n")
                records.append(record)
    return images, records, skipped


def parse_floats(text, what, count=None):
    try:
        values = [float(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise ProtonetError(f"detect: {what} '{text}' is not a list of numbers") from None
    if count is not None and len(values) != count:
        raise ProtonetError(f"detect: {what} '{text}' needs {count} numbers")
    return values
