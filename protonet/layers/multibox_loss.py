"""MultiBoxLoss (SSD fork) and RefineDet's ODM variant, with the fork's ground-truth parsing.

All box arithmetic goes through protonet.box. Matching and mining work on the whole batch at
once: no Python loop over images or priors.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from protonet import box, caffe_pb2
from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import Layer, register

FLT_MIN = float(np.finfo(np.float32).tiny)
MBL = caffe_pb2.MultiBoxLossParameter
LOSS = caffe_pb2.LossParameter


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



@register("MultiBoxLoss")
class MultiBoxLossLayer(Layer):
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
        loc_s, conf_s, prior_s, label_s = self.bottom_shapes[:4]
        arm_conf_s, arm_loc_s = (self.bottom_shapes[4:] + [None, None])[:2]
        self.num_priors = box.check_head_shapes(self.where, loc_s, conf_s, prior_s, self.loc_classes,
                                                self.num_classes, arm_conf_s, arm_loc_s)
        if math.prod(label_s) % 8:
            raise ShapeError(f"{self.where}: label rows must have 8 values")
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
                return (torch.full((N, Lc, P), box.UNMATCHED, dtype=torch.long, device=loc.device),
                        overlap[:, None].expand(N, Lc, P))
            gl = torch.gather(gt_labels, 1, index.clamp(min=0))
            classes = torch.arange(Lc, device=loc.device)[None, :, None]
            by_class = index[:, None].expand(N, Lc, P)
            per_class = torch.where((by_class >= 0) & (gl[:, None] == classes),
                                    by_class, torch.full_like(by_class, box.UNMATCHED))
            if 0 <= self.background < Lc:
                per_class[:, self.background] = box.UNMATCHED
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
            index[:, self.background] = box.UNMATCHED
        return index, overlap

    def _loc_terms(self, loc, index, priors, variances, gt_boxes, box_priors):
        """(prediction, target) [M, 4] for every match, in the fork's encoding."""
        p = self.p
        N, Lc, P = index.shape
        matched = index >= 0
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
                n, _, j = (index >= 0).nonzero(as_tuple=True)
                per[n, j] = self._loc_loss_sum(pred.float(), target.float(), per_row=True)
                loss = loss + per
                eligible = has_gt[:, None].expand(N, P).clone()
            else:
                eligible = has_gt[:, None] & (idx == box.UNMATCHED) & (ov < p.neg_overlap)
            if arm_conf is not None:
                obj = arm_conf.detach().reshape(N, P, 2)[..., 1]
                eligible &= obj >= p.objectness_score
            n_elig = eligible.sum(dim=1)
            if self.mining == MBL.MAX_NEGATIVE:
                num_pos = (idx >= 0).sum(dim=1)
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
                idx = torch.where((idx >= 0) & ~selected, torch.full_like(idx, box.UNMATCHED), idx)
                index = idx[:, None]
            negatives = (idx == box.UNMATCHED) & selected
        return negatives, index

    def forward(self, loc, conf, prior, label, arm_conf=None, arm_loc=None):
        p = self.p
        N = loc.shape[0]
        P = self.num_priors
        C = self.num_classes
        priors, variances = box.split_priors(prior, P)
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
            matched_any = (index >= 0).any(dim=1)
            last = torch.where(index >= 0, index, torch.full_like(index, box.UNMATCHED)).flip(1)
            first_hit = (last >= 0).float().argmax(dim=1, keepdim=True)
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
            matched_any = index[:, 0] >= 0
        num_matches = int((index >= 0).sum())

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
