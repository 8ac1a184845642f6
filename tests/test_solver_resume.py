"""Resume equality, signal effects, NaN stop: Caffe's solver behaviours on a small net on CPU."""
import os
import re
import signal

import numpy as np
import pytest

from protonet.solver.signals import SignalHandler
from protonet.solver.solver import TrainingDiverged
from solver_util import assert_same_arrays, caffemodel_arrays, captured_log, make_solver, messages, one_thread  # noqa: F401


@pytest.mark.parametrize("kind", ["sgd_multistep", "adam"])
def test_ten_plus_ten_equals_twenty_bitwise(fixtures, tmp_path, monkeypatch, kind):
    # iter_size 1 and batch 4 of 16 samples: iteration 10 stops mid-epoch, so the data position
    # must be restored too; multistep at 8 and 15 exercises current_step, Adam its two histories
    monkeypatch.chdir(fixtures)
    solver_file = f"solver/{kind}/solver.prototxt"
    common = dict(iter_size=1, snapshot=10, max_iter=20, display=0)
    with captured_log():
        make_solver(solver_file, prefix=tmp_path / "full", weights="solver/init.caffemodel", **common).solve()
        make_solver(solver_file, prefix=tmp_path / "half", weights="solver/init.caffemodel",
                    **dict(common, max_iter=10)).solve()
        make_solver(solver_file, prefix=tmp_path / "half", **common).solve(str(tmp_path / "half_iter_10.solverstate"))
    assert_same_arrays(caffemodel_arrays(tmp_path / "full_iter_20.caffemodel"),
                       caffemodel_arrays(tmp_path / "half_iter_20.caffemodel"), exact=True)
    full = (tmp_path / "full_iter_20.solverstate").read_bytes()
    half = (tmp_path / "half_iter_20.solverstate").read_bytes()
    assert full.replace(b"full_iter", b"half_iter") == half  # same iter, step, history; only the name differs


def _run_with_signal(fixtures, tmp_path, monkeypatch, signum, effect_int, effect_hup, at_iter=3):
    monkeypatch.chdir(fixtures)
    with captured_log() as stream, SignalHandler(effect_int, effect_hup) as handler:
        holder = {}

        def action():
            if holder["solver"].progress.iter == at_iter and not holder.get("sent"):
                holder["sent"] = True
                os.kill(os.getpid(), signum)
            return handler.check()

        solver = make_solver("solver/sgd_multistep/solver.prototxt", prefix=tmp_path / "s",
                             weights="solver/init.caffemodel", action=action, snapshot=0, max_iter=6, display=1)
        holder["solver"] = solver
        solver.solve()
    return solver, messages(stream.getvalue()), sorted(p.name for p in tmp_path.iterdir())


def test_sigint_stop_snapshots_and_stops_early(fixtures, tmp_path, monkeypatch):
    solver, msgs, files = _run_with_signal(fixtures, tmp_path, monkeypatch, signal.SIGINT, "stop", "snapshot")
    assert solver.progress.iter == 3
    assert files == ["s_iter_3.caffemodel", "s_iter_3.solverstate"]  # snapshot_after_train
    assert msgs[-1] == "Optimization stopped early."
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler given back


def test_sighup_snapshot_keeps_training(fixtures, tmp_path, monkeypatch):
    solver, msgs, files = _run_with_signal(fixtures, tmp_path, monkeypatch, signal.SIGHUP, "stop", "snapshot")
    assert solver.progress.iter == 6
    assert files == ["s_iter_3.caffemodel", "s_iter_3.solverstate", "s_iter_6.caffemodel", "s_iter_6.solverstate"]
    assert msgs[-1] == "Optimization Done."


def test_signal_effect_none_is_ignored(fixtures, tmp_path, monkeypatch):
    solver, msgs, files = _run_with_signal(fixtures, tmp_path, monkeypatch, signal.SIGINT, "none", "none")
    assert solver.progress.iter == 6 and files == ["s_iter_6.caffemodel", "s_iter_6.solverstate"]


def test_sigint_snapshot_effect(fixtures, tmp_path, monkeypatch):
    solver, msgs, files = _run_with_signal(fixtures, tmp_path, monkeypatch, signal.SIGINT, "snapshot", "stop", at_iter=2)
    assert solver.progress.iter == 6 and "s_iter_2.caffemodel" in files


def test_nan_loss_stops_naming_the_iteration(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(fixtures)
    with captured_log() as stream:
        solver = make_solver("solver/sgd_multistep/solver.prototxt", prefix=tmp_path / "n",
                             weights="solver/init.caffemodel", base_lr=1e6, lr_policy="fixed", snapshot=1,
                             max_iter=50, iter_size=1)
        with pytest.raises(TrainingDiverged) as info:
            solver.solve()
    it = solver.progress.iter
    msg = str(info.value)
    assert re.match(rf"Iteration {it}, loss = (-?nan|inf): training stopped", msg), msg
    assert f"the last snapshot is {tmp_path / f'n_iter_{it}.caffemodel'}" in msg
    assert (tmp_path / f"n_iter_{it}.caffemodel").exists() and not (tmp_path / f"n_iter_{it + 1}.caffemodel").exists()
    assert messages(stream.getvalue())[-1] == msg  # logged as an error line too
    # the weights in memory are the last good ones: the snapshot holds them
    snap = caffemodel_arrays(tmp_path / f"n_iter_{it}.caffemodel")
    assert np.array_equal(snap["fc/0"], solver.net.params["fc"][0].detach().numpy())


def test_weights_and_snapshot_are_exclusive_and_bad_state_is_named(fixtures, tmp_path, monkeypatch):
    from protonet.errors import ProtonetError

    monkeypatch.chdir(fixtures)
    with captured_log():
        solver = make_solver("solver/adam/solver.prototxt", prefix=tmp_path / "x")
        with pytest.raises(ProtonetError, match="sgd_multistep_iter_10.solverstate: holds 10 history blobs, "
                                                "this solver needs 20"):
            solver.restore("solver/sgd_multistep/sgd_multistep_iter_10.solverstate")
        with pytest.raises(ProtonetError, match="nope.solverstate"):
            solver.restore("nope.solverstate")


def test_unwritable_snapshot_prefix_fails_at_start(fixtures, tmp_path, monkeypatch):
    from protonet.errors import ProtonetError

    monkeypatch.chdir(fixtures)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with captured_log(), pytest.raises(ProtonetError, match="snapshot_prefix .*cannot write snapshots"):
        make_solver("solver/adam/solver.prototxt", prefix=blocker / "sub" / "p")


def test_lmdb_data_layers_resume_at_the_same_batch(fixtures):
    """A resumed solver skips the batches already trained on: AnnotatedData (random sampler, seeded)
    gives after skip_batches(2) exactly the batch an uninterrupted reader gives third."""
    import torch

    from protonet import caffe_pb2
    from protonet.io.prototxt import read_prototxt
    from protonet.layers.base import NetContext
    from protonet.net.net import Net
    from protonet.solver.solver import skip_data

    param = read_prototxt(fixtures / "data/annotated_data_identity_sampler.prototxt", caffe_pb2.NetParameter)
    ctx = NetContext(phase=caffe_pb2.TRAIN, seed=7, root_dir=str(fixtures / "data"), data_workers=0)
    straight = Net(param, phase="TRAIN", ctx=ctx)
    for _ in range(2):
        straight()
    want = straight()
    resumed = Net(param, phase="TRAIN", ctx=ctx)
    with captured_log():
        skip_data(resumed, 2)
    got = resumed()
    assert torch.equal(got["data"], want["data"]) and torch.equal(got["label"], want["label"])


def test_hdf5_snapshots_resume_bitwise(fixtures, tmp_path, monkeypatch):
    import h5py

    monkeypatch.chdir(fixtures)
    from protonet import caffe_pb2

    common = dict(iter_size=1, snapshot=10, max_iter=20, display=0, snapshot_format=caffe_pb2.SolverParameter.HDF5)
    with captured_log() as stream:
        make_solver("solver/adam/solver.prototxt", prefix=tmp_path / "full", weights="solver/init.caffemodel",
                    **common).solve()
        make_solver("solver/adam/solver.prototxt", prefix=tmp_path / "half", weights="solver/init.caffemodel",
                    **dict(common, max_iter=10)).solve()
        make_solver("solver/adam/solver.prototxt", prefix=tmp_path / "half",
                    **common).solve(str(tmp_path / "half_iter_10.solverstate.h5"))
    assert f"Snapshotting to HDF5 file {tmp_path / 'full_iter_10.caffemodel.h5'}" in messages(stream.getvalue())
    with h5py.File(tmp_path / "full_iter_20.caffemodel.h5") as a, h5py.File(tmp_path / "half_iter_20.caffemodel.h5") as b:
        assert sorted(a["data"]) == sorted(b["data"]) and "conv1_bn" in a["data"]
        for layer in a["data"]:
            for k in a["data"][layer]:
                assert np.array_equal(a["data"][layer][k][()], b["data"][layer][k][()]), (layer, k)
    with h5py.File(tmp_path / "half_iter_20.solverstate.h5") as s:
        assert int(s["iter"][0]) == 20 and len(s["history"]) == 20
