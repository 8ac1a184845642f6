"""The quickstart end to end (slow), and its schedule scaling (fast)."""
import json
import os
import re
import subprocess
import sys

import pytest

from protonet.tools import quickstart

# A short run: few images and iterations. The bar is far below the full demo's 0.80; it catches a
# pipeline that runs but does not learn (wrong boxes, labels, priors or evaluation).
SHORT = dict(train=240, test=48, max_iter=600)
LOWER_BAR = 0.2


def test_adjust_solver_keeps_proportions(tmp_path):
    from protonet import caffe_pb2
    from protonet.io.prototxt import read_prototxt, write_prototxt

    solver = caffe_pb2.SolverParameter(max_iter=1500, stepvalue=[900, 1275], test_interval=500, snapshot=750)
    path = str(tmp_path / "solver.prototxt")
    write_prototxt(solver, path)
    quickstart._adjust_solver(path, 300, log=lambda *a: None)
    out = read_prototxt(path, caffe_pb2.SolverParameter)
    assert (out.max_iter, list(out.stepvalue), out.test_interval, out.snapshot) == (300, [180, 255], 100, 150)


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    root = tmp_path / "qs"
    run = subprocess.run([sys.executable, "-m", "protonet", "quickstart", "--root", str(root),
                          "--train", str(SHORT["train"]), "--test", str(SHORT["test"]),
                          "--max-iter", str(SHORT["max_iter"])],
                         capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    # Caffe's log lines, tee'd into the job directory's log
    log_file = root / "jobs/quickstart/ssd_shapes_128x128/shapes_ssd_shapes_128x128.log"
    log = log_file.read_text()
    assert re.search(r"Iteration \d+, loss = ", log) and re.search(r"Iteration \d+, lr = ", log)
    assert "Test net output #0: detection_eval = " in log and "Optimization Done." in log
    # the final snapshot, written by train, read by test and detect
    weights = root / f"models/quickstart/ssd_shapes_128x128/shapes_ssd_shapes_128x128_iter_{SHORT['max_iter']}.caffemodel"
    assert weights.is_file()
    m_ap = float(re.search(r"quickstart: test mAP = ([0-9.]+)", out).group(1))
    assert m_ap >= LOWER_BAR, out[-3000:]
    # detect wrote one drawn image per input and parseable detections
    detections = root / "results/detections"
    drawn = [f for f in os.listdir(detections) if f.endswith(".jpg")]
    assert len(drawn) == quickstart.DETECT_IMAGES
    records = [json.loads(line) for line in (detections / "detections.jsonl").read_text().splitlines()]
    assert records and all(r["class"] in ("circle", "square", "triangle", "star") for r in records)
    assert all(0 <= r["box"][0] <= r["box"][2] <= 160 for r in records)
