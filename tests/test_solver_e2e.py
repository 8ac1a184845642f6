"""End to end on CPU: the quickstart's small SSD (NetSpec script -> gen -> LMDB) trained by the solver.

The shapes dataset, its LMDB and the nets come from the ordinary commands (make-shapes,
create-annoset, gen). The train net keeps resize and mirror but drops SSD's random crops,
distortion and expansion so that a few hundred CPU iterations suffice; the test net reads the
training LMDB. The loss must fall and the mAP on the training images must pass 0.5.
"""
import os
import re

import pytest

from protonet import caffe_pb2
from protonet.cli import main
from protonet.io.prototxt import read_prototxt, write_prototxt
from solver_util import captured_log, make_solver, messages, one_thread  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL_DIR = "models/quickstart/ssd_shapes_128x128"


@pytest.mark.slow  # about 200 iterations of a 128x128 SSD on CPU: several minutes on 2 cores
def test_small_ssd_learns_its_training_images(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = "data/shapes"
    main(["make-shapes", data, "--train", "64", "--test", "8"])
    for split in ("trainval", "test"):
        main(["create-annoset", "--anno-type", "detection", "--label-type", "xml", "--label-map-file",
              f"{data}/labelmap.prototxt", "--check-label", "--encode-type", "jpg", "--encoded", "--redo",
              data, f"{data}/{split}.txt", f"{data}/lmdb/shapes_{split}_lmdb"])
    main(["gen", os.path.join(REPO, "examples/quickstart/ssd_shapes.py"), "--root", str(tmp_path)])

    train = read_prototxt(f"{MODEL_DIR}/train.prototxt", caffe_pb2.NetParameter)
    layer = train.layer[0]
    assert layer.type == "AnnotatedData"
    del layer.annotated_data_param.batch_sampler[:]
    layer.transform_param.ClearField("distort_param")
    layer.transform_param.ClearField("expand_param")
    write_prototxt(train, "train.prototxt")
    test = read_prototxt(f"{MODEL_DIR}/test.prototxt", caffe_pb2.NetParameter)
    test.layer[0].data_param.source = f"{data}/lmdb/shapes_trainval_lmdb"
    batch = test.layer[0].data_param.batch_size
    write_prototxt(test, "test.prototxt")

    with captured_log() as stream:
        solver = make_solver(f"{MODEL_DIR}/solver.prototxt", prefix=tmp_path / "e2e", train_net="train.prototxt",
                             test_net=["test.prototxt"], test_iter=[64 // batch], test_interval=200,
                             test_initialization=False, max_iter=200, stepvalue=[150], snapshot=0, display=20,
                             average_loss=10, lr_policy="multistep")
        solver.solve()
    msgs = messages(stream.getvalue())
    losses = [float(m.group(1)) for m in map(re.compile(r"^Iteration \d+, loss = (\S+)$").match, msgs) if m]
    assert losses[-1] < 0.4 * losses[0], losses
    maps = [float(m.group(1)) for m in map(re.compile(r"detection_eval = (\S+)$").search, msgs) if m]
    assert len(maps) == 1 and maps[0] > 0.5, maps
