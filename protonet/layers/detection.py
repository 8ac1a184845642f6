"""Detection layers of the SSD/RefineDet fork: PriorBox, Normalize, Permute, DetectionOutput,
MultiBoxLoss, DetectionEvaluate.

All box arithmetic goes through protonet.box. MultiBoxLoss and DetectionOutput work on the whole
batch at once (matching, mining, NMS): no Python loop over images or priors.
"""
import json
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from protonet import box, caffe_pb2
from protonet.io.name_size import read_name_size
from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import Layer, register

FLT_MAX = float(np.finfo(np.float32).max)
FLT_MIN = float(np.finfo(np.float32).tiny)
MBL = caffe_pb2.MultiBoxLossParameter
LOSS = caffe_pb2.LossParameter

_f32 = np.float32


def _count(shape, start=1):
    return int(np.prod(shape[start:], dtype=np.int64))


# --------------------------------------------------------------------------------------------
# PriorBox


@register("PriorBox")
class PriorBox(Layer):
    """Prior boxes of one feature map: top [1, 2, H*W*num_priors*4] (boxes, then variances).

    Sizes are truncated to int as in the fork; the per-cell order is min, sqrt(min*max), then the
    aspect ratios (each flipped one right after its ratio), per min_size."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(2)
        p = param.prior_box_param
        where = f"layer {self.name} (PriorBox)"
        if len(p.min_size) == 0:
            raise ProtonetError(f"{where}: must provide min_size")
        if any(not 0 < m < math.inf for m in list(p.min_size) + list(p.max_size)):
            raise ProtonetError(f"{where}: min_size and max_size must be positive and finite")
        self.min_sizes = [int(_f32(m)) for m in p.min_size]
        ratios = [_f32(1.0)]
        for a in p.aspect_ratio:
            if not 0 < a < math.inf:
                raise ProtonetError(f"{where}: aspect_ratio {a:g} must be positive and finite")
            a = _f32(a)
            if any(abs(_f32(a - e)) < 1e-6 for e in ratios):
                continue
            ratios.append(a)
            if p.flip:
                ratios.append(_f32(1.0 / float(a)))
        self.aspect_ratios = ratios
        self.max_sizes = []
        if len(p.max_size) > 0:
            if len(p.max_size) != len(p.min_size):
                raise ProtonetError(f"{where}: max_size must be given once per min_size")
            for mn, mx in zip(p.min_size, p.max_size):
                if not mx > mn:
                    raise ProtonetError(f"{where}: max_size must be greater than min_size")
            self.max_sizes = [int(_f32(m)) for m in p.max_size]
        self.num_priors = len(ratios) * len(self.min_sizes) + len(self.max_sizes)
        if len(p.variance) > 1:
            if len(p.variance) != 4:
                raise ProtonetError(f"{where}: give 1 or 4 variances, got {len(p.variance)}")
        if any(not 0 < v < math.inf for v in p.variance):
            raise ProtonetError(f"{where}: variance must be positive and finite")
        self.variance = [float(v) for v in p.variance] or [0.1]
        if p.HasField("img_h") or p.HasField("img_w"):
            if p.HasField("img_size"):
                raise ProtonetError(f"{where}: give either img_size or img_h/img_w, not both")
            if p.img_h <= 0 or p.img_w <= 0:
                raise ProtonetError(f"{where}: img_h and img_w must be positive")
            self.img_h, self.img_w = p.img_h, p.img_w
        elif p.HasField("img_size"):
            if p.img_size <= 0:
                raise ProtonetError(f"{where}: img_size must be positive")
            self.img_h = self.img_w = p.img_size
        else:
            self.img_h = self.img_w = 0
        if p.HasField("step_h") or p.HasField("step_w"):
            if p.HasField("step"):
                raise ProtonetError(f"{where}: give either step or step_h/step_w, not both")
            if not (p.step_h > 0 and p.step_w > 0):
                raise ProtonetError(f"{where}: step_h and step_w must be positive")
            self.step_h, self.step_w = _f32(p.step_h), _f32(p.step_w)
        elif p.HasField("step"):
            if not p.step > 0:
                raise ProtonetError(f"{where}: step must be positive")
            self.step_h = self.step_w = _f32(p.step)
        else:
            self.step_h = self.step_w = _f32(0)
        self.offset = _f32(p.offset)
        self.clip = p.clip
        feat = self.bottom_shapes[0]
        if len(feat) < 2 or len(self.bottom_shapes[1]) < 2:
            raise ShapeError(f"{where}: bottoms need height and width axes")
        self.top_shapes = [(1, 2, feat[-1] * feat[-2] * self.num_priors * 4)]
        self._cache = {}

    def priors(self, layer_h, layer_w, img_h, img_w):
        """float32 numpy [2, layer_h*layer_w*num_priors*4], with the fork's float/double steps."""
        key = (layer_h, layer_w, img_h, img_w)
        if key in self._cache:
            return self._cache[key]
        if self.img_h and self.img_w:
            img_h, img_w = self.img_h, self.img_w
        if self.step_h == 0 or self.step_w == 0:
            step_w = _f32(_f32(img_w) / _f32(layer_w))
            step_h = _f32(_f32(img_h) / _f32(layer_h))
        else:
            step_w, step_h = self.step_w, self.step_h
        # Box sizes per cell: float32 as in the fork (the sqrt(min*max) one comes from double).
        widths, heights = [], []
        for s, m in enumerate(self.min_sizes):
            widths.append(_f32(m))
            heights.append(_f32(m))
            if self.max_sizes:
                v = _f32(math.sqrt(m * self.max_sizes[s]))
                widths.append(v)
                heights.append(v)
            for a in self.aspect_ratios:
                if abs(float(a) - 1.0) < 1e-6:
                    continue
                r = np.sqrt(a)  # float32 sqrt
                widths.append(_f32(_f32(m) * r))
                heights.append(_f32(_f32(m) / r))
        bw = np.array(widths, dtype=np.float32).astype(np.float64)
        bh = np.array(heights, dtype=np.float32).astype(np.float64)
        cx = ((np.arange(layer_w, dtype=np.float32) + self.offset) * step_w).astype(np.float32)
        cy = ((np.arange(layer_h, dtype=np.float32) + self.offset) * step_h).astype(np.float32)
        cx = cx.astype(np.float64)[None, :, None]
        cy = cy.astype(np.float64)[:, None, None]
        shape = (layer_h, layer_w, len(widths))
        coords = np.stack([
            np.broadcast_to((cx - bw / 2.0) / img_w, shape),
            np.broadcast_to((cy - bh / 2.0) / img_h, shape),
            np.broadcast_to((cx + bw / 2.0) / img_w, shape),
            np.broadcast_to((cy + bh / 2.0) / img_h, shape),
        ], axis=-1).astype(np.float32).reshape(-1)
        if self.clip:
            coords = np.clip(coords, 0.0, 1.0)
        var = np.array(self.variance * (4 if len(self.variance) == 1 else 1), dtype=np.float32)
        variances = np.broadcast_to(var, (coords.size // 4, 4)).reshape(-1)
        out = np.stack([coords, variances]).astype(np.float32)
        self._cache[key] = out
        return out

    def forward(self, feat, image):
        out = self.priors(feat.shape[-2], feat.shape[-1], image.shape[-2], image.shape[-1])
        dtype = feat.dtype if feat.dtype.is_floating_point else torch.float32
        return torch.from_numpy(out).to(device=feat.device, dtype=dtype).unsqueeze(0)


# --------------------------------------------------------------------------------------------
# Normalize


class _CaffeNormalize(torch.autograd.Function):
    """L2 normalisation with a learnt scale, with the fork's backward.

    The fork's bottom gradient is scale * (dy - x * <x, dy> / norm^2) / norm, which equals the
    true gradient only when the scale is shared (or equal across channels); it is kept here so
    that training gives Caffe's numbers."""

    @staticmethod
    def forward(ctx, x, scale, across_spatial, eps):
        n = x.shape[0]
        if across_spatial:
            norm = (x.reshape(n, -1).pow(2).sum(dim=1) + eps).sqrt().view((n,) + (1,) * (x.dim() - 1))
        else:
            norm = (x.pow(2).sum(dim=1, keepdim=True) + eps).sqrt()
        y = x / norm
        s = scale.view((1, -1) + (1,) * (x.dim() - 2)) if scale.dim() > 0 else scale
        y = y * s
        ctx.save_for_backward(x, scale, norm, y)
        ctx.across_spatial = across_spatial
        return y

    @staticmethod
    def backward(ctx, dy):
        x, scale, norm, y = ctx.saved_tensors
        n = x.shape[0]
        s = scale.view((1, -1) + (1,) * (x.dim() - 2)) if scale.dim() > 0 else scale
        grad_x = grad_scale = None
        if ctx.needs_input_grad[1]:
            yd = y * dy
            if scale.dim() == 0:
                grad_scale = yd.sum() / scale
            else:
                dims = [0] + list(range(2, x.dim()))
                grad_scale = yd.sum(dim=dims) / scale
        if ctx.needs_input_grad[0]:
            if ctx.across_spatial:
                a = (x * dy).reshape(n, -1).sum(dim=1).view(norm.shape)
            else:
                a = (x * dy).sum(dim=1, keepdim=True)
            grad_x = (dy - x * (a / norm / norm)) / norm * s
        return grad_x, grad_scale, None, None


@register("Normalize")
class Normalize(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        p = param.norm_param
        shape = self.bottom_shapes[0]
        if len(shape) < 2:
            raise ShapeError(f"layer {self.name} (Normalize): bottom needs at least 2 axes, got {shape}")
        self.across_spatial = p.across_spatial
        self.channel_shared = p.channel_shared
        self.eps = float(p.eps)
        if p.HasField("scale_filler"):
            filler = p.scale_filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=1.0)
        from protonet.net.fillers import fill

        blob_shape = () if self.channel_shared else (shape[1],)
        self.add_blob(fill(blob_shape, filler, where=f"layer {self.name} blob 0"))
        self.top_shapes = [shape]

    def forward(self, x):
        scale = self.blobs[0]
        if scale.dtype != x.dtype:
            scale = scale.to(x.dtype)
        return _CaffeNormalize.apply(x, scale, self.across_spatial, self.eps)


# --------------------------------------------------------------------------------------------
# Permute


@register("Permute")
class Permute(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        shape = self.bottom_shapes[0]
        axes = len(shape)
        order = []
        for o in param.permute_param.order:
            if o >= axes:
                raise ShapeError(f"layer {self.name} (Permute): order {o} must be less than the "
                                 f"number of axes {axes}")
            if o in order:
                raise ProtonetError(f"layer {self.name} (Permute): duplicate order {o}")
            order.append(int(o))
        order += [i for i in range(axes) if i not in order]
        self.order = order
        self.top_shapes = [tuple(shape[i] for i in order)]

    def forward(self, x):
        if self.order == list(range(x.dim())):
            return x
        return x.permute(*self.order).contiguous()


# --------------------------------------------------------------------------------------------
# Shared helpers for the loss and the output layer


def split_priors(prior, num_priors):
    """prior blob [1, 2, P*4] -> (boxes [P, 4], variances [P, 4]), both detached."""
    p = prior.detach().reshape(2, num_priors, 4)
    return p[0], p[1]


def ground_truth(label, num, num_classes, background_label_id, use_difficult_gt, where):
    """The fork's GetGroundTruth for a [.., 8]-row label blob, padded per image.

    Rows are [item_id, label, instance_id, xmin, ymin, xmax, ymax, difficult]; item -1 rows are
    skipped; with num_classes == 2 every label >= 2 becomes 1. Returns boxes [N, G, 4],
    labels [N, G], difficult [N, G], valid [N, G] (images beyond N are dropped)."""
    rows = label.detach().reshape(-1, 8)
    device = rows.device
    item = rows[:, 0].long()
    lab = rows[:, 1].long()
    keep = item != -1
    if num_classes == 2:
        lab = torch.where(lab >= 2, torch.ones_like(lab), lab)
    if bool((keep & (lab == background_label_id)).any()):
        raise ProtonetError(f"{where}: found background label {background_label_id} in the ground truth")
    difficult = rows[:, 7] != 0
    if not use_difficult_gt:
        keep &= ~difficult
    keep &= (item >= 0) & (item < num)
    item, lab, difficult, rows = item[keep], lab[keep], difficult[keep], rows[keep]
    order = torch.sort(item, stable=True).indices
    item, lab, difficult, rows = item[order], lab[order], difficult[order], rows[order]
    counts = torch.bincount(item, minlength=num)
    G = int(counts.max()) if item.numel() else 0
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(item.numel(), device=device) - starts[item]
    boxes = rows.new_zeros((num, G, 4))
    labels = torch.full((num, G), -1, dtype=torch.long, device=device)
    diff = torch.zeros((num, G), dtype=torch.bool, device=device)
    valid = torch.zeros((num, G), dtype=torch.bool, device=device)
    boxes[item, pos] = rows[:, 3:7]
    labels[item, pos] = lab
    diff[item, pos] = difficult
    valid[item, pos] = True
    return boxes, labels, diff, valid


# --------------------------------------------------------------------------------------------
# MultiBoxLoss


@register("MultiBoxLoss")
class MultiBoxLoss(Layer):
    """SSD's loss (4 bottoms: loc, conf, prior, label) and RefineDet's ODM loss (6 bottoms:
    + arm_conf, arm_loc). Matching and mining are constants of the step; the loss is built from
    the selected terms with autograd, which gives the fork's gradients."""

    is_loss = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(4, 6)
        p = param.multibox_loss_param
        self.where = f"layer {self.name} (MultiBoxLoss)"
        if not p.HasField("num_classes"):
            raise ProtonetError(f"{self.where}: must provide num_classes")
        self.p = p
        self.num_classes = int(p.num_classes)
        if self.num_classes < 1:
            raise ProtonetError(f"{self.where}: num_classes should not be less than 1")
        self.share_location = p.share_location
        self.loc_classes = 1 if self.share_location else self.num_classes
        self.background = int(p.background_label_id)
        self.mining = p.mining_type
        if p.HasField("do_neg_mining") and p.do_neg_mining != (self.mining != MBL.NONE):
            raise ProtonetError(f"{self.where}: do_neg_mining contradicts mining_type")
        if self.mining != MBL.NONE and not self.share_location:
            raise ProtonetError(f"{self.where}: negative mining needs share_location true")
        # Mining may first run NMS over the eligible boxes, scored by their loss.
        self.mining_nms = self.mining != MBL.NONE and p.HasField("nms_param") and p.nms_param.nms_threshold > 0
        if self.mining_nms and len(self.bottom_shapes) >= 5:
            # The fork indexes its objectness-filtered list with positions from the unfiltered one.
            raise ProtonetError(f"{self.where}: nms_param in mining together with arm_conf is not supported")
        if self.mining == MBL.HARD_EXAMPLE and p.sample_size <= 0:
            raise ProtonetError(f"{self.where}: sample_size must be positive for HARD_EXAMPLE")
        if p.map_object_to_agnostic:
            want = 2 if self.background >= 0 else 1
            if self.num_classes != want:
                raise ProtonetError(f"{self.where}: map_object_to_agnostic needs num_classes {want}")
        if p.conf_loss_type == MBL.SOFTMAX and not (0 <= self.background < self.num_classes):
            raise ProtonetError(f"{self.where}: background_label_id must be in [0, num_classes) for SOFTMAX")
        lp = param.loss_param
        if not lp.HasField("normalization") and lp.HasField("normalize"):
            self.normalization = LOSS.VALID if lp.normalize else LOSS.BATCH_SIZE
        else:
            self.normalization = lp.normalization
        pd = list(param.propagate_down)
        self.use_loc = pd[0] if pd else True
        self.use_conf = pd[1] if len(pd) > 1 else True
        label_s = self.bottom_shapes[3]
        self.num_priors = P = _check_loc_conf_prior(self)
        if _count(label_s, 0) % 8:
            raise ShapeError(f"{self.where}: label rows must have 8 values")
        if len(self.bottom_shapes) >= 5 and _count(self.bottom_shapes[4]) != P * 2:
            raise ShapeError(f"{self.where}: arm_conf must have {P * 2} values per image")
        if len(self.bottom_shapes) == 6 and _count(self.bottom_shapes[5]) != P * 4:
            raise ShapeError(f"{self.where}: arm_loc must have {P * 4} values per image")
        self.top_shapes = [()]

    # -- the step's constants ------------------------------------------------------------
    def _match(self, loc, priors, variances, gt_boxes, gt_labels, gt_valid, ref_priors):
        """match_index / match_overlap [N, Lc, P]."""
        p = self.p
        N, P = loc.shape[0], priors.shape[0]
        Lc = self.loc_classes
        if p.use_prior_for_matching:
            preds = ref_priors if ref_priors is not None else priors.expand(N, P, 4)
            ignored = box.is_cross_boundary(preds) if p.ignore_cross_boundary_bbox else None
            ov = box.iou(preds, gt_boxes)
            index, overlap = box.match(ov, gt_valid, p.match_type, p.overlap_threshold, ignored)
            if self.share_location:
                return index[:, None], overlap[:, None]
            if gt_labels.shape[1] == 0:
                return torch.full((N, Lc, P), -1, dtype=torch.long, device=loc.device), overlap[:, None].expand(N, Lc, P)
            gl = torch.gather(gt_labels, 1, index.clamp(min=0))
            classes = torch.arange(Lc, device=loc.device)[None, :, None]
            per_class = torch.where((index[:, None] > -1) & (gl[:, None] == classes),
                                    index[:, None].expand(N, Lc, P), torch.full_like(index[:, None].expand(N, Lc, P), -1))
            if 0 <= self.background < Lc:
                per_class[:, self.background] = -1
            return per_class, overlap[:, None].expand(N, Lc, P)
        # Match the decoded predictions of each loc class (only gts of that class unless shared).
        decoded = box.decode(loc.detach(), priors[:, None], variances[:, None], p.code_type,
                             p.encode_variance_in_target)  # [N, P, Lc, 4]
        decoded = decoded.permute(0, 2, 1, 3).reshape(N * Lc, P, 4)
        gts = gt_boxes[:, None].expand(N, Lc, *gt_boxes.shape[1:]).reshape(N * Lc, -1, 4)
        valid = gt_valid[:, None].expand(N, Lc, gt_valid.shape[1])
        if not self.share_location:
            classes = torch.arange(Lc, device=loc.device)[None, :, None]
            valid = valid & (gt_labels[:, None] == classes)
        valid = valid.reshape(N * Lc, -1)
        ignored = box.is_cross_boundary(decoded) if p.ignore_cross_boundary_bbox else None
        ov = box.iou(decoded, gts)
        index, overlap = box.match(ov, valid, p.match_type, p.overlap_threshold, ignored)
        index, overlap = index.view(N, Lc, P), overlap.view(N, Lc, P)
        if not self.share_location and 0 <= self.background < Lc:
            index[:, self.background] = -1
        return index, overlap

    def _loc_terms(self, loc, index, priors, variances, gt_boxes, box_priors):
        """(prediction, target) [M, 4] for every match, in the fork's encoding."""
        p = self.p
        N, Lc, P = index.shape
        matched = index > -1
        n, c, j = matched.nonzero(as_tuple=True)
        g = index[n, c, j]
        pred = loc.view(N, P, Lc, 4)[n, j, c]
        gt = gt_boxes[n, g]
        pri = box_priors[n, j] if box_priors.dim() == 3 else box_priors[j]
        var = variances[j]
        target = box.encode(gt, pri, var, p.code_type, p.encode_variance_in_target)
        if p.bp_inside:
            if p.use_prior_for_matching:
                where = pri
            else:
                where = box.decode(pred.detach(), pri, var, p.code_type, p.encode_variance_in_target)
            outside = (where < 0) | (where > 1)
            pred = torch.where(outside, target.to(pred.dtype), pred)
        if p.encode_variance_in_target:
            # The fork divides prediction and target by the variance but copies the gradient
            # back unscaled: the value is pred / var, the gradient that of pred.
            pred = pred + (pred / var - pred).detach()
            target = target / var
        return pred, target.to(pred.dtype)

    def _loc_loss_sum(self, pred, target, per_row=False):
        d = pred - target
        if self.p.loc_loss_type == MBL.SMOOTH_L1:
            a = d.abs()
            e = torch.where(a < 1, 0.5 * d * d, a - 0.5)
        elif self.p.loc_loss_type == MBL.L2:
            e = 0.5 * d * d
        else:
            raise ProtonetError(f"{self.where}: unknown loc_loss_type {self.p.loc_loss_type}")
        return e.sum(dim=-1) if per_row else e.sum()

    def _per_prior_conf_loss(self, conf, labels):
        """The fork's ComputeConfLoss: loss of every prior for its (matched or background) label."""
        if self.p.conf_loss_type == MBL.SOFTMAX:
            m = conf.amax(dim=-1, keepdim=True)
            e = torch.exp(conf - m)
            prob = torch.gather(e, -1, labels[..., None])[..., 0] / e.sum(dim=-1)
            return -torch.log(prob.clamp(min=FLT_MIN))
        target = F.one_hot(labels.clamp(min=0), self.num_classes).to(conf.dtype)
        target = torch.where(labels[..., None] >= 0, target, torch.zeros_like(target))
        return F.binary_cross_entropy_with_logits(conf, target, reduction="none").sum(dim=-1)

    def _mine(self, conf, loc, index, overlap, labels, has_gt, arm_conf, priors, variances, gt_boxes):
        """Negatives [N, P] and the (for HARD_EXAMPLE: thinned) match index."""
        p = self.p
        N, _, P = index.shape
        idx, ov = index[:, 0], overlap[:, 0]
        with torch.no_grad():
            loss = self._per_prior_conf_loss(conf.detach(), labels).float()
            if self.mining == MBL.HARD_EXAMPLE:
                pred, target = self._loc_terms(loc.detach(), index, priors, variances, gt_boxes, priors)
                per = torch.zeros((N, P), dtype=loss.dtype, device=loss.device)
                n, _, j = (index > -1).nonzero(as_tuple=True)
                per[n, j] = self._loc_loss_sum(pred.float(), target.float(), per_row=True)
                loss = loss + per
                eligible = has_gt[:, None].expand(N, P).clone()
            else:
                eligible = has_gt[:, None] & (idx == -1) & (ov < p.neg_overlap)
            if arm_conf is not None:
                obj = arm_conf.detach().reshape(N, P, 2)[..., 1]
                eligible &= obj >= p.objectness_score
            n_elig = eligible.sum(dim=1)
            if self.mining == MBL.MAX_NEGATIVE:
                num_pos = (idx > -1).sum(dim=1)
                quota = (num_pos.float() * torch.tensor(p.neg_pos_ratio, dtype=torch.float32)).long()
                num_sel = torch.minimum(quota, n_elig)
            else:
                num_sel = n_elig.clamp(max=int(p.sample_size))
            masked = torch.where(eligible, loss, torch.full_like(loss, float("-inf")))
            k = int(num_sel.max()) if N else 0
            selected = torch.zeros_like(eligible)
            if self.mining_nms:
                # The fork's ApplyNMS: loss-sorted, cut to nms_param.top_k (0 when unset), boxes
                # under 1e-5 dropped, then greedy suppression; the first num_sel survivors win.
                if p.use_prior_for_nms:
                    boxes = priors.expand(N, P, 4)
                else:
                    boxes = box.decode(loc.detach().view(N, P, 4), priors, variances, p.code_type,
                                       p.encode_variance_in_target)
                order, keep = box.nms(boxes, masked, float("-inf"), p.nms_param.nms_threshold,
                                      top_k=int(p.nms_param.top_k), min_size=1e-5)
                take = keep & (torch.cumsum(keep.long(), dim=1) <= num_sel[:, None])
                r, c = take.nonzero(as_tuple=True)
                selected[r, order[r, c]] = True
            elif k > 0:
                top = box.stable_topk_desc(masked, k, dim=1)
                take = torch.arange(k, device=top.device)[None, :] < num_sel[:, None]
                selected.scatter_(1, top, take)
            selected &= eligible
            if self.mining == MBL.HARD_EXAMPLE:
                idx = torch.where((idx > -1) & ~selected, torch.full_like(idx, -1), idx)
                index = idx[:, None]
            negatives = (idx == -1) & selected
        return negatives, index

    def forward(self, loc, conf, prior, label, arm_conf=None, arm_loc=None):
        p = self.p
        N = loc.shape[0]
        P = self.num_priors
        C = self.num_classes
        priors, variances = split_priors(prior, P)
        priors = priors.to(loc.dtype)
        variances = variances.to(loc.dtype)
        gt_boxes, gt_labels, _, gt_valid = ground_truth(
            label, N, C, self.background, p.use_difficult_gt, self.where)
        gt_boxes = gt_boxes.to(loc.dtype)
        has_gt = gt_valid.any(dim=1)
        loc_v = loc.reshape(N, P * self.loc_classes * 4)
        conf_v = conf.reshape(N, P, C)
        ref_priors = None
        if arm_loc is not None:
            # RefineDet: the ODM regresses from the priors refined by the ARM.
            ref_priors = box.decode(arm_loc.detach().reshape(N, P, 4).to(loc.dtype), priors, variances,
                                    p.code_type, p.encode_variance_in_target)
        with torch.no_grad():
            index, overlap = self._match(loc_v.detach().view(N, P, self.loc_classes, 4), priors, variances,
                                         gt_boxes, gt_labels, gt_valid, ref_priors)
            # Label of each prior for the confidence loss: the last loc class that matched it.
            matched_any = (index > -1).any(dim=1)
            last = torch.where(index > -1, index, torch.full_like(index, -1)).flip(1)
            first_hit = (last > -1).float().argmax(dim=1, keepdim=True)
            gidx = torch.gather(last, 1, first_hit)[:, 0]
            if p.map_object_to_agnostic:
                gl = torch.full_like(gidx, self.background + 1)
            else:
                gl = torch.gather(gt_labels, 1, gidx.clamp(min=0)) if gt_labels.shape[1] else gidx
            labels = torch.where(matched_any, gl, torch.full_like(gidx, self.background))
        negatives = None
        if self.mining != MBL.NONE:
            negatives, index = self._mine(conf_v, loc_v, index, overlap, labels, has_gt, arm_conf,
                                          priors, variances, gt_boxes)
            matched_any = index[:, 0] > -1
        num_matches = int((index > -1).sum())

        total = loc.new_zeros(())
        normalizer = self._normalizer(N, P, num_matches)
        if self.use_loc:
            if num_matches >= 1:
                box_priors = ref_priors if ref_priors is not None else priors
                pred, target = self._loc_terms(loc_v, index, priors, variances, gt_boxes, box_priors)
                loc_loss = self._loc_loss_sum(pred, target)
            else:
                loc_loss = loc.sum() * 0
            total = total + float(p.loc_weight) * loc_loss / normalizer
        if self.use_conf:
            total = total + self._conf_loss(conf_v, labels, matched_any, negatives) / normalizer
        return total

    def _conf_loss(self, conf, labels, positives, negatives):
        p = self.p
        N, P, C = conf.shape
        if negatives is not None:
            rows = positives | negatives
            if not bool(rows.any()):
                return conf.sum() * 0
            pred = conf[rows]
            lab = torch.where(positives, labels, torch.full_like(labels, self.background))[rows]
            is_pos = positives[rows]
        else:
            pred = conf.reshape(N * P, C)
            lab = labels.reshape(-1)
            is_pos = positives.reshape(-1)
        if p.conf_loss_type == MBL.SOFTMAX:
            nll = -torch.gather(F.log_softmax(pred, dim=-1), 1, lab[:, None])[:, 0]
            # Caffe clamps the probability at FLT_MIN in the value only (not in the gradient).
            nll = nll + (nll.clamp(max=-math.log(FLT_MIN)) - nll).detach()
            return nll.sum()
        if p.conf_loss_type == MBL.LOGISTIC:
            # The fork fills every target with the background id, then sets the 1s.
            target = torch.full_like(pred, float(self.background))
            rows = torch.arange(pred.shape[0], device=pred.device)
            target[rows[is_pos], lab[is_pos]] = 1.0
            if negatives is not None and 0 <= self.background < C:
                target[rows[~is_pos], self.background] = 1.0
            return F.binary_cross_entropy_with_logits(pred, target.detach(), reduction="sum")
        raise ProtonetError(f"{self.where}: unknown conf_loss_type {p.conf_loss_type}")

    def _normalizer(self, num, num_priors, num_matches):
        mode = self.normalization
        if mode == LOSS.FULL:
            value = num * num_priors
        elif mode == LOSS.VALID:
            value = num_matches
        elif mode == LOSS.BATCH_SIZE:
            value = num
        elif mode == LOSS.NONE:
            value = 1
        else:
            raise ProtonetError(f"{self.where}: unknown normalization {mode}")
        return float(max(1.0, float(value)))


# --------------------------------------------------------------------------------------------
# DetectionOutput


def _read_label_names(path, where):
    from protonet.io.prototxt import read_prototxt

    if not os.path.exists(path):
        raise ProtonetError(f"{where}: label map file {path} not found")
    label_map = read_prototxt(path, caffe_pb2.LabelMap)
    names, display = {}, {}
    for item in label_map.item:
        if item.label in names:
            raise ProtonetError(f"{path}: label {item.label} appears twice")
        names[item.label] = item.name
        display[item.label] = item.display_name
    return names, display


def _check_loc_conf_prior(layer):
    """The number of priors, after checking that loc and conf (bottoms 0, 1) fit the priors (bottom 2)."""
    loc_s, conf_s, prior_s = layer.bottom_shapes[:3]
    P = prior_s[-1] // 4 if len(prior_s) == 3 else _count(prior_s) // 8
    if _count(loc_s) != P * layer.loc_classes * 4:
        raise ShapeError(f"{layer.where}: loc has {_count(loc_s)} values per image, expected "
                         f"{P * layer.loc_classes * 4} for {P} priors")
    if _count(conf_s) != P * layer.num_classes:
        raise ShapeError(f"{layer.where}: conf has {_count(conf_s)} values per image, expected "
                         f"{P * layer.num_classes} for {P} priors")
    if loc_s[0] != conf_s[0]:
        raise ShapeError(f"{layer.where}: loc and conf have different batch sizes")
    return P


def _read_name_sizes(path, where):
    rows = read_name_size(path, where)
    return [name for name, _, _ in rows], [(h, w) for _, h, w in rows]


def output_box(b, size, resize_param=None):
    """The fork's OutputBBox: a normalised box [4] (numpy) to pixels of an image (height, width)."""
    height, width = size
    b = np.asarray(b, dtype=np.float32)
    if resize_param is not None and resize_param.resize_mode:
        rp = resize_param
        RP = caffe_pb2.ResizeParameter
        if rp.resize_mode == RP.WARP:
            pass
        elif rp.resize_mode == RP.FIT_LARGE_SIZE_AND_PAD:
            rh, rw = _f32(rp.height), _f32(rp.width)
            aspect = _f32(_f32(width) / _f32(height))
            if aspect > _f32(rw / rh):
                pad = _f32((rh - rw / aspect) / 2)
                src = np.array([0, pad / rh, 1, 1 - pad / rh], dtype=np.float32)
            else:
                pad = _f32((rw - rh * aspect) / 2)
                src = np.array([pad / rw, 0, 1 - pad / rw, 1], dtype=np.float32)
            if (b[0] >= src[2] or b[2] <= src[0] or b[1] >= src[3] or b[3] <= src[1]):
                b = b.copy()  # no projection: the fork keeps the box as it was
            else:
                sw, sh = src[2] - src[0], src[3] - src[1]
                b = np.array([(b[0] - src[0]) / sw, (b[1] - src[1]) / sh,
                              (b[2] - src[0]) / sw, (b[3] - src[1]) / sh], dtype=np.float32)
                b = np.clip(b, 0, 1)
        elif rp.resize_mode == RP.FIT_SMALL_SIZE:
            if rp.height_scale and rp.width_scale:
                b = b * np.array([rp.width_scale, rp.height_scale] * 2, dtype=np.float32)
                return np.clip(b, 0, np.array([width, height] * 2, dtype=np.float32))
    b = np.clip(b, 0, 1)
    return (b * np.array([width, height, width, height], dtype=np.float32)).astype(np.float32)


@register("DetectionOutput")
class DetectionOutput(Layer):
    """Decode, per-class NMS and keep_top_k for the whole batch; top [1, 1, N_kept, 7] rows
    [image, label, score, xmin, ymin, xmax, ymax]. With 5 bottoms (RefineDet) boxes are decoded
    from the ARM-refined priors and priors with ARM objectness < objectness_score count as
    background ([1, 0, 0, ...] scores)."""

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
        self.num_priors = P = _check_loc_conf_prior(self)
        if len(self.bottom_shapes) >= 4 and _count(self.bottom_shapes[3]) != P * 2:
            raise ShapeError(f"{self.where}: arm_conf must have {P * 2} values per image")
        if len(self.bottom_shapes) == 5 and _count(self.bottom_shapes[4]) != P * 4:
            raise ShapeError(f"{self.where}: arm_loc must have {P * 4} values per image")
        if p.visualize:
            raise ProtonetError(f"{self.where}: visualize is not supported (use `protonet detect`)")
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
        if sp.HasField("label_map_file") and sp.label_map_file:
            self.label_to_name, _ = _read_label_names(sp.label_map_file, self.where)
        else:
            self.need_save = False
        if sp.HasField("name_size_file") and sp.name_size_file:
            self.names, self.sizes = _read_name_sizes(sp.name_size_file, self.where)
            self.num_test_image = sp.num_test_image if sp.HasField("num_test_image") else len(self.names)
            if self.num_test_image > len(self.names):
                raise ProtonetError(f"{self.where}: num_test_image {self.num_test_image} exceeds the "
                                    f"{len(self.names)} names in {sp.name_size_file}")
        else:
            self.need_save = False
        if self.need_save and self.num_test_image == 0:
            self.need_save = False
        if self.need_save and self.output_format not in ("VOC", "COCO", "ILSVRC"):
            raise ProtonetError(f"{self.where}: unknown output_format '{self.output_format}'")
        self.resize_param = sp.resize_param if sp.HasField("resize_param") else None
        if self.need_save:
            os.makedirs(self.output_directory, exist_ok=True)
        self.name_count = 0
        self.saved = []  # (image name, label, score, [xmin, ymin, xmax, ymax] pixels rounded)

    def _save(self, rows):
        """Accumulate one batch; write the files when num_test_image images are done."""
        if self.name_count % self.num_test_image == 0 and self.output_format == "VOC":
            for label, name in self.label_to_name.items():
                if label != self.background:
                    open(os.path.join(self.output_directory, self.output_name_prefix + name + ".txt"), "w").close()
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
                b = output_box(r[3:7], self.sizes[self.name_count], self.resize_param)
                b = [float(np.round(v * 100) / 100.0) for v in b.astype(np.float64)]
                xywh = [b[0], b[1], round((b[2] - b[0]) * 100) / 100.0, round((b[3] - b[1]) * 100) / 100.0]
                self.saved.append((self.names[self.name_count], label, float(r[2]), xywh))
            self.name_count += 1
            if self.name_count % self.num_test_image == 0:
                self._write_files()
                self.name_count = 0
                self.saved = []

    def _write_files(self):
        d, prefix = self.output_directory, self.output_name_prefix
        if self.output_format == "VOC":
            files = {}
            for c in range(self.num_classes):
                if c == self.background:
                    continue
                name = self.label_to_name.get(c)
                if name is None:
                    raise ProtonetError(f"{self.where}: cannot find label {c} in the label map")
                files[c] = open(os.path.join(d, prefix + name + ".txt"), "w")
            try:
                for image, label, score, (x, y, w, h) in self.saved:
                    if label not in files:
                        continue
                    xi, yi, wi, hi = int(x), int(y), int(w), int(h)
                    files[label].write(f"{image} {score:g} {xi} {yi} {xi + wi} {yi + hi}\n")
            finally:
                for f in files.values():
                    f.close()
        elif self.output_format == "COCO":
            dets = []
            for image, label, score, bbox in self.saved:
                name = self.label_to_name[label]
                dets.append({"image_id": _json_scalar(image), "category_id": _json_scalar(name),
                             "bbox": [float(_f32(v)) for v in bbox], "score": float(_f32(score))})
            with open(os.path.join(d, prefix + ".json"), "w") as f:
                json.dump(dets, f, indent=4)
                f.write("\n")
        else:  # ILSVRC
            with open(os.path.join(d, prefix + ".txt"), "w") as f:
                for image, label, score, (x, y, w, h) in self.saved:
                    xi, yi, wi, hi = int(x), int(y), int(w), int(h)
                    f.write(f"{image} {label} {score:g} {xi} {yi} {xi + wi} {yi + hi}\n")

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
        priors, variances = split_priors(prior, P)
        priors, variances = priors.to(loc.dtype), variances.to(loc.dtype)
        if arm_loc is not None:
            base = box.decode(arm_loc.reshape(N, P, 4).to(loc.dtype), priors, variances,
                              p.code_type, p.variance_encoded_in_target)[:, :, None]
        else:
            base = priors[:, None]
        boxes = box.decode(loc.reshape(N, P, Lc, 4), base, variances[:, None], p.code_type,
                           p.variance_encoded_in_target)  # [N, P, Lc, 4]
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
                              self.eta, self.top_k, box_rows, classes_last=True)
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


def _json_scalar(text):
    """The fork writes names that look like numbers as JSON numbers."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


# --------------------------------------------------------------------------------------------
# DetectionEvaluate


@register("DetectionEvaluate")
class DetectionEvaluate(Layer):
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
        self.sizes = []
        if p.HasField("name_size_file"):
            _, self.sizes = _read_name_sizes(p.name_size_file, self.where)
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
                    g_boxes = np.stack([output_box(b, size, self.resize_param) for b in g_boxes])
                visited = [False] * len(gt_here)
                for s, b in found:
                    if not normalized:
                        b = output_box(b, size, self.resize_param)
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
