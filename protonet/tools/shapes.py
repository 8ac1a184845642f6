"""`protonet make-shapes`: a small synthetic detection dataset in Pascal VOC layout, no download.

Each image holds a few shapes (circle, square, triangle, star) of random size, colour, rotation
and position on a textured background; later shapes may hide part of earlier ones. Boxes are the
tight boxes of the visible pixels, as VOC annotators draw them; shapes smaller than a few pixels
are flagged `difficult` (VOC's evaluation ignores them). Every image depends only on
(seed, split, index), so a seed gives the same dataset whatever the counts asked for.

Written files, under OUTDIR:
  JPEGImages/NAME.jpg, Annotations/NAME.xml         VOC's images and annotations
  ImageSets/Main/trainval.txt, test.txt              image names per split
  trainval.txt, test.txt                             "JPEGImages/NAME.jpg Annotations/NAME.xml" lines,
                                                     the list files create-annoset takes (trainval shuffled)
  test_name_size.txt                                 "NAME HEIGHT WIDTH", DetectionEvaluate's name_size_file
  labelmap.prototxt                                  LabelMap: background 0, then the classes
"""
import math
import os
from xml.sax.saxutils import escape

import cv2
import numpy as np

from protonet.errors import ProtonetError
from protonet.io.atomic import atomic_write

CLASSES = ("circle", "square", "triangle", "star")
SPLITS = {"trainval": 0, "test": 1}
# A visible box whose longer side is under this fraction of the image is flagged difficult.
DIFFICULT_FRACTION = 0.085
# An earlier shape keeps at least this fraction of its pixels when a later one is drawn over it.
MIN_VISIBLE = 0.65
JPEG_QUALITY = 92


def labelmap_text(classes=CLASSES):
    items = ['item {\n  name: "none_of_the_above"\n  label: 0\n  display_name: "background"\n}\n']
    for label, name in enumerate(classes, start=1):
        items.append(f'item {{\n  name: "{name}"\n  label: {label}\n  display_name: "{name}"\n}}\n')
    return "".join(items)


# ---------------------------------------------------------------- backgrounds

def _smooth_noise(rng, size, cells, channels=3):
    """Noise in [-1, 1] on a coarse grid, resized smoothly: large soft blobs."""
    grid = rng.uniform(-1, 1, size=(cells, cells, channels)).astype(np.float32)
    return cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).reshape(size, size, channels)


def _muted_colour(rng):
    """A background colour: mid-grey mixed with a little of a random hue."""
    grey = rng.uniform(70, 190)
    return np.clip(grey + rng.uniform(-35, 35, size=3), 0, 255).astype(np.float32)


def _background(rng, size):
    """Textured but muted: the shapes (saturated, contrasting) stay the brightest signal."""
    base = _muted_colour(rng)
    kind = rng.integers(4)
    if kind == 0:  # soft colour blobs
        img = base + rng.uniform(25, 55) * _smooth_noise(rng, size, int(rng.integers(2, 6)))
    elif kind == 1:  # stripes or a checkerboard of two close colours, at a random angle
        other = base + rng.uniform(-30, 30, size=3)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(6, 24)
        u = (xx * math.cos(angle) + yy * math.sin(angle)) / period
        pattern = np.floor(u) % 2
        if rng.random() < 0.5:
            v = (-xx * math.sin(angle) + yy * math.cos(angle)) / period
            pattern = (pattern + np.floor(v)) % 2
        img = base + pattern[..., None] * (other - base)
    elif kind == 2:  # photographic-like 1/f noise: octaves of smooth noise, mostly in luminance
        img = np.zeros((size, size, 3), np.float32)
        weight = 1.0
        for cells in (2, 4, 8, 16, 32):
            octave = _smooth_noise(rng, size, cells, channels=1)
            img += weight * (0.75 * octave + 0.25 * _smooth_noise(rng, size, cells))
            weight *= 0.6
        img = base + rng.uniform(30, 60) * img
    else:  # a plain gradient with a few clutter lines that are not objects
        other = _muted_colour(rng)
        t = np.linspace(0, 1, size, dtype=np.float32)
        ramp = t[:, None, None] if rng.random() < 0.5 else t[None, :, None]
        img = np.broadcast_to(base + (other - base) * ramp, (size, size, 3)).copy()
        for _ in range(int(rng.integers(1, 5))):
            p0 = tuple(int(v) for v in rng.integers(0, size, 2))
            p1 = tuple(int(v) for v in rng.integers(0, size, 2))
            colour = tuple(float(v) for v in _muted_colour(rng) + rng.uniform(-40, 40))
            cv2.line(img, p0, p1, colour, 1, cv2.LINE_AA)
    return np.clip(img, 0, 255).astype(np.float32)


# ---------------------------------------------------------------- shapes

def _polygon(rng, cls, cx, cy, radius):
    """Vertices of the shape `cls` centred at (cx, cy) with circumradius `radius` (None for a circle)."""
    theta = rng.uniform(0, 2 * math.pi)
    if cls == "circle":
        return None
    if cls == "square":
        angles = theta + np.arange(4) * math.pi / 2
        radii = np.full(4, radius)
    elif cls == "triangle":
        angles = theta + np.arange(3) * 2 * math.pi / 3
        radii = np.full(3, radius)
    elif cls == "star":
        angles = theta + np.arange(10) * math.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, radius, radius * rng.uniform(0.38, 0.5))
    else:
        raise ValueError(cls)
    # A mild stretch along a random axis keeps the class recognisable but not rigid.
    stretch = rng.uniform(0.85, 1.15)
    pts = np.stack([radii * np.cos(angles) * stretch, radii * np.sin(angles)], axis=1)
    return pts + (cx, cy)


def _shape_mask(rng, cls, size, cx, cy, radius):
    """Anti-aliased coverage in [0, 1] of one shape, drawn with 4 bits of sub-pixel precision."""
    shift = 4
    mask = np.zeros((size, size), np.uint8)
    if cls == "circle":
        axes = (int(round(radius * (1 << shift))), int(round(radius * rng.uniform(0.85, 1.0) * (1 << shift))))
        centre = (int(round(cx * (1 << shift))), int(round(cy * (1 << shift))))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA, shift)
    else:
        pts = np.round(_polygon(rng, cls, cx, cy, radius) * (1 << shift)).astype(np.int32)
        cv2.fillPoly(mask, [pts], 255, cv2.LINE_AA, shift)
    return mask.astype(np.float32) / 255.0


def _contrasting_colour(rng, background_mean):
    """A saturated colour that stands out from the background under the shape."""
    best, best_distance = None, -1.0
    for _ in range(12):
        hsv = np.array([[[rng.uniform(0, 180), rng.uniform(150, 255), rng.choice([rng.uniform(20, 70),
                                                                                    rng.uniform(170, 255)])]]])
        bgr = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)
        distance = float(np.abs(bgr - background_mean).sum())
        if distance > 200:
            return bgr
        if distance > best_distance:
            best, best_distance = bgr, distance
    return best


def render_image(rng, size):
    """One image (H, W, 3 uint8 BGR) and its objects: list of (class, (x0, y0, x1, y1), difficult).

    Box corners are inclusive pixel indices, 0-based.
    """
    img = _background(rng, size)
    owner = np.full((size, size), -1, np.int32)
    full_area = []
    classes = []
    n_objects = int(rng.integers(1, 6))
    for _ in range(n_objects):
        cls = CLASSES[int(rng.integers(len(CLASSES)))]
        tiny = rng.random() < 0.08
        if tiny:
            radius = rng.uniform(0.025, 0.04) * size
        else:
            radius = math.exp(rng.uniform(math.log(0.08), math.log(0.25))) * size
        for _attempt in range(20):
            cx, cy = rng.uniform(radius, size - radius, size=2)
            coverage = _shape_mask(rng, cls, size, cx, cy, radius)
            solid = coverage >= 0.5
            if solid.sum() < 4:
                continue
            hidden = np.bincount(owner[solid & (owner >= 0)], minlength=len(full_area))
            visible_before = np.bincount(owner[owner >= 0], minlength=len(full_area))
            if all(visible_before[i] - hidden[i] >= MIN_VISIBLE * full_area[i] for i in range(len(full_area))):
                break
        else:
            continue
        colour = _contrasting_colour(rng, img[solid].mean(axis=0))
        # A gentle shading across the shape so that it is not a flat sticker.
        shade = 1.0 + rng.uniform(-0.15, 0.15) * (np.linspace(-1, 1, size, dtype=np.float32)[None, :, None])
        fill = np.clip(colour * shade, 0, 255)
        img = img * (1 - coverage[..., None]) + fill * coverage[..., None]
        owner[solid] = len(full_area)
        full_area.append(int(solid.sum()))
        classes.append(cls)

    noise_sigma = rng.uniform(2, 7)
    img = img + rng.normal(0, noise_sigma, size=img.shape).astype(np.float32)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), 0)
    img = np.clip(np.round(img), 0, 255).astype(np.uint8)

    objects = []
    difficult_side = DIFFICULT_FRACTION * size
    for index, cls in enumerate(classes):
        ys, xs = np.nonzero(owner == index)
        if len(xs) == 0:
            continue
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        difficult = max(x1 - x0 + 1, y1 - y0 + 1) < difficult_side
        objects.append((cls, (x0, y0, x1, y1), difficult))
    return img, objects


def annotation_xml(name, size, objects):
    """VOC annotation text; coordinates are VOC's 1-based inclusive pixel indices."""
    lines = [
        "<annotation>",
        "  <folder>shapes</folder>",
        f"  <filename>{escape(name)}.jpg</filename>",
        "  <source><database>protonet make-shapes</database></source>",
        f"  <size><width>{size}</width><height>{size}</height><depth>3</depth></size>",
        "  <segmented>0</segmented>",
    ]
    for cls, (x0, y0, x1, y1), difficult in objects:
        lines += [
            "  <object>",
            f"    <name>{cls}</name>",
            "    <pose>Unspecified</pose>",
            "    <truncated>0</truncated>",
            f"    <difficult>{int(difficult)}</difficult>",
            f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox>",
            "  </object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def image_rng(seed, split, index):
    return np.random.default_rng([seed, SPLITS[split], index])


def image_name(split, index):
    return f"{'train' if split == 'trainval' else 'test'}_{index:06d}"


def make_shapes(outdir, train=800, test=200, size=160, seed=0, progress=None):
    """Write the dataset into `outdir`; returns a dict of the paths written (see the module doc)."""
    if train < 1 or test < 1:
        raise ProtonetError(f"make-shapes: --train and --test must be at least 1 (got {train}, {test})")
    if size < 48:
        raise ProtonetError(f"make-shapes: --size must be at least 48 pixels (got {size})")
    if os.path.exists(outdir) and not os.path.isdir(outdir):
        raise ProtonetError(f"{outdir}: exists and is not a directory")
    for sub in ("JPEGImages", "Annotations", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(outdir, sub), exist_ok=True)

    counts = {"trainval": train, "test": test}
    names = {split: [image_name(split, i) for i in range(n)] for split, n in counts.items()}
    jobs = [(split, i) for split in ("trainval", "test") for i in range(counts[split])]
    stats = {"objects": 0, "difficult": 0}
    iterator = progress(jobs) if progress else jobs
    for split, index in iterator:
        name = names[split][index]
        img, objects = render_image(image_rng(seed, split, index), size)
        ok, encoded = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        assert ok
        _write(os.path.join(outdir, "JPEGImages", name + ".jpg"), encoded.tobytes())
        _write(os.path.join(outdir, "Annotations", name + ".xml"), annotation_xml(name, size, objects).encode())
        stats["objects"] += len(objects)
        stats["difficult"] += sum(1 for o in objects if o[2])

    paths = {"root": os.path.abspath(outdir)}
    for split in ("trainval", "test"):
        _write(os.path.join(outdir, "ImageSets", "Main", split + ".txt"), "".join(n + "\n" for n in names[split]).encode())
        order = list(names[split])
        if split == "trainval":  # create_list.sh shuffles the trainval list
            np.random.default_rng([seed, 2]).shuffle(order)
        lines = "".join(f"JPEGImages/{n}.jpg Annotations/{n}.xml\n" for n in order)
        paths[split] = os.path.join(os.path.abspath(outdir), split + ".txt")
        _write(paths[split], lines.encode())
    paths["name_size"] = os.path.join(os.path.abspath(outdir), "test_name_size.txt")
    _write(paths["name_size"], "".join(f"{n} {size} {size}\n" for n in names["test"]).encode())
    paths["labelmap"] = os.path.join(os.path.abspath(outdir), "labelmap.prototxt")
    _write(paths["labelmap"], labelmap_text().encode())
    paths.update(stats)
    return paths


def _write(path, data):
    atomic_write(path, data)
