"""parse-log / plot-log: Caffe's parse_log.py tables from Caffe's log and from ours."""
import csv

import cv2
import pytest

from protonet.cli import main
from protonet.errors import ProtonetError
from protonet.tools.log import line_time, parse_log
from solver_util import one_thread  # noqa: F401


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_golden_caffe_log_tables(fixtures, tmp_path):
    log = fixtures / "solver/sgd_multistep/train.log"
    main(["parse-log", str(log), str(tmp_path)])
    rows = read_csv(tmp_path / "train.log.train")
    assert list(rows[0]) == ["NumIters", "Seconds", "LearningRate", "loss"]
    assert [float(r["NumIters"]) for r in rows] == list(range(20))
    assert float(rows[0]["loss"]) == 3.73229 and float(rows[19]["loss"]) == 0.047432
    assert float(rows[0]["Seconds"]) == pytest.approx(0.000281)  # from the 'Solving' line
    # Caffe's rule: a row takes the last lr printed before its output line (the lr line follows it)
    assert [float(r["LearningRate"]) for r in rows[7:10]] == [0.05, 0.05, 0.005]
    assert not (tmp_path / "train.log.test").exists()  # no test outputs, no table


def test_golden_detection_log_test_table(fixtures, tmp_path):
    log = fixtures / "eval/map_11point/train.log"
    train, test = parse_log(log)
    assert len(test) == 1 and test[0]["detection_eval"] == 0.550114 and test[0]["NumIters"] == 0


def test_our_log_parses_like_caffes(fixtures, tmp_path, monkeypatch):
    """Train a few iterations with the CLI, then parse our log: same columns and values as printed."""
    for name in ("train.prototxt", "train_data.h5", "train_h5_list.txt", "init.caffemodel"):
        (tmp_path / "solver").mkdir(exist_ok=True)
        (tmp_path / "solver" / name).write_bytes((fixtures / "solver" / name).read_bytes())
    solver = (fixtures / "solver/sgd_multistep/solver.prototxt").read_text()
    (tmp_path / "solver.prototxt").write_text(solver.replace("solver/sgd_multistep/", "out/"))
    monkeypatch.chdir(tmp_path)
    main(["train", "--solver", "solver.prototxt", "--weights", "solver/init.caffemodel", "--iterations", "6",
          "--log", "train.log"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "sgd_multistep_iter_5.caffemodel", "sgd_multistep_iter_5.solverstate",
        "sgd_multistep_iter_6.caffemodel", "sgd_multistep_iter_6.solverstate"]
    # --snapshot resumes: iterations 5..7 again, from the iteration-5 state
    main(["train", "--solver", "solver.prototxt", "--snapshot", "out/sgd_multistep_iter_5.solverstate",
          "--iterations", "8"])
    assert (tmp_path / "out/sgd_multistep_iter_8.caffemodel").exists()
    main(["parse-log", "train.log", "tables"])
    ours = read_csv(tmp_path / "tables/train.log.train")
    gold_train, _ = parse_log(fixtures / "solver/sgd_multistep/train.log")
    assert [float(r["NumIters"]) for r in ours] == list(range(6))
    for row, gold in zip(ours, gold_train):
        assert float(row["loss"]) == pytest.approx(gold["loss"], rel=2e-5)
        assert float(row["LearningRate"]) == gold["LearningRate"]
    main(["plot-log", "train.log", "plot.png"])
    img = cv2.imread(str(tmp_path / "plot.png"))
    assert img is not None and img.shape[0] > 300 and (img < 255).any()


def test_timestamps_and_errors(tmp_path):
    assert line_time("I1122 03:53:12.386420 17432 solver.cpp:243] x", 2020).year == 2020
    assert line_time("I20261122 03:53:12.386420 17432 solver.cpp:243] x", 2020).year == 2026
    with pytest.raises(ValueError):
        line_time("Iteration 5", 2020)
    bad = tmp_path / "x.log"
    bad.write_text("hello\n")
    with pytest.raises(ProtonetError, match="x.log: no 'Solving' line"):
        parse_log(bad)
    with pytest.raises(ProtonetError, match="missing.log"):
        parse_log(tmp_path / "missing.log")
