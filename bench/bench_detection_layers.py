"""MultiBoxLoss (forward + backward) and DetectionOutput per batch, at SSD300 sizes
(8732 priors, 21 classes), protonet's batched layers against simple peers in the same run:

- the same protonet layer called image by image (a per-image Python loop), and
- a textbook per-image implementation in plain torch (ssd.pytorch style: per-image matching
  and mining loop; per-image, per-class greedy NMS loop). The textbook peer is not Caffe-exact
  (its matching and NMS differ in details); it stands for the usual way this is written.

Scores look like a trained net's (background dominant, a few confident priors per image), three
objects per image. Medians over --repeat runs. Usage:
    python bench/bench_detection_layers.py [--batch 32] [--repeat 5] [--device cpu|cuda] [--threads N]
"""
import argparse
import statistics
import time

import numpy as np
import torch
from google.protobuf import text_format

from protonet import box, caffe_pb2
from protonet.layers.base import NetContext
from protonet.layers.detection_output import DetectionOutputLayer
from protonet.layers.multibox_loss import MultiBoxLossLayer
from protonet.layers.priorbox import PriorBoxLayer

SSD_MAPS = [(38, 30, 60, [2], 8), (19, 60, 111, [2, 3], 16), (10, 111, 162, [2, 3], 32),
            (5, 162, 213, [2, 3], 64), (3, 213, 264, [2], 100), (1, 264, 315, [2], 300)]
LOSS = ("multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0 num_classes: 21 "
        "share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true "
        "background_label_id: 0 use_difficult_gt: true neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE "
        "mining_type: MAX_NEGATIVE } loss_param { normalization: VALID }")
OUT = ("detection_output_param { num_classes: 21 share_location: true background_label_id: 0 "
       "nms_param { nms_threshold: 0.45 top_k: 400 } code_type: CENTER_SIZE keep_top_k: 200 "
       "confidence_threshold: 0.01 }")


def layer_param(type_name, text):
    p = caffe_pb2.LayerParameter(name=type_name.lower(), type=type_name)
    text_format.Merge(text, p)
    return p


def ssd300_priors():
    out = []
    for size, mn, mx, ars, step in SSD_MAPS:
        p = layer_param("PriorBox", f"prior_box_param {{ min_size: {mn} max_size: {mx} "
                                    f"{' '.join(f'aspect_ratio: {a}' for a in ars)} flip: true "
                                    f"variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: {step} }}")
        out.append(PriorBoxLayer(p, [(1, 1, size, size), (1, 3, 300, 300)], NetContext()).priors(size, size, 300, 300))
    return torch.from_numpy(np.concatenate(out, axis=1))[None]


def inputs(num, seed=0):
    gen = np.random.default_rng(seed)
    P = 8732
    logits = gen.normal(0, 1, (num, P, 21)).astype(np.float32)
    logits[..., 0] += 8
    for i in range(num):
        hot = gen.choice(P, 60, replace=False)
        logits[i, hot, gen.integers(1, 21, 60)] += 9
    logits = torch.from_numpy(logits)
    loc = torch.tensor(gen.normal(0, 0.3, (num, P * 4)), dtype=torch.float32)
    rows = []
    for i in range(num):
        for k in range(3):
            xy = gen.uniform(0, 0.6, 2)
            wh = gen.uniform(0.08, 0.4, 2)
            rows.append([i, gen.integers(1, 21), k, xy[0], xy[1], xy[0] + wh[0], xy[1] + wh[1], 0])
    label = torch.tensor(rows, dtype=torch.float32).view(1, 1, -1, 8)
    return loc, logits.view(num, -1), label


# --- the textbook peer -------------------------------------------------------------------------


def textbook_loss(loc, conf, prior, label, num_classes=21, threshold=0.5, neg_ratio=3):
    """ssd.pytorch-style: per image, match by best-gt-per-prior plus best-prior-per-gt, encode,
    then hard negative mining by sorting the background loss; smooth L1 + cross-entropy / #pos."""
    N = loc.shape[0]
    P = prior.shape[2] // 4
    priors = prior[0, 0].view(P, 4)
    var = prior[0, 1].view(P, 4)
    loc = loc.view(N, P, 4)
    conf = conf.view(N, P, num_classes)
    rows = label.view(-1, 8)
    loc_t = torch.zeros_like(loc)
    conf_t = torch.zeros(N, P, dtype=torch.long, device=loc.device)
    for i in range(N):
        gt = rows[rows[:, 0] == i]
        if gt.numel() == 0:
            continue
        ov = box.iou(gt[:, 3:7], priors)  # [G, P]
        best_prior = ov.argmax(dim=1)
        best_ov, best_gt = ov.max(dim=0)
        best_ov[best_prior] = 2
        for j in range(best_prior.numel()):
            best_gt[best_prior[j]] = j
        matched = gt[best_gt, 3:7]
        labels = gt[best_gt, 1].long()
        labels[best_ov < threshold] = 0
        conf_t[i] = labels
        loc_t[i] = box.encode(matched, priors, var, box.CENTER_SIZE)
    pos = conf_t > 0
    loss_l = torch.nn.functional.smooth_l1_loss(loc[pos], loc_t[pos], reduction="sum")
    with torch.no_grad():
        bg = torch.logsumexp(conf, dim=2) - conf[..., 0]
        bg[pos] = 0
        rank = bg.argsort(dim=1, descending=True).argsort(dim=1)
        neg = rank < (neg_ratio * pos.sum(dim=1, keepdim=True))
    sel = pos | neg
    loss_c = torch.nn.functional.cross_entropy(conf[sel], conf_t[sel], reduction="sum")
    return (loss_l + loss_c) / pos.sum().clamp(min=1)


def textbook_nms(boxes, scores, threshold):
    """Greedy NMS with a Python while loop, one box at a time."""
    order = scores.argsort(descending=True)
    keep = []
    while order.numel() > 0:
        i = order[0]
        keep.append(int(i))
        if order.numel() == 1:
            break
        ov = box.iou(boxes[i][None], boxes[order[1:]])[0]
        order = order[1:][ov <= threshold]
    return keep


def textbook_detect(loc, conf, prior, num_classes=21, conf_thresh=0.01, nms_thresh=0.45, top_k=400, keep_top_k=200):
    N = loc.shape[0]
    P = prior.shape[2] // 4
    priors = prior[0, 0].view(P, 4)
    var = prior[0, 1].view(P, 4)
    out = []
    for i in range(N):
        boxes = box.decode(loc[i].view(P, 4), priors, var, box.CENTER_SIZE)
        scores = conf[i].view(P, num_classes)
        dets = []
        for c in range(1, num_classes):
            s = scores[:, c]
            mask = s > conf_thresh
            if not mask.any():
                continue
            idx = mask.nonzero()[:, 0]
            top = s[idx].argsort(descending=True)[:top_k]
            idx = idx[top]
            for k in textbook_nms(boxes[idx], s[idx], nms_thresh):
                dets.append((float(s[idx[k]]), c, int(idx[k])))
        dets.sort(key=lambda t: -t[0])
        for score, c, j in dets[:keep_top_k]:
            out.append([i, c, score] + boxes[j].tolist())
    return out


# --- timing ------------------------------------------------------------------------------------


def median_time(fn, repeat, device):
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    prior = ssd300_priors().to(dev)
    N = args.batch
    loc, logits, label = (t.to(dev) for t in inputs(N))
    conf = torch.softmax(logits.view(N, -1, 21), -1).view(N, -1)
    shapes = [tuple(loc.shape), tuple(logits.shape), tuple(prior.shape)]
    one = [(1,) + s[1:] for s in shapes]
    loss_n = MultiBoxLossLayer(layer_param("MultiBoxLoss", LOSS), shapes + [tuple(label.shape)], NetContext())
    out_n = DetectionOutputLayer(layer_param("DetectionOutput", OUT), shapes, NetContext())
    out_1 = DetectionOutputLayer(layer_param("DetectionOutput", OUT), one, NetContext())
    labels_1 = []
    for i in range(N):
        rows = label.view(-1, 8)
        r = rows[rows[:, 0] == i].clone()
        r[:, 0] = 0
        labels_1.append(r.view(1, 1, -1, 8))
    loss_1 = [MultiBoxLossLayer(layer_param("MultiBoxLoss", LOSS), one + [tuple(labels_1[i].shape)], NetContext())
              for i in range(N)]

    def batched_loss():
        a, b = loc.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        loss_n(a, b, prior, label).backward()

    def looped_loss():
        a, b = loc.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        sum(loss_1[i](a[i:i + 1], b[i:i + 1], prior, labels_1[i]) for i in range(N)).backward()

    def textbook_loss_step():
        a, b = loc.clone().requires_grad_(True), logits.clone().requires_grad_(True)
        textbook_loss(a, b, prior, label).backward()

    def single_loss():
        a, b = loc[:1].clone().requires_grad_(True), logits[:1].clone().requires_grad_(True)
        loss_1[0](a, b, prior, labels_1[0]).backward()

    with torch.no_grad():
        batched_out = lambda: out_n(loc, conf, prior)  # noqa: E731
        looped_out = lambda: [out_1(loc[i:i + 1], conf[i:i + 1], prior) for i in range(N)]  # noqa: E731
        textbook_out = lambda: textbook_detect(loc, conf, prior)  # noqa: E731
        single_out = lambda: out_1(loc[:1], conf[:1], prior)  # noqa: E731
        print(f"device {dev}, threads {torch.get_num_threads()}, batch {N}, priors {prior.shape[2] // 4}, "
              f"classes 21, repeat {args.repeat} (medians)")
        r = {}
        r["out_batched"] = median_time(batched_out, args.repeat, dev)
        r["out_looped"] = median_time(looped_out, args.repeat, dev)
        r["out_textbook"] = median_time(textbook_out, max(1, args.repeat // 2), dev)
        r["out_single"] = median_time(single_out, args.repeat, dev)
    r["loss_batched"] = median_time(batched_loss, args.repeat, dev)
    r["loss_looped"] = median_time(looped_loss, args.repeat, dev)
    r["loss_textbook"] = median_time(textbook_loss_step, args.repeat, dev)
    r["loss_single"] = median_time(single_loss, args.repeat, dev)
    ms = {k: v * 1e3 for k, v in r.items()}
    print(f"MultiBoxLoss fwd+bwd  protonet batched {ms['loss_batched']:8.1f} ms | protonet per-image loop "
          f"{ms['loss_looped']:8.1f} ms (x{r['loss_looped'] / r['loss_batched']:.2f}) | textbook loop "
          f"{ms['loss_textbook']:8.1f} ms (x{r['loss_textbook'] / r['loss_batched']:.2f})")
    print(f"DetectionOutput       protonet batched {ms['out_batched']:8.1f} ms | protonet per-image loop "
          f"{ms['out_looped']:8.1f} ms (x{r['out_looped'] / r['out_batched']:.2f}) | textbook loop "
          f"{ms['out_textbook']:8.1f} ms (x{r['out_textbook'] / r['out_batched']:.2f})")
    print(f"batch {N} / batch 1 time: MultiBoxLoss x{r['loss_batched'] / r['loss_single']:.1f} "
          f"({ms['loss_single']:.1f} ms for 1), DetectionOutput x{r['out_batched'] / r['out_single']:.1f} "
          f"({ms['out_single']:.1f} ms for 1)")
    print("(x = peer time / protonet batched time; > 1 means protonet is faster)")


if __name__ == "__main__":
    main()
