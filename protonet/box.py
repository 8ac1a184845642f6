"""Box math with the SSD/RefineDet Caffe fork's semantics, vectorised over the batch.

Boxes are tensors whose last axis is [xmin, ymin, xmax, ymax]. Every function broadcasts over
leading axes, so one call serves a whole batch (and runs where the tensors live: CPU or CUDA).
Where Caffe's float arithmetic has a visible quirk (the size of an inverted box is 0, IoU needs
a strictly positive intersection, scores pass a threshold with a strict '>'), it is kept here.
"""
import numpy as np
import torch

from protonet import caffe_pb2
from protonet.errors import PriorCountError, ShapeError

CORNER = caffe_pb2.PriorBoxParameter.CORNER
CENTER_SIZE = caffe_pb2.PriorBoxParameter.CENTER_SIZE
CORNER_SIZE = caffe_pb2.PriorBoxParameter.CORNER_SIZE

BIPARTITE = caffe_pb2.MultiBoxLossParameter.BIPARTITE
PER_PREDICTION = caffe_pb2.MultiBoxLossParameter.PER_PREDICTION

# Caffe keeps an overlap for matching only when it exceeds this.
MIN_MATCH_OVERLAP = 1e-6
# Match indices >= 0 name a ground truth; these two mark a prior without one.
UNMATCHED = -1
IGNORED = -2  # left out by ignore_cross_boundary_bbox


def box_size(boxes, normalized=True):
    """Area; 0 for an inverted box. Pixel boxes (normalized=False) count both end pixels."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    invalid = (w < 0) | (h < 0)
    if not normalized:
        w = w + 1
        h = h + 1
    return torch.where(invalid, torch.zeros_like(w), w * h)


def iou(a, b, normalized=True):
    """Pairwise Jaccard overlap: a [..., N, 4], b [..., M, 4] -> [..., N, M] (no autograd)."""
    # Coordinates as separate arrays so the broadcast runs over a contiguous last axis, and
    # in-place steps: this runs on [rows, K, K] blocks in NMS, where temporaries dominate.
    ax1, ay1, ax2, ay2 = (a[..., i].contiguous().unsqueeze(-1) for i in range(4))
    bx1, by1, bx2, by2 = (b[..., i].contiguous().unsqueeze(-2) for i in range(4))
    iw = torch.minimum(bx2, ax2)
    iw -= torch.maximum(bx1, ax1)
    ih = torch.minimum(by2, ay2)
    ih -= torch.maximum(by1, ay1)
    if not normalized:
        iw += 1
        ih += 1
    # Caffe's overlap is 0 unless both extents are > 0; clamping gives that and leaves the
    # positive case bit-identical. 0/0 (two empty boxes) is set to 0 at the end.
    inter = iw.clamp_(min=0).mul_(ih.clamp_(min=0))
    union = box_size(b, normalized).unsqueeze(-2) + box_size(a, normalized).unsqueeze(-1)
    union -= inter
    return torch.nan_to_num_(inter.div_(union), nan=0.0)


def clip(boxes, height=1.0, width=1.0):
    """Clamp coordinates into [0, width] x [0, height] (normalised: the unit square)."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def is_cross_boundary(boxes):
    return ((boxes < 0) | (boxes > 1)).any(dim=-1)


def _center_size(boxes):
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    cx = (boxes[..., 0] + boxes[..., 2]) / 2
    cy = (boxes[..., 1] + boxes[..., 3]) / 2
    return cx, cy, w, h


def encode(boxes, priors, variances, code_type, variance_encoded_in_target=False):
    """Regression targets of `boxes` relative to `priors` (Caffe's EncodeBBox).

    With variance_encoded_in_target the variances are not applied (the net predicts them)."""
    var = None if variance_encoded_in_target else variances
    if code_type == CORNER:
        d = boxes - priors
        return d if var is None else d / var
    if code_type == CENTER_SIZE:
        pcx, pcy, pw, ph = _center_size(priors)
        bcx, bcy, bw, bh = _center_size(boxes)
        d = torch.stack(((bcx - pcx) / pw, (bcy - pcy) / ph,
                         torch.log(bw / pw), torch.log(bh / ph)), dim=-1)
        return d if var is None else d / var
    if code_type == CORNER_SIZE:
        pw = priors[..., 2] - priors[..., 0]
        ph = priors[..., 3] - priors[..., 1]
        size = torch.stack((pw, ph, pw, ph), dim=-1)
        d = (boxes - priors) / size
        return d if var is None else d / var
    raise ValueError(f"unknown code type {code_type}")


def decode(deltas, priors, variances, code_type, variance_encoded_in_target=False, normalized=True):
    """Boxes from regression outputs (Caffe's DecodeBBox, without clipping). normalized=False:
    OpenCV's pixel priors, whose width and height count both end pixels (CENTER_SIZE)."""
    d = deltas if variance_encoded_in_target else variances * deltas
    if code_type == CORNER:
        return priors + d
    if code_type == CENTER_SIZE:
        pcx, pcy, pw, ph = _center_size(priors)
        if not normalized:
            pw, ph = pw + 1, ph + 1
            pcx, pcy = priors[..., 0] + pw * 0.5, priors[..., 1] + ph * 0.5
        cx = d[..., 0] * pw + pcx
        cy = d[..., 1] * ph + pcy
        w = torch.exp(d[..., 2]) * pw
        h = torch.exp(d[..., 3]) * ph
        return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)
    if code_type == CORNER_SIZE:
        pw = priors[..., 2] - priors[..., 0]
        ph = priors[..., 3] - priors[..., 1]
        return priors + d * torch.stack((pw, ph, pw, ph), dim=-1)
    raise ValueError(f"unknown code type {code_type}")


def match(overlaps, gt_valid, match_type, overlap_threshold, ignored=None):
    """Caffe's MatchBBox for a batch of independent problems.

    overlaps [R, P, G] (IoU of P predictions with G ground truths), gt_valid [R, G] (padding
    columns False), ignored [R, P] or None (cross-boundary predictions: index IGNORED).
    Bipartite first: repeatedly the globally best (prediction, gt) pair, ties to the lowest
    prediction then gt index, until the gts run out; PER_PREDICTION then gives every other
    prediction its best gt with overlap >= overlap_threshold. Returns (match_index [R, P] int64,
    UNMATCHED/IGNORED where none, match_overlap [R, P]: the matched overlap, else the best one).
    """
    R, P, G = overlaps.shape
    device = overlaps.device
    present = (overlaps > MIN_MATCH_OVERLAP) & gt_valid[:, None, :]
    if ignored is not None:
        present &= ~ignored[:, :, None]
    ov = torch.where(present, overlaps, torch.zeros_like(overlaps))
    match_overlap = ov.amax(dim=2) if G > 0 else overlaps.new_zeros((R, P))
    match_index = torch.full((R, P), UNMATCHED, dtype=torch.long, device=device)
    if ignored is not None:
        match_index[ignored] = IGNORED
    if G == 0 or P == 0:
        return match_index, match_overlap
    rows = torch.arange(R, device=device)

    # Bipartite stage on a reduced problem: the prediction that the greedy picks for a gt is
    # among that gt's G best predictions (at most G-1 are taken before), so only the union of
    # each column's top G (ties to the lower index, as Caffe's scan) can ever be chosen.
    key = _descending_key(torch.where(present, ov, torch.full_like(ov, -1.0)), dim=1)
    k = min(G, P)
    top = key.topk(k, dim=1).indices  # [R, k, G] prediction indices
    cand = top.permute(0, 2, 1).reshape(R, G * k)
    cand, _ = cand.sort(dim=1)
    dup = torch.zeros_like(cand, dtype=torch.bool)
    dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
    sub = torch.gather(ov, 1, cand[:, :, None].expand(R, cand.shape[1], G))
    sub_present = torch.gather(present, 1, cand[:, :, None].expand(R, cand.shape[1], G))
    work = torch.where(sub_present & ~dup[:, :, None], sub, torch.full_like(sub, -1.0))
    for _ in range(min(G, P)):
        best, arg = work.reshape(R, -1).max(dim=1)
        found = best > 0
        if not bool(found.any()):
            break
        r = rows[found]
        pi = arg[found] // G
        gi = arg[found] % G
        prior = cand[r, pi]
        match_index[r, prior] = gi
        match_overlap[r, prior] = best[found]
        work[r, pi, :] = -1.0
        work[r, :, gi] = -1.0

    if match_type == PER_PREDICTION:
        eligible = present & (overlaps >= overlap_threshold)
        best, arg = torch.where(eligible, ov, torch.full_like(ov, -1.0)).max(dim=2)
        take = (match_index == UNMATCHED) & eligible.any(dim=2)
        match_index = torch.where(take, arg, match_index)
        match_overlap = torch.where(take, best, match_overlap)
    elif match_type != BIPARTITE:
        raise ValueError(f"unknown match type {match_type}")
    return match_index, match_overlap


def _descending_key(values, dim):
    """int64 keys that order like (value descending, index ascending) along `dim`, so that
    topk/sort reproduce a stable descending sort of float32 values exactly."""
    v = values.float() + 0.0  # -0.0 -> 0.0
    bits = v.view(torch.int32)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: reverse their order
    n = values.shape[dim]
    shape = [1] * values.dim()
    shape[dim] = n
    idx = torch.arange(n - 1, -1, -1, device=values.device, dtype=torch.int64).view(shape)
    return (ordered.to(torch.int64) << 32) | idx


def stable_topk_desc(scores, k, dim=-1):
    """Indices of the k largest along `dim`, ordered like a stable descending sort."""
    return _descending_key(scores, dim).topk(k, dim=dim).indices


def nms_thresholds(nms_threshold, eta, n):
    """Caffe's adaptive NMS threshold after 0..n kept boxes (float32 arithmetic)."""
    t = torch.tensor(nms_threshold, dtype=torch.float32)
    e = torch.tensor(eta, dtype=torch.float32)
    out = [t]
    for _ in range(n):
        if eta < 1 and float(t) > 0.5:
            t = t * e
        out.append(t)
    return torch.stack(out)


def nms(boxes, scores, score_threshold, nms_threshold, eta=1.0, top_k=-1, box_rows=None, classes_last=False,
        min_size=None, normalized=True):
    """Caffe's ApplyNMSFast on many independent rows at once.

    boxes [R, P, 4], scores [R, P]; with box_rows [R], row r uses boxes[box_rows[r]] (rows that
    share boxes, as the classes of one image with share_location). classes_last: scores are
    [N, P, C] and row n * C + c holds scores[n, :, c] (no transposed copy). min_size: boxes
    smaller than this are dropped after the top_k cut (the older ApplyNMS of hard mining).
    normalized=False: pixel boxes (OpenCV's normalized_bbox: false). Per row: scores strictly above score_threshold, stable
    descending sort, the first top_k, then greedy: a box is kept if its IoU with every kept box
    is <= the (eta-adapted) threshold. Returns (order [R, K] prior indices in sorted order,
    keep [R, K] bool), K = the most candidates any row has.
    """
    device = scores.device
    # Candidates (row, index) with indices ascending within a row, sorted per row by score with
    # ties in index order: a stable sort by score, then a stable sort by row. The cost follows
    # the number of candidates, not rows x priors.
    if classes_last:
        N, P, C = scores.shape
        R = N * C
        n, idx, c = (scores > score_threshold).nonzero(as_tuple=True)
        row, values = n * C + c, scores[n, idx, c]
    else:
        R, P = scores.shape
        row, idx = (scores > score_threshold).nonzero(as_tuple=True)
        values = scores[row, idx]
    by_score = torch.sort(values, descending=True, stable=True).indices
    by_row = torch.sort(row[by_score], stable=True).indices
    picked = by_score[by_row]
    row, idx = row[picked], idx[picked]
    count = torch.bincount(row, minlength=R)
    K = int(count.max()) if row.numel() else 0
    if top_k > -1:
        K = min(K, top_k)
    if K == 0:
        return (torch.zeros((R, 0), dtype=torch.long, device=device),
                torch.zeros((R, 0), dtype=torch.bool, device=device))
    rank = torch.arange(row.numel(), device=device) - (torch.cumsum(count, 0) - count)[row]
    inside = rank < K
    order = torch.zeros((R, K), dtype=torch.long, device=device)
    order[row[inside], rank[inside]] = idx[inside]
    valid = torch.arange(K, device=device)[None, :] < count[:, None]
    cand = boxes[(box_rows if box_rows is not None else torch.arange(R, device=device))[:, None], order]
    if min_size is not None:
        valid &= box_size(cand) >= min_size
    table = nms_thresholds(nms_threshold, eta, K).to(device) if eta < 1 else None
    # The overlap test of every candidate pair, computed in row blocks of bounded size; the
    # greedy pass then runs over as many rows at once as NMS_GREEDY_ELEMENTS allows.
    thr = torch.tensor(nms_threshold, dtype=torch.float32)
    block = max(1, NMS_BLOCK_ELEMENTS // (K * K))
    budget = NMS_GREEDY_ELEMENTS if table is None else NMS_GREEDY_ELEMENTS // 4  # bool or float
    group = max(block, (budget // (K * K)) // block * block)
    keep = torch.empty((R, K), dtype=torch.bool, device=device)
    for g0 in range(0, R, group):
        g1 = min(R, g0 + group)
        over = torch.empty((g1 - g0, K, K), dtype=torch.bool if table is None else cand.dtype, device=device)
        for r0 in range(g0, g1, block):
            r1 = min(g1, r0 + block)
            ov = iou(cand[r0:r1], cand[r0:r1], normalized)
            over[r0 - g0:r1 - g0] = ov > thr if table is None else ov
        keep[g0:g1] = _greedy(over, valid[g0:g1], table)
    return order, keep


NMS_BLOCK_ELEMENTS = 1 << 23
NMS_GREEDY_ELEMENTS = 1 << 28


def _greedy(over, valid, table):
    """Greedy suppression in sorted order, all rows at once. over [R, K, K]: the pairwise
    'overlap > threshold' test, or (adaptive eta: table given) the overlaps themselves."""
    R, K, _ = over.shape
    keep = torch.zeros((R, K), dtype=torch.bool, device=over.device)
    if table is None:
        keep[:, 0] = valid[:, 0]
        for k in range(1, K):
            keep[:, k] = valid[:, k] & ~(over[:, k, :k] & keep[:, :k]).any(dim=1)
        return keep
    kept_count = torch.zeros(R, dtype=torch.long, device=over.device)
    for k in range(K):
        limit = table[kept_count]
        ok = valid[:, k] & ~((over[:, k, :k] > limit[:, None]) & keep[:, :k]).any(dim=1)
        keep[:, k] = ok
        kept_count += ok.long()
    return keep


# --------------------------------------------------------------------------------------------
# Detection heads: the priors blob, the shapes of loc/conf/prior, boxes in pixels


def split_priors(prior, num_priors):
    """PriorBox's blob [1, 2, P*4] -> (boxes [P, 4], variances [P, 4]), both detached."""
    p = prior.detach().reshape(2, num_priors, 4)
    return p[0], p[1]


def _per_image(shape):
    return int(np.prod(shape[1:], dtype=np.int64))


def check_head_shapes(where, loc, conf, prior, loc_classes, num_classes, arm_conf=None, arm_loc=None):
    """The number of priors P, after checking that the head shapes fit it: loc [N, P*loc_classes*4],
    conf [N, P*num_classes], prior [1, 2, P*4] and RefineDet's arm_conf [N, P*2], arm_loc [N, P*4]
    (values per image; any axes)."""
    P = prior[-1] // 4 if len(prior) == 3 else _per_image(prior) // 8
    if _per_image(loc) != P * loc_classes * 4:
        raise PriorCountError(f"{where}: loc has {_per_image(loc)} values per image, expected "
                         f"{P * loc_classes * 4} for {P} priors")
    if _per_image(conf) != P * num_classes:
        raise PriorCountError(f"{where}: conf has {_per_image(conf)} values per image, expected "
                         f"{P * num_classes} for {P} priors")
    if loc[0] != conf[0]:
        raise ShapeError(f"{where}: loc and conf have different batch sizes")
    if arm_conf is not None and _per_image(arm_conf) != P * 2:
        raise ShapeError(f"{where}: arm_conf must have {P * 2} values per image")
    if arm_loc is not None and _per_image(arm_loc) != P * 4:
        raise ShapeError(f"{where}: arm_loc must have {P * 4} values per image")
    return P


def output_box(b, size, resize_param=None):
    """The fork's OutputBBox: a normalised box [4] (numpy) to pixels of an image (height, width)."""
    f32 = np.float32
    height, width = size
    b = np.asarray(b, dtype=f32)
    if resize_param is not None and resize_param.resize_mode:
        rp = resize_param
        RP = caffe_pb2.ResizeParameter
        if rp.resize_mode == RP.WARP:
            pass
        elif rp.resize_mode == RP.FIT_LARGE_SIZE_AND_PAD:
            rh, rw = f32(rp.height), f32(rp.width)
            aspect = f32(f32(width) / f32(height))
            if aspect > f32(rw / rh):
                pad = f32((rh - rw / aspect) / 2)
                src = np.array([0, pad / rh, 1, 1 - pad / rh], dtype=f32)
            else:
                pad = f32((rw - rh * aspect) / 2)
                src = np.array([pad / rw, 0, 1 - pad / rw, 1], dtype=f32)
            if (b[0] >= src[2] or b[2] <= src[0] or b[1] >= src[3] or b[3] <= src[1]):
                b = b.copy()  # no projection: the fork keeps the box as it was
            else:
                sw, sh = src[2] - src[0], src[3] - src[1]
                b = np.array([(b[0] - src[0]) / sw, (b[1] - src[1]) / sh,
                              (b[2] - src[0]) / sw, (b[3] - src[1]) / sh], dtype=f32)
                b = np.clip(b, 0, 1)
        elif rp.resize_mode == RP.FIT_SMALL_SIZE:
            if rp.height_scale and rp.width_scale:
                b = b * np.array([rp.width_scale, rp.height_scale] * 2, dtype=f32)
                return np.clip(b, 0, np.array([width, height] * 2, dtype=f32))
    b = np.clip(b, 0, 1)
    return (b * np.array([width, height, width, height], dtype=f32)).astype(f32)
