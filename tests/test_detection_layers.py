"""PriorBox, Normalize, Permute, DetectionOutput and DetectionEvaluate beyond the goldens:
gradcheck, options the goldens do not cover (against loop ports of the fork), result files,
and that the batch is never looped over in Python."""
import json

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from torch.utils._python_dispatch import TorchDispatchMode

from protonet import box, caffe_pb2
from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import NetContext
from protonet.layers.common import PermuteLayer
from protonet.layers.detection_evaluate import DetectionEvaluateLayer
from protonet.layers.detection_output import DetectionOutputLayer
from protonet.layers.multibox_loss import MultiBoxLossLayer
from protonet.layers.normalization import NormalizeLayer
from protonet.layers.priorbox import PriorBoxLayer
from test_box import ref_nms


def param(type_name, text, name="layer"):
    p = caffe_pb2.LayerParameter(name=name, type=type_name)
    text_format.Merge(text, p)
    return p


# --- PriorBox --------------------------------------------------------------------------------


def test_priorbox_truncates_sizes_and_dedups_ratios():
    layer = PriorBoxLayer(param("PriorBox", "prior_box_param { min_size: 21.7 max_size: 45.9 aspect_ratio: 1 "
                                            "aspect_ratio: 2 aspect_ratio: 0.5 aspect_ratio: 2 flip: true "
                                            "variance: 0.1 }"),
                          [(1, 4, 2, 2), (1, 3, 64, 64)], NetContext())
    # 1, sqrt(21*45), 2, 1/2 (0.5 and the repeated 2 are already there).
    assert layer.num_priors == 4
    out = layer(torch.zeros(1, 4, 2, 2), torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 2, 2 * 2 * 4 * 4)
    boxes = out[0, 0].view(-1, 4).double() * 64
    widths = (boxes[:4, 2] - boxes[:4, 0]).tolist()
    assert widths == pytest.approx([21, (21 * 45) ** 0.5, 21 * 2 ** 0.5, 21 / 2 ** 0.5], rel=1e-5)
    # One variance is used for all four coordinates.
    assert torch.all(out[0, 1] == torch.tensor(0.1))
    # Centres: the step is image / layer = 32, offset 0.5.
    assert float((boxes[0, 0] + boxes[0, 2]) / 2) == pytest.approx(16.0)


@pytest.mark.parametrize("text,error", [
    ("prior_box_param { }", "min_size"),
    ("prior_box_param { min_size: 10 max_size: 5 }", "max_size"),
    ("prior_box_param { min_size: 10 img_size: 30 img_h: 20 img_w: 20 }", "img_size"),
    ("prior_box_param { min_size: 10 step: 8 step_h: 4 step_w: 4 }", "step"),
    ("prior_box_param { min_size: 10 variance: 0.1 variance: 0.2 }", "variance"),
])
def test_priorbox_errors(text, error):
    with pytest.raises(ProtonetError, match=error):
        PriorBoxLayer(param("PriorBox", text, "pb"), [(1, 4, 2, 2), (1, 3, 20, 20)], NetContext())


# --- Normalize / Permute -------------------------------------------------------------------


@pytest.mark.parametrize("across", [True, False])
def test_normalize_gradcheck_shared_scale(across):
    layer = NormalizeLayer(param("Normalize", f"norm_param {{ across_spatial: {str(across).lower()} "
                                              "channel_shared: true scale_filler { type: 'constant' value: 3 } }"),
                           [(2, 3, 4, 5)], NetContext())
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    scale = layer.blobs[0].detach().double().requires_grad_(True)
    from protonet.layers.normalization import _CaffeNormalize

    assert torch.autograd.gradcheck(lambda a, s: _CaffeNormalize.apply(a, s, across, 1e-10), (x, scale))


def test_normalize_gradcheck_per_channel_scale():
    """Per-channel scales: the fork's backward equals the true gradient w.r.t. x only when the
    scales are equal (its formula skips the scale inside the projection); the scale gradient is
    always the true one. Unequal scales are covered by the goldens."""
    from protonet.layers.normalization import _CaffeNormalize

    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    equal = torch.full((4,), 2.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, s: _CaffeNormalize.apply(a, s, False, 1e-10), (x, equal))
    unequal = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s: _CaffeNormalize.apply(x.detach(), s, False, 1e-10), (unequal,))


def test_normalize_default_scale_and_errors():
    layer = NormalizeLayer(param("Normalize", "norm_param { channel_shared: false }"), [(1, 3, 2, 2)], NetContext())
    assert layer.blobs[0].shape == (3,) and torch.all(layer.blobs[0] == 1)
    with pytest.raises(ShapeError, match="n1"):
        NormalizeLayer(param("Normalize", "", "n1"), [(3,)], NetContext())


def test_permute_gradcheck_and_completion():
    layer = PermuteLayer(param("Permute", "permute_param { order: 0 order: 3 }"), [(2, 3, 4, 5)], NetContext())
    assert layer.order == [0, 3, 1, 2] and layer.top_shapes == [(2, 5, 3, 4)]
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    with pytest.raises(ShapeError, match="p1"):
        PermuteLayer(param("Permute", "permute_param { order: 4 }", "p1"), [(2, 3, 4, 5)], NetContext())
    with pytest.raises(ProtonetError, match="duplicate"):
        PermuteLayer(param("Permute", "permute_param { order: 1 order: 1 }", "p1"), [(2, 3, 4, 5)], NetContext())


# --- DetectionOutput against a loop port -----------------------------------------------------


def ref_detection_output(p, loc, conf, prior, arm_conf=None, arm_loc=None):
    """Image by image, class by class, as the fork's Forward_cpu."""
    N, P, C = loc.shape[0], prior.shape[2] // 4, p.num_classes
    Lc = 1 if p.share_location else C
    pri, var = prior[0, 0].view(P, 4), prior[0, 1].view(P, 4)
    thr = np.float32(p.confidence_threshold) if p.HasField("confidence_threshold") else -np.finfo(np.float32).max
    top_k = p.nms_param.top_k if p.nms_param.HasField("top_k") else -1
    rows = []
    for i in range(N):
        base = pri
        if arm_loc is not None:
            base = box.decode(arm_loc[i].view(P, 4), pri, var, p.code_type, p.variance_encoded_in_target)
        scores = conf[i].view(P, C).clone()
        if arm_conf is not None:
            empty = arm_conf[i].view(P, 2)[:, 1] < p.objectness_score
            scores[empty] = 0
            scores[empty, 0] = 1
        decoded = {}
        for c in range(Lc):
            decoded[c] = box.decode(loc[i].view(P, Lc, 4)[:, c], base, var, p.code_type,
                                    p.variance_encoded_in_target).numpy()
        indices = {}
        for c in range(C):
            if c == p.background_label_id:
                continue
            b = decoded[0 if p.share_location else c]
            indices[c] = ref_nms(list(b), list(scores[:, c].numpy()), thr, p.nms_param.nms_threshold,
                                 p.nms_param.eta, top_k)
        total = sum(len(v) for v in indices.values())
        if p.keep_top_k > -1 and total > p.keep_top_k:
            pairs = [(float(scores[j, c]), c, j) for c in sorted(indices) for j in indices[c]]
            pairs.sort(key=lambda t: -t[0])
            new = {}
            for _, c, j in pairs[:p.keep_top_k]:
                new.setdefault(c, []).append(j)
            indices = new
        for c in sorted(indices):
            b = decoded[0 if p.share_location else c]
            for j in indices[c]:
                rows.append([i, c, float(scores[j, c])] + list(b[j]))
    if not rows:
        return np.array([[i, -1, -1, -1, -1, -1, -1] for i in range(N)], dtype=np.float32)
    return np.array(rows, dtype=np.float32)


def random_detection_inputs(gen, N, P, C, Lc, logit_std=3.0):
    prior = torch.from_numpy(np.concatenate([
        np.concatenate([(xy := gen.uniform(0, 0.8, (P, 2))), xy + gen.uniform(0.05, 0.3, (P, 2))], 1).reshape(-1),
        np.tile([0.1, 0.1, 0.2, 0.2], P)]).astype(np.float32)).view(1, 2, -1)
    loc = torch.tensor(gen.normal(0, 0.5, (N, P * Lc * 4)), dtype=torch.float32)
    conf = torch.softmax(torch.tensor(gen.normal(0, logit_std, (N, P, C)), dtype=torch.float32), -1).view(N, -1)
    return loc, conf, prior


DO_CASES = {
    "no_share_corner": "share_location: false code_type: CORNER keep_top_k: 30 confidence_threshold: 0.05 "
                       "nms_param { nms_threshold: 0.5 top_k: 50 }",
    "eta": "code_type: CENTER_SIZE keep_top_k: -1 confidence_threshold: 0.05 "
           "nms_param { nms_threshold: 0.8 top_k: 60 eta: 0.9 }",
    "variance_in_target_corner_size": "code_type: CORNER_SIZE variance_encoded_in_target: true keep_top_k: 25 "
                                      "confidence_threshold: 0.1 nms_param { nms_threshold: 0.3 }",
    "no_threshold_background_2": "code_type: CENTER_SIZE background_label_id: 2 keep_top_k: 40 "
                                 "nms_param { nms_threshold: 0.45 top_k: 20 }",
}


@pytest.mark.parametrize("case", sorted(DO_CASES))
def test_detection_output_equals_reference(case):
    gen = np.random.default_rng(7)
    p = param("DetectionOutput", f"detection_output_param {{ num_classes: 4 {DO_CASES[case]} }}", "det")
    dp = p.detection_output_param
    Lc = 1 if dp.share_location else 4
    loc, conf, prior = random_detection_inputs(gen, 3, 80, 4, Lc)
    layer = DetectionOutputLayer(p, [tuple(loc.shape), tuple(conf.shape), tuple(prior.shape)], NetContext())
    out = layer(loc, conf, prior)[0, 0].numpy()
    ref = ref_detection_output(dp, loc, conf, prior)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)


def test_detection_output_refinedet_equals_reference():
    gen = np.random.default_rng(8)
    p = param("DetectionOutput", "detection_output_param { num_classes: 3 code_type: CENTER_SIZE keep_top_k: 20 "
                                 "confidence_threshold: 0.2 objectness_score: 0.4 nms_param { nms_threshold: 0.45 } }")
    loc, conf, prior = random_detection_inputs(gen, 2, 60, 3, 1)
    arm_conf = torch.softmax(torch.tensor(gen.normal(0, 2, (2, 60, 2)), dtype=torch.float32), -1).view(2, -1)
    arm_loc = torch.tensor(gen.normal(0, 0.3, (2, 240)), dtype=torch.float32)
    layer = DetectionOutputLayer(p, [tuple(t.shape) for t in (loc, conf, prior, arm_conf, arm_loc)], NetContext())
    out = layer(loc, conf, prior, arm_conf, arm_loc)[0, 0].numpy()
    ref = ref_detection_output(p.detection_output_param, loc, conf, prior, arm_conf, arm_loc)
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)


def test_detection_output_writes_voc_and_coco_files(tmp_path):
    (tmp_path / "labelmap.prototxt").write_text(
        "item { name: 'none' label: 0 display_name: 'background' }\n"
        "item { name: 'cat' label: 1 display_name: 'cat' }\nitem { name: 'dog' label: 2 display_name: 'dog' }\n")
    (tmp_path / "sizes.txt").write_text("img_a 100 200\nimg_b 50 80\n")
    gen = np.random.default_rng(9)
    loc, conf, prior = random_detection_inputs(gen, 2, 40, 3, 1)
    outputs = {}
    for fmt in ("VOC", "COCO"):
        out_dir = tmp_path / fmt
        p = param("DetectionOutput", f"""detection_output_param {{ num_classes: 3 code_type: CENTER_SIZE keep_top_k: 10
            confidence_threshold: 0.3 nms_param {{ nms_threshold: 0.45 }}
            save_output_param {{ output_directory: '{out_dir}' output_name_prefix: 'det_' output_format: '{fmt}'
              label_map_file: '{tmp_path / "labelmap.prototxt"}' name_size_file: '{tmp_path / "sizes.txt"}'
              num_test_image: 2 }} }}""")
        layer = DetectionOutputLayer(p, [tuple(t.shape) for t in (loc, conf, prior)], NetContext())
        outputs[fmt] = layer(loc, conf, prior)[0, 0].numpy()
    rows = outputs["VOC"]
    voc = {name: (tmp_path / "VOC" / f"det_{name}.txt").read_text().splitlines() for name in ("cat", "dog")}
    assert sum(len(v) for v in voc.values()) == len(rows)
    sizes = {0: ("img_a", 100, 200), 1: ("img_b", 50, 80)}
    first = rows[0]
    name, h, w = sizes[int(first[0])]
    line = voc["cat" if first[1] == 1 else "dog"][0].split()
    assert line[0] == name and float(line[1]) == pytest.approx(float(first[2]), rel=1e-5)
    x0 = int(round(float(np.clip(first[3], 0, 1)) * w * 100) / 100)
    assert int(line[2]) == x0
    coco = json.loads((tmp_path / "COCO" / "det_.json").read_text())
    assert len(coco) == len(rows)
    assert {d["category_id"] for d in coco} <= {"cat", "dog"}
    assert set(coco[0]) == {"image_id", "category_id", "bbox", "score"}


def test_detection_output_errors():
    with pytest.raises(ProtonetError, match="num_classes"):
        DetectionOutputLayer(param("DetectionOutput", "detection_output_param { }", "d1"),
                             [(1, 16), (1, 12), (1, 2, 16)], NetContext())
    with pytest.raises(ShapeError, match="d1"):
        DetectionOutputLayer(param("DetectionOutput", "detection_output_param { num_classes: 3 }", "d1"),
                             [(1, 16), (1, 10), (1, 2, 16)], NetContext())


# --- DetectionEvaluate ---------------------------------------------------------------------


def test_detection_evaluate_pixel_coordinates(tmp_path):
    (tmp_path / "sizes.txt").write_text("a 100 100\nb 100 100\n")
    p = param("DetectionEvaluate", f"detection_evaluate_param {{ num_classes: 3 background_label_id: 0 "
                                   f"overlap_threshold: 0.5 evaluate_difficult_gt: false "
                                   f"name_size_file: '{tmp_path / 'sizes.txt'}' }}")
    det = torch.tensor([[0, 1, 0.9, 0.10, 0.10, 0.30, 0.30],   # tp
                        [0, 1, 0.8, 0.10, 0.10, 0.30, 0.30],   # duplicate: fp
                        [0, 2, 0.7, 0.50, 0.50, 0.60, 0.60],   # no gt of label 2: fp
                        [1, 1, 0.6, 0.00, 0.00, 0.10, 0.10]]).view(1, 1, -1, 7)
    gt = torch.tensor([[0, 1, 0, 0.10, 0.10, 0.30, 0.31, 0],
                       [1, 1, 0, 0.50, 0.50, 0.70, 0.70, 0],
                       [1, 2, 0, 0.50, 0.50, 0.70, 0.70, 1]]).view(1, 1, -1, 8)
    layer = DetectionEvaluateLayer(p, [tuple(det.shape), tuple(gt.shape)], NetContext())
    out = layer(det, gt)[0, 0].tolist()
    assert out[:2] == [[-1, 1, 2, -1, -1], [-1, 2, 0, -1, -1]]
    assert [r[3:] for r in out[2:]] == [[1, 0], [0, 1], [0, 1], [0, 1]]
    assert layer.count == 0  # two images with detections: wrapped around the two sizes


# --- no Python loop over the batch -----------------------------------------------------------


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


def ssd300_priors():
    maps = [(38, 30, 60, [2], 8), (19, 60, 111, [2, 3], 16), (10, 111, 162, [2, 3], 32),
            (5, 162, 213, [2, 3], 64), (3, 213, 264, [2], 100), (1, 264, 315, [2], 300)]
    out = []
    for size, mn, mx, ars, step in maps:
        p = param("PriorBox", f"prior_box_param {{ min_size: {mn} max_size: {mx} "
                              f"{' '.join(f'aspect_ratio: {a}' for a in ars)} flip: true clip: false "
                              f"variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 step: {step} offset: 0.5 }}")
        out.append(PriorBoxLayer(p, [(1, 1, size, size), (1, 3, 300, 300)], NetContext()).priors(size, size, 300, 300))
    return torch.from_numpy(np.concatenate(out, axis=1))[None]


SSD_LOSS = ("multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0 num_classes: 21 "
            "share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true "
            "background_label_id: 0 use_difficult_gt: true neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE "
            "mining_type: MAX_NEGATIVE } loss_param { normalization: VALID }")
SSD_OUT = ("detection_output_param { num_classes: 21 share_location: true background_label_id: 0 "
           "nms_param { nms_threshold: 0.45 top_k: 400 } code_type: CENTER_SIZE keep_top_k: 200 "
           "confidence_threshold: 0.01 }")


def ssd300_batch(num, gen):
    """SSD300 sizes (8732 priors, 21 classes) with scores like a trained net's: background
    dominant, a few confident priors per image; three objects per image. The batch repeats
    one image so that every image has the same work."""
    P = 8732
    logits = gen.normal(0, 1, (1, P, 21)).astype(np.float32)
    logits[..., 0] += 8
    hot = gen.choice(P, 60, replace=False)
    logits[0, hot, gen.integers(1, 21, 60)] += 9
    conf = torch.softmax(torch.from_numpy(logits), -1).reshape(1, -1).repeat(num, 1)
    loc = torch.tensor(gen.normal(0, 0.3, (1, P * 4)), dtype=torch.float32).repeat(num, 1)
    rows = [[i, 1 + k * 5, k, 0.1 + 0.25 * k, 0.2, 0.35 + 0.25 * k, 0.6, 0] for i in range(num) for k in range(3)]
    label = torch.tensor(rows, dtype=torch.float32).view(1, 1, -1, 8)
    return loc, conf, label


def run_loss(layer, loc, logits, prior, label):
    loc = loc.clone().requires_grad_(True)
    logits = logits.clone().requires_grad_(True)
    layer(loc, logits, prior, label).backward()


@pytest.fixture(scope="module")
def ssd300():
    return ssd300_priors()


def test_no_python_loop_over_the_batch_op_counts(ssd300):
    """The torch ops dispatched for a batch of 8 are those for a batch of 1: a loop over images
    would multiply them by 8. (Only NMS splits its pairwise overlap test into row blocks of
    bounded memory, and reshapes may turn into copies, so the counts may differ by a little.)"""
    counts = {}
    for num in (1, 8):
        loc, conf, label = ssd300_batch(num, np.random.default_rng(0))
        loss = MultiBoxLossLayer(param("MultiBoxLoss", SSD_LOSS), [tuple(loc.shape), tuple(conf.shape),
                                                                    tuple(ssd300.shape), tuple(label.shape)],
                                 NetContext())
        out = DetectionOutputLayer(param("DetectionOutput", SSD_OUT), [tuple(loc.shape), tuple(conf.shape),
                                                                       tuple(ssd300.shape)], NetContext())
        logits = torch.log(conf)
        with CountOps() as c_loss:
            run_loss(loss, loc, logits, ssd300, label)
        with CountOps() as c_out:
            det = out(loc, conf, ssd300)
        counts[num] = (c_loss.count, c_out.count)
        assert det.shape[2] == num * 200
    assert counts[8][0] <= 1.05 * counts[1][0], counts
    assert counts[8][1] <= 1.05 * counts[1][1], counts
