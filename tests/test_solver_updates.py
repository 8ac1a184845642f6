"""Learning-rate policies and update rules on plain tensors, against Caffe's formulas."""
import csv
import math

import numpy as np
import pytest
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.prototxt import parse_prototxt
from protonet.solver.logger import format_float
from protonet.solver.lr_policy import Progress, learning_rate
from protonet.solver.updates import Updater, solver_type


def solver_param(text):
    return parse_prototxt(text, caffe_pb2.SolverParameter())


def rates(param, n, smoothed=None):
    progress = Progress()
    out = []
    for it in range(n):
        progress.iter = it
        out.append(float(learning_rate(param, progress, smoothed)))
    return out, progress


def test_multistep_matches_caffe_log(fixtures):
    param = solver_param((fixtures / "solver/sgd_multistep/solver.prototxt").read_text())
    with open(fixtures / "solver/sgd_multistep/loss_lr.csv") as fh:
        want = [row["lr"] for row in csv.DictReader(fh) if row["lr"]]
    got, progress = rates(param, len(want))
    assert [format_float(r) for r in got] == want
    assert progress.current_step == 2


def test_multistep_status_lines():
    param = solver_param('lr_policy: "multistep" base_lr: 1 gamma: 0.5 stepvalue: 2 stepvalue: 4')
    lines = []
    progress = Progress()
    for it in range(6):
        progress.iter = it
        learning_rate(param, progress, log=lines.append)
    assert lines == ["MultiStep Status: Iteration 2, step = 1", "MultiStep Status: Iteration 4, step = 2"]


@pytest.mark.parametrize("text,formula", [
    ('lr_policy: "fixed" base_lr: 0.01', lambda it: 0.01),
    ('lr_policy: "step" base_lr: 0.1 gamma: 0.5 stepsize: 3', lambda it: 0.1 * 0.5 ** (it // 3)),
    ('lr_policy: "exp" base_lr: 0.1 gamma: 0.9', lambda it: 0.1 * 0.9 ** it),
    ('lr_policy: "inv" base_lr: 0.01 gamma: 0.0001 power: 0.75', lambda it: 0.01 * (1 + 0.0001 * it) ** -0.75),
    ('lr_policy: "poly" base_lr: 0.05 power: 0.9 max_iter: 20', lambda it: 0.05 * (1 - it / 20) ** 0.9),
    ('lr_policy: "sigmoid" base_lr: 0.1 gamma: -0.5 stepsize: 10',
     lambda it: 0.1 / (1 + math.exp(0.5 * (it - 10)))),
])
def test_policies_follow_their_formula(text, formula):
    got, _ = rates(solver_param(text), 21)
    for it, r in enumerate(got):
        assert r == pytest.approx(formula(it), rel=2e-6, abs=1e-12), it
        assert r == float(np.float32(r))  # a float32, as Caffe's Dtype


def test_plateau_lowers_rate_after_window_without_improvement():
    param = solver_param('lr_policy: "plateau" base_lr: 1 gamma: 0.1 plateau_winsize: 3 plateau_winsize: 3')
    progress = Progress()
    losses = [5, 4, 4, 4, 4, 4, 4, 4, 4]
    got = []
    for it, loss in enumerate(losses):
        progress.iter = it
        got.append(float(learning_rate(param, progress, loss)))
    # minimum at iter 1; step at iter 4 (1 + 3), next step 3 iterations after that event
    assert got == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01], rel=1e-6)


def test_unknown_policy_and_type_are_user_errors():
    with pytest.raises(ProtonetError, match="lr_policy"):
        rates(solver_param('lr_policy: "cosine" base_lr: 1'), 1)
    with pytest.raises(ProtonetError, match="solver type"):
        solver_type(solver_param('type: "LBFGS"'))
    assert solver_type(solver_param("solver_type: ADAM")) == "Adam"


# --- update rules: a reference written from Caffe's formulas, in float64 -------------------------

def reference_step(kind, p, w, g, hist, rate, lr_mult, decay_mult, it):
    """One Caffe update of w (numpy float64); hist is a dict of history arrays."""
    g = g / p["iter_size"]
    g = g + p["weight_decay"] * decay_mult * (np.sign(w) if p.get("l1") else w)
    lr = rate * lr_mult
    mom, delta = p.get("momentum", 0.0), p.get("delta", 1e-8)
    if kind == "SGD":
        hist["h"] = mom * hist["h"] + lr * g
        upd = hist["h"]
    elif kind == "Nesterov":
        old = hist["h"]
        hist["h"] = mom * old + lr * g
        upd = (1 + mom) * hist["h"] - mom * old
    elif kind == "AdaGrad":
        hist["h"] = hist["h"] + g * g
        upd = lr * g / (np.sqrt(hist["h"]) + delta)
    elif kind == "RMSProp":
        d = p["rms_decay"]
        hist["h"] = d * hist["h"] + (1 - d) * g * g
        upd = lr * g / (np.sqrt(hist["h"]) + delta)
    elif kind == "AdaDelta":
        hist["h"] = mom * hist["h"] + (1 - mom) * g * g
        step = g * np.sqrt((hist["h2"] + delta) / (hist["h"] + delta))
        hist["h2"] = mom * hist["h2"] + (1 - mom) * step * step
        upd = lr * step
    elif kind == "Adam":
        b1, b2 = mom, p["momentum2"]
        hist["h"] = b1 * hist["h"] + (1 - b1) * g
        hist["h2"] = b2 * hist["h2"] + (1 - b2) * g * g
        t = it + 1
        upd = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * hist["h"] / (np.sqrt(hist["h2"]) + delta)
    return w - upd


CASES = {
    "SGD": dict(momentum=0.9, weight_decay=0.0005, iter_size=2),
    "Nesterov": dict(momentum=0.95, weight_decay=0.001, iter_size=1),
    "AdaGrad": dict(delta=1e-6, weight_decay=0.0005, iter_size=1),
    "RMSProp": dict(rms_decay=0.95, delta=1e-6, weight_decay=0.0005, iter_size=3),
    "AdaDelta": dict(momentum=0.95, delta=1e-6, weight_decay=0.0005, iter_size=1),
    "Adam": dict(momentum=0.9, momentum2=0.999, delta=1e-8, weight_decay=0.0005, iter_size=2, l1=True),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_update_rule_matches_caffe_formula(kind):
    p = CASES[kind]
    fields = [f'type: "{kind}"', f"iter_size: {p['iter_size']}", f"weight_decay: {p['weight_decay']}"]
    for key in ("momentum", "momentum2", "delta", "rms_decay"):
        if key in p:
            fields.append(f"{key}: {p[key]}")
    if p.get("l1"):
        fields.append('regularization_type: "L1"')
    param = solver_param(" ".join(fields))
    # proto floats are float32: the reference uses the same values
    p = {k: (float(getattr(param, k)) if hasattr(param, k) and k != "l1" else v) for k, v in p.items()}
    rng = np.random.RandomState(3)
    shapes = [(4, 3), (5,), (2, 2, 3)]
    mults = [(1.0, 1.0), (2.0, 0.0), (0.5, 3.0)]
    blobs = [torch.tensor(rng.randn(*s).astype(np.float32)) for s in shapes]
    ref_w = [b.double().numpy().copy() for b in blobs]
    ref_hist = [{"h": np.zeros(s), "h2": np.zeros(s)} for s in shapes]
    updater = Updater(param, [(b, lr, dm) for b, (lr, dm) in zip(blobs, mults)])
    for it in range(6):
        rate = 0.01 * (it + 1)
        grads = [rng.randn(*s).astype(np.float32) for s in shapes]
        for b, g in zip(blobs, grads):
            b.grad = torch.tensor(g)
        updater.apply(np.float32(rate), it)
        for j in range(len(blobs)):
            ref_w[j] = reference_step(kind, p, ref_w[j], grads[j].astype(np.float64), ref_hist[j],
                                      float(np.float32(rate)), mults[j][0], mults[j][1], it)
            np.testing.assert_allclose(blobs[j].numpy(), ref_w[j], rtol=2e-5, atol=1e-6)
    # history is laid out as Caffe's history_ vector: one set, or two for AdaDelta/Adam
    hist = updater.history_arrays()
    assert len(hist) == len(blobs) * (2 if kind in ("AdaDelta", "Adam") else 1)
    np.testing.assert_allclose(hist[0], ref_hist[0]["h"], rtol=2e-5, atol=1e-7)


def test_lr_mult_zero_freezes_blob_and_missing_grad_counts_as_zero():
    param = solver_param('type: "SGD" momentum: 0.9 weight_decay: 0.1')
    frozen = torch.ones(3)
    stats = torch.ones(2)  # no .grad at all (BatchNorm statistics)
    updater = Updater(param, [(frozen, 0.0, 1.0), (stats, 1.0, 0.0)])
    frozen.grad = torch.full((3,), 5.0)
    updater.apply(np.float32(0.1), 0)
    assert torch.equal(frozen, torch.ones(3))
    assert torch.equal(stats, torch.ones(2))


def test_clip_gradients_scales_by_global_norm():
    param = solver_param('type: "SGD" clip_gradients: 1.0')
    a, b = torch.zeros(2), torch.zeros(1)
    a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    lines = []
    Updater(param, [(a, 1.0, 1.0), (b, 1.0, 1.0)], log=lines.append).apply(np.float32(1.0), 0)
    np.testing.assert_allclose(a.numpy(), [-0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(b.numpy(), [-0.8], rtol=1e-6)
    assert lines == ["Gradient clipping: scaling down gradients (L2 norm 5 > 1) by scale factor 0.2"]


def test_history_restore_checks_count_and_size():
    param = solver_param('type: "Adam"')
    updater = Updater(param, [(torch.zeros(3), 1.0, 1.0)])
    with pytest.raises(ProtonetError, match="needs 2"):
        updater.load_history([np.zeros(3)])
    with pytest.raises(ProtonetError, match="history blob 1"):
        updater.load_history([np.zeros(3), np.zeros(4)])
    updater.load_history([np.ones(3), np.full(3, 2.0)])
    assert updater.history_arrays()[1].tolist() == [2.0, 2.0, 2.0]
