"""Loss layers: values, normalisation modes, ignore_label, gradients as Caffe's Backward computes them."""
import numpy as np
import pytest
import torch

from protonet import caffe_pb2
from protonet.errors import ShapeError
from protonet.io.prototxt import parse_prototxt
from protonet.layers.base import NetContext, layer_class


def build(text, bottom_shapes, phase=caffe_pb2.TRAIN):
    lp = parse_prototxt(text, caffe_pb2.LayerParameter())
    return layer_class(lp.type, lp.name)(lp, bottom_shapes, NetContext(phase=phase))


def rand(*shape, seed=0):
    return torch.from_numpy(np.random.RandomState(seed).randn(*shape).astype(np.float64))


def softmax_np(x, axis):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


# logits (2, 3, 2, 2): outer 2, inner 4 -> 8 positions, 2 ignored.
LOGITS = rand(2, 3, 2, 2)
LABELS = torch.tensor([[[0, 1], [2, 255]], [[1, 1], [255, 0]]], dtype=torch.float64).reshape(2, 1, 2, 2)


@pytest.mark.parametrize("norm_text,divisor", [
    ("", 6), ("normalization: VALID", 6), ("normalization: FULL", 8), ("normalization: BATCH_SIZE", 2),
    ("normalization: NONE", 1), ("normalize: true", 6), ("normalize: false", 2),
])
def test_softmax_with_loss_normalization(norm_text, divisor):
    layer = build(f'name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" '
                  f'loss_param {{ ignore_label: 255 {norm_text} }}', [(2, 3, 2, 2), (2, 1, 2, 2)])
    x = LOGITS.clone().requires_grad_(True)
    loss = layer(x, LABELS)
    p = softmax_np(LOGITS.numpy(), 1)
    lab = LABELS.numpy().reshape(2, 2, 2).astype(int)
    valid = lab != 255
    picked = np.take_along_axis(p, np.where(valid, lab, 0)[:, None], 1)[:, 0]
    expect = -(np.log(picked) * valid).sum() / divisor
    assert loss.item() == pytest.approx(expect, rel=1e-10)
    loss.backward()
    onehot = np.zeros_like(p)
    np.put_along_axis(onehot, np.where(valid, lab, 0)[:, None], 1.0, 1)
    grad = (p - onehot) * valid[:, None] / divisor
    np.testing.assert_allclose(x.grad.numpy(), grad, rtol=1e-9, atol=1e-12)


def test_softmax_with_loss_prob_top_and_shape_error():
    layer = build('name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" top: "prob"',
                  [(4, 3), (4,)])
    loss, prob = layer(rand(4, 3), torch.tensor([0.0, 1, 2, 1]))
    assert loss.shape == () and prob.shape == (4, 3)
    assert layer.top_shapes == [(), (4, 3)]
    with pytest.raises(ShapeError, match="layer bad"):
        build('name: "bad" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss"', [(4, 3), (5,)])


def test_softmax_with_loss_clamps_like_caffe():
    layer = build('name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss"', [(1, 2), (1,)])
    x = torch.tensor([[0.0, 200.0]], dtype=torch.float32, requires_grad=True)
    loss = layer(x, torch.tensor([0.0]))
    assert loss.item() == pytest.approx(-np.log(np.finfo(np.float32).tiny), rel=1e-6)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), [[-1.0, 1.0]])  # p - onehot, unclamped


@pytest.mark.parametrize("extra,divisor", [("", 2), ("loss_param { normalization: FULL }", 6),
                                           ("loss_param { ignore_label: -1 normalization: VALID }", 5)])
def test_sigmoid_cross_entropy(extra, divisor):
    layer = build(f'name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" {extra}',
                  [(2, 3), (2, 3)])
    x = rand(2, 3).requires_grad_(True)
    t = torch.tensor([[1.0, 0.0, 1.0], [0.0, -1.0, 1.0]])
    valid = np.ones((2, 3), bool) if "ignore" not in extra else (t.numpy() != -1)
    tt = np.clip(t.numpy(), 0, 1)
    s = 1 / (1 + np.exp(-x.detach().numpy()))
    per = -(tt * np.log(s) + (1 - tt) * np.log(1 - s))
    if "ignore" not in extra:
        per = -(t.numpy() * np.log(s) + (1 - t.numpy()) * np.log(1 - s))
    loss = layer(x, t)
    assert loss.item() == pytest.approx((per * valid).sum() / divisor, rel=1e-9)
    loss.backward()
    tgrad = t.numpy() if "ignore" not in extra else tt
    np.testing.assert_allclose(x.grad.numpy(), (s - tgrad) * valid / divisor, rtol=1e-8)


def test_euclidean_hinge_multinomial():
    a, b = rand(3, 4), rand(3, 4, seed=1)
    e = build('name: "e" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l"', [(3, 4), (3, 4)])
    assert float(e(a, b)) == pytest.approx(((a - b) ** 2).sum().item() / 6)
    lab = torch.tensor([1.0, 0.0, 3.0])
    h = build('name: "h" type: "HingeLoss" bottom: "x" bottom: "y" top: "l"', [(3, 4), (3,)])
    sign = -np.ones((3, 4))
    sign[np.arange(3), lab.long().numpy()] = 1
    margin = np.maximum(0, 1 - sign * a.numpy())
    assert float(h(a, lab)) == pytest.approx(margin.sum() / 3)
    h2 = build('name: "h" type: "HingeLoss" bottom: "x" bottom: "y" top: "l" hinge_loss_param { norm: L2 }',
               [(3, 4), (3,)])
    assert float(h2(a, lab)) == pytest.approx((margin ** 2).sum() / 3)
    p = torch.softmax(a, 1)
    m = build('name: "m" type: "MultinomialLogisticLoss" bottom: "p" bottom: "y" top: "l"', [(3, 4), (3,)])
    assert float(m(p, lab)) == pytest.approx(-np.log(p.numpy()[np.arange(3), lab.long().numpy()]).sum() / 3)
    zero = torch.zeros(1, 2, requires_grad=True)
    loss = m.forward(zero, torch.tensor([0.0]))
    assert loss.item() == pytest.approx(-np.log(1e-20), rel=1e-5)
    loss.backward()
    assert float(zero.grad[0, 0]) == pytest.approx(-1e20, rel=1e-5)  # Caffe: -1 / max(p, 1e-20)


def test_loss_layers_default_loss_weight_flag():
    for t in ("SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss", "HingeLoss", "MultinomialLogisticLoss"):
        assert layer_class(t).is_loss
