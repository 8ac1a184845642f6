"""DetectionOutput's graph-friendly algorithm (protonet.detection_decode): the fork's goldens and
the rows of the box.nms path bit for bit, ties as documented, and no host reads or loops whose
trip count depends on the data."""
import pathlib

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from torch.utils._python_dispatch import TorchDispatchMode

from protonet import caffe_pb2
from protonet.detection_decode import (DetectionDecoder, DetectionSettings, detection_output,
                                       detection_output_adaptive)
from test_detection_layers import DO_CASES, param, random_detection_inputs, ref_detection_output

FIX = pathlib.Path(__file__).parent / "fixtures" / "detection"


def settings(text, num_classes=4):
    p = param("DetectionOutput", f"detection_output_param {{ num_classes: {num_classes} {text} }}")
    return DetectionSettings.from_param(p.detection_output_param), p.detection_output_param


def golden_cases():
    out = []
    for path in sorted(FIX.glob("detectionoutput_*.npz")):
        d = np.load(path)
        net = caffe_pb2.NetParameter()
        text_format.Merge(str(d["prototxt"]), net)
        (p,) = [layer for layer in net.layer if layer.type == "DetectionOutput"]
        out.append((path.stem, p.detection_output_param, [torch.tensor(d[b]) for b in p.bottom], d["detection_out"]))
    d = np.load(FIX / "tiny_ssd_mbox_1jpg.npz")
    for key, text in (("detection_out", "deploy_prototxt"), ("detection_out_thr001_keepall", "deploy_thr001_keepall_prototxt")):
        net = caffe_pb2.NetParameter()
        text_format.Merge(str(d[text]), net)
        (p,) = [layer for layer in net.layer if layer.type == "DetectionOutput"]
        bottoms = [torch.from_numpy(d[n]) for n in ("mbox_loc", "mbox_conf_flatten", "mbox_priorbox")]
        out.append((f"tiny_ssd_{key}", p.detection_output_param, bottoms, d[key]))
    return out


@pytest.mark.parametrize("name,p,bottoms,expected", golden_cases(), ids=lambda v: v if isinstance(v, str) else "")
def test_goldens_bit_for_bit(name, p, bottoms, expected):
    s = DetectionSettings.from_param(p)
    new = detection_output(*bottoms[:3], s, *bottoms[3:])
    old = detection_output_adaptive(*bottoms[:3], s, *bottoms[3:])
    assert torch.equal(new, old)
    # The fork's own rows (CPU float arithmetic may differ in the last bit of a decoded box).
    np.testing.assert_allclose(new.numpy(), expected, rtol=1e-5, atol=1e-6)


RANDOM_CASES = dict(DO_CASES)
del RANDOM_CASES["eta"]
RANDOM_CASES.update({
    "classes_not_contiguous": "code_type: CENTER_SIZE background_label_id: 1 keep_top_k: 12 "
                              "confidence_threshold: 0.05 nms_param { nms_threshold: 0.45 top_k: 30 }",
    "no_background": "code_type: CENTER_SIZE background_label_id: -1 keep_top_k: 25 confidence_threshold: 0.1 "
                     "nms_param { nms_threshold: 0.5 top_k: 40 }",
    "keep_top_k_0": "code_type: CENTER_SIZE keep_top_k: 0 confidence_threshold: 0.1 nms_param { nms_threshold: 0.5 top_k: 40 }",
    "top_k_0": "code_type: CENTER_SIZE keep_top_k: 10 confidence_threshold: 0.1 nms_param { nms_threshold: 0.5 top_k: 0 }",
    "nms_threshold_0": "code_type: CENTER_SIZE keep_top_k: -1 confidence_threshold: 0.1 nms_param { nms_threshold: 0 top_k: 40 }",
})


@pytest.mark.parametrize("case", sorted(RANDOM_CASES))
def test_random_cases_equal_the_loop_port_and_the_box_nms_path(case):
    gen = np.random.default_rng(11)
    s, p = settings(RANDOM_CASES[case])
    loc, conf, prior = random_detection_inputs(gen, 3, 80, 4, s.loc_classes)
    new = detection_output(loc, conf, prior, s)
    assert torch.equal(new, detection_output_adaptive(loc, conf, prior, s))
    np.testing.assert_allclose(new[0, 0].numpy(), ref_detection_output(p, loc, conf, prior), rtol=1e-6, atol=1e-7)


def test_refinedet_objectness_and_arm_decode():
    gen = np.random.default_rng(8)
    s, p = settings("code_type: CENTER_SIZE keep_top_k: 20 confidence_threshold: 0.2 objectness_score: 0.4 "
                    "nms_param { nms_threshold: 0.45 top_k: 50 }", num_classes=3)
    loc, conf, prior = random_detection_inputs(gen, 2, 60, 3, 1)
    arm_conf = torch.softmax(torch.tensor(gen.normal(0, 2, (2, 60, 2)), dtype=torch.float32), -1).view(2, -1)
    arm_loc = torch.tensor(gen.normal(0, 0.3, (2, 240)), dtype=torch.float32)
    new = detection_output(loc, conf, prior, s, arm_conf, arm_loc)
    assert torch.equal(new, detection_output_adaptive(loc, conf, prior, s, arm_conf, arm_loc))
    ref = ref_detection_output(p, loc, conf, prior, arm_conf, arm_loc)
    np.testing.assert_allclose(new[0, 0].numpy(), ref, rtol=1e-6, atol=1e-7)


def test_ties_go_to_the_lower_prior_then_the_lower_class():
    """Equal scores: the lower prior index ranks first (top_k cuts inside a tie), and keep_top_k
    keeps the lower class, then the earlier rank."""
    gen = np.random.default_rng(3)
    s, p = settings("code_type: CENTER_SIZE keep_top_k: 7 confidence_threshold: 0.1 "
                    "nms_param { nms_threshold: 0.99 top_k: 5 }", num_classes=3)
    loc, _, prior = random_detection_inputs(gen, 2, 30, 3, 1)
    conf = torch.full((2, 30, 3), 0.2)
    conf[:, ::4, 1] = 0.5  # eight tied priors in class 1, cut to five by top_k
    conf[:, 1::5, 2] = 0.5  # six tied in class 2
    conf = conf.view(2, -1)
    new = detection_output(loc, conf, prior, s)
    ref = ref_detection_output(p, loc, conf, prior)
    np.testing.assert_allclose(new[0, 0].numpy(), ref, rtol=1e-6, atol=1e-7)
    rows = new[0, 0]
    assert rows[rows[:, 0] == 0, 1].tolist() == [1] * 5 + [2] * 2


def test_nothing_kept_gives_one_row_per_image():
    gen = np.random.default_rng(5)
    s, _ = settings("code_type: CENTER_SIZE confidence_threshold: 0.999 nms_param { nms_threshold: 0.45 top_k: 10 }")
    loc, conf, prior = random_detection_inputs(gen, 3, 40, 4, 1)
    out = detection_output(loc, conf, prior, s)
    assert out.tolist() == [[[[i, -1, -1, -1, -1, -1, -1] for i in range(3)]]]


class HostReads:
    """Counts the tensor methods that read a value on the host (a sync on a GPU)."""

    NAMES = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")

    def __init__(self, monkeypatch):
        self.calls = []
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)

            def counting(t, *a, _name=name, _original=original, **k):
                self.calls.append(_name)
                return _original(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, counting)


class OpLog(TorchDispatchMode):
    """The computing ops dispatched (views and layout copies, which follow strides, left out)."""

    LAYOUT = {"alias", "slice", "select", "unsqueeze", "view", "_unsafe_view", "expand", "clone", "t",
              "transpose", "permute", "as_strided", "detach"}

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in self.LAYOUT:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


SSD_LIKE = ("code_type: CENTER_SIZE keep_top_k: 30 confidence_threshold: 0.05 "
            "nms_param { nms_threshold: 0.45 top_k: 25 }")


def test_no_host_reads(monkeypatch):
    gen = np.random.default_rng(2)
    s, _ = settings(SSD_LIKE)
    loc, conf, prior = random_detection_inputs(gen, 2, 80, 4, 1)
    expected = detection_output(loc, conf, prior, s)
    reads = HostReads(monkeypatch)
    out = detection_output(loc, conf, prior, s)
    assert reads.calls == []
    assert torch.equal(out, expected)


def test_the_same_ops_whatever_the_data():
    """A loop whose trip count follows the data would dispatch a different op sequence: here
    inputs with many candidates, with few and with none dispatch the same one."""
    gen = np.random.default_rng(4)
    s, _ = settings(SSD_LIKE)
    loc, conf, prior = random_detection_inputs(gen, 2, 80, 4, 1)
    sharp = torch.softmax(torch.tensor(gen.normal(0, 9, (2, 80, 4)), dtype=torch.float32), -1).view(2, -1)
    logs = []
    for c in (conf, sharp, torch.zeros_like(conf)):
        with OpLog() as log:
            detection_output(loc, c, prior, s)
        logs.append(log.ops)
    assert logs[0] == logs[1] == logs[2]


def test_torch_export_with_a_dynamic_batch():
    """torch.export traces the whole algorithm into one graph (it fails on a host read or a
    data-dependent branch); the program runs other batch sizes with the same rows."""
    gen = np.random.default_rng(6)
    s, _ = settings("code_type: CENTER_SIZE keep_top_k: 12 confidence_threshold: 0.05 "
                    "nms_param { nms_threshold: 0.45 top_k: 8 }")
    loc, conf, prior = random_detection_inputs(gen, 3, 40, 4, 1)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(DetectionDecoder(s), (loc[:2], conf[:2], prior),
                                  dynamic_shapes=({0: batch}, {0: batch}, None))
    for n in (1, 3):
        assert torch.equal(program.module()(loc[:n], conf[:n], prior), detection_output(loc[:n], conf[:n], prior, s))


def test_torch_compile_fullgraph():
    gen = np.random.default_rng(9)
    s, _ = settings("share_location: false code_type: CORNER keep_top_k: 10 confidence_threshold: 0.05 "
                    "nms_param { nms_threshold: 0.5 top_k: 6 }")
    loc, conf, prior = random_detection_inputs(gen, 2, 30, 4, 4)
    torch._dynamo.reset()
    compiled = torch.compile(DetectionDecoder(s), fullgraph=True, backend="eager")
    assert torch.equal(compiled(loc, conf, prior), detection_output(loc, conf, prior, s))


def test_adaptive_eta_is_not_graph_friendly():
    s, _ = settings("nms_param { nms_threshold: 0.8 top_k: 60 eta: 0.9 }")
    assert not s.graph_friendly
    assert settings("nms_param { nms_threshold: 0.8 top_k: 60 }")[0].graph_friendly


def test_settings_round_trip_through_json():
    s, _ = settings("share_location: false code_type: CORNER_SIZE variance_encoded_in_target: true keep_top_k: 3 "
                    "confidence_threshold: 0.25 objectness_score: 0.3 nms_param { nms_threshold: 0.4 top_k: 9 }")
    assert DetectionSettings.from_json(s.to_json()) == s
    assert '"code_type": "CORNER_SIZE"' in s.to_json()


OPENCV_CASES = {
    "clip": "code_type: CENTER_SIZE clip: true keep_top_k: 30 confidence_threshold: 0.05 "
            "nms_param { nms_threshold: 0.45 top_k: 40 }",
    "pixel_boxes": "code_type: CENTER_SIZE normalized_bbox: false keep_top_k: 30 confidence_threshold: 0.05 "
                   "nms_param { nms_threshold: 0.45 top_k: 40 }",
}


def pixel_inputs(gen, case, s):
    loc, conf, prior = random_detection_inputs(gen, 3, 80, 4, s.loc_classes)
    if case == "pixel_boxes":  # priors in pixels of a 300x300 image
        prior = prior.clone()
        prior[0, 0] *= 300
    return loc, conf, prior


@pytest.mark.parametrize("case", sorted(OPENCV_CASES))
def test_opencv_fields_equal_the_box_nms_path(case):
    """OpenCV's clip and normalized_bbox: false, through both paths."""
    s, _ = settings(OPENCV_CASES[case])
    loc, conf, prior = pixel_inputs(np.random.default_rng(12), case, s)
    new = detection_output(loc, conf, prior, s)
    assert new.shape[2] > 10 and torch.equal(new, detection_output_adaptive(loc, conf, prior, s))
