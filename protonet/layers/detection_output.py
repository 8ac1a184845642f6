"""DetectionOutput (SSD fork, RefineDet's 5-bottom variant): decode, per-class NMS, keep_top_k,
and the fork's result files (save_output_param, written by protonet.eval.writers)."""
import dataclasses
import logging
import math
import os

import numpy as np
import torch

from protonet import box, caffe_pb2
from protonet.detection_decode import DetectionSettings, detection_output, detection_output_adaptive
from protonet.errors import ProtonetError
from protonet.eval import writers
from protonet.io.labelmap import label_names
from protonet.io.name_size import read_name_size
from protonet.layers.base import Layer, register
from protonet.layers.detection_heads import separate_heads

FLT_MAX = float(np.finfo(np.float32).max)
log = logging.getLogger("protonet.layers")


def read_names_and_sizes(path, where):
    """Image names and (height, width) of a name/size file."""
    rows = read_name_size(path, where)
    return [name for name, _, _ in rows], [(h, w) for _, h, w in rows]


@register("DetectionOutput")
class DetectionOutputLayer(Layer):
    """Decode, per-class NMS and keep_top_k for the whole batch; top [1, 1, N_kept, 7] rows
    [image, label, score, xmin, ymin, xmax, ymax]. With 5 bottoms (RefineDet) boxes are decoded
    from the ARM-refined priors and priors with ARM objectness < objectness_score count as
    background ([1, 0, 0, ...] scores). OpenCV's fields: `clip` clamps the decoded boxes to
    [0, 1] before NMS; `normalized_bbox: false` takes pixel priors (CENTER_SIZE prior sizes and
    NMS overlaps count both end pixels). Synopsys Caffe's heads given one per feature map
    (`nbottom`, `no_permute`) are gathered first (detection_heads.py)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.detection_output_param
        self.where = f"layer {self.name} (DetectionOutput)"
        if not p.HasField("num_classes"):
            raise ProtonetError(f"{self.where}: must specify num_classes")
        # Synopsys Caffe's heads one per feature map (nbottom of each), else the SSD fork's 3 to 5
        self.heads = separate_heads(self.where, p, self.bottom_shapes, 1 if p.share_location else p.num_classes,
                                    p.num_classes)
        if self.heads is None:
            self.check_bottoms(3, 5)
        self.p = p
        self.num_classes = int(p.num_classes)
        self.share_location = p.share_location
        self.loc_classes = 1 if p.share_location else self.num_classes
        self.background = int(p.background_label_id)
        self.keep_top_k = int(p.keep_top_k)
        self.confidence_threshold = float(p.confidence_threshold) if p.HasField("confidence_threshold") else -FLT_MAX
        nms = self._nms_param(p)
        self.nms_threshold = float(nms.nms_threshold)
        if self.nms_threshold < 0:
            raise ProtonetError(f"{self.where}: nms_threshold must be non negative")
        self.eta = float(nms.eta)
        if not (0 < self.eta <= 1):
            raise ProtonetError(f"{self.where}: eta must be in (0, 1]")
        self.top_k = int(nms.top_k) if nms.HasField("top_k") else -1
        self.objectness_score = float(p.objectness_score)
        heads = self.heads.shapes if self.heads else self.bottom_shapes
        # OpenCV's fourth bottom: the input image (its size only serves pixel boxes), not RefineDet's
        # arm_conf (N x P*2)
        self.image_bottom = len(heads) == 4 and len(heads[3]) == 4 and \
            math.prod(heads[3][1:]) != 2 * box.check_head_shapes(self.where, *heads[:3], self.loc_classes,
                                                                 self.num_classes)
        if self.image_bottom:
            heads = heads[:3]
        arm_conf_s, arm_loc_s = (heads[3:] + [None, None])[:2]
        self.num_priors = box.check_head_shapes(self.where, *heads[:3], self.loc_classes,
                                                self.num_classes, arm_conf_s, arm_loc_s)
        if p.visualize:
            raise ProtonetError(f"{self.where}: visualize is not supported (use `protonet detect`)")
        self.normalized, self.clip = p.normalized_bbox, p.clip
        if not self.normalized and (self.clip or p.code_type == caffe_pb2.PriorBoxParameter.CORNER_SIZE):
            raise ProtonetError(f"{self.where}: normalized_bbox: false is supported with code_type CORNER or "
                                f"CENTER_SIZE and without clip (OpenCV clips pixel boxes to a fourth image bottom)")
        # the NMS settings as read above (OpenCV's early flat nms_threshold/top_k included)
        self.settings = dataclasses.replace(DetectionSettings.from_param(p), nms_threshold=self.nms_threshold,
                                            top_k=self.top_k, eta=self.eta)
        self._setup_saving(p.save_output_param)
        self.top_shapes = [(1, 1, 1, 7)]

    def _nms_param(self, p):
        """nms_param, or OpenCV's early flat nms_threshold/top_k (its samples of 2016-17)."""
        if not (p.HasField("nms_threshold") or p.HasField("top_k")):
            return p.nms_param
        if p.HasField("nms_param"):
            raise ProtonetError(f"{self.where}: give nms_param or OpenCV's nms_threshold/top_k, not both")
        nms = caffe_pb2.NonMaximumSuppressionParameter(nms_threshold=p.nms_threshold)
        if p.HasField("top_k"):
            nms.top_k = p.top_k
        return nms

    # -- result files ---------------------------------------------------------------------
    def _setup_saving(self, sp):
        self.output_directory = sp.output_directory
        self.need_save = bool(sp.output_directory)
        self.output_format = sp.output_format
        self.output_name_prefix = sp.output_name_prefix
        self.label_to_name = {}
        self.names, self.sizes = [], []
        self.num_test_image = 0
        self.name_count = 0
        self.saved = []  # (image name, label, score, [x, y, w, h] pixels rounded): eval.writers rows
        missing = self._missing_result_inputs(sp)
        if missing:
            # Caffe aborts here; a deploy from a model zoo names its author's files, and running
            # it needs none of them (a documented deviation; protonet test still requires them).
            if self.ctx.result_files_required and sp.output_directory:
                raise ProtonetError(f"{self.where}: {missing[0]} (save_output_param asks to save results in "
                                    f"{sp.output_directory})")
            log.warning("%s: %s; detection results will not be saved", self.where, "; ".join(missing))
            self.need_save = False
            return
        if sp.HasField("label_map_file") and sp.label_map_file:
            self.label_to_name = label_names(sp.label_map_file, strict=True, where=self.where)
        else:
            self.need_save = False
        if sp.HasField("name_size_file") and sp.name_size_file:
            self.names, self.sizes = read_names_and_sizes(sp.name_size_file, self.where)
            self.num_test_image = sp.num_test_image if sp.HasField("num_test_image") else len(self.names)
            if self.num_test_image > len(self.names):
                raise ProtonetError(f"{self.where}: num_test_image {self.num_test_image} exceeds the "
                                    f"{len(self.names)} names in {sp.name_size_file}")
        else:
            self.need_save = False
        if self.need_save and self.num_test_image == 0:
            self.need_save = False
        if self.need_save and self.output_format not in writers.FORMATS:
            raise ProtonetError(f"{self.where}: unknown output_format '{self.output_format}'")
        self.resize_param = sp.resize_param if sp.HasField("resize_param") else None

    def _missing_result_inputs(self, sp):
        """What save_output_param names that is not there: label map, name/size file, or an output
        directory that cannot be made."""
        missing = [f"{what} file {path} not found" for what, path in
                   (("label map", sp.label_map_file), ("name size", sp.name_size_file))
                   if path and not os.path.exists(path)]
        if not missing and self.need_save and sp.label_map_file and sp.name_size_file:
            try:
                os.makedirs(self.output_directory, exist_ok=True)
            except OSError as exc:
                missing.append(f"cannot make output directory {self.output_directory} ({exc.strerror or exc})")
        return missing

    def _save(self, rows):
        """Accumulate one batch; write the files when num_test_image images are done."""
        if self.name_count % self.num_test_image == 0 and self.output_format == "VOC":
            writers.clear_voc_files(self.output_directory, self.output_name_prefix, self.label_to_name,
                                    self.background)
        by_image = {}
        for r in rows:
            if r[1] == -1:
                continue
            by_image.setdefault(int(r[0]), []).append(r)
        num = self._batch_size
        for i in range(num):
            if self.name_count >= len(self.names):
                raise ProtonetError(f"{self.where}: more images than names in the name size file")
            for r in by_image.get(i, []):
                label = int(r[1])
                if label not in self.label_to_name:
                    raise ProtonetError(f"{self.where}: cannot find label {label} in the label map")
                b = box.output_box(r[3:7], self.sizes[self.name_count], self.resize_param)
                b = [float(np.round(v * 100) / 100.0) for v in b.astype(np.float64)]
                xywh = [b[0], b[1], round((b[2] - b[0]) * 100) / 100.0, round((b[3] - b[1]) * 100) / 100.0]
                self.saved.append((self.names[self.name_count], label, float(r[2]), xywh))
            self.name_count += 1
            if self.name_count % self.num_test_image == 0:
                self._write_files()
                self.name_count = 0
                self.saved = []

    def _write_files(self):
        writers.write_results(self.output_format, self.output_directory, self.output_name_prefix, self.saved,
                              self.label_to_name, self.num_classes, self.background, self.where)

    # -- forward ----------------------------------------------------------------------------
    def forward(self, *bottoms):
        if self.heads is not None:
            bottoms = self.heads.gather(bottoms)
        elif self.image_bottom:
            bottoms = bottoms[:3]
        loc, conf, prior, arm_conf, arm_loc = (list(bottoms) + [None, None])[:5]
        with torch.no_grad():
            out = self.detect(loc, conf, prior, arm_conf, arm_loc)
        if self.need_save:
            self._batch_size = loc.shape[0]
            self._save(out[0, 0].cpu().numpy())
        return out

    def detect(self, loc, conf, prior, arm_conf=None, arm_loc=None):
        """The rows, with tensor operations only (protonet.detection_decode) unless NMS is
        adaptive (eta < 1) or top_k is unset: then box.nms, whose work follows the candidates."""
        if self.settings.graph_friendly and self.settings.top_k >= 0:
            return detection_output(loc, conf, prior, self.settings, arm_conf, arm_loc)
        return detection_output_adaptive(loc, conf, prior, self.settings, arm_conf, arm_loc)
