"""Two processes (gloo, CPU) with batch 4 each train like one process with batch 8."""
import numpy as np
import pytest

from protonet.solver.parallel import TrainJob, spawn_training
from protonet.solver.solver import RunOptions
from solver_util import caffemodel_arrays, captured_log, make_solver, one_thread  # noqa: F401


@pytest.mark.slow  # spawning two fresh interpreters that import torch: 15-30 s on 2 shared cores
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
