"""Two processes (gloo, CPU) with batch 4 each train like one process with batch 8."""
import numpy as np
import pytest

from protonet.solver.parallel import TrainJob, spawn_training
from protonet.solver.solver import RunOptions
from solver_util import caffemodel_arrays, captured_log, make_solver, one_thread  # noqa: F401


def test_two_process_gloo_equals_double_batch(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(fixtures)
    with captured_log():
        single = make_solver("solver/ddp_solver.prototxt", prefix=tmp_path / "one", net="solver/ddp_train_b8.prototxt")
        single.solve()
    param_file = tmp_path / "solver.prototxt"
    text = (fixtures / "solver/ddp_solver.prototxt").read_text().replace('"ddp"', f'"{tmp_path / "two"}"')
    param_file.write_text(text)
    job = TrainJob(solver=str(param_file), options=RunOptions(device="cpu"))
    spawn_training(job, ["cpu", "cpu"], backend="gloo")
    one = caffemodel_arrays(tmp_path / "one_iter_6.caffemodel")
    two = caffemodel_arrays(tmp_path / "two_iter_6.caffemodel")
    start = {k: v for k, v in one.items()}
    assert sorted(one) == sorted(two)
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # and training did move the weights
    init = make_solver("solver/ddp_solver.prototxt", prefix=tmp_path / "z", net="solver/ddp_train_b8.prototxt")
    assert not np.allclose(init.net.params["fc"][0].detach().numpy(), start["fc/0"])


@pytest.mark.slow  # two fresh interpreters under torchrun
def test_torchrun_two_processes_equal_double_batch(fixtures, tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    monkeypatch.chdir(fixtures)
    with captured_log():
        make_solver("solver/ddp_solver.prototxt", prefix=tmp_path / "one", net="solver/ddp_train_b8.prototxt").solve()
    param_file = tmp_path / "solver.prototxt"
    param_file.write_text((fixtures / "solver/ddp_solver.prototxt").read_text()
                          .replace('"ddp"', f'"{tmp_path / "tr"}"'))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    protonet = os.path.join(os.path.dirname(sys.executable), "protonet")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    from protonet.solver.parallel import free_port

    proc = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-port", str(free_port()), "--no-python", protonet,
                           "train", "--solver", str(param_file)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = caffemodel_arrays(tmp_path / "one_iter_6.caffemodel")
    two = caffemodel_arrays(tmp_path / "tr_iter_6.caffemodel")
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert proc.stderr.count("Iteration 5, lr = ") == 1  # only rank 0 logs
