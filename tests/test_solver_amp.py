"""--amp and --channels-last: off by default (the golden tests), working when asked (CPU here)."""
import numpy as np
import torch

from protonet.solver.solver import RunOptions
from protonet.solver.updates import LossScaler
from solver_util import caffemodel_arrays, captured_log, make_solver, one_thread  # noqa: F401


def test_bf16_channels_last_trains(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(fixtures)
    with captured_log():
        solver = make_solver("solver/adam/solver.prototxt", prefix=tmp_path / "amp", weights="solver/init.caffemodel",
                             options=RunOptions(amp="bf16", channels_last=True), snapshot=0, max_iter=12)
        losses = []
        orig = solver._forward_backward

        def record():
            blobs, loss = orig()
            losses.append(float(loss))
            return blobs, loss

        solver._forward_backward = record
        solver.solve()
    w = solver.net.params["conv1"][0]
    assert w.dtype == torch.float32 and w.is_contiguous(memory_format=torch.channels_last)
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3])
    saved = caffemodel_arrays(tmp_path / "amp_iter_12.caffemodel")
    assert np.array_equal(saved["conv1/0"], w.detach().numpy())  # logical layout, whatever the memory format


def test_fp16_loss_scaler_skips_overflow_and_unscales():
    scaler = LossScaler(scale=1024.0, growth_interval=2)
    a = torch.zeros(3, requires_grad=True)
    a.grad = torch.tensor([1024.0, 2048.0, float("inf")])
    assert not scaler.unscale([a]) and scaler.scale_value == 512.0 and torch.equal(a.grad, torch.zeros(3))
    a.grad = torch.tensor([512.0, 1024.0, 0.0])
    assert scaler.unscale([a]) and torch.equal(a.grad, torch.tensor([1.0, 2.0, 0.0]))
    a.grad = torch.ones(3)
    assert scaler.unscale([a]) and scaler.scale_value == 1024.0  # grew after 2 clean steps
