"""20 iterations of the real Caffe (tests/fixtures/solver, from ../shared/golden/solver) against ours:
same loss and lr per iteration, same weights after 20 iterations, same log line shapes."""
import csv
import re

import numpy as np
import pytest

from protonet.solver.logger import format_float
from solver_util import (assert_same_arrays, caffemodel_arrays, captured_log, make_solver, messages,  # noqa: F401
                         one_thread)

# Adam: conv1's bias feeds BatchNorm, so its true gradient is exactly zero; Caffe's and ours are
# float rounding noise, which Adam's m/sqrt(v) turns into +-lr steps. The BatchNorm running mean
# carries that bias along. Every other blob, and the loss, do not depend on it.
NOISE_ONLY = {"sgd_multistep": (), "adam": ("conv1/1", "conv1_bn/0")}


def golden_loss_lr(path):
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    return [(int(r["iter"]), r["loss"], r["lr"]) for r in rows]


def run_golden(fixtures, tmp_path, monkeypatch, kind):
    monkeypatch.chdir(fixtures)
    with captured_log() as stream:
        solver = make_solver(f"solver/{kind}/solver.prototxt", prefix=tmp_path / kind, weights="solver/init.caffemodel")
        solver.solve()
    return solver, stream.getvalue()


@pytest.mark.parametrize("kind", ["sgd_multistep", "adam"])
def test_twenty_iterations_match_caffe(fixtures, tmp_path, monkeypatch, kind):
    solver, text = run_golden(fixtures, tmp_path, monkeypatch, kind)
    msgs = messages(text)
    losses = {int(m.group(1)): m.group(2) for m in map(re.compile(r"^Iteration (\d+), loss = (\S+)$").match, msgs) if m}
    rates = {int(m.group(1)): m.group(2) for m in map(re.compile(r"^Iteration (\d+), lr = (\S+)$").match, msgs) if m}
    want = golden_loss_lr(fixtures / f"solver/{kind}/loss_lr.csv")
    assert sorted(losses) == [it for it, _, _ in want]
    for it, loss, lr in want:
        # printed with 6 significant digits: agree to the last printed digit or so
        assert float(losses[it]) == pytest.approx(float(loss), rel=2e-5), it
        if lr:
            assert rates[it] == lr, it
    got = caffemodel_arrays(tmp_path / f"{kind}_iter_20.caffemodel")
    ref = dict(np.load(fixtures / f"solver/{kind}/params_iter_20.npz"))
    assert_same_arrays(got, ref, exact=False, rtol=1e-4, atol=1e-6, skip=NOISE_ONLY[kind])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{kind}_iter_{n}.{ext}" for n in (5, 10, 15, 20) for ext in ("caffemodel", "solverstate"))


def _shape(msg):
    msg = re.sub(r"(file|proto file) \S+", r"\1 PATH", msg)
    return re.sub(r"-?\d+(\.\d+)?(e[-+]\d+)?", "N", msg)


def test_log_lines_have_caffes_shapes(fixtures, tmp_path, monkeypatch):
    _, text = run_golden(fixtures, tmp_path, monkeypatch, "sgd_multistep")
    ours = messages(text)
    theirs = messages((fixtures / "solver/sgd_multistep/train.log").read_text())

    def training_part(msgs):
        start = next(i for i, m in enumerate(msgs) if m.startswith("Solving "))
        end = next(i for i, m in enumerate(msgs) if m == "Optimization Done.")
        return [_shape(m) for m in msgs[start:end + 1] if not m.startswith("Speed: ")]

    assert training_part(ours) == training_part(theirs)
    # Caffe's parse_log.py / extract_seconds.py read the glog prefix: month/day, time, then the message
    for line in text.splitlines():
        if "Iteration" in line:
            head = line.split()
            assert re.fullmatch(r"I\d{4}", head[0]) and re.fullmatch(r"\d\d:\d\d:\d\d\.\d{6}", head[1])


def test_resume_from_caffe_solverstate(fixtures, tmp_path, monkeypatch):
    """Caffe's own iter-10 snapshot (weights + momentum history) resumed here gives Caffe's iter 20."""
    monkeypatch.chdir(fixtures)
    with captured_log() as stream:
        solver = make_solver("solver/sgd_multistep/solver.prototxt", prefix=tmp_path / "r")
        solver.solve("solver/sgd_multistep/sgd_multistep_iter_10.solverstate")
    assert "Restoring previous solver status from solver/sgd_multistep/sgd_multistep_iter_10.solverstate" in \
        messages(stream.getvalue())
    got = caffemodel_arrays(tmp_path / "r_iter_20.caffemodel")
    ref = dict(np.load(fixtures / "solver/sgd_multistep/params_iter_20.npz"))
    assert_same_arrays(got, ref, exact=False, rtol=1e-4, atol=1e-6)
    assert not (tmp_path / "r_iter_5.caffemodel").exists()
    assert format_float(solver.smoothed_loss)  # the final display pass ran
