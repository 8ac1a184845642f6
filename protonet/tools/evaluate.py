"""Evaluate a detection test net outside training (`protonet eval`).

    protonet eval --model test.prototxt [--weights W.caffemodel] [--iterations N]
                  [--ap-version 11point|MaxIntegral|Integral] [--labelmap L]
                  [--coco-gt instances.json] [--gpu G]

VOC: the test net's DetectionEvaluate outputs are accumulated over N batches exactly as Caffe's
solver does in a test pass (protonet.eval.voc), and the AP of every class and the mAP are printed.

COCO (--coco-gt): the DetectionOutput rows of every batch are turned into COCO results (image id
from the name/size file of DetectionEvaluate, whose order is the test database's order as
`create-list` writes it; category id from the label map item's name, as in the fork's
labelmap_coco.prototxt) and scored by pycocotools' COCOeval, which prints its 12-number summary.

N defaults to the whole test set: the lines of the name/size file divided by the batch size.
"""
import math
import os

import numpy as np
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.eval.voc import AP_VERSIONS, DetectionAccumulator
from protonet.io.labelmap import label_names
from protonet.io.name_size import read_name_size
from protonet.layers.base import NetContext
from protonet.net import Net


def _layers_of_type(net, type_name):
    return [layer for layer in net.layers.values() if layer.param.type == type_name]


def _batch_size(net):
    """The batch size of the test net: the first dimension of its first data layer's first top."""
    for layer in net.layers.values():
        if layer.is_data and layer.top_shapes and layer.top_shapes[0]:
            return int(layer.top_shapes[0][0])
    return None


def default_iterations(net, model):
    """Batches that cover the test set once: lines of the name/size file over the batch size."""
    for layer in _layers_of_type(net, "DetectionEvaluate"):
        name_size_file = layer.param.detection_evaluate_param.name_size_file
        batch = _batch_size(net)
        if name_size_file and batch:
            return int(math.ceil(len(read_name_size(name_size_file)) / batch))
    raise ProtonetError(f"{model}: cannot tell how many batches make the test set (no name_size_file in "
                        "DetectionEvaluate or no batch size): give --iterations")


def _labelmap_file(net, option):
    if option:
        return option
    for layer in net.layers.values():
        if layer.param.HasField("annotated_data_param") and layer.param.annotated_data_param.label_map_file:
            return layer.param.annotated_data_param.label_map_file
    return None


class CocoCollector:
    """DetectionOutput rows of successive batches -> COCO result dicts."""

    def __init__(self, net, model, gt, labelmap_path):
        outs = _layers_of_type(net, "DetectionOutput")
        if not outs:
            raise ProtonetError(f"{model}: --coco-gt needs a DetectionOutput layer in the test net")
        self.top = outs[-1].param.top[0]
        evaluators = _layers_of_type(net, "DetectionEvaluate")
        name_size_file = evaluators[0].param.detection_evaluate_param.name_size_file if evaluators else ""
        if not name_size_file:
            raise ProtonetError(f"{model}: --coco-gt needs DetectionEvaluate's name_size_file to know the image ids")
        self.images = read_name_size(name_size_file)
        self.batch = _batch_size(net)
        if not self.batch:
            raise ProtonetError(f"{model}: cannot find the test batch size")
        by_file = {os.path.splitext(img["file_name"])[0]: img["id"] for img in gt.dataset.get("images", [])
                   if "file_name" in img}
        known_ids = set(gt.getImgIds())
        self.image_ids = []
        for name, _, _ in self.images:
            if name.isdigit() and int(name) in known_ids:
                self.image_ids.append(int(name))
            elif name in by_file:
                self.image_ids.append(by_file[name])
            else:
                raise ProtonetError(f"{name_size_file}: image '{name}' is neither an image id nor a file name "
                                    "of the COCO ground truth")
        if not labelmap_path:
            raise ProtonetError(f"{model}: --coco-gt needs a label map (--labelmap) to map labels to categories")
        cats = {c["id"]: c for c in gt.dataset.get("categories", [])}
        by_cat_name = {c["name"]: c["id"] for c in cats.values()}
        self.category = {}
        self.labelmap = labelmap_path
        for label, name in label_names(labelmap_path).items():
            if name.isdigit() and int(name) in cats:
                self.category[label] = int(name)
            elif name in by_cat_name:
                self.category[label] = by_cat_name[name]
        self.results = []
        self.seen = set()
        self.offset = 0

    def add(self, blobs):
        rows = blobs[self.top].detach().reshape(-1, 7).cpu().numpy()
        for item, label, score, x0, y0, x1, y1 in rows:
            index = self.offset + int(item)
            if item < 0 or label < 0 or index >= len(self.images):
                continue
            _, height, width = self.images[index]
            if int(label) not in self.category:
                raise ProtonetError(f"{self.labelmap}: label {int(label)} of the detections has no COCO category "
                                    "(an item named by the category's id or name)")
            # Caffe's save_output_param writes COCO boxes as [xmin, ymin, width, height] in pixels.
            x0, x1 = np.clip([x0, x1], 0, 1) * width
            y0, y1 = np.clip([y0, y1], 0, 1) * height
            self.results.append({"image_id": self.image_ids[index], "category_id": self.category[int(label)],
                                 "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                                 "score": float(score)})
        for k in range(self.batch):
            if self.offset + k < len(self.images):
                self.seen.add(self.image_ids[self.offset + k])
        self.offset += self.batch

    def evaluate(self, gt):
        from pycocotools.cocoeval import COCOeval  # pycocotools (imports matplotlib): only for --coco-gt

        if not self.results:
            raise ProtonetError("--coco-gt: the net made no detections; nothing to score")
        dt = gt.loadRes(self.results)
        coco_eval = COCOeval(gt, dt, "bbox")
        coco_eval.params.imgIds = sorted(self.seen)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        return [float(v) for v in coco_eval.stats]


def _check_named(aps, names, labelmap):
    """Every label the data holds must be an item of the label map (a blank class name hides a wrong map)."""
    unnamed = sorted(label for label in aps if label not in names)
    if names and unnamed:
        raise ProtonetError(f"{labelmap}: no item for label {unnamed[0]}, which the test data holds"
                            + (f" (nor for {', '.join(str(u) for u in unnamed[1:])})" if len(unnamed) > 1 else ""))


def evaluate(model, weights=None, iterations=None, ap_version="11point", labelmap=None, coco_gt=None,
             device="cpu", progress=None, max_memory=None, strict_data=False, strict_weights=False,
             precision="fp32"):
    """Run the test net; returns {'map': mAP, 'ap': {label: AP}, 'names': {...}, 'coco': stats or None}.
    A label of the data that the label map does not name is an error naming it."""
    if ap_version not in AP_VERSIONS:
        raise ProtonetError(f"--ap-version {ap_version}: one of {', '.join(AP_VERSIONS)}")
    if not os.path.isfile(model):
        raise ProtonetError(f"{model}: no such file (--model)")
    if weights is not None and not os.path.isfile(weights):
        raise ProtonetError(f"{weights}: no such file (--weights)")
    net = Net(model, phase="TEST", ctx=NetContext(phase=caffe_pb2.TEST, max_memory=max_memory, strict_data=strict_data))
    if weights is not None:
        net.load_weights(weights, strict=strict_weights)
    net.eval()
    net.to(device)
    net.set_inference(precision=precision)
    evaluators = [layer.param.top[0] for layer in _layers_of_type(net, "DetectionEvaluate")]
    if not evaluators and coco_gt is None:
        raise ProtonetError(f"{model}: no DetectionEvaluate layer: not a detection test net (see --coco-gt)")
    if iterations is None:
        iterations = default_iterations(net, model)
    labelmap = _labelmap_file(net, labelmap)
    gt = collector = None
    if coco_gt is not None:
        if not os.path.isfile(coco_gt):
            raise ProtonetError(f"{coco_gt}: no such file (--coco-gt)")
        from protonet.io.json_files import load_coco

        gt = load_coco(coco_gt, for_eval=True)
        collector = CocoCollector(net, model, gt, labelmap)
    accumulators = [DetectionAccumulator() for _ in evaluators]
    steps = range(iterations)
    with torch.no_grad():
        for _ in (progress(steps) if progress else steps):
            blobs = net.forward()
            for acc, top in zip(accumulators, evaluators):
                acc.add(blobs[top].detach().cpu().numpy())
            if collector is not None:
                collector.add(blobs)
    result = {"names": label_names(labelmap, display=True), "iterations": iterations, "coco": None, "map": None, "ap": {}}
    for k, acc in enumerate(accumulators):
        m_ap, aps = acc.evaluate(ap_version)
        _check_named(aps, result["names"], labelmap)
        if k == 0:
            result["map"], result["ap"] = float(m_ap), {label: float(ap) for label, ap in aps.items()}
        result.setdefault("outputs", []).append(float(m_ap))
    if collector is not None:
        result["coco"] = collector.evaluate(gt)
    return result
