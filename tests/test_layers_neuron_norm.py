"""Neuron and normalisation layers: formulas, defaults and BatchNorm's running statistics."""
import math

import numpy as np
import pytest
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.prototxt import parse_prototxt
from protonet.layers.base import NetContext, layer_class


def build(text, bottom_shapes, phase=caffe_pb2.TEST):
    lp = parse_prototxt(text, caffe_pb2.LayerParameter())
    return layer_class(lp.type, lp.name)(lp, bottom_shapes, NetContext(phase=phase))


def rand(*shape, seed=0):
    return torch.from_numpy(np.random.RandomState(seed).randn(*shape).astype(np.float32))


X = rand(2, 3, 4)
XN = X.numpy().astype(np.float64)

NEURONS = [
    ('type: "ReLU"', np.maximum(XN, 0)),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', np.where(XN > 0, XN, 0.1 * XN)),
    ('type: "ELU" elu_param { alpha: 0.5 }', np.where(XN > 0, XN, 0.5 * (np.exp(XN) - 1))),
    ('type: "Sigmoid"', 1 / (1 + np.exp(-XN))),
    ('type: "TanH"', np.tanh(XN)),
    ('type: "AbsVal"', np.abs(XN)),
    ('type: "Power" power_param { power: 2 scale: 0.5 shift: 3 }', (3 + 0.5 * XN) ** 2),
    ('type: "Exp"', np.exp(XN)),
    ('type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', 2.0 ** (1 + 0.5 * XN)),
    ('type: "Log" log_param { shift: 10 }', np.log(10 + XN)),
    ('type: "Log" log_param { base: 10 scale: 2 shift: 10 }', np.log10(10 + 2 * XN)),
    ('type: "BNLL"', np.log1p(np.exp(XN))),
    ('type: "Threshold" threshold_param { threshold: 0.2 }', (XN > 0.2).astype(np.float64)),
    ('type: "Dropout"', XN),  # TEST: identity
]


@pytest.mark.parametrize("text,expect", NEURONS)
def test_neuron_formulas(text, expect):
    layer = build(f'name: "n" bottom: "x" top: "y" {text}', [(2, 3, 4)])
    assert layer.top_shapes == [(2, 3, 4)]
    np.testing.assert_allclose(layer(X).detach().numpy(), expect, rtol=1e-5, atol=1e-6)


def test_prelu_per_channel_and_shared():
    p = build('name: "p" type: "PReLU" bottom: "x" top: "y"', [(2, 3, 4)])
    assert tuple(p.blobs[0].shape) == (3,) and torch.allclose(p.blobs[0], torch.full((3,), 0.25))
    with torch.no_grad():
        p.blobs[0].copy_(torch.tensor([0.1, 0.2, 0.3]))
    ref = np.where(XN > 0, XN, XN * np.array([0.1, 0.2, 0.3])[None, :, None])
    np.testing.assert_allclose(p(X).detach().numpy(), ref, rtol=1e-6)
    s = build('name: "p" type: "PReLU" bottom: "x" top: "y" prelu_param { channel_shared: true }', [(2, 3, 4)])
    assert tuple(s.blobs[0].shape) == ()


def test_dropout_train_scales_kept_values():
    layer = build('name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.25 }',
                  [(200, 100)], phase=caffe_pb2.TRAIN)
    x = torch.ones(200, 100)
    y = layer(x)
    kept = y != 0
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    with pytest.raises(ProtonetError, match="layer d"):
        build('name: "d" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 1 }', [(2, 2)])


# ----------------------------------------------------------------------------- BatchNorm
def test_batchnorm_global_stats_use_the_scale_factor():
    bn = build('name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { eps: 0.001 }', [(2, 3, 4)])
    assert bn.use_global_stats  # TEST default
    mean, var, factor = np.array([1.0, -2.0, 0.5]), np.array([4.0, 1.0, 0.25]), 0.5
    with torch.no_grad():
        bn.blobs[0].copy_(torch.tensor(mean))
        bn.blobs[1].copy_(torch.tensor(var))
        bn.blobs[2].fill_(factor)
    ref = (XN - mean[None, :, None] / factor) / np.sqrt(var[None, :, None] / factor + 0.001)
    np.testing.assert_allclose(bn(X).numpy(), ref, rtol=1e-5)
    with torch.no_grad():
        bn.blobs[2].zero_()  # a zero factor means zero statistics
    np.testing.assert_allclose(bn(X).numpy(), XN / np.sqrt(0.001), rtol=1e-5)


def test_batchnorm_train_updates_running_sums_like_caffe():
    bn = build('name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { moving_average_fraction: 0.9 }',
               [(2, 3, 4)], phase=caffe_pb2.TRAIN)
    assert not bn.use_global_stats
    x1, x2 = X, rand(2, 3, 4, seed=5)
    y = bn(x1)
    m1 = x1.numpy().mean(axis=(0, 2))
    v1 = x1.numpy().var(axis=(0, 2))
    np.testing.assert_allclose(y.detach().numpy(),
                               (x1.numpy() - m1[None, :, None]) / np.sqrt(v1[None, :, None] + 1e-5), rtol=1e-4)
    bn(x2)
    m2, v2 = x2.numpy().mean(axis=(0, 2)), x2.numpy().var(axis=(0, 2))
    corr = 8 / 7
    np.testing.assert_allclose(bn.blobs[2].numpy(), [0.9 * 1 + 1], rtol=1e-6)
    np.testing.assert_allclose(bn.blobs[0].detach().numpy(), 0.9 * m1 + m2, rtol=1e-5)
    np.testing.assert_allclose(bn.blobs[1].detach().numpy(), 0.9 * corr * v1 + corr * v2, rtol=1e-5)
    assert not any(b.requires_grad for b in bn.blobs)


def test_batchnorm_use_global_stats_overrides_phase():
    bn = build('name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { use_global_stats: true }',
               [(2, 3)], phase=caffe_pb2.TRAIN)
    assert bn.use_global_stats
    bn(rand(2, 3))
    assert float(bn.blobs[2]) == 0.0  # no update with global statistics


# ----------------------------------------------------------------------------- Scale / Bias / MVN
def test_scale_blob_shapes_and_values():
    s = build('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true }', [(2, 3, 4)])
    assert [tuple(b.shape) for b in s.blobs] == [(3,), (3,)]
    assert torch.all(s.blobs[0] == 1) and torch.all(s.blobs[1] == 0)
    with torch.no_grad():
        s.blobs[0].copy_(torch.tensor([1.0, 2.0, 3.0]))
        s.blobs[1].copy_(torch.tensor([0.5, 0.0, -1.0]))
    ref = XN * np.array([1, 2, 3.0])[None, :, None] + np.array([0.5, 0, -1.0])[None, :, None]
    np.testing.assert_allclose(s(X).detach().numpy(), ref, rtol=1e-6)
    s2 = build('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { axis: 1 num_axes: -1 }', [(2, 3, 4)])
    assert tuple(s2.blobs[0].shape) == (3, 4)
    s0 = build('name: "s" type: "Scale" bottom: "x" top: "y" scale_param { num_axes: 0 filler { type: "constant" '
               'value: 3 } }', [(2, 3, 4)])
    assert tuple(s0.blobs[0].shape) == () and torch.allclose(s0(X), 3 * X)
    two = build('name: "s" type: "Scale" bottom: "x" bottom: "w" top: "y" scale_param { axis: 0 }',
                [(2, 3, 4), (2, 3)])
    w = rand(2, 3, seed=3)
    np.testing.assert_allclose(two(X, w).numpy(), XN * w.numpy()[:, :, None], rtol=1e-6)
    assert two.blobs == []


def test_bias_layer():
    b = build('name: "b" type: "Bias" bottom: "x" top: "y" bias_param { filler { type: "constant" value: 2 } }',
              [(2, 3, 4)])
    assert tuple(b.blobs[0].shape) == (3,)
    np.testing.assert_allclose(b(X).detach().numpy(), XN + 2, rtol=1e-6)
    two = build('name: "b" type: "Bias" bottom: "x" bottom: "c" top: "y" bias_param { axis: 2 }', [(2, 3, 4), (4,)])
    c = rand(4, seed=2)
    np.testing.assert_allclose(two(X, c).numpy(), XN + c.numpy(), rtol=1e-6)


@pytest.mark.parametrize("across,variance", [(False, True), (True, True), (False, False)])
def test_mvn(across, variance):
    m = build(f'name: "m" type: "MVN" bottom: "x" top: "y" mvn_param {{ across_channels: {str(across).lower()} '
              f'normalize_variance: {str(variance).lower()} eps: 0.01 }}', [(2, 3, 4)])
    flat = XN.reshape(2, -1) if across else XN.reshape(6, -1)
    c = flat - flat.mean(1, keepdims=True)
    if variance:
        c = c / (np.sqrt((c ** 2).mean(1, keepdims=True)) + 0.01)
    np.testing.assert_allclose(m(X).numpy(), c.reshape(XN.shape), rtol=1e-5, atol=1e-6)
