"""MultiBoxLoss options the goldens do not cover, against a per-image, per-prior port of the
fork's FindMatches / MineHardExamples / Encode*Prediction; gradcheck with matching fixed."""
import math

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from protonet import box, caffe_pb2
from protonet.layers.base import NetContext
from protonet.layers.multibox_loss import MultiBoxLossLayer
from protonet.layers.priorbox import PriorBoxLayer
from test_box import ref_match

MBL = caffe_pb2.MultiBoxLossParameter
FLT_MIN = float(np.finfo(np.float32).tiny)


def priors_for(maps=((4, 8, 16, [2.0]), (2, 16, 28, [2.0, 3.0])), image=32):
    out = []
    for size, mn, mx, ars in maps:
        param = caffe_pb2.LayerParameter(name="pb", type="PriorBox")
        p = param.prior_box_param
        p.min_size.append(mn)
        p.max_size.append(mx)
        p.aspect_ratio.extend(ars)
        p.flip = True
        p.variance.extend([0.1, 0.1, 0.2, 0.2])
        layer = PriorBoxLayer(param, [(1, 1, size, size), (1, 3, image, image)], NetContext())
        out.append(layer.priors(size, size, image, image))
    return torch.from_numpy(np.concatenate(out, axis=1))[None]


def make_label(gen, num, per_image, num_classes, difficult_every=0):
    rows = []
    for i, n in enumerate(per_image):
        for k in range(n):
            xy = gen.uniform(0.0, 0.7, 2)
            wh = gen.uniform(0.1, 0.35, 2)
            diff = 1 if difficult_every and (len(rows) % difficult_every == 1) else 0
            rows.append([i, gen.integers(1, num_classes), k, xy[0], xy[1], xy[0] + wh[0], xy[1] + wh[1], diff])
    rows.append([-1, 0, 0, 0, 0, 0, 0, 0])  # padding row
    return torch.tensor(rows, dtype=torch.float32).view(1, 1, -1, 8)


def layer_param(text, num_classes):
    param = caffe_pb2.LayerParameter(name="mbox_loss", type="MultiBoxLoss")
    text_format.Merge(text, param)
    param.multibox_loss_param.num_classes = num_classes
    return param


# ---------------------------------------------------------------------------------------------
# The reference: the fork's loops, image by image and prior by prior.


def ref_loss(param, loc, conf, prior, label, arm_conf=None, arm_loc=None):
    p = param.multibox_loss_param
    N = loc.shape[0]
    P = prior.shape[2] // 4
    C = p.num_classes
    share = p.share_location
    Lc = 1 if share else C
    bg = p.background_label_id
    pri = prior[0, 0].view(P, 4).double()
    var = prior[0, 1].view(P, 4).double()
    locv = loc.view(N, P, Lc, 4)
    confv = conf.view(N, P, C)
    gts = {}
    for r in label.view(-1, 8).tolist():
        if int(r[0]) == -1:
            continue
        lab = int(r[1])
        if C == 2 and lab >= 2:
            lab = 1
        if not p.use_difficult_gt and r[7]:
            continue
        gts.setdefault(int(r[0]), []).append((lab, r[3:7]))
    refined = None
    if arm_loc is not None:
        refined = box.decode(arm_loc.view(N, P, 4).double(), pri, var, p.code_type, p.encode_variance_in_target)
    all_maps = []
    for i in range(N):
        maps = {}
        if i in gts:
            g_boxes = [b for _, b in gts[i]]
            g_labels = [lab for lab, _ in gts[i]]
            if p.use_prior_for_matching:
                preds = (refined[i] if refined is not None else pri).float().numpy()
                ign = [bool(box.is_cross_boundary(torch.from_numpy(b))) and p.ignore_cross_boundary_bbox
                       for b in preds]
                idx, ov = ref_match(g_boxes, list(preds), p.match_type, np.float32(p.overlap_threshold), ign)
                if share:
                    maps[-1] = (idx, ov)
                else:
                    for c in range(Lc):
                        if c != bg:
                            maps[c] = ([g if g > -1 and g_labels[g] == c else -1 for g in idx], ov)
            else:
                for c in range(Lc):
                    lab = -1 if share else c
                    if not share and lab == bg:
                        continue
                    dec = box.decode(locv[i, :, c].detach().double(), pri, var, p.code_type,
                                     p.encode_variance_in_target).float().numpy()
                    keep = [g for g in range(len(g_boxes)) if lab == -1 or g_labels[g] == lab]
                    ign = [bool(box.is_cross_boundary(torch.from_numpy(b))) and p.ignore_cross_boundary_bbox
                           for b in dec]
                    idx, ov = ref_match([g_boxes[g] for g in keep], list(dec), p.match_type,
                                        np.float32(p.overlap_threshold), ign)
                    maps[lab] = ([keep[g] if g > -1 else g for g in idx], ov)
        all_maps.append(maps)

    def conf_label(i, j):
        lab = bg
        for m in all_maps[i].values():
            if m[0][j] > -1:
                lab = gts[i][m[0][j]][0]
                break
        return lab

    def loc_term(i, lab_key, j, base):
        g = all_maps[i][lab_key][0][j]
        gt = torch.tensor(gts[i][g][1], dtype=torch.float64)
        c = 0 if share else lab_key
        prior_j = base[i][j] if base is not None else pri[j]
        target = box.encode(gt, prior_j, var[j], p.code_type, p.encode_variance_in_target)
        pred = locv[i, j, c]
        if p.bp_inside:
            where = prior_j if p.use_prior_for_matching else box.decode(
                pred.detach(), prior_j, var[j], p.code_type, p.encode_variance_in_target)
            pred = torch.stack([target[k] if (where[k] < 0 or where[k] > 1) else pred[k] for k in range(4)])
        if p.encode_variance_in_target:
            pred = pred + (pred / var[j] - pred).detach()
            target = target / var[j]
        d = pred - target
        if p.loc_loss_type == MBL.SMOOTH_L1:
            return sum(0.5 * x * x if abs(float(x.detach())) < 1 else x.abs() - 0.5 for x in d)
        return sum(0.5 * x * x for x in d)

    negatives = [[] for _ in range(N)]
    if p.mining_type != MBL.NONE:
        for i in range(N):
            if -1 not in all_maps[i]:
                continue
            idx, ov = all_maps[i][-1]
            losses = []
            for j in range(P):
                lab = conf_label(i, j)
                x = confv[i, j].detach().double()
                if p.conf_loss_type == MBL.SOFTMAX:
                    prob = float(torch.softmax(x, 0)[lab])
                    cl = -math.log(max(prob, FLT_MIN))
                else:
                    t = torch.zeros(C, dtype=torch.float64)
                    t[lab] = 1
                    cl = float(torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="sum"))
                if p.mining_type == MBL.HARD_EXAMPLE and idx[j] > -1:
                    cl += float(loc_term(i, -1, j, None).detach())
                losses.append(cl)
            elig = []
            for j in range(P):
                if p.mining_type == MBL.MAX_NEGATIVE:
                    ok = idx[j] == -1 and ov[j] < np.float32(p.neg_overlap)
                else:
                    ok = True
                if ok and arm_conf is not None:
                    ok = float(arm_conf.view(N, P, 2)[i, j, 1]) >= np.float32(p.objectness_score)
                if ok:
                    elig.append(j)
            if p.mining_type == MBL.MAX_NEGATIVE:
                num_pos = sum(1 for g in idx if g > -1)
                num_sel = min(int(np.float32(num_pos) * np.float32(p.neg_pos_ratio)), len(elig))
            else:
                num_sel = min(p.sample_size, len(elig))
            if p.HasField("nms_param") and p.nms_param.nms_threshold > 0:
                if p.use_prior_for_nms:
                    boxes = pri.float()
                else:
                    boxes = box.decode(locv[i, :, 0].detach().double(), pri, var, p.code_type,
                                       p.encode_variance_in_target).float()
                kept = ref_old_nms(boxes, elig, losses, p.nms_param.nms_threshold, p.nms_param.top_k)
                sel = set(kept[:min(len(kept), num_sel)])
            else:
                ranked = sorted(elig, key=lambda j: -losses[j])  # stable
                sel = set(ranked[:num_sel])
            new_idx = list(idx)
            for j in range(P):
                if idx[j] > -1:
                    if p.mining_type == MBL.HARD_EXAMPLE and j not in sel:
                        new_idx[j] = -1
                elif idx[j] == -1 and j in sel:
                    negatives[i].append(j)
            all_maps[i][-1] = (new_idx, ov)

    num_matches = sum(1 for maps in all_maps for m in maps.values() for g in m[0] if g > -1)
    loc_loss = loc.sum() * 0
    for i in range(N):
        for key in sorted(all_maps[i]):
            for j, g in enumerate(all_maps[i][key][0]):
                if g > -1:
                    loc_loss = loc_loss + loc_term(i, key, j, refined)
    conf_loss = conf.sum() * 0
    rows = []
    for i in range(N):
        if p.mining_type != MBL.NONE:
            if i not in gts:
                continue
            rows += [(i, j, conf_label(i, j), True) for j in range(P) if conf_label(i, j) != bg or
                     any(m[0][j] > -1 for m in all_maps[i].values())]
            rows += [(i, j, bg, False) for j in negatives[i]]
        else:
            rows += [(i, j, conf_label(i, j) if i in gts else bg, i in gts and any(
                m[0][j] > -1 for m in all_maps[i].values())) for j in range(P)]
    for i, j, lab, pos in rows:
        x = confv[i, j]
        if p.conf_loss_type == MBL.SOFTMAX:
            conf_loss = conf_loss - torch.log_softmax(x, 0)[lab]
        else:
            t = torch.full((C,), float(bg), dtype=x.dtype)
            if pos:
                t[lab] = 1
            elif p.mining_type != MBL.NONE:
                t[bg] = 1
            conf_loss = conf_loss + torch.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="sum")
    norm = {caffe_pb2.LossParameter.FULL: N * P, caffe_pb2.LossParameter.VALID: num_matches,
            caffe_pb2.LossParameter.BATCH_SIZE: N, caffe_pb2.LossParameter.NONE: 1}[param.loss_param.normalization]
    norm = max(1.0, float(norm))
    return p.loc_weight * loc_loss / norm + conf_loss / norm


def ref_old_nms(boxes, candidates, losses, threshold, top_k):
    """The fork's ApplyNMS (used by hard mining): stable sort, top_k, small boxes erased."""
    from test_box import ref_iou, ref_size

    order = sorted(candidates, key=lambda j: -losses[j])
    if top_k > -1:
        order = order[:top_k]
    b = boxes.numpy()
    kept = []
    while order:
        best = order.pop(0)
        if ref_size(b[best]) < 1e-5:
            continue
        kept.append(best)
        if top_k > -1 and len(kept) >= top_k:
            break
        order = [j for j in order if ref_size(b[j]) >= 1e-5 and not ref_iou(b[best], b[j]) > np.float32(threshold)]
    return kept


BASE = ("multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX share_location: true "
        "match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true background_label_id: 0 "
        "use_difficult_gt: true mining_type: MAX_NEGATIVE neg_pos_ratio: 3 neg_overlap: 0.5 code_type: CENTER_SIZE "
        "%s } loss_param { normalization: %s }")

CASES = {
    "logistic_max_negative": ("conf_loss_type: LOGISTIC", "VALID", 5),
    "bipartite_no_mining": ("match_type: BIPARTITE mining_type: NONE", "VALID", 5),
    "logistic_no_mining_full": ("conf_loss_type: LOGISTIC mining_type: NONE", "FULL", 4),
    "hard_example": ("mining_type: HARD_EXAMPLE sample_size: 20 loc_loss_type: L2", "VALID", 5),
    "no_share_location": ("share_location: false mining_type: NONE", "BATCH_SIZE", 4),
    "no_share_match_predictions": ("share_location: false mining_type: NONE use_prior_for_matching: false "
                                   "overlap_threshold: 0.3", "NONE", 3),
    "match_predictions": ("use_prior_for_matching: false overlap_threshold: 0.3 code_type: CORNER", "VALID", 5),
    "cross_boundary_bp_inside": ("ignore_cross_boundary_bbox: true bp_inside: true code_type: CORNER_SIZE",
                                 "VALID", 5),
    "variance_in_target": ("encode_variance_in_target: true neg_pos_ratio: 2.5", "VALID", 5),
    "no_difficult_loc_weight": ("use_difficult_gt: false loc_weight: 0.7", "VALID", 5),
    "arm_two_classes": ("", "VALID", 2),
    "mining_nms_decoded": ("nms_param { nms_threshold: 0.5 top_k: 40 }", "VALID", 5),
    "mining_nms_priors_hard": ("mining_type: HARD_EXAMPLE sample_size: 15 use_prior_for_nms: true "
                               "nms_param { nms_threshold: 0.3 top_k: 60 }", "VALID", 5),
    "mining_nms_no_top_k": ("nms_param { nms_threshold: 0.5 }", "VALID", 5),
}


def make_inputs(case, seed=0, dtype=torch.float32):
    options, norm, num_classes = CASES[case]
    param = layer_param(BASE % (options, norm), num_classes)
    gen = np.random.default_rng(seed)
    prior = priors_for()
    P = prior.shape[2] // 4
    N = 3
    Lc = 1 if param.multibox_loss_param.share_location else num_classes
    label = make_label(gen, N, [3, 0, 4], 5 if case == "arm_two_classes" else num_classes,
                       difficult_every=3 if "difficult" in case else 0)
    loc = torch.tensor(gen.normal(0, 0.5, (N, P * Lc * 4)), dtype=dtype)
    conf = torch.tensor(gen.normal(0, 1.5, (N, P * num_classes)), dtype=dtype)
    return param, loc, conf, prior, label


@pytest.mark.parametrize("case", sorted(CASES))
def test_multibox_loss_equals_reference(case):
    param, loc, conf, prior, label = make_inputs(case)
    layer = MultiBoxLossLayer(param, [tuple(loc.shape), tuple(conf.shape), tuple(prior.shape), tuple(label.shape)],
                              NetContext(phase=caffe_pb2.TRAIN))
    loc.requires_grad_(True)
    conf.requires_grad_(True)
    loss = layer(loc, conf, prior, label)
    loss.backward()
    g_loc, g_conf = loc.grad.clone(), conf.grad.clone()
    loc64 = loc.detach().double().requires_grad_(True)
    conf64 = conf.detach().double().requires_grad_(True)
    ref = ref_loss(param, loc64, conf64, prior, label)
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(g_loc.double(), loc64.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_conf.double(), conf64.grad, rtol=1e-5, atol=1e-6)


def test_refinedet_odm_equals_reference():
    param, loc, conf, prior, label = make_inputs("logistic_max_negative")
    param.multibox_loss_param.conf_loss_type = MBL.SOFTMAX
    param.multibox_loss_param.objectness_score = 0.3
    gen = np.random.default_rng(5)
    N, P = loc.shape[0], prior.shape[2] // 4
    arm_conf = torch.softmax(torch.tensor(gen.normal(0, 2, (N, P, 2)), dtype=torch.float32), -1).view(N, -1)
    arm_loc = torch.tensor(gen.normal(0, 0.3, (N, P * 4)), dtype=torch.float32)
    shapes = [tuple(t.shape) for t in (loc, conf, prior, label, arm_conf, arm_loc)]
    layer = MultiBoxLossLayer(param, shapes, NetContext(phase=caffe_pb2.TRAIN))
    loc.requires_grad_(True)
    conf.requires_grad_(True)
    loss = layer(loc, conf, prior, label, arm_conf, arm_loc)
    loss.backward()
    loc64 = loc.detach().double().requires_grad_(True)
    conf64 = conf.detach().double().requires_grad_(True)
    ref = ref_loss(param, loc64, conf64, prior, label, arm_conf, arm_loc)
    ref.backward()
    assert float(loss.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)
    torch.testing.assert_close(loc.grad.double(), loc64.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(conf.grad.double(), conf64.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["logistic_max_negative", "bipartite_no_mining", "hard_example",
                                  "no_share_location", "cross_boundary_bp_inside"])
def test_multibox_loss_gradcheck(case):
    """float64 gradcheck w.r.t. loc and conf; matching and mining are fixed by the inputs (the
    small perturbations of gradcheck do not change them)."""
    param, loc, conf, prior, label = make_inputs(case, seed=1, dtype=torch.float64)
    layer = MultiBoxLossLayer(param, [tuple(loc.shape), tuple(conf.shape), tuple(prior.shape), tuple(label.shape)],
                              NetContext(phase=caffe_pb2.TRAIN))
    loc.requires_grad_(True)
    conf.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: layer(a, b, prior, label), (loc, conf), eps=1e-6, atol=1e-5,
                                    fast_mode=True)


def test_variance_in_target_gradient_is_the_forks():
    """With encode_variance_in_target the fork divides prediction and target by the variance
    but copies the gradient back unscaled; protonet keeps that (a documented Caffe quirk)."""
    param, loc, conf, prior, label = make_inputs("variance_in_target", seed=2, dtype=torch.float64)
    layer = MultiBoxLossLayer(param, [tuple(loc.shape), tuple(conf.shape), tuple(prior.shape), tuple(label.shape)],
                              NetContext(phase=caffe_pb2.TRAIN))
    loc.requires_grad_(True)
    layer(loc, conf, prior, label).backward()
    g = loc.grad.view(-1)
    var = prior[0, 1].double().repeat(3)  # per loc element (share_location: 4 per prior)
    picked = (g.abs() > 1e-4).nonzero()[:6, 0]
    assert picked.numel() > 0
    for k in picked.tolist():
        step = torch.zeros_like(loc).view(-1)
        step[k] = 1e-6
        plus = float(layer(loc.detach() + step.view_as(loc), conf, prior, label))
        minus = float(layer(loc.detach() - step.view_as(loc), conf, prior, label))
        numeric = (plus - minus) / 2e-6
        # The true derivative is the fork's gradient divided by the variance.
        assert numeric == pytest.approx(float(g[k] / var[k]), rel=1e-4)


def test_num_classes_two_maps_labels_and_errors():
    param, loc, conf, prior, label = make_inputs("arm_two_classes")
    shapes = [tuple(t.shape) for t in (loc, conf, prior, label)]
    layer = MultiBoxLossLayer(param, shapes, NetContext(phase=caffe_pb2.TRAIN))
    assert torch.isfinite(layer(loc, conf, prior, label))
    bad = label.clone()
    bad[0, 0, 0, 1] = 0  # background label in the ground truth
    with pytest.raises(Exception, match="background label"):
        layer(loc, conf, prior, bad)


def test_shape_errors_name_the_layer():
    from protonet.errors import ShapeError

    param, loc, conf, prior, label = make_inputs("logistic_max_negative")
    with pytest.raises(ShapeError, match="mbox_loss"):
        MultiBoxLossLayer(param, [(3, 8), tuple(conf.shape), tuple(prior.shape), tuple(label.shape)], NetContext())
    param.multibox_loss_param.share_location = False
    from protonet.errors import ProtonetError

    with pytest.raises(ProtonetError, match="share_location"):
        MultiBoxLossLayer(param, [tuple(loc.shape), tuple(conf.shape), tuple(prior.shape), tuple(label.shape)],
                          NetContext())


def test_propagate_down_false_drops_the_term():
    param, loc, conf, prior, label = make_inputs("logistic_max_negative")
    shapes = [tuple(t.shape) for t in (loc, conf, prior, label)]
    full = MultiBoxLossLayer(param, shapes, NetContext())(loc, conf, prior, label)
    param.propagate_down.extend([True, False, False, False])
    only_loc = MultiBoxLossLayer(param, shapes, NetContext())(loc, conf, prior, label)
    del param.propagate_down[:]
    param.propagate_down.extend([False, True, False, False])
    only_conf = MultiBoxLossLayer(param, shapes, NetContext())(loc, conf, prior, label)
    assert float(only_loc) + float(only_conf) == pytest.approx(float(full), rel=1e-6)
    assert float(only_loc) > 0 and float(only_conf) > 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_without_any_ground_truth(case):
    """Only padding rows in the label blob: MAX_NEGATIVE/HARD_EXAMPLE give 0, NONE the
    background loss of every prior, as the fork."""
    param, loc, conf, prior, _ = make_inputs(case)
    empty = torch.tensor([[-1, 0, 0, 0, 0, 0, 0, 0]], dtype=torch.float32).view(1, 1, 1, 8)
    layer = MultiBoxLossLayer(param, [tuple(t.shape) for t in (loc, conf, prior, empty)], NetContext())
    loc.requires_grad_(True)
    conf.requires_grad_(True)
    loss = layer(loc, conf, prior, empty)
    loss.backward()
    ref = ref_loss(param, loc.detach().double(), conf.detach().double(), prior, empty)
    assert float(loss.detach()) == pytest.approx(float(ref), rel=1e-5, abs=1e-6)
    assert float(loc.grad.abs().sum()) == 0
