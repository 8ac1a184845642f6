"""Nets against the real Caffe fork: every blob of tiny SSD, and the loss of the solver golden's
first iteration."""
import csv
import pathlib

import numpy as np
import pytest
import torch

from protonet.layers.base import NetContext
from protonet.net import Net

FIX = pathlib.Path(__file__).parent / "fixtures" / "net"
DETECTION_TYPES = {"PriorBox", "Normalize", "Permute", "DetectionOutput"}


def test_tiny_ssd_every_blob_matches_caffe():
    net = Net(FIX / "tiny_ssd_deploy.prototxt", phase="TEST", weights=str(FIX / "tiny_ssd.caffemodel"))
    golden = np.load(FIX / "tiny_ssd_forward_1jpg_blobs.npz")
    with torch.no_grad():
        blobs = net(data=torch.from_numpy(golden["data"]))
    detection_tops = {t for l in net.net_param.layer if l.type in DETECTION_TYPES for t in l.top}
    checked = 0
    for name, value in blobs.items():
        assert name in golden.files, name
        ref = golden[name]
        assert tuple(value.shape) == ref.shape, name
        if name in detection_tops:
            continue  # owned and checked by the detection tests
        assert net.blob_shapes[name] == ref.shape, name
        diff = np.abs(value.numpy() - ref).max()
        assert diff <= 1e-4, f"{name}: max abs diff {diff}"
        checked += 1
    assert checked >= 20


def test_solver_net_first_iteration_loss():
    """solver/sgd_multistep: iter_size 2, so iteration 0's logged loss is the mean of the first two
    batches of 4 (HDF5 rows 0-3 and 4-7), forwarded in TRAIN phase (BatchNorm on batch statistics)."""
    with open(FIX / "solver" / "sgd_multistep_loss_lr.csv") as fh:
        rows = list(csv.DictReader(fh))
    expected = float(rows[0]["loss"])
    ctx = NetContext(root_dir=str(FIX))
    net = Net(FIX / "solver" / "train.prototxt", phase="TRAIN", weights=str(FIX / "solver" / "init.caffemodel"),
              ctx=ctx)
    assert net.loss_weights == {"loss": 1.0}
    losses = []
    for _ in range(2):
        blobs = net()
        assert tuple(blobs["data"].shape) == (4, 3, 8, 8)
        losses.append(net.loss(blobs).item())
    assert np.mean(losses) == pytest.approx(expected, abs=1e-5)
    # The BatchNorm statistics were updated twice, in place, without gradients.
    assert net.params["conv1_bn"][2].item() == pytest.approx(0.9 * 1 + 1)
    lr = {name: (lr, decay) for name, (_, lr, decay) in zip(net.learnable_param_names, net.learnable_params)}
    assert lr["conv1/0"] == (1.0, 1.0) and lr["conv1/1"] == (2.0, 0.0) and lr["conv1_bn/2"] == (0.0, 1.0)
