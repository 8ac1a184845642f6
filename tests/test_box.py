"""protonet.box against straightforward per-box loops written from the fork's semantics."""
import math

import numpy as np
import pytest
import torch

from protonet import box

f32 = np.float32


def ref_size(b):
    if b[2] < b[0] or b[3] < b[1]:
        return f32(0)
    return f32(f32(b[2] - b[0]) * f32(b[3] - b[1]))


def ref_iou(a, b):
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return f32(0)
    iw = f32(min(a[2], b[2]) - max(a[0], b[0]))
    ih = f32(min(a[3], b[3]) - max(a[1], b[1]))
    if iw > 0 and ih > 0:
        inter = f32(iw * ih)
        return f32(inter / f32(f32(ref_size(a) + ref_size(b)) - inter))
    return f32(0)


def ref_match(gts, preds, match_type, threshold, ignored):
    """One image, one label: the fork's MatchBBox as loops."""
    n = len(preds)
    index = [-1] * n
    best = [f32(0)] * n
    overlaps = {}
    for i in range(n):
        if ignored[i]:
            index[i] = -2
            continue
        for j in range(len(gts)):
            o = ref_iou(preds[i], gts[j])
            if o > 1e-6:
                best[i] = max(best[i], o)
                overlaps.setdefault(i, {})[j] = o
    pool = list(range(len(gts)))
    while pool:
        bi, bj, bo = -1, -1, -1.0
        for i in sorted(overlaps):
            if index[i] != -1:
                continue
            for j in pool:
                if j in overlaps[i] and overlaps[i][j] > bo:
                    bi, bj, bo = i, j, overlaps[i][j]
        if bi == -1:
            break
        index[bi] = bj
        best[bi] = bo
        pool.remove(bj)
    if match_type == box.PER_PREDICTION:
        for i in sorted(overlaps):
            if index[i] != -1:
                continue
            bj, bo = -1, -1.0
            for j in range(len(gts)):
                if j in overlaps[i] and overlaps[i][j] >= threshold and overlaps[i][j] > bo:
                    bj, bo = j, overlaps[i][j]
            if bj != -1:
                index[i] = bj
                best[i] = bo
    return index, best


def ref_nms(boxes, scores, score_threshold, nms_threshold, eta, top_k):
    cand = [(s, i) for i, s in enumerate(scores) if s > score_threshold]
    cand.sort(key=lambda t: -t[0])  # Python's sort is stable, like std::stable_sort
    if top_k > -1:
        cand = cand[:top_k]
    kept = []
    thr = f32(nms_threshold)
    for _, i in cand:
        keep = all(ref_iou(boxes[i], boxes[k]) <= thr for k in kept)
        if keep:
            kept.append(i)
            if eta < 1 and thr > 0.5:
                thr = f32(thr * f32(eta))
    return kept


def random_boxes(gen, n, lo=-0.1, hi=1.1):
    xy = gen.uniform(lo, hi - 0.3, size=(n, 2))
    wh = gen.uniform(0.02, 0.4, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_iou_matches_caffe_on_edge_cases():
    a = np.array([[0.1, 0.1, 0.5, 0.5], [0.5, 0.1, 0.9, 0.5], [0.3, 0.3, 0.2, 0.8],
                  [0.2, 0.2, 0.2, 0.6], [0.0, 0.0, 1.0, 1.0]], dtype=np.float32)
    out = box.iou(torch.from_numpy(a), torch.from_numpy(a)).numpy()
    for i in range(len(a)):
        for j in range(len(a)):
            assert out[i, j] == ref_iou(a[i], a[j]), (i, j)
    assert out[0, 1] == 0  # touching edges: no overlap
    assert out[2, 2] == 0  # inverted box: size 0, no overlap


def test_iou_random_bitwise_and_batched():
    gen = np.random.default_rng(0)
    a, b = random_boxes(gen, 40), random_boxes(gen, 30)
    out = box.iou(torch.from_numpy(a)[None].expand(3, 40, 4), torch.from_numpy(b)[None]).numpy()
    ref = np.array([[ref_iou(x, y) for y in b] for x in a], dtype=np.float32)
    for k in range(3):
        np.testing.assert_array_equal(out[k], ref)


def test_iou_pixel_coordinates():
    a = torch.tensor([[0.0, 0.0, 9.0, 9.0]])
    b = torch.tensor([[5.0, 5.0, 14.0, 14.0]])
    # 5x5 pixels shared out of 100 + 100 - 25.
    assert box.iou(a, b, normalized=False).item() == pytest.approx(25 / 175)
    assert box.box_size(a, normalized=False).item() == 100


@pytest.mark.parametrize("code", [box.CORNER, box.CENTER_SIZE, box.CORNER_SIZE])
@pytest.mark.parametrize("in_target", [False, True])
def test_encode_decode_roundtrip(code, in_target):
    gen = np.random.default_rng(1)
    boxes = torch.from_numpy(random_boxes(gen, 50, 0, 1)).double()
    priors = torch.from_numpy(random_boxes(gen, 50, 0, 1)).double()
    var = torch.tensor([0.1, 0.1, 0.2, 0.2], dtype=torch.float64).expand(50, 4)
    enc = box.encode(boxes, priors, var, code, in_target)
    torch.testing.assert_close(box.decode(enc, priors, var, code, in_target), boxes)


def test_encode_center_size_by_hand():
    prior = torch.tensor([[0.2, 0.2, 0.4, 0.6]])
    gt = torch.tensor([[0.25, 0.1, 0.45, 0.9]])
    var = torch.tensor([[0.1, 0.1, 0.2, 0.2]])
    enc = box.encode(gt, prior, var, box.CENTER_SIZE)[0]
    want = [(0.35 - 0.3) / 0.2 / 0.1, (0.5 - 0.4) / 0.4 / 0.1, math.log(1.0) / 0.2, math.log(0.8 / 0.4) / 0.2]
    torch.testing.assert_close(enc, torch.tensor(want), rtol=1e-5, atol=1e-5)
    corner = box.encode(gt, prior, var, box.CORNER)[0]
    torch.testing.assert_close(corner, torch.tensor([0.5, -1.0, 0.25, 1.5]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("match_type", [box.BIPARTITE, box.PER_PREDICTION])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_match_equals_the_forks_loops(match_type, seed):
    gen = np.random.default_rng(seed)
    n_img, P = 4, 60
    preds = random_boxes(gen, P, 0, 1)
    preds[10] = preds[3]  # identical predictions: tied overlaps, lower index must win
    preds[11] = preds[3]
    gt_counts = [3, 0, 5, 1]
    G = max(gt_counts)
    gts = np.zeros((n_img, G, 4), dtype=np.float32)
    valid = np.zeros((n_img, G), dtype=bool)
    for i, c in enumerate(gt_counts):
        g = random_boxes(gen, c, 0, 1)
        if c >= 2:
            g[1] = g[0]  # identical gts: tie between columns
        gts[i, :c] = g
        valid[i, :c] = True
    ignored = box.is_cross_boundary(torch.from_numpy(preds)).expand(n_img, P) if seed == 2 else None
    ov = box.iou(torch.from_numpy(preds)[None].expand(n_img, P, 4), torch.from_numpy(gts))
    index, overlap = box.match(ov, torch.from_numpy(valid), match_type, 0.3, ignored)
    for i, c in enumerate(gt_counts):
        ign = ignored[i].tolist() if ignored is not None else [False] * P
        ref_index, ref_best = ref_match(list(gts[i, :c]), list(preds), match_type, f32(0.3), ign)
        if c == 0:
            # The fork keeps no match map for an image without ground truth.
            assert (index[i][~torch.tensor(ign, dtype=torch.bool)] == -1).all()
            continue
        assert index[i].tolist() == ref_index
        np.testing.assert_array_equal(overlap[i].numpy(), np.array(ref_best, dtype=np.float32))


def test_match_with_more_gts_than_predictions():
    preds = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.4, 0.4, 1.0, 1.0]]])
    gts = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.45, 0.45, 1.0, 1.0], [0.1, 0.1, 0.4, 0.4]]])
    index, _ = box.match(box.iou(preds, gts), torch.ones(1, 3, dtype=torch.bool), box.BIPARTITE, 0.5)
    assert index.tolist() == [[0, 1]]


@pytest.mark.parametrize("eta,top_k", [(1.0, -1), (1.0, 7), (0.8, -1)])
def test_nms_equals_the_forks_loop(eta, top_k):
    gen = np.random.default_rng(3)
    R, P = 6, 50
    boxes = np.stack([random_boxes(gen, P, 0, 1) for _ in range(R)])
    scores = gen.uniform(0, 1, size=(R, P)).astype(np.float32)
    scores[:, 5] = scores[:, 9]  # tied scores keep index order
    boxes[:, 30] = boxes[:, 31]  # duplicate boxes
    order, keep = box.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.2, 0.45 if eta == 1 else 0.7,
                          eta, top_k)
    for r in range(R):
        kept = order[r][keep[r]].tolist()
        ref = ref_nms(list(boxes[r]), list(scores[r]), f32(0.2), 0.45 if eta == 1 else 0.7, eta, top_k)
        assert kept == ref


def test_nms_empty_and_threshold_is_strict():
    boxes = torch.rand(2, 5, 4).sort(dim=-1).values
    scores = torch.full((2, 5), 0.5)
    order, keep = box.nms(boxes, scores, 0.5, 0.45)
    assert order.shape == (2, 0) and keep.shape == (2, 0)


def test_stable_topk_breaks_ties_by_index():
    v = torch.tensor([[0.5, 0.9, 0.5, -0.0, 0.0, 0.9, -1.0, -2.0]])
    assert box.stable_topk_desc(v, 8, dim=1).tolist() == [[1, 5, 0, 2, 3, 4, 6, 7]]


def test_clip():
    b = torch.tensor([[-0.1, 0.2, 1.3, 0.9]])
    assert torch.equal(box.clip(b), torch.tensor([[0.0, 0.2, 1.0, 0.9]]))
    assert torch.equal(box.clip(b * 100, height=50, width=100), torch.tensor([[0.0, 20.0, 100.0, 50.0]]))


@pytest.mark.parametrize("eta,threshold", [(1.0, 0.45), (0.8, 0.7)])
def test_nms_row_blocks_and_groups_give_the_same_result(monkeypatch, eta, threshold):
    """Tiny memory budgets force many overlap blocks and greedy groups."""
    monkeypatch.setattr(box, "NMS_BLOCK_ELEMENTS", 50)
    monkeypatch.setattr(box, "NMS_GREEDY_ELEMENTS", 200)
    gen = np.random.default_rng(4)
    R, P = 7, 40
    boxes = np.stack([random_boxes(gen, P, 0, 1) for _ in range(R)])
    scores = gen.uniform(0, 1, size=(R, P)).astype(np.float32)
    order, keep = box.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.2, threshold, eta)
    for r in range(R):
        assert order[r][keep[r]].tolist() == ref_nms(list(boxes[r]), list(scores[r]), f32(0.2), threshold, eta, -1)
