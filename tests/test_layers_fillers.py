"""Caffe's fillers: defaults, scales and layouts."""
import math

import numpy as np
import pytest
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.layers.fillers import fill

F = caffe_pb2.FillerParameter


def test_constant_default_and_uniform():
    assert torch.all(fill((2, 3)) == 0)
    assert torch.all(fill((2, 3), F(type="constant", value=0.5)) == 0.5)
    torch.manual_seed(0)
    u = fill((1000,), F(type="uniform", min=-2, max=3))
    assert u.min() >= -2 and u.max() <= 3 and abs(u.mean().item() - 0.5) < 0.15
    d = fill((2000,), F(type="uniform"))  # defaults min 0 max 1
    assert d.min() >= 0 and d.max() <= 1


def test_gaussian_and_sparse():
    torch.manual_seed(0)
    g = fill((200, 100), F(type="gaussian", mean=1, std=2))
    assert abs(g.mean().item() - 1) < 0.05 and abs(g.std().item() - 2) < 0.05
    s = fill((50, 400), F(type="gaussian", std=1, sparse=10))  # keep probability 10 / 50
    assert abs((s != 0).float().mean().item() - 0.2) < 0.02
    with pytest.raises(ProtonetError, match="sparse"):
        fill((2, 2), F(type="xavier", sparse=3), "layer x weight")


@pytest.mark.parametrize("norm", [F.FAN_IN, F.FAN_OUT, F.AVERAGE])
def test_xavier_and_msra_scales(norm):
    torch.manual_seed(0)
    shape = (800, 3, 3, 3)
    fan_in, fan_out = 3 * 9, 800 * 9
    n = {F.FAN_IN: fan_in, F.FAN_OUT: fan_out, F.AVERAGE: (fan_in + fan_out) / 2}[norm]
    x = fill(shape, F(type="xavier", variance_norm=norm))
    bound = math.sqrt(3 / n)
    assert x.abs().max() <= bound and x.abs().max() > 0.95 * bound
    m = fill(shape, F(type="msra", variance_norm=norm))
    assert abs(m.std().item() / math.sqrt(2 / n) - 1) < 0.05


def test_bilinear_kernel():
    w = fill((2, 1, 4, 4), F(type="bilinear"))
    ramp = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(w[0, 0].numpy(), np.outer(ramp, ramp), rtol=1e-6)
    w5 = fill((1, 1, 5, 5), F(type="bilinear"))
    ramp5 = np.array([1, 2, 3, 2, 1]) / 3
    np.testing.assert_allclose(w5[0, 0].numpy(), np.outer(ramp5, ramp5), rtol=1e-6)
    # Caffe's formula (f = ceil(k/2), c = (2f - 1 - f % 2) / 2f) is lopsided for k = 3.
    w3 = fill((1, 1, 3, 3), F(type="bilinear"))
    np.testing.assert_allclose(w3[0, 0, 0].numpy(), [0.0625, 0.1875, 0.1875], rtol=1e-6)
    with pytest.raises(ProtonetError, match="bilinear"):
        fill((1, 1, 3, 4), F(type="bilinear"), "layer up weight")


def test_positive_unitball_rows_sum_to_one():
    torch.manual_seed(0)
    p = fill((5, 2, 3), F(type="positive_unitball"))
    assert torch.all(p >= 0)
    np.testing.assert_allclose(p.reshape(5, -1).sum(1).numpy(), np.ones(5), rtol=1e-6)


def test_unknown_filler_names_the_place():
    with pytest.raises(ProtonetError, match="layer c weight: unknown filler type 'nope'"):
        fill((2,), F(type="nope"), "layer c weight")
