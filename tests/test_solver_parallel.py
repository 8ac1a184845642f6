"""Two processes (gloo, CPU) with batch 4 each train like one process with batch 8."""
import numpy as np
import pytest

from protonet.solver.launch import TrainJob, spawn_training
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
    from protonet.solver.launch import free_port

    proc = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-port", str(free_port()), "--no-python", protonet,
                           "train", "--solver", str(param_file)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = caffemodel_arrays(tmp_path / "one_iter_6.caffemodel")
    two = caffemodel_arrays(tmp_path / "tr_iter_6.caffemodel")
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert proc.stderr.count("Iteration 5, lr = ") == 1  # only rank 0 logs


def test_bucketed_all_reduce_keeps_every_tensor_in_place(monkeypatch):
    """Buckets smaller than the tensors: each gradient comes back from its own slice, scaled."""
    import torch
    import torch.distributed as dist

    from protonet.solver import parallel
    from protonet.solver.launch import free_port

    monkeypatch.setattr(parallel, "BUCKET_BYTES", 24)  # 6 floats: buckets of [5], [3, 2], [7], [1] values
    sizes = [5, 3, 2, 7, 1]
    assert [[t.numel() for t in b] for b in parallel._buckets([torch.zeros(n) for n in sizes])] == [[5], [3, 2], [7], [1]]
    blobs = [torch.zeros(n, requires_grad=True) for n in sizes] + [torch.zeros(2, requires_grad=True)]
    for i, b in enumerate(blobs[:-1]):
        b.grad = torch.arange(b.numel(), dtype=torch.float32) + 100 * i
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{free_port()}")
    try:
        # a group of one process: the sum is the gradient itself, then scaled by 1/world_size
        assert parallel.average_gradients(blobs, 2, bad=False) is False
        for i, b in enumerate(blobs[:-1]):
            assert torch.equal(b.grad, (torch.arange(b.numel(), dtype=torch.float32) + 100 * i) * 0.5)
        assert torch.equal(blobs[-1].grad, torch.zeros(2))  # no gradient counts as zeros
        assert parallel.average_gradients(blobs, 1, bad=True) is True
    finally:
        dist.destroy_process_group()
