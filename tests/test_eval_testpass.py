"""A solver test pass over DetectionEvaluate outputs prints Caffe's mAP and per-class AP
(tests/fixtures/eval from ../shared/golden/eval: Caffe's train.log of the same solver)."""
import pytest

from solver_util import captured_log, make_solver, messages, one_thread  # noqa: F401


def caffe_lines(path):
    keep = []
    for m in messages(path.read_text()):
        if m.startswith("class") or "Test net output" in m or "Testing net" in m:
            keep.append(m)
    return keep


@pytest.mark.parametrize("version", ["11point", "MaxIntegral"])
def test_detection_test_pass_prints_caffes_map(fixtures, monkeypatch, version, tmp_path):
    monkeypatch.chdir(fixtures)
    with captured_log() as stream:
        solver = make_solver(f"eval/map_{version}/solver.prototxt")
        solver.solve()
    ours = [m for m in messages(stream.getvalue())
            if m.startswith("class") or "Test net output" in m or "Testing net" in m]
    assert ours == caffe_lines(fixtures / f"eval/map_{version}/train.log")
    assert ours  # the golden log has these lines


def test_integral_and_test_compute_loss(fixtures, monkeypatch):
    monkeypatch.chdir(fixtures)
    with captured_log() as stream:
        solver = make_solver("eval/map_11point/solver.prototxt", ap_version="Integral", test_compute_loss=True,
                             show_per_class_result=False)
        results = solver.test_all()
    msgs = messages(stream.getvalue())
    m_ap, aps = results[0]["detection_eval"]
    assert sorted(aps) == [1, 2, 3] and 0 < m_ap < 1
    assert "Test loss: 0" in msgs and not any(m.startswith("class") for m in msgs)
