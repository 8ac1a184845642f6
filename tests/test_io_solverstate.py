""".solverstate: Caffe's snapshots read and write back byte for byte; our own round trip."""
import numpy as np
import torch

from protonet.io import make_solverstate, read_solverstate, solverstate_history_arrays, write_solverstate


def test_caffe_solverstates_read_and_write_back_identically(fixtures, tmp_path):
    for name, iteration, step, count in [("adam_iter_5", 5, 0, 20), ("sgd_multistep_iter_10", 10, 1, 10)]:
        src = fixtures / "io" / f"{name}.solverstate"
        state = read_solverstate(src)
        assert (state.iter, state.current_step, len(state.history)) == (iteration, step, count)
        assert state.learned_net.endswith(f"{name}.caffemodel")
        history = solverstate_history_arrays(state)
        assert history[0].shape == (4, 3, 3, 3) and history[0].dtype == np.float32
        write_solverstate(state, tmp_path / "a.solverstate")
        assert (tmp_path / "a.solverstate").read_bytes() == src.read_bytes()
        write_solverstate(state, tmp_path / "b.solverstate", history=[torch.from_numpy(h) for h in history])
        assert (tmp_path / "b.solverstate").read_bytes() == src.read_bytes()


def test_made_solverstate_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    history = [rng.standard_normal((3, 2, 1, 1)).astype(np.float32), rng.standard_normal(3).astype(np.float32)]
    state = make_solverstate(1234, "snap/x_iter_1234.caffemodel", current_step=2, history=history)
    write_solverstate(state, tmp_path / "x.solverstate")
    back = read_solverstate(tmp_path / "x.solverstate")
    assert back == state
    assert (back.iter, back.current_step, back.learned_net) == (1234, 2, "snap/x_iter_1234.caffemodel")
    for got, want in zip(solverstate_history_arrays(back), history):
        assert got.tobytes() == want.tobytes() and got.shape == want.shape
    # the streamed form writes the same bytes
    bare = make_solverstate(1234, "snap/x_iter_1234.caffemodel", current_step=2)
    write_solverstate(bare, tmp_path / "y.solverstate", history=history)
    assert (tmp_path / "y.solverstate").read_bytes() == (tmp_path / "x.solverstate").read_bytes()
