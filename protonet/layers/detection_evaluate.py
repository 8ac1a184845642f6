"""DetectionEvaluate (SSD fork): true and false positives of detections against the ground truth."""
import numpy as np
import torch

from protonet import box
from protonet.errors import ProtonetError, ShapeError
from protonet.io.name_size import read_name_size
from protonet.layers.base import Layer, register

_f32 = np.float32


@register("DetectionEvaluate")
class DetectionEvaluateLayer(Layer):
    """True/false positives of detections [1,1,D,7] against ground truth [1,1,G,8].

    Top rows: first one per class [-1, label, num_pos, -1, -1], then per detection
    [image, label, score, tp, fp], images and labels ascending, scores descending."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(2)
        p = param.detection_evaluate_param
        self.where = f"layer {self.name} (DetectionEvaluate)"
        if not p.HasField("num_classes"):
            raise ProtonetError(f"{self.where}: must provide num_classes")
        self.num_classes = int(p.num_classes)
        self.background = int(p.background_label_id)
        self.overlap_threshold = _f32(p.overlap_threshold)
        if not self.overlap_threshold > 0:
            raise ProtonetError(f"{self.where}: overlap_threshold must be positive")
        self.evaluate_difficult_gt = p.evaluate_difficult_gt
        # The name/size file is read by the first forward (a net that never evaluates needs none).
        self.name_size_file = p.name_size_file if p.HasField("name_size_file") else None
        self.sizes = None if self.name_size_file else []
        self.resize_param = p.resize_param if p.HasField("resize_param") else None
        self.count = 0
        det_s, gt_s = self.bottom_shapes
        if len(det_s) != 4 or det_s[0] != 1 or det_s[1] != 1 or det_s[3] != 7:
            raise ShapeError(f"{self.where}: detections must be [1, 1, D, 7], got {det_s}")
        if len(gt_s) != 4 or gt_s[0] != 1 or gt_s[1] != 1 or gt_s[3] != 8:
            raise ShapeError(f"{self.where}: ground truth must be [1, 1, G, 8], got {gt_s}")
        num_pos_classes = self.num_classes if self.background == -1 else self.num_classes - 1
        self.top_shapes = [(1, 1, num_pos_classes, 5)]

    def forward(self, det, gt):
        if self.sizes is None:
            self.sizes = [(h, w) for _, h, w in read_name_size(self.name_size_file, self.where)]
        rows = self.evaluate(det.detach().cpu().numpy().reshape(-1, 7).astype(np.float32),
                             gt.detach().cpu().numpy().reshape(-1, 8).astype(np.float32))
        return torch.from_numpy(rows).to(device=det.device, dtype=det.dtype).view(1, 1, -1, 5)

    def evaluate(self, det, gt):
        normalized = len(self.sizes) == 0
        # Ground truth: all of it (difficult too), stopping at the first item -1 row.
        gts = {}
        for r in gt:
            item = int(r[0])
            if item == -1:
                break
            label = int(r[1])
            if self.num_classes == 2 and label >= 2:
                label = 1
            if label == self.background:
                raise ProtonetError(f"{self.where}: found background label in the ground truth")
            gts.setdefault(item, {}).setdefault(label, []).append((r[3:7].copy(), bool(r[7])))
        dets = {}
        for r in det:
            item = int(r[0])
            if item == -1:
                continue
            label = int(r[1])
            if label == self.background:
                raise ProtonetError(f"{self.where}: found background label in the detections")
            dets.setdefault(item, {}).setdefault(label, []).append((float(r[2]), r[3:7].copy()))
        out = []
        num_pos = {}
        for item in gts.values():
            for label, boxes in item.items():
                n = len(boxes) if self.evaluate_difficult_gt else sum(1 for _, d in boxes if not d)
                num_pos[label] = num_pos.get(label, 0) + n
        for c in range(self.num_classes):
            if c == self.background:
                continue
            out.append([-1, c, num_pos.get(c, 0), -1, -1])
        for image in sorted(dets):
            labels = dets[image]
            for label in sorted(labels):
                if label == -1:
                    continue
                found = sorted(labels[label], key=lambda t: -t[0])  # stable: ties keep their order
                gt_here = gts.get(image, {}).get(label)
                if gt_here is None:
                    out.extend([image, label, s, 0, 1] for s, _ in found)
                    continue
                g_boxes = np.stack([b for b, _ in gt_here])
                g_diff = [d for _, d in gt_here]
                if not normalized:
                    size = self.sizes[self.count]
                    g_boxes = np.stack([box.output_box(b, size, self.resize_param) for b in g_boxes])
                visited = [False] * len(gt_here)
                for s, b in found:
                    if not normalized:
                        b = box.output_box(b, size, self.resize_param)
                    ov = box.iou(torch.from_numpy(b[None]), torch.from_numpy(g_boxes), normalized)[0].numpy()
                    jmax = int(np.argmax(ov)) if len(ov) else -1
                    if ov[jmax] >= self.overlap_threshold:
                        if self.evaluate_difficult_gt or not g_diff[jmax]:
                            if not visited[jmax]:
                                out.append([image, label, s, 1, 0])
                                visited[jmax] = True
                            else:
                                out.append([image, label, s, 0, 1])
                        else:
                            out.append([image, label, s, 0, 0])  # matched a difficult gt: ignored
                    else:
                        out.append([image, label, s, 0, 1])
            if self.sizes:
                self.count += 1
                if self.count == len(self.sizes):
                    self.count = 0
        return np.array(out, dtype=np.float32).reshape(-1, 5)
