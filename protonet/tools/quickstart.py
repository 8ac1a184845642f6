"""The quickstart (`make demo`): make a dataset, write the nets, train an SSD, test it, detect.

    protonet quickstart [--root work/quickstart] [--max-iter N] [--train N --test M]

Every step is an ordinary protonet command, run in ROOT and printed as you would type it, so the
quickstart doubles as a walk through the tools:

    protonet make-shapes data/shapes
    protonet create-annoset ... data/shapes/trainval.txt data/shapes/lmdb/shapes_trainval_lmdb
    protonet create-annoset ... data/shapes/test.txt     data/shapes/lmdb/shapes_test_lmdb
    protonet gen ssd_shapes --root ROOT     (examples/quickstart/ssd_shapes.py, bundled)
    protonet train --solver models/quickstart/ssd_shapes_128x128/solver.prototxt
    protonet test  --model .../test.prototxt --weights .../shapes_ssd_shapes_128x128_iter_N.caffemodel
    protonet detect --model .../deploy.prototxt --weights ... IMAGES --out results/detections
"""
import os
import re
import shlex
import subprocess
import sys
import time

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.prototxt import read_prototxt, write_prototxt

# The NetSpec script, by its bundled name (protonet.resources): found in a checkout and in a wheel.
SCRIPT = "ssd_shapes"
DATA_DIR = "data/shapes"
JOB_NAME = "ssd_shapes_128x128"
MODEL_DIR = f"models/quickstart/{JOB_NAME}"
JOB_DIR = f"jobs/quickstart/{JOB_NAME}"
DETECT_DIR = "results/detections"
DETECT_IMAGES = 8

MAP_LINE = re.compile(r"detection_eval = ([0-9.eE+-]+|nan)")


class Quickstart:
    def __init__(self, root, gpu=None, log=print):
        self.root = os.path.abspath(root)
        self.gpu = gpu
        self.log = log
        self.timings = []

    def protonet(self, args, tee=None):
        """Run `protonet ARGS` in the root; echo its output (and copy it to `tee`); return the output."""
        shown = "protonet " + " ".join(shlex.quote(a) for a in args)
        self.log(f"\n$ {shown}")
        start = time.time()
        # -u: the step's lines come through as they are written
        proc = subprocess.Popen([sys.executable, "-u", "-m", "protonet", *args], cwd=self.root,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        lines = []
        log_file = open(tee, "w") if tee else None
        try:
            for line in proc.stdout:
                lines.append(line)
                sys.stdout.write(line)
                sys.stdout.flush()
                if log_file:
                    log_file.write(line)
                    log_file.flush()
        finally:
            if log_file:
                log_file.close()
        status = proc.wait()
        elapsed = time.time() - start
        self.timings.append((args[0], elapsed))
        if status != 0:
            raise ProtonetError(f"quickstart: step `{shown}` failed with status {status}")
        return "".join(lines)

    def path(self, *parts):
        return os.path.join(self.root, *parts)


def _adjust_solver(solver_file, max_iter, log):
    """Shorten (or lengthen) the schedule to `max_iter`, keeping the steps' and tests' proportions."""
    solver = read_prototxt(solver_file, caffe_pb2.SolverParameter)
    old = solver.max_iter
    if max_iter == old:
        return solver
    ratio = max_iter / old
    steps = [max(1, int(round(v * ratio))) for v in solver.stepvalue]
    del solver.stepvalue[:]
    solver.stepvalue.extend(steps)
    solver.test_interval = max(1, int(round(solver.test_interval * ratio)))
    solver.snapshot = max(1, int(round(solver.snapshot * ratio)))
    solver.max_iter = max_iter
    write_prototxt(solver, solver_file)
    log(f"(quickstart) {os.path.relpath(solver_file)}: max_iter {old} -> {max_iter}, stepvalue {list(steps)}, "
        f"test_interval {solver.test_interval}")
    return solver


def run(root, train, test, max_iter=None, gpu=None, detect_images=DETECT_IMAGES, base_lr=None, log=print):
    """Run every step; returns a summary dict (paths, mAP, timings)."""
    q = Quickstart(root, gpu=gpu, log=log)
    os.makedirs(q.root, exist_ok=True)
    started = time.time()
    gpu_args = ["--gpu", str(gpu)] if gpu is not None else []

    q.protonet(["make-shapes", DATA_DIR, "--train", str(train), "--test", str(test)])
    for split in ("trainval", "test"):
        q.protonet(["create-annoset", "--anno-type", "detection", "--label-type", "xml",
                    "--label-map-file", f"{DATA_DIR}/labelmap.prototxt", "--check-label",
                    "--encode-type", "jpg", "--encoded", "--redo",
                    DATA_DIR, f"{DATA_DIR}/{split}.txt", f"{DATA_DIR}/lmdb/shapes_{split}_lmdb"])
    q.protonet(["gen", SCRIPT, "--root", q.root])

    solver_file = q.path(MODEL_DIR, "solver.prototxt")
    if not os.path.exists(solver_file):
        raise ProtonetError(f"quickstart: `protonet gen` did not write {solver_file}")
    solver = read_prototxt(solver_file, caffe_pb2.SolverParameter)
    if max_iter is not None:
        solver = _adjust_solver(solver_file, max_iter, log)
    if base_lr is not None:
        solver.base_lr = base_lr
        write_prototxt(solver, solver_file)
        log(f"(quickstart) {os.path.relpath(solver_file)}: base_lr {base_lr}")
    snapshot_prefix = solver.snapshot_prefix
    for stale in os.listdir(q.path(MODEL_DIR)):  # a previous run's snapshots would be resumed or mixed in
        if stale.endswith((".caffemodel", ".solverstate")):
            os.remove(q.path(MODEL_DIR, stale))

    train_log = q.path(JOB_DIR, f"shapes_{JOB_NAME}.log")
    train_start = time.time()
    out = q.protonet(["train", "--solver", f"{MODEL_DIR}/solver.prototxt", *gpu_args], tee=train_log)
    train_seconds = time.time() - train_start
    train_maps = [float(m) for m in MAP_LINE.findall(out)]

    weights = f"{snapshot_prefix}_iter_{solver.max_iter}.caffemodel"
    if not os.path.exists(q.path(weights)):
        raise ProtonetError(f"quickstart: training did not write the final snapshot {weights}")
    test_iter = solver.test_iter[0] if solver.test_iter else 1
    out = q.protonet(["test", "--model", f"{MODEL_DIR}/test.prototxt", "--weights", weights,
                      "--iterations", str(test_iter), *gpu_args])
    found = MAP_LINE.findall(out)
    if not found:
        raise ProtonetError("quickstart: `protonet test` printed no detection_eval line")
    test_map = float(found[-1])

    with open(q.path(DATA_DIR, "test.txt")) as fh:
        images = [line.split()[0] for line in fh if line.strip()][:detect_images]
    q.protonet(["detect", "--model", f"{MODEL_DIR}/deploy.prototxt", "--weights", weights,
                "--labelmap", f"{DATA_DIR}/labelmap.prototxt", "--threshold", "0.5",
                *gpu_args, *[f"{DATA_DIR}/{img}" for img in images], "--out", DETECT_DIR])

    total = time.time() - started
    summary = {
        "root": q.root,
        "dataset": q.path(DATA_DIR),
        "lmdb": [q.path(DATA_DIR, "lmdb", f"shapes_{s}_lmdb") for s in ("trainval", "test")],
        "nets": q.path(MODEL_DIR),
        "job": q.path(JOB_DIR),
        "train_log": train_log,
        "weights": q.path(weights),
        "detections": q.path(DETECT_DIR),
        "train_maps": train_maps,
        "test_map": test_map,
        "max_iter": solver.max_iter,
        "train_seconds": train_seconds,
        "seconds_per_iter": train_seconds / max(1, solver.max_iter),
        "total_seconds": total,
        "timings": q.timings,
    }
    return summary


def print_summary(s, log=print):
    log("\n" + "=" * 72)
    log("quickstart done. Where everything went:")
    log(f"  dataset (Pascal VOC layout)  {s['dataset']}")
    log(f"  LMDBs (AnnotatedDatum)       {s['lmdb'][0]}")
    log(f"                               {s['lmdb'][1]}")
    log(f"  nets and solver              {s['nets']}/{{train,test,deploy,solver}}.prototxt")
    log(f"  job script and training log  {s['job']}  ({os.path.basename(s['train_log'])})")
    log(f"  final weights                {s['weights']}")
    log(f"  detections (images, JSONL)   {s['detections']}")
    log("Time per step: " + ", ".join(f"{name} {sec:.0f}s" for name, sec in s["timings"]))
    log(f"Training: {s['max_iter']} iterations in {s['train_seconds']:.0f}s "
        f"({s['seconds_per_iter']:.3f} s/iter, including test passes)")
    log(f"Total: {s['total_seconds'] / 60:.1f} min")
    log(f"quickstart: test mAP = {s['test_map']:.4f}")
