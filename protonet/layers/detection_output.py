"""DetectionOutput (SSD fork, RefineDet's 5-bottom variant): decode, per-class NMS, keep_top_k,
and the fork's result files (save_output_param, written by protonet.eval.writers)."""
import logging
import os

import numpy as np
import torch

from protonet import box, caffe_pb2
from protonet.errors import ProtonetError
from protonet.eval import writers
from protonet.io.labelmap import label_names
from protonet.io.name_size import read_name_size
from protonet.layers.base import Layer, register

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
    NMS overlaps count both end pixels)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(3, 5)
        p = param.detection_output_param
        self.where = f"layer {self.name} (DetectionOutput)"
        if not p.HasField("num_classes"):
            raise ProtonetError(f"{self.where}: must specify num_classes")
        self.p = p
        self.num_classes = int(p.num_classes)
        self.share_location = p.share_location
        self.loc_classes = 1 if p.share_location else self.num_classes
        self.background = int(p.background_label_id)
        self.keep_top_k = int(p.keep_top_k)
        self.confidence_threshold = float(p.confidence_threshold) if p.HasField("confidence_threshold") else -FLT_MAX
        self.nms_threshold = float(p.nms_param.nms_threshold)
        if self.nms_threshold < 0:
            raise ProtonetError(f"{self.where}: nms_threshold must be non negative")
        self.eta = float(p.nms_param.eta)
        if not (0 < self.eta <= 1):
            raise ProtonetError(f"{self.where}: eta must be in (0, 1]")
        self.top_k = int(p.nms_param.top_k) if p.nms_param.HasField("top_k") else -1
        self.objectness_score = float(p.objectness_score)
        arm_conf_s, arm_loc_s = (self.bottom_shapes[3:] + [None, None])[:2]
        self.num_priors = box.check_head_shapes(self.where, *self.bottom_shapes[:3], self.loc_classes,
                                                self.num_classes, arm_conf_s, arm_loc_s)
        if p.visualize:
            raise ProtonetError(f"{self.where}: visualize is not supported (use `protonet detect`)")
        self.normalized, self.clip = p.normalized_bbox, p.clip
        if not self.normalized and (self.clip or p.code_type == caffe_pb2.PriorBoxParameter.CORNER_SIZE):
            raise ProtonetError(f"{self.where}: normalized_bbox: false is supported with code_type CORNER or "
                                f"CENTER_SIZE and without clip (OpenCV clips pixel boxes to a fourth image bottom)")
        self._setup_saving(p.save_output_param)
        self.top_shapes = [(1, 1, 1, 7)]

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
    def forward(self, loc, conf, prior, arm_conf=None, arm_loc=None):
        with torch.no_grad():
            out = self.detect(loc, conf, prior, arm_conf, arm_loc)
        if self.need_save:
            self._batch_size = loc.shape[0]
            self._save(out[0, 0].cpu().numpy())
        return out

    def detect(self, loc, conf, prior, arm_conf=None, arm_loc=None):
        p = self.p
        N, P, C, Lc = loc.shape[0], self.num_priors, self.num_classes, self.loc_classes
        dev = loc.device
        priors, variances = box.split_priors(prior, P)
        priors, variances = priors.to(loc.dtype), variances.to(loc.dtype)
        if arm_loc is not None:
            base = box.decode(arm_loc.reshape(N, P, 4).to(loc.dtype), priors, variances,
                              p.code_type, p.variance_encoded_in_target)[:, :, None]
        else:
            base = priors[:, None]
        boxes = box.decode(loc.reshape(N, P, Lc, 4), base, variances[:, None], p.code_type,
                           p.variance_encoded_in_target, self.normalized)  # [N, P, Lc, 4]
        if self.clip:
            boxes = boxes.clamp(0.0, 1.0)
        scores = conf.reshape(N, P, C)
        if arm_conf is not None:
            # RefineDet: priors the ARM finds empty get the scores [1, 0, 0, ...].
            empty = arm_conf.reshape(N, P, 2)[..., 1] < self.objectness_score
            fake = torch.zeros(C, dtype=scores.dtype, device=dev)
            fake[0] = 1
            scores = torch.where(empty[..., None], fake, scores)
        classes = [c for c in range(C) if c != self.background]
        if not classes:
            return self._empty(N, loc)
        cls = torch.tensor(classes, device=dev)
        if classes == list(range(classes[0], classes[-1] + 1)):
            picked = scores[:, :, classes[0]:classes[-1] + 1]  # a slice: no copy of the scores
        else:
            picked = scores[:, :, cls]
        if self.share_location:
            row_boxes = boxes[:, :, 0]
            box_rows = torch.arange(N, device=dev).repeat_interleave(len(classes))
        else:
            row_boxes = boxes[:, :, cls].permute(0, 2, 1, 3).reshape(N * len(classes), P, 4)
            box_rows = None
        order, keep = box.nms(row_boxes, picked, self.confidence_threshold, self.nms_threshold,
                              self.eta, self.top_k, box_rows, classes_last=True, normalized=self.normalized)
        K = order.shape[1]
        keep = keep.view(N, len(classes), K)
        order = order.view(N, len(classes), K)
        kept_scores = picked[torch.arange(N, device=dev)[:, None, None], order,
                             torch.arange(len(classes), device=dev)[None, :, None]]
        if self.keep_top_k > -1:
            count = keep.view(N, -1).sum(dim=1)
            flat = torch.where(keep, kept_scores, torch.full_like(kept_scores, float("-inf"))).view(N, -1)
            k = min(self.keep_top_k, flat.shape[1])
            if k > 0:
                top = box.stable_topk_desc(flat, k, dim=1)
                chosen = torch.zeros_like(keep.view(N, -1))
                chosen.scatter_(1, top, True)
                chosen &= keep.view(N, -1)
            else:
                chosen = torch.zeros_like(keep.view(N, -1))
            # Only images with more than keep_top_k detections are truncated.
            keep = torch.where((count > self.keep_top_k)[:, None], chosen, keep.view(N, -1)).view(keep.shape)
        n, ci, k = keep.nonzero(as_tuple=True)
        if n.numel() == 0:
            return self._empty(N, loc)
        j = order[n, ci, k]
        lab = cls[ci]
        loc_cls = torch.zeros_like(lab) if self.share_location else lab
        rows = torch.cat([n[:, None].to(loc.dtype), lab[:, None].to(loc.dtype),
                          kept_scores[n, ci, k][:, None].to(loc.dtype), boxes[n, j, loc_cls]], dim=1)
        return rows.view(1, 1, -1, 7)

    def _empty(self, num, like):
        out = like.new_full((num, 7), -1.0)
        out[:, 0] = torch.arange(num, dtype=like.dtype, device=like.device)
        return out.view(1, 1, num, 7)
