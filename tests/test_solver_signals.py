"""Signals as schedulers and terminals send them: SIGTERM snapshots and exits 143, a stop before
max_iter is non-zero, a second signal cannot cut a snapshot short, workers end with their parent,
and kill -9 at any moment (also mid-snapshot) resumes to the same weights bitwise."""
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from protonet.io.solverstate import read_solverstate, solverstate_history_arrays
from protonet.solver import snapshot
from protonet.solver.signals import SignalHandler
from solver_util import captured_log, make_solver, one_thread  # noqa: F401
from test_solver_snapshot_safety import write_solver

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals and /proc")


class Train:
    """`protonet train` in a subprocess, its log read as it comes."""

    def __init__(self, fixtures, *args):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "protonet", "train", *map(str, args)], cwd=fixtures,
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, *texts, timeout=120, poll=0.01):
        """Until a line of the log holds every one of `texts`."""
        end = time.monotonic() + timeout
        while not any(all(t in line for t in texts) for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"no line with {texts} in the log:\n{''.join(self.lines[-30:])}")
            time.sleep(poll)

    def finish(self, timeout=300):
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return rc, "".join(self.lines)


def test_sigterm_snapshots_and_exits_143_then_resume_goes_on(fixtures, tmp_path):
    solver_file = write_solver(fixtures, tmp_path / "solver.prototxt", tmp_path / "s", snapshot=0,
                               max_iter=100000, display=1)
    run = Train(fixtures, "--solver", solver_file, "--weights", "solver/init.caffemodel")
    run.wait_for("Iteration 3, lr")
    run.proc.send_signal(signal.SIGTERM)
    rc, log = run.finish()
    assert rc == 143, log[-3000:]
    files = sorted(os.listdir(tmp_path))
    pair = [f for f in files if f.startswith("s_iter_")]
    assert len(pair) == 2 and pair[0].endswith(".caffemodel") and pair[1] == pair[0][:-10] + "solverstate"
    stopped_at = int(pair[0][len("s_iter_"):-len(".caffemodel")])
    assert stopped_at >= 4 and "Optimization stopped early." in log
    assert "Stopped by SIGTERM before max_iter: exit status 143" in log and "Traceback" not in log
    resumed = Train(fixtures, "--solver", solver_file, "--resume", "--iterations", stopped_at + 2)
    rc, log = resumed.finish()
    assert rc == 0 and f"Restoring previous solver status from {tmp_path / pair[1]}" in log
    assert (tmp_path / f"s_iter_{stopped_at + 2}.caffemodel").exists()


@pytest.mark.parametrize("signum,flags,status,snapshots", [
    (signal.SIGINT, [], 130, 1),                                   # Caffe's stop, but non-zero
    (signal.SIGTERM, ["--sigterm_effect", "none"], 0, 1),          # ignored: runs to max_iter
    (signal.SIGTERM, ["--sigterm-effect", "snapshot"], 0, 2),      # a snapshot, then on to max_iter
])
def test_signal_effects_and_exit_status(fixtures, tmp_path, signum, flags, status, snapshots):
    solver_file = write_solver(fixtures, tmp_path / "solver.prototxt", tmp_path / "s", snapshot=0,
                               max_iter=100000 if status else 150, display=1)
    run = Train(fixtures, "--solver", solver_file, "--weights", "solver/init.caffemodel", *flags)
    run.wait_for("Iteration 3, lr")
    run.proc.send_signal(signum)
    rc, log = run.finish()
    assert rc == status, log[-3000:]
    models = [f for f in os.listdir(tmp_path) if f.endswith(".caffemodel")]
    assert len(models) == snapshots
    assert ("Optimization Done." in log) == (status == 0)


def test_a_second_signal_during_the_snapshot_does_not_cut_it(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(fixtures)
    sent = []
    real_model, real_state = snapshot._write_caffemodel, snapshot.write_solverstate

    def model_then_signals(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        sent.append("model")
        return real_model(*args, **kwargs)

    def state_then_signals(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        sent.append("state")
        return real_state(*args, **kwargs)

    monkeypatch.setattr(snapshot, "_write_caffemodel", model_then_signals)
    monkeypatch.setattr(snapshot, "write_solverstate", state_then_signals)
    with captured_log(), SignalHandler() as handler:
        holder = {}

        def action():
            if holder["solver"].progress.iter == 3 and not holder.get("sent"):
                holder["sent"] = True
                os.kill(os.getpid(), signal.SIGTERM)
            return handler.check()

        solver = make_solver("solver/sgd_multistep/solver.prototxt", prefix=tmp_path / "s",
                             weights="solver/init.caffemodel", action=action, snapshot=0, max_iter=10, display=0)
        holder["solver"] = solver
        solver.solve()
    assert solver.progress.iter == 3 and handler.stop_signal == signal.SIGTERM and sent == ["model", "state"]
    assert sorted(os.listdir(tmp_path)) == ["s_iter_3.caffemodel", "s_iter_3.solverstate"]
    state = read_solverstate(tmp_path / "s_iter_3.solverstate")
    assert state.iter == 3 and state.learned_net == str(tmp_path / "s_iter_3.caffemodel")
    with captured_log():
        fresh = make_solver("solver/sgd_multistep/solver.prototxt", prefix=tmp_path / "r", snapshot=0)
        fresh.restore(tmp_path / "s_iter_3.solverstate")  # the whole pair reads back
    assert fresh.progress.iter == 3
    for (a, _, _), (b, _, _) in zip(fresh.net.learnable_params, solver.net.learnable_params):
        assert torch.equal(a, b)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


WORKERS_SCRIPT = r"""
import os, signal, sys, time
sys.path.insert(0, sys.argv[2])
import pathlib
from test_data_layers import build, parse_prototxt, caffe_pb2
from protonet.solver.signals import SignalHandler
fixtures = pathlib.Path(sys.argv[1])
lp = parse_prototxt((fixtures / "data/annotated_data_no_sampler.prototxt").read_text(),
                    caffe_pb2.NetParameter(), "x").layer[0]
layer = build(lp, fixtures / "data", workers=2, seed=3)
layer()
me = str(os.getpid())
children = [p for p in os.listdir("/proc") if p.isdigit() and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == me]
with SignalHandler() as handler:
    print("workers", *children, flush=True)
    sys.stdin.readline()  # the test sent SIGTERM to the whole process group, as a scheduler does
    time.sleep(0.5)
    for _ in range(12):  # more than the prefetched batches: the workers are still at work
        layer()
    print("after-sigterm", handler.check(), flush=True)
    time.sleep(600)
"""


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_data_workers_outlive_a_group_sigterm_and_die_with_a_killed_parent(fixtures, tmp_path):
    script = tmp_path / "workers.py"
    script.write_text(WORKERS_SCRIPT)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, str(script), str(fixtures), tests_dir], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        first = proc.stdout.readline().split()
        assert first and first[0] == "workers", proc.stderr.read()[-2000:] if proc.poll() is not None else first
        workers = first[1:]
        assert len(workers) == 2 and all(_alive(w) for w in workers)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.stdin.write("sent\n")
        proc.stdin.flush()
        assert proc.stdout.readline().split() == ["after-sigterm", "stop"], proc.stderr.read()[-2000:]
        assert all(_alive(w) for w in workers)
        proc.kill()  # kill -9: no chance to shut the workers down
        proc.wait(timeout=10)
        start = time.monotonic()
        while any(_alive(w) for w in workers) and time.monotonic() - start < 5:
            time.sleep(0.02)
        gone_after = time.monotonic() - start
        print(f"data workers gone {gone_after:.3f} s after kill -9 of their parent")
        assert gone_after < 1.0, f"workers still alive {gone_after:.2f} s after their parent was killed"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------- kill -9 at random moments

KILL_NET = """
name: "kill_net"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param {{ source: "solver/train_h5_list.txt" batch_size: 4 shuffle: false }} }}
layer {{ name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1"
        param {{ lr_mult: 1 }} param {{ lr_mult: 2 }}
        inner_product_param {{ num_output: {hidden} weight_filler {{ type: "gaussian" std: 0.02 }} }} }}
layer {{ name: "relu" type: "ReLU" bottom: "fc1" top: "fc1" }}
layer {{ name: "fc2" type: "InnerProduct" bottom: "fc1" top: "fc2"
        inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.02 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "fc2" bottom: "label" top: "loss" }}
"""

KILL_SOLVER = """net: "{net}"
type: "SGD"
base_lr: 0.01
lr_policy: "multistep"
stepvalue: 10
gamma: 0.5
momentum: 0.9
weight_decay: 0.0005
max_iter: {max_iter}
snapshot: 3
snapshot_prefix: "{prefix}"
display: 1
random_seed: 7
solver_mode: CPU
"""


def _kill_setup(tmp_path, name, max_iter=24, hidden=4096):
    """A solver whose snapshots (3.2 MB model + 3.2 MB history) take a good part of each run."""
    directory = tmp_path / name
    directory.mkdir()
    net = tmp_path / "kill_net.prototxt"
    if not net.exists():
        net.write_text(KILL_NET.format(hidden=hidden))
    solver = directory / "solver.prototxt"
    solver.write_text(KILL_SOLVER.format(net=net, max_iter=max_iter, prefix=directory / "k"))
    return directory, solver


def _in_snapshot(directory):
    """True while a pair is being written: a temporary, or a model whose state is not there yet."""
    names = set(os.listdir(directory))
    return any(n.startswith(".tmp-") or (n.endswith(".caffemodel") and n[:-10] + "solverstate" not in names)
               for n in names)


def _state_fields(path):
    state = read_solverstate(path)
    return (state.iter, state.current_step, [a.tobytes() for a in solverstate_history_arrays(state)])


def _kill_at(run, rng, directory, mid_snapshot):
    """kill -9 `run` at a moment chosen by its log: while the pair of a random snapshot is being
    written (model or state), or a random few milliseconds after a random iteration."""
    if mid_snapshot:
        iteration = rng.choice(range(3, 24, 3))
        which = rng.choice(["Snapshotting to binary proto file", "Snapshotting solver state"])
        run.wait_for(which, f"k_iter_{iteration}.", poll=0.0005)
        time.sleep(rng.uniform(0, 0.004))
    else:
        run.wait_for(f"Iteration {rng.randrange(0, 24)}, lr")
        time.sleep(rng.uniform(0, 0.05))
    run.proc.kill()
    rc, _ = run.finish()
    assert rc == -signal.SIGKILL, "the run ended before it was killed"


def run_kill_trials(fixtures, tmp_path, trials, seed):
    rng = random.Random(seed)
    ref_dir, ref_solver = _kill_setup(tmp_path, "reference")
    rc, log = Train(fixtures, "--solver", ref_solver).finish()
    assert rc == 0, log[-3000:]
    reference = (ref_dir / "k_iter_24.caffemodel").read_bytes()
    results = []
    for trial in range(trials):
        directory, solver = _kill_setup(tmp_path, f"trial{trial}")
        _kill_at(Train(fixtures, "--solver", solver), rng, directory, mid_snapshot=trial % 2 == 1)
        caught = "mid-snapshot" if _in_snapshot(directory) else "between snapshots"
        left = sorted(os.listdir(directory))
        resumed = Train(fixtures, "--solver", solver, "--resume")
        rc, log = resumed.finish()
        assert rc == 0, log[-3000:]
        assert not [n for n in os.listdir(directory) if n.startswith(".tmp-")], "a stale temporary survived"
        assert (directory / "k_iter_24.caffemodel").read_bytes() == reference, f"trial {trial} ({caught}): {left}"
        assert _state_fields(directory / "k_iter_24.solverstate") == _state_fields(ref_dir / "k_iter_24.solverstate")
        pair = [line.split("pair is ", 1)[1].split(" and ")[0] for line in log.splitlines() if "pair is " in line]
        results.append((caught, os.path.basename(pair[-1]) if pair else "no pair: from the start"))
    return results


def test_kill_9_then_resume_equals_an_uninterrupted_run(fixtures, tmp_path):
    results = run_kill_trials(fixtures, tmp_path, trials=3, seed=13)
    assert len(results) == 3


@pytest.mark.slow  # 20 kills, half of them while a snapshot pair is being written
def test_kill_9_twenty_times_including_mid_snapshot(fixtures, tmp_path):
    results = run_kill_trials(fixtures, tmp_path, trials=20, seed=2024)
    mid = sum(1 for caught, _ in results if caught == "mid-snapshot")
    print(f"kill -9 trials: {len(results)}, mid-snapshot: {mid}")
    for caught, resumed_from in results:
        print(f"  killed {caught}, resumed from {resumed_from}")
    assert mid >= 5


SPAWN_SCRIPT = r"""
import sys
from protonet.solver.launch import TrainJob, spawn_training
from protonet.solver.solver import RunOptions
if __name__ == "__main__":
    job = TrainJob(solver=sys.argv[1], options=RunOptions(device="cpu"), log_to_stderr=True)
    print("status", spawn_training(job, ["cpu", "cpu"], backend="gloo"), flush=True)
"""


def test_sigterm_to_the_parent_of_data_parallel_ranks(fixtures, tmp_path):
    """Kubernetes signals only the first process: the parent passes SIGTERM on to the ranks."""
    text = (fixtures / "solver/ddp_solver.prototxt").read_text()
    solver = tmp_path / "solver.prototxt"
    solver.write_text(text.replace('"ddp"', f'"{tmp_path / "d"}"').replace("max_iter: 6", "max_iter: 100000")
                      .replace('net: "solver/', f'net: "{fixtures}/solver/'))
    script = tmp_path / "spawn.py"
    script.write_text(SPAWN_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), str(solver)], cwd=fixtures, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    end = time.monotonic() + 120
    while not any("Iteration 3, lr" in line for line in lines) and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    reader.join(timeout=10)
    assert proc.returncode == 0 and out.split() == ["status", "143"], "".join(lines)[-3000:]
    models = [f for f in os.listdir(tmp_path) if f.endswith(".caffemodel")]
    assert len(models) == 1 and os.path.exists(tmp_path / models[0].replace(".caffemodel", ".solverstate"))
