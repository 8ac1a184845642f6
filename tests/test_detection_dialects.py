"""Other dialects' PriorBox, DetectionOutput and pooling options: against OpenCV where it runs them,
against the defining fork's formula otherwise."""
import numpy as np
import pytest
import torch

from protonet.errors import ProtonetError
from test_layers_dialects import build, close, opencv, rand

FEAT, IMG = (1, 2, 3, 4), (1, 3, 30, 40)


def priors(params, feat=FEAT, img=IMG):
    text = f'name: "pb" type: "PriorBox" bottom: "f" bottom: "img" top: "pb" prior_box_param {{ {params} }}'
    layer = build(text, feat, img)
    with torch.no_grad():
        return text, layer(torch.zeros(feat), torch.zeros(img)).numpy()


# --------------------------------------------------------------------------------- PriorBox
@pytest.mark.parametrize("params", [
    "min_size: 8 aspect_ratio: 2 offset_h: 0.2 offset_w: 0.7",
    "min_size: 8 max_size: 12 aspect_ratio: 2 offset_h: 0 offset_h: 0.5 offset_w: 0 offset_w: 0.5",
    "width: 5 width: 8 height: 9 height: 4",
    "width: 5 width: 8 height: 9 height: 4 offset_h: 0 offset_h: 0.5 offset_w: 0 offset_w: 0.5 step: 10",
])
def test_priorbox_opencv_options_match_opencv(tmp_path, params):
    text, ours = priors(params + " clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2")
    theirs = opencv(tmp_path, text, {"f": np.zeros(FEAT, np.float32), "img": np.zeros(IMG, np.float32)})
    close(ours, theirs.reshape(ours.shape))


def test_priorbox_offsets_and_pixel_priors_formula():
    """OpenCV's prior_box_layer.cpp: per cell, each box at each (offset_w, offset_h): centre
    ((w + off_w) * step_w, (h + off_h) * step_h); pixel priors (normalized_bbox: false) are
    [cx - bw/2, cy - bh/2, cx + bw/2 - 1, cy + bh/2 - 1]. (OpenCV sizes its output for more than two
    offsets as 2(n - 1) per box, a bug: protonet writes one prior per offset.)"""
    off = [0.0, 0.5, 0.75]
    params = ("width: 6 height: 4 normalized_bbox: false step: 10 " + " ".join(f"offset_h: {o} offset_w: {o}" for o in off))
    _, out = priors(params)
    boxes = out[0, 0].reshape(3, 4, 3, 4)  # rows, columns, offsets, coordinates
    for h in range(3):
        for w in range(4):
            for j, o in enumerate(off):
                cx, cy = (w + o) * 10, (h + o) * 10
                close(boxes[h, w, j], np.float32([cx - 3, cy - 2, cx + 3 - 1, cy + 2 - 1]))
    with pytest.raises(ProtonetError, match="offset_h and offset_w"):
        priors("min_size: 8 offset_h: 0.5")
    with pytest.raises(ProtonetError, match="width/height need as many heights as widths and no min_size"):
        priors("min_size: 8 width: 5 height: 5")


def ssd_boxes(sizes, cx, cy, img_w, img_h):
    return np.float32([[(cx - w / 2) / img_w, (cy - h / 2) / img_h, (cx + w / 2) / img_w, (cy + h / 2) / img_h]
                       for w, h in sizes])


def test_priorbox_tf_converter_orders_and_yx():
    """Synopsys Caffe's prior_box_layer.cpp: tf puts sqrt(min*max) after the ratios and narrows the
    min_size-60 box by 0.05 a side; keras puts it first and every flipped ratio after all ratios;
    yx_order writes [ymin, xmin, ymax, xmax]; box_width/box_height list the boxes."""
    base = "step: 10 clip: false variance: 0.1 "
    r2, r3 = np.sqrt(np.float32(2)), np.sqrt(np.float32(3))
    cx = cy = 5.0  # cell (0, 0)
    _, tf = priors(base + "tf: true min_size: 60 max_size: 90 aspect_ratio: 2")
    want = ssd_boxes([(60, 60), (60 * r2, 60 / r2), (60 / r2, 60 * r2), (np.sqrt(60 * 90),) * 2], cx, cy, 40, 30)
    want[0] += np.float32([0.05, 0.05, -0.05, -0.05])
    close(tf[0, 0, :16].reshape(4, 4), want)
    _, keras = priors(base + "keras: true min_size: 8 max_size: 12 aspect_ratio: 2 aspect_ratio: 3")
    sizes = [(np.sqrt(96),) * 2, (8, 8), (8 * r2, 8 / r2), (8 * r3, 8 / r3), (8 / r2, 8 * r2), (8 / r3, 8 * r3)]
    close(keras[0, 0, :24].reshape(6, 4), ssd_boxes(sizes, cx, cy, 40, 30))
    _, yx = priors(base + "yx_order: true box_width: 6 box_height: 4")
    close(yx[0, 0, :4], ssd_boxes([(6, 4)], cx, cy, 40, 30)[0][[1, 0, 3, 2]])


# -------------------------------------------------------------------------- DetectionOutput
def detection_inputs(seed=0, scale=1.0, num_priors=50):
    rng = np.random.RandomState(seed)
    centre = rng.rand(num_priors, 2) * 1.2 - 0.1
    size = rng.rand(num_priors, 2) * 0.4 + 0.05
    boxes = (np.concatenate([centre - size / 2, centre + size / 2], 1) * scale).reshape(-1)
    variance = np.tile([0.1, 0.1, 0.2, 0.2], num_priors)
    prior = np.stack([boxes, variance])[None].astype(np.float32)
    loc = (rng.randn(1, num_priors * 4) * 0.5).astype(np.float32)
    conf = rng.rand(1, num_priors, 3)
    conf = (conf / conf.sum(-1, keepdims=True)).reshape(1, -1).astype(np.float32)
    return {"loc": loc, "conf": conf, "prior": prior}


@pytest.mark.parametrize("extra,scale", [("clip: true code_type: CENTER_SIZE", 1.0),
                                         ("normalized_bbox: false code_type: CENTER_SIZE", 100.0),
                                         ("normalized_bbox: false code_type: CORNER", 100.0)])
def test_detection_output_opencv_fields_match_opencv(tmp_path, extra, scale):
    """OpenCV's detection_output_layer.cpp: clip clamps decoded boxes to [0, 1] before NMS;
    normalized_bbox: false decodes CENTER_SIZE with prior sizes + 1 and overlaps pixel boxes."""
    text = ('name: "detection_out" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" '
            'top: "detection_out" detection_output_param { num_classes: 3 share_location: true background_label_id: 0 '
            'nms_param { nms_threshold: 0.45 '
            f'top_k: 100 }} keep_top_k: 50 confidence_threshold: 0.1 {extra} }}')
    inputs = detection_inputs(scale=scale)
    layer = build(text, *(a.shape for a in inputs.values()))
    with torch.no_grad():
        ours = layer(*(torch.from_numpy(a) for a in inputs.values())).numpy().reshape(-1, 7)
    theirs = opencv(tmp_path, text, inputs).reshape(-1, 7)
    theirs = theirs[~np.all(theirs == 0, axis=1)]
    assert len(ours) == len(theirs) == 50
    order = lambda rows: rows[np.lexsort((rows[:, 3], -rows[:, 2], rows[:, 1]))]  # noqa: E731
    close(order(ours), order(theirs))
    if "clip" in extra:
        assert ours[:, 3:].min() == 0.0 and ours[:, 3:].max() == 1.0


def test_detection_output_pixel_boxes_need_no_clip():
    text = ('name: "d" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "d" '
            'detection_output_param { num_classes: 3 normalized_bbox: false clip: true }')
    with pytest.raises(ProtonetError, match="normalized_bbox: false is supported with code_type CORNER or CENTER_SIZE"):
        build(text, (1, 200), (1, 150), (1, 2, 200))


# ---------------------------------------------------------------------------- pooling rounding
@pytest.mark.parametrize("pool", ["MAX", "AVE"])
def test_pooling_ceil_mode_false_matches_opencv(tmp_path, pool):
    text = f'name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param {{ pool: {pool} kernel_size: 3 stride: 2 ceil_mode: false }}'
    x = rand(1, 2, 8, 9)
    layer = build(text, x.shape)
    assert layer.top_shapes == [(1, 2, 3, 4)]  # floor((8 - 3) / 2) + 1, floor((9 - 3) / 2) + 1
    with torch.no_grad():
        close(layer(torch.from_numpy(x)).numpy(), opencv(tmp_path, text, {"x": x}))


def test_pooling_round_mode():
    """BVLC Caffe's round_mode (after 1.0): FLOOR rounds the output size down; it wins over
    Synopsys' ceil_mode."""
    x = rand(1, 1, 8, 8)
    text = 'name: "p" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: MAX kernel_size: 3 stride: 2 '
    assert build(text + "round_mode: FLOOR }", x.shape).top_shapes == [(1, 1, 3, 3)]
    assert build(text + "round_mode: CEIL ceil_mode: false }", x.shape).top_shapes == [(1, 1, 4, 4)]
    layer = build(text + "round_mode: FLOOR }", x.shape)
    with torch.no_grad():
        y = layer(torch.from_numpy(x)).numpy()
    want = np.array([[x[0, 0, 2 * i:2 * i + 3, 2 * j:2 * j + 3].max() for j in range(3)] for i in range(3)])
    close(y[0, 0], want)
