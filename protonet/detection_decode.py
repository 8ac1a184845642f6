"""DetectionOutput's algorithm (SSD and RefineDet) as tensor operations only.

The candidates of each (image, class) row are ranked once with a fixed width K (nms top_k, or
every prior when top_k is unset), so every shape follows from the input shapes and the layer's
settings: no Python loop whose trip count depends on data and no host sync. The greedy NMS scan
runs over those K ranks. This is what torch.compile, torch.export and torch.jit.script see, and
what the ONNX exporter writes with NonMaxSuppression and TopK.

Semantics (the fork's DetectionOutputLayer::Forward_cpu; rows equal to the loop port's):
- boxes are decoded per loc class from the priors, or (RefineDet, 5 bottoms) from the priors
  refined by arm_loc; a prior whose ARM objectness is below objectness_score gets the scores
  [1, 0, 0, ...];
- per class other than the background: scores strictly above confidence_threshold, a stable
  descending sort (ties: lower prior index first), the first top_k, then greedy NMS: a box is
  kept when its IoU with every kept box is <= nms_threshold;
- an image with more than keep_top_k kept boxes keeps the keep_top_k best scores across its
  classes (ties: lower class, then earlier rank);
- rows [image, label, score, xmin, ymin, xmax, ymax], by image, then class, then rank; when the
  whole batch keeps nothing, one row [i, -1, -1, -1, -1, -1, -1] per image.
Adaptive NMS (eta < 1) changes the threshold as boxes are kept; it is not graph-friendly and
stays with box.nms (DetectionSettings.graph_friendly says which).
"""
import dataclasses
import json
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from protonet import box, caffe_pb2

FLT_MAX = float(np.finfo(np.float32).max)
# Per image, NMS scans groups of classes whose K x K suppression tests have at most this many
# booleans, and computes their overlaps in blocks of at most this many floats.
NMS_GREEDY_ELEMENTS = 1 << 28
NMS_BLOCK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class DetectionSettings:
    """A DetectionOutputParameter's decode settings (what the exported trunk needs beside it)."""

    num_classes: int
    share_location: bool = True
    background_label_id: int = 0
    code_type: int = box.CORNER
    variance_encoded_in_target: bool = False
    confidence_threshold: float = -FLT_MAX
    nms_threshold: float = 0.3
    top_k: int = -1
    keep_top_k: int = -1
    eta: float = 1.0
    objectness_score: float = 0.01
    clip: bool = False          # OpenCV's field: decoded boxes clamped to [0, 1] before NMS
    normalized: bool = True     # OpenCV's normalized_bbox: false: pixel priors and overlaps

    @classmethod
    def from_param(cls, p: caffe_pb2.DetectionOutputParameter) -> "DetectionSettings":
        return cls(
            num_classes=int(p.num_classes), share_location=bool(p.share_location),
            background_label_id=int(p.background_label_id), code_type=int(p.code_type),
            variance_encoded_in_target=bool(p.variance_encoded_in_target),
            confidence_threshold=float(p.confidence_threshold) if p.HasField("confidence_threshold") else -FLT_MAX,
            nms_threshold=float(p.nms_param.nms_threshold),
            top_k=int(p.nms_param.top_k) if p.nms_param.HasField("top_k") else -1,
            keep_top_k=int(p.keep_top_k), eta=float(p.nms_param.eta),
            objectness_score=float(p.objectness_score), clip=bool(p.clip), normalized=bool(p.normalized_bbox))

    @property
    def loc_classes(self) -> int:
        return 1 if self.share_location else self.num_classes

    @property
    def foreground(self) -> list:
        return [c for c in range(self.num_classes) if c != self.background_label_id]

    @property
    def graph_friendly(self) -> bool:
        """False for adaptive NMS (eta < 1), whose threshold depends on the boxes kept so far."""
        return self.eta >= 1.0

    def width(self, num_priors: int) -> int:
        """K: candidates ranked per (image, class)."""
        return num_priors if self.top_k < 0 else min(self.top_k, num_priors)

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["code_type"] = caffe_pb2.PriorBoxParameter.CodeType.Name(self.code_type)
        return json.dumps(d, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "DetectionSettings":
        """The settings of to_json's text (other keys, such as an export's sidecar adds, ignored)."""
        d = json.loads(text)
        d["code_type"] = caffe_pb2.PriorBoxParameter.CodeType.Value(d["code_type"])
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def decode_boxes(loc: Tensor, priors: Tensor, variances: Tensor, s: DetectionSettings,
                 arm_loc: Optional[Tensor] = None) -> Tensor:
    """loc [N, P*Lc*4] -> boxes [N, P, Lc, 4]; RefineDet decodes from the ARM-refined priors."""
    N, P = loc.shape[0], priors.shape[0]
    if arm_loc is not None:
        base = box.decode(arm_loc.reshape(N, P, 4).to(loc.dtype), priors, variances, s.code_type,
                          s.variance_encoded_in_target)[:, :, None]
    else:
        base = priors[:, None]
    boxes = box.decode(loc.reshape(N, P, s.loc_classes, 4), base, variances[:, None], s.code_type,
                       s.variance_encoded_in_target, s.normalized)
    return boxes.clamp(0.0, 1.0) if s.clip else boxes


def class_scores(conf: Tensor, num_priors: int, s: DetectionSettings, arm_conf: Optional[Tensor] = None) -> Tensor:
    """conf [N, P*C] -> [N, P, C]; RefineDet: priors the ARM finds empty score [1, 0, 0, ...]."""
    N, C = conf.shape[0], s.num_classes
    scores = conf.reshape(N, num_priors, C)
    if arm_conf is not None:
        empty = arm_conf.reshape(N, num_priors, 2)[..., 1] < s.objectness_score
        fake = torch.zeros(C, dtype=scores.dtype, device=scores.device)
        fake[0] = 1
        scores = torch.where(empty[..., None], fake, scores)
    return scores


def rank_candidates(scores: Tensor, threshold: float, width: int) -> Tuple[Tensor, Tensor]:
    """scores [N, P, F] -> (order [N*F, K]: per (image, class) row the prior indices by
    descending score, ties to the lower index, the first K; valid [N*F, K]: above the threshold).
    The valid ranks are a prefix of each row: the first min(top_k, count) of the fork's stable
    sort of the scores above the threshold."""
    N, P, F = scores.shape
    rows = scores.transpose(1, 2).reshape(N * F, P)
    if torch.jit.is_tracing():  # the tracer cannot record stable_topk_desc's bit view
        order = torch.sort(rows, dim=1, descending=True, stable=True).indices[:, :width]
    else:
        order = box.stable_topk_desc(rows, width, dim=1)
    return order, torch.gather(rows, 1, order) > threshold


def nms_keep(boxes: Tensor, valid: Tensor, nms_threshold: float, normalized: bool = True) -> Tensor:
    """Greedy NMS of ranked candidates boxes [N, F, K, 4], valid [N, F, K] (a prefix of each
    (image, class) row) -> keep [N, F, K]. Classes go in groups of bounded memory per image; the
    group counts follow F and K only, so the batch size stays free (dynamic in an export)."""
    N, F, K = valid.shape
    group = max(1, NMS_GREEDY_ELEMENTS // max(1, K * K))
    keep = []
    for f in range(0, F, group):
        v = valid[:, f:f + group]
        over = suppressors(boxes[:, f:f + group], v, nms_threshold, normalized)
        keep.append(greedy_keep(over, v.reshape(-1, K)).reshape(N, -1, K))
    return torch.cat(keep, dim=1)


def suppressors(boxes: Tensor, valid: Tensor, nms_threshold: float, normalized: bool = True) -> Tensor:
    """over [K, D, N*F]: over[k, j, r] when rank k would suppress the later rank j of row r
    (IoU above the threshold, j > k); rank-major, so that the greedy scan reads contiguous
    slices. D, the ranks any row holds, is a size from nonzero (no host read): the overlaps
    cost N*F*D*D, computed in class blocks of bounded memory per image."""
    N, F, K = valid.shape
    D = valid.any(dim=1).any(dim=0).nonzero().shape[0]
    thr = torch.tensor(nms_threshold, dtype=torch.float32)
    rank = torch.arange(D, device=boxes.device)
    later = rank[None, :] > rank[:, None]
    over = torch.zeros((K, D, N, F), dtype=torch.bool, device=boxes.device)
    block = max(1, NMS_BLOCK_ELEMENTS // max(1, K * K))
    for f in range(0, F, block):
        test = overlap_test(boxes[:, f:f + block, :D], thr, normalized)
        test &= later
        over[:D, :, :, f:f + block] = test.permute(2, 3, 0, 1)
    return over.view(K, D, N * F)


def overlap_test(boxes: Tensor, thr: Tensor, normalized: bool = True) -> Tensor:
    """IoU > thr for every pair of boxes [..., D, 4] -> [..., D, D]: box.iou's arithmetic step for
    step (the fork's JaccardOverlap bits), without its pass that turns 0/0 into 0 (NaN > thr is
    false as 0 is), in place where it can. normalized=False: pixel boxes (sizes count both ends)."""
    x1, y1, x2, y2 = (boxes[..., i].contiguous() for i in range(4))
    size = box.box_size(boxes, normalized)
    iw = torch.minimum(x2[..., None, :], x2[..., :, None])
    iw -= torch.maximum(x1[..., None, :], x1[..., :, None])
    ih = torch.minimum(y2[..., None, :], y2[..., :, None])
    ih -= torch.maximum(y1[..., None, :], y1[..., :, None])
    if not normalized:
        iw += 1
        ih += 1
    inter = iw.clamp_(min=0).mul_(ih.clamp_(min=0))
    union = size[..., None, :] + size[..., :, None]
    union -= inter
    return inter.div_(union) > thr


def greedy_keep(over: Tensor, valid: Tensor) -> Tensor:
    """Greedy suppression in rank order, all rows at once: rank k stays alive unless a kept
    earlier rank suppresses it; a kept rank suppresses its later overlaps. K steps (K from the
    shape) of two elementwise ops on [D, R] (over [K, D, R] from suppressors; valid [R, K])."""
    alive = valid.t().contiguous()
    head = alive[:over.shape[1]]
    hit = torch.empty_like(head)
    for k in range(alive.shape[0]):
        torch.logical_and(over[k], alive[k], out=hit)
        torch.gt(head, hit, out=head)  # alive and not hit
    return alive.t()


def limit_per_image(keep: Tensor, scores: Tensor, keep_top_k: int) -> Tensor:
    """keep [N, F, K]: an image with more than keep_top_k kept boxes keeps the keep_top_k best
    (stable: lower class, then earlier rank, on ties)."""
    if keep_top_k < 0:
        return keep
    N = keep.shape[0]
    flat_keep = keep.reshape(N, -1)
    count = flat_keep.sum(dim=1)
    k = min(keep_top_k, flat_keep.shape[1])
    chosen = torch.zeros_like(flat_keep)
    if k > 0:
        flat = torch.where(flat_keep, scores.reshape(N, -1), torch.full_like(scores.reshape(N, -1), float("-inf")))
        top = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]  # ties: lower index
        chosen.scatter_(1, top, torch.ones_like(top, dtype=torch.bool))
        chosen &= flat_keep
    return torch.where((count > keep_top_k)[:, None], chosen, flat_keep).reshape(keep.shape)


def gather_rows(keep: Tensor, order: Tensor, ranked: Tensor, boxes: Tensor, labels: Tensor,
                share_location: bool) -> Tensor:
    """[1, 1, D, 7] rows of the kept candidates (image, class, rank order); one [i, -1, ...] row
    per image when the batch keeps nothing. The row count is the only data-dependent size."""
    N, F, K = keep.shape
    flat = keep.reshape(N, F * K)
    nothing = ~flat.any()
    mask = torch.cat([flat, nothing.expand(N, 1)], dim=1)
    n, col = mask.nonzero(as_tuple=True)
    real = col < F * K
    col = col.clamp(max=max(F * K - 1, 0))
    ci, k = col // K, col % K
    j = order[n, ci, k]
    lab = labels[ci]
    loc_cls = torch.zeros_like(lab) if share_location else lab
    dtype = boxes.dtype
    rows = torch.cat([n[:, None].to(dtype), lab[:, None].to(dtype), ranked[n, ci, k][:, None].to(dtype),
                      boxes[n, j, loc_cls]], dim=1)
    placeholder = torch.cat([n[:, None].to(dtype), torch.full((n.shape[0], 6), -1.0, dtype=dtype,
                                                              device=boxes.device)], dim=1)
    return torch.where(real[:, None], rows, placeholder).view(1, 1, -1, 7)


def empty_rows(num: int, like: Tensor) -> Tensor:
    out = like.new_full((num, 7), -1.0)
    out[:, 0] = torch.arange(num, dtype=like.dtype, device=like.device)
    return out.view(1, 1, num, 7)


def detection_output(loc: Tensor, conf: Tensor, prior: Tensor, s: DetectionSettings,
                     arm_conf: Optional[Tensor] = None, arm_loc: Optional[Tensor] = None) -> Tensor:
    """DetectionOutput's top [1, 1, D, 7] from its bottoms, with tensor operations only."""
    N = loc.shape[0]
    P = prior.shape[-1] // 4
    pv = prior.detach().reshape(2, P, 4).to(loc.dtype)
    boxes = decode_boxes(loc, pv[0], pv[1], s, arm_loc)
    scores = class_scores(conf, P, s, arm_conf)
    classes = s.foreground
    K = s.width(P)
    if not classes or K == 0:
        return empty_rows(N, loc)
    labels = torch.tensor(classes, device=loc.device)
    if classes == list(range(classes[0], classes[-1] + 1)):
        picked = scores[:, :, classes[0]:classes[-1] + 1]  # a slice: no gather
    else:
        picked = scores.index_select(2, labels)
    F = len(classes)
    order, valid = rank_candidates(picked, s.confidence_threshold, K)
    order = order.view(N, F, K)
    image = torch.arange(N, device=loc.device)[:, None, None]
    ranked = picked[image, order, torch.arange(F, device=loc.device)[None, :, None]]
    if s.share_location:
        cand = boxes[:, :, 0][image, order]
    else:
        cand = boxes[image, order, labels[None, :, None]]
    keep = nms_keep(cand, valid.view(N, F, K), s.nms_threshold, s.normalized)
    keep = limit_per_image(keep, ranked, s.keep_top_k)
    return gather_rows(keep, order, ranked, boxes, labels, s.share_location)


def detection_output_adaptive(loc: Tensor, conf: Tensor, prior: Tensor, s: DetectionSettings,
                              arm_conf: Optional[Tensor] = None, arm_loc: Optional[Tensor] = None) -> Tensor:
    """The same rows through box.nms, whose work follows the number of candidates read on the
    host; it also runs adaptive NMS (eta < 1). Not graph-friendly."""
    N = loc.shape[0]
    P = prior.shape[-1] // 4
    pv = prior.detach().reshape(2, P, 4).to(loc.dtype)
    boxes = decode_boxes(loc, pv[0], pv[1], s, arm_loc)
    scores = class_scores(conf, P, s, arm_conf)
    classes = s.foreground
    if not classes:
        return empty_rows(N, loc)
    labels = torch.tensor(classes, device=loc.device)
    F = len(classes)
    picked = scores.index_select(2, labels)
    if s.share_location:
        row_boxes, box_rows = boxes[:, :, 0], torch.arange(N, device=loc.device).repeat_interleave(F)
    else:
        row_boxes, box_rows = boxes[:, :, labels].permute(0, 2, 1, 3).reshape(N * F, P, 4), None
    order, keep = box.nms(row_boxes, picked, s.confidence_threshold, s.nms_threshold, s.eta, s.top_k,
                          box_rows, classes_last=True, normalized=s.normalized)
    K = order.shape[1]
    if K == 0:
        return empty_rows(N, loc)
    order, keep = order.view(N, F, K), keep.view(N, F, K)
    ranked = picked[torch.arange(N, device=loc.device)[:, None, None], order,
                    torch.arange(F, device=loc.device)[None, :, None]]
    keep = limit_per_image(keep, ranked, s.keep_top_k)
    return gather_rows(keep, order, ranked, boxes, labels, s.share_location)


class DetectionDecoder(nn.Module):
    """detection_output as a module (what the layer calls and what the exporters write)."""

    def __init__(self, settings: DetectionSettings):
        super().__init__()
        self.settings = settings

    def forward(self, loc: Tensor, conf: Tensor, prior: Tensor, arm_conf: Optional[Tensor] = None,
                arm_loc: Optional[Tensor] = None) -> Tensor:
        run = detection_output if self.settings.graph_friendly else detection_output_adaptive
        return run(loc, conf, prior, self.settings, arm_conf, arm_loc)
