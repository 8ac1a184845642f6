"""`protonet train` under torchrun on two "machines": two node agents on 127.0.0.1 meet through the
c10d rendezvous (gloo, one process each, the prototxt's batch of 4 per process) and end with the
weights of one process trained with batch 8; only rank 0 logs and writes snapshots."""
import os
import subprocess
import sys

import numpy as np

from solver_util import caffemodel_arrays, captured_log, make_solver


def test_two_node_agents_equal_one_process_with_double_batch(fixtures, tmp_path, monkeypatch):
    from protonet.solver.launch import free_port

    monkeypatch.chdir(fixtures)
    with captured_log():
        make_solver("solver/ddp_solver.prototxt", prefix=tmp_path / "one", net="solver/ddp_train_b8.prototxt").solve()
    param_file = tmp_path / "solver.prototxt"
    param_file.write_text((fixtures / "solver/ddp_solver.prototxt").read_text()
                          .replace('"ddp"', f'"{tmp_path / "nodes"}"'))
    bindir = os.path.dirname(sys.executable)
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    agents = []
    for node in range(2):
        cmd = [os.path.join(bindir, "torchrun"), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "protonet-test",
               "--no-python", os.path.join(bindir, "protonet"), "train", "--solver", str(param_file)]
        agents.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                       cwd=fixtures))
    outputs = []
    try:
        for agent in agents:
            out, err = agent.communicate(timeout=400)
            outputs.append(err)
            assert agent.returncode == 0, err[-3000:]
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
    one = caffemodel_arrays(tmp_path / "one_iter_6.caffemodel")
    two = caffemodel_arrays(tmp_path / "nodes_iter_6.caffemodel")
    assert sorted(one) == sorted(two)
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # rank 0 (node 0) logs the iterations and writes the snapshots; node 1 says nothing of them
    assert outputs[0].count("Iteration 5, lr = ") == 1 and "Iteration 5, lr = " not in outputs[1]
    assert "Snapshotting" not in outputs[1]
