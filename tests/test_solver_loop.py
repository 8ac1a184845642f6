"""Loop details: smoothed loss over average_loss, test_interval/test_initialization schedule."""
import numpy as np

from solver_util import captured_log, make_solver, messages, one_thread  # noqa: F401


def test_smoothed_loss_is_caffes_running_window(fixtures, monkeypatch):
    monkeypatch.chdir(fixtures)
    with captured_log():
        solver = make_solver("solver/adam/solver.prototxt", average_loss=3)
    out = []
    for it, loss in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 9.0]):
        solver.progress.iter = it
        solver._update_smoothed_loss(np.float32(loss), 0)
        out.append(float(solver.smoothed_loss))
    assert out == [1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def test_test_schedule_and_final_test(fixtures, monkeypatch, tmp_path):
    # test_interval 2 over 5 iterations without test_initialization: tests at 2 and 4, none at 0,
    # and none after the last iteration (5 is not a multiple of 2)
    monkeypatch.chdir(fixtures)
    with captured_log() as stream:
        solver = make_solver("eval/map_11point/solver.prototxt", prefix=tmp_path / "t", test_initialization=False,
                             test_interval=2, max_iter=5, show_per_class_result=False)
        solver.solve()
    tests = [m for m in messages(stream.getvalue()) if "Testing net" in m]
    assert tests == ["Iteration 2, Testing net (#0)", "Iteration 4, Testing net (#0)"]
    assert (tmp_path / "t_iter_5.caffemodel").exists() is False  # snapshot_after_train: false in this solver


def test_inline_net_params_and_test_states(fixtures, monkeypatch, tmp_path):
    """net_param/train_net_param/test_net_param given inline; test_state picks layers by stage."""
    from protonet import caffe_pb2
    from protonet.io.prototxt import read_prototxt
    from protonet.solver.solver import Solver

    monkeypatch.chdir(fixtures)
    net = read_prototxt("solver/train.prototxt", caffe_pb2.NetParameter)
    # a test-only layer that exists only in stage "extra"
    extra = net.layer.add()
    extra.CopyFrom(caffe_pb2.LayerParameter(name="acc", type="Accuracy", bottom=["fc", "label"], top=["acc"]))
    extra.include.add(phase=caffe_pb2.TEST, stage=["extra"])
    param = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", max_iter=2, display=1, test_interval=2,
                                      test_iter=[1, 1], snapshot_after_train=False)
    param.net_param.CopyFrom(net)
    param.test_state.add(stage=["extra"])
    param.test_state.add()
    with captured_log() as stream:
        solver = Solver(param)
        assert "acc" in solver.test_nets[0].layers and "acc" not in solver.test_nets[1].layers
        assert "acc" not in solver.net.layers
        results = solver.test_all()
    assert set(results[0]) == {"acc", "loss"} and set(results[1]) == {"loss"}
    msgs = messages(stream.getvalue())
    assert "Creating training net specified in net_param." in msgs
    assert "Creating test net (#1) specified by net_param" in msgs

    two = caffe_pb2.SolverParameter(base_lr=0.01, lr_policy="fixed", max_iter=1)
    two.train_net_param.CopyFrom(net)
    two.net = "solver/train.prototxt"
    import pytest

    from protonet.errors import ProtonetError

    with captured_log(), pytest.raises(ProtonetError, match="exactly one of net, net_param, train_net"):
        Solver(two)
