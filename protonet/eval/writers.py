"""Result files of the SSD fork's DetectionOutput (save_output_param): VOC, COCO and ILSVRC.

A detection is (image name, label, score, [x, y, w, h]) in pixels, rounded to 1/100 as the fork
rounds them; the files are byte-compatible with the fork's.
"""
import contextlib
import json
import os

import numpy as np

from protonet.errors import ProtonetError
from protonet.io.atomic import atomic_open

FORMATS = ("VOC", "COCO", "ILSVRC")


def voc_file(directory, prefix, name):
    return os.path.join(directory, prefix + name + ".txt")


def clear_voc_files(directory, prefix, label_to_name, background):
    """The fork empties every class file when a pass over the test images starts."""
    for label, name in label_to_name.items():
        if label != background:
            open(voc_file(directory, prefix, name), "w").close()


def write_results(output_format, directory, prefix, detections, label_to_name, num_classes, background,
                  where):
    if output_format == "VOC":
        write_voc(directory, prefix, detections, label_to_name, num_classes, background, where)
    elif output_format == "COCO":
        write_coco(os.path.join(directory, prefix + ".json"), detections, label_to_name)
    elif output_format == "ILSVRC":
        write_ilsvrc(os.path.join(directory, prefix + ".txt"), detections)
    else:
        raise ProtonetError(f"{where}: unknown output_format '{output_format}'")


def write_voc(directory, prefix, detections, label_to_name, num_classes, background, where):
    """One file per class: `image score xmin ymin xmax ymax` (integer pixels)."""
    files = {}
    with contextlib.ExitStack() as stack:  # every class file appears complete, or none changes
        for c in range(num_classes):
            if c == background:
                continue
            name = label_to_name.get(c)
            if name is None:
                raise ProtonetError(f"{where}: cannot find label {c} in the label map")
            files[c] = stack.enter_context(atomic_open(voc_file(directory, prefix, name), "w"))
        for image, label, score, (x, y, w, h) in detections:
            if label not in files:
                continue
            xi, yi, wi, hi = int(x), int(y), int(w), int(h)
            files[label].write(f"{image} {score:g} {xi} {yi} {xi + wi} {yi + hi}\n")


def write_coco(path, detections, label_to_name):
    """A JSON list of {image_id, category_id, bbox [x, y, w, h], score}."""
    f32 = np.float32
    dets = []
    for image, label, score, bbox in detections:
        name = label_to_name[label]
        dets.append({"image_id": json_scalar(image), "category_id": json_scalar(name),
                     "bbox": [float(f32(v)) for v in bbox], "score": float(f32(score))})
    with atomic_open(path, "w") as f:
        json.dump(dets, f, indent=4)
        f.write("\n")


def write_ilsvrc(path, detections):
    """One file: `image label score xmin ymin xmax ymax` (integer pixels)."""
    with atomic_open(path, "w") as f:
        for image, label, score, (x, y, w, h) in detections:
            xi, yi, wi, hi = int(x), int(y), int(w), int(h)
            f.write(f"{image} {label} {score:g} {xi} {yi} {xi + wi} {yi + hi}\n")


def json_scalar(text):
    """The fork writes names that look like numbers as JSON numbers."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text
