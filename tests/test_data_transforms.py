"""Random parts of the SSD data path: sampler constraints, emit constraints, mirror, expand,
probabilities; and the deterministic resize modes (boxes follow the pixels)."""
import math

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protonet import caffe_pb2
from protonet.data import image_ops as ops
from protonet.data.records import Sample
from protonet.data.sampler import generate_windows
from protonet.data.transform import AnnotatedPipeline, Transformer
from protonet.io.prototxt import parse_prototxt

FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def tp(text):
    return parse_prototxt(text, caffe_pb2.TransformationParameter(), "t")


def sampler(text):
    return parse_prototxt(text, caffe_pb2.BatchSampler(), "s")


def iou(a, b):  # reference, in float64
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter) if inter > 0 else 0.0


def inter_area(a, b):
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


box_st = st.tuples(st.floats(0, 0.9), st.floats(0, 0.9), st.floats(0.02, 1), st.floats(0.02, 1)) \
    .map(lambda t: (t[0], t[1], min(1.0, t[0] + t[2]), min(1.0, t[1] + t[3])))


@FAST
@given(boxes=st.lists(box_st, min_size=1, max_size=4), seed=st.integers(0, 2**31),
       kind=st.sampled_from(["jaccard", "sample", "object", "all"]),
       lo=st.floats(0.05, 0.6), scale=st.floats(0.1, 1), ratio=st.floats(0.3, 3))
def test_every_window_satisfies_its_sampler(boxes, seed, kind, lo, scale, ratio):
    cons = {"jaccard": f"min_jaccard_overlap: {lo}",
            "sample": f"min_sample_coverage: {lo} max_sample_coverage: 1",
            "object": f"min_object_coverage: {lo}",
            "all": f"min_jaccard_overlap: {lo / 4} max_object_coverage: 1 min_sample_coverage: {lo / 4}"}[kind]
    lo_r, hi_r = sorted((ratio, 1 / ratio))
    bs = sampler(f"sampler {{ min_scale: {scale} max_scale: 1 min_aspect_ratio: {lo_r} "
                 f"max_aspect_ratio: {hi_r} }} sample_constraint {{ {cons} }} max_trials: 30 "
                 f"max_sample: 3")
    windows = generate_windows(np.array(boxes, np.float32), [bs], np.random.default_rng(seed))
    assert len(windows) <= 3
    c = bs.sample_constraint
    eps = 1e-5
    for w in windows:
        w = [float(v) for v in w]
        assert 0 <= w[0] < w[2] <= 1 + eps and 0 <= w[1] < w[3] <= 1 + eps
        ww, wh = w[2] - w[0], w[3] - w[1]
        assert scale - eps <= math.sqrt(ww * wh) <= 1 + eps
        # aspect ratio drawn in [lo_r, hi_r], then kept within [s^2, 1/s^2] so both sides fit
        s2 = ww * wh
        lo_ar = min(max(lo_r, s2), 1 / s2)
        hi_ar = min(max(hi_r, s2), 1 / s2)
        assert lo_ar * (1 - 1e-3) <= ww / wh <= hi_ar * (1 + 1e-3)

        def ok(b):
            j = iou(w, b)
            sc = inter_area(w, b) / (ww * wh)
            oc = inter_area(w, b) / ((b[2] - b[0]) * (b[3] - b[1]))
            return all([
                not c.HasField("min_jaccard_overlap") or j >= c.min_jaccard_overlap - eps,
                not c.HasField("min_sample_coverage") or sc >= c.min_sample_coverage - eps,
                not c.HasField("max_sample_coverage") or sc <= c.max_sample_coverage + eps,
                not c.HasField("min_object_coverage") or oc >= c.min_object_coverage - eps,
                not c.HasField("max_object_coverage") or oc <= c.max_object_coverage + eps])

        assert any(ok(b) for b in boxes)


def test_unconstrained_sampler_and_max_trials():
    rng = np.random.default_rng(0)
    free = sampler("sampler { min_scale: 0.5 } max_trials: 7")
    assert len(generate_windows(np.zeros((0, 4), np.float32), [free], rng)) == 7
    strict = sampler("sampler { min_scale: 0.3 } sample_constraint { min_jaccard_overlap: 0.5 } "
                     "max_trials: 20 max_sample: 1")
    assert generate_windows(np.zeros((0, 4), np.float32), [strict], rng) == []
    # a full-size window: no abort on a width a hair above 1 (Caffe's SampleBBox), clamped
    whole = sampler("sampler { min_scale: 1 max_scale: 1 min_aspect_ratio: 0.9999999 "
                    "max_aspect_ratio: 1.0000001 } max_trials: 50")
    for w in generate_windows(np.zeros((0, 4), np.float32), [whole], rng):
        assert w[2] - w[0] <= 1 and w[3] - w[1] <= 1


def sample_with(boxes, h=40, w=50, seed=0):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    n = len(boxes)
    return Sample("k", img, annotated=True, boxes=np.array(boxes, np.float32).reshape(-1, 4),
                  labels=np.arange(1, n + 1), instance_ids=np.zeros(n, np.int64),
                  difficult=np.zeros(n, bool))


@FAST
@given(boxes=st.lists(box_st, min_size=1, max_size=5), window=box_st,
       emit=st.sampled_from(["emit_type: CENTER", "emit_type: MIN_OVERLAP emit_overlap: 0.3"]))
def test_every_emitted_box_meets_the_emit_constraint(boxes, window, emit):
    t = Transformer(tp(f"emit_constraint {{ {emit} }}"))
    s = sample_with(boxes)
    out = t.crop_to_window(s, np.array(window, np.float32))
    src = [[float(v) for v in b] for b in boxes]
    kept = [src[i] for i in range(len(src)) if (i + 1) in out.labels.tolist()]
    for b in kept:
        if "CENTER" in emit:
            cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
            assert window[0] - 1e-6 <= cx <= window[2] + 1e-6 and window[1] - 1e-6 <= cy <= window[3] + 1e-6
        else:
            assert inter_area(b, window) / ((b[2] - b[0]) * (b[3] - b[1])) > 0.3 - 1e-5
    assert np.all((out.boxes >= 0) & (out.boxes <= 1))
    assert np.all(out.boxes[:, 2] >= out.boxes[:, 0]) and np.all(out.boxes[:, 3] >= out.boxes[:, 1])


@FAST
@given(boxes=st.lists(box_st, min_size=1, max_size=4), seed=st.integers(0, 2**31))
def test_mirroring_twice_is_identity(boxes, seed):
    t = Transformer(tp("mirror: true"))
    s = sample_with(boxes, seed=seed % 7)
    rng = np.random.default_rng(seed)
    outs = [t.transform(s, rng) for _ in range(6)]
    plain = Transformer(tp("")).transform(s, rng)
    flipped = [o for o in outs if not np.array_equal(o[0], plain[0])]
    for data, out in flipped:
        assert np.array_equal(data[:, :, ::-1], plain[0])
        back = out.boxes.copy()
        back[:, [0, 2]] = 1 - out.boxes[:, [2, 0]]
        assert np.allclose(back, plain[1].boxes, atol=1e-6)
        again = back.copy()
        again[:, [0, 2]] = 1 - back[:, [2, 0]]
        assert np.allclose(again, out.boxes, atol=1e-6)


@FAST
@given(seed=st.integers(0, 2**31), x0=st.integers(0, 30), y0=st.integers(0, 20),
       bw=st.integers(2, 19), bh=st.integers(2, 19))
def test_expand_keeps_boxes_on_the_same_pixels(seed, x0, y0, bw, bh):
    h, w = 40, 50
    box = [x0 / w, y0 / h, (x0 + bw) / w, (y0 + bh) / h]
    s = sample_with([box], h, w, seed=seed % 5)
    t = Transformer(tp("mean_value: 1 mean_value: 2 mean_value: 3 "
                       "expand_param { prob: 1 max_expand_ratio: 3 }"))
    out = t.expand(s, np.random.default_rng(seed))
    canvas = out.pixels()
    eh, ew = canvas.shape[:2]
    assert out.size == (eh, ew)
    assert eh >= h and ew >= w
    bx = out.boxes[0]
    px = [int(round(bx[0] * ew)), int(round(bx[1] * eh)), int(round(bx[2] * ew)), int(round(bx[3] * eh))]
    assert np.array_equal(canvas[px[1]:px[3], px[0]:px[2]], s.image[y0:y0 + bh, x0:x0 + bw])
    # the canvas outside the image holds the mean
    ox, oy = px[0] - x0, px[1] - y0
    assert np.array_equal(canvas[oy:oy + h, ox:ox + w], s.image)
    mask = np.ones((eh, ew), bool)
    mask[oy:oy + h, ox:ox + w] = False
    assert np.all(canvas[mask] == [1, 2, 3])
    # a region drawn on its own equals the same region of the whole canvas
    assert np.array_equal(out.pixels(oy - 3 if oy >= 3 else 0, 2, 9, 11),
                          canvas[oy - 3 if oy >= 3 else 0:, 2:][:9, :11])


def binomial_ok(count, n, p):
    return abs(count - n * p) <= 4.5 * math.sqrt(n * p * (1 - p)) + 1


def test_frequencies_match_probabilities():
    n = 600
    rng = np.random.default_rng(11)
    s = sample_with([[0.2, 0.2, 0.6, 0.7]], 12, 16)
    # mirror: a fair coin
    t = Transformer(tp("mirror: true"))
    ref = Transformer(tp("")).transform(s, rng)[0]
    mirrored = sum(not np.array_equal(t.transform(s, rng)[0], ref) for _ in range(n))
    assert binomial_ok(mirrored, n, 0.5)
    # expand with prob 0.3
    t = Transformer(tp("expand_param { prob: 0.3 max_expand_ratio: 2 }"))
    expanded = sum(t.expand(s, rng).size != s.image.shape[:2] for _ in range(n))
    assert binomial_ok(expanded, n, 0.3)
    # each distortion with its own probability
    for field, p in (("brightness", 0.2), ("contrast", 0.7), ("hue", 0.4)):
        extra = {"brightness": "brightness_delta: 32", "contrast": "contrast_lower: 0.5 contrast_upper: 1.5",
                 "hue": "hue_delta: 18"}[field]
        t = Transformer(tp(f"distort_param {{ {field}_prob: {p} {extra} }}"))
        changed = sum(not np.array_equal(t.distort(s, rng).pixels(), s.image) for _ in range(n))
        assert binomial_ok(changed, n, p), (field, changed)
    t = Transformer(tp("distort_param { random_order_prob: 0.5 }"))
    perm = sum(not np.array_equal(t.distort(s, rng).pixels(), s.image) for _ in range(n))
    assert binomial_ok(perm, n, 0.5 * 5 / 6)  # 1 of the 6 orders is the identity


def test_batch_sampler_pick_is_uniform_over_kept_windows():
    bss = [sampler("sampler { min_scale: 0.5 } max_trials: 1 max_sample: 1"),
           sampler("max_trials: 1 max_sample: 1")]
    pipe = AnnotatedPipeline(Transformer(tp("")), bss)
    rng = np.random.default_rng(3)
    s = sample_with([[0.1, 0.1, 0.9, 0.9]], 20, 20)
    full = sum(pipe(s, rng)[0].shape == (3, 20, 20) for _ in range(400))
    assert binomial_ok(full, 400, 0.5)


@pytest.mark.parametrize("mode,size", [("FIT_LARGE_SIZE_AND_PAD", (30, 30)),
                                       ("FIT_LARGE_SIZE_AND_PAD", (20, 60)),
                                       ("FIT_SMALL_SIZE", (30, 30)), ("WARP", (25, 35))])
def test_resize_modes_boxes_follow_pixels(mode, size):
    h, w = 40, 80
    img = np.zeros((h, w, 3), np.uint8)
    img[10:30, 20:60] = 255
    box = [20 / w, 10 / h, 60 / w, 30 / h]
    s = sample_with([box], h, w)
    s.image = img
    t = Transformer(tp(f"resize_param {{ resize_mode: {mode} height: {size[0]} width: {size[1]} "
                       f"interp_mode: NEAREST pad_value: 0 }}"))
    data, out = t.transform(s, np.random.default_rng(0))
    oh, ow = data.shape[1:]
    assert (oh, ow) == ((30, 60) if mode == "FIT_SMALL_SIZE" else size)
    ys, xs = np.nonzero(data[0] > 127)
    found = [xs.min() / ow, ys.min() / oh, (xs.max() + 1) / ow, (ys.max() + 1) / oh]
    assert np.allclose(out.boxes[0], found, atol=1.5 / min(oh, ow))
    assert t.output_shape(h, w, 3) == data.shape


def test_noise_and_crop_test_phase():
    s = sample_with([[0.1, 0.1, 0.5, 0.5]], 20, 30)
    t = Transformer(tp("crop_size: 10 noise_param { decolorize: true inverse: true }"),
                    phase=caffe_pb2.TEST)
    data, out = t.transform(s, np.random.default_rng(0))
    gray = cv2.cvtColor(s.image, cv2.COLOR_BGR2GRAY)[5:15, 10:20]
    assert np.array_equal(data[0], (255 - gray).astype(np.float32))
    np.testing.assert_allclose(out.boxes[0], [0.0, 0.0, (15 - 10) / 10, (10 - 5) / 10], atol=1e-6)


def test_test_phase_runs_only_the_deterministic_part():
    text = ("mirror: true mean_value: 1 resize_param { height: 16 width: 16 interp_mode: NEAREST "
            "interp_mode: CUBIC } distort_param { brightness_prob: 1 brightness_delta: 30 } "
            "expand_param { prob: 1 max_expand_ratio: 3 }")
    bss = [sampler("sampler { min_scale: 0.3 } max_trials: 5")]
    s = sample_with([[0.2, 0.2, 0.6, 0.7]], 20, 24)
    test = AnnotatedPipeline(Transformer(tp(text), caffe_pb2.TEST), bss)
    assert test.skipped_in_test() == ["distort_param", "expand_param", "batch_sampler", "mirror"]
    ref = cv2.resize(s.image, (16, 16), interpolation=cv2.INTER_NEAREST).astype(np.float32) - 1
    for seed in range(5):
        data, out = test(s, np.random.default_rng(seed))
        assert np.array_equal(data, ref.transpose(2, 0, 1))
        np.testing.assert_array_equal(out.boxes, s.boxes)
    train = AnnotatedPipeline(Transformer(tp(text), caffe_pb2.TRAIN), bss)
    assert train.skipped_in_test() == []
    assert any(not np.array_equal(train(s, np.random.default_rng(k))[0], data) for k in range(5))


def test_deferred_distortion_equals_distorting_first():
    """The distortion is applied to the cropped pixels only. Per-pixel maps make that the same,
    up to OpenCV's own rounding: its HSV->BGR rounds a row's SIMD body and scalar tail apart by
    1, which a later contrast step (x1.5) and a second HSV round trip can grow to a few levels."""
    text = ("mean_value: 104 mean_value: 117 mean_value: 123 distort_param { brightness_prob: 0.7 "
            "brightness_delta: 32 contrast_prob: 0.7 contrast_lower: 0.5 contrast_upper: 1.5 "
            "saturation_prob: 0.7 saturation_lower: 0.5 saturation_upper: 1.5 hue_prob: 0.7 "
            "hue_delta: 18 random_order_prob: 0.5 } expand_param { prob: 0.7 max_expand_ratio: 3 }")
    t = Transformer(tp(text))
    s = sample_with([[0.2, 0.2, 0.6, 0.7]], 30, 40)
    for seed in range(30):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        lazy = t.expand(t.distort(s, a), a)
        plan = ops.distort_plan(t.param.distort_param, b)
        eager = s.with_boxes(ops.apply_distort(s.image, plan), s.boxes, slice(None))
        eager = t.expand(eager, b)
        window = np.array([0.1, 0.25, 0.8, 0.9], np.float32)
        a = t.crop_to_window(lazy, window).image.astype(int)
        b = t.crop_to_window(eager, window).image.astype(int)
        assert np.abs(a - b).max() <= 4
        assert np.array_equal(lazy.pixels(), eager.pixels())  # whole image: same calls
