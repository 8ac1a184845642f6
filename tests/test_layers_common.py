"""Blob plumbing and the other common layers against their Caffe definitions."""
import numpy as np
import pytest
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError, ShapeError
from protonet.io.prototxt import parse_prototxt
from protonet.layers.base import NetContext, layer_class


def build(text, bottom_shapes, phase=caffe_pb2.TEST):
    lp = parse_prototxt(text, caffe_pb2.LayerParameter())
    return layer_class(lp.type, lp.name)(lp, bottom_shapes, NetContext(phase=phase))


def rand(*shape, seed=0):
    return torch.from_numpy(np.random.RandomState(seed).randn(*shape).astype(np.float32))


def test_concat_axis_and_legacy_concat_dim():
    a, b = rand(2, 3, 4), rand(2, 5, 4, seed=1)
    layer = build('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y"', [(2, 3, 4), (2, 5, 4)])
    assert layer.top_shapes == [(2, 8, 4)]
    np.testing.assert_array_equal(layer(a, b).numpy(), np.concatenate([a, b], 1))
    legacy = build('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { concat_dim: 2 }',
                   [(2, 3, 4), (2, 3, 1)])
    assert legacy.top_shapes == [(2, 3, 5)]
    neg = build('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { axis: -1 }',
                [(2, 3, 4), (2, 3, 1)])
    assert neg.top_shapes == [(2, 3, 5)]
    with pytest.raises(ShapeError, match="layer c"):
        build('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y"', [(2, 3, 4), (2, 5, 3)])


def test_slice_points_and_equal_split():
    x = rand(2, 6, 3)
    layer = build('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" top: "c" slice_param { axis: 1 '
                  'slice_point: 1 slice_point: 4 }', [(2, 6, 3)])
    assert layer.top_shapes == [(2, 1, 3), (2, 3, 3), (2, 2, 3)]
    outs = layer(x)
    np.testing.assert_array_equal(outs[1].numpy(), x.numpy()[:, 1:4])
    eq = build('name: "s" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { slice_dim: 2 }', [(2, 6, 4)])
    assert eq.top_shapes == [(2, 6, 2), (2, 6, 2)]
    with pytest.raises(ShapeError, match="layer s"):
        build('name: "s" type: "Slice" bottom: "x" top: "a" top: "b"', [(2, 5, 4)])


def test_eltwise_ops():
    a, b, c = rand(2, 3), rand(2, 3, seed=1), rand(2, 3, seed=2)
    s = build('name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" eltwise_param { '
              'operation: SUM coeff: 1 coeff: -2 coeff: 0.5 }', [(2, 3)] * 3)
    np.testing.assert_allclose(s(a, b, c).numpy(), a - 2 * b + 0.5 * c, rtol=1e-6)
    p = build('name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { operation: PROD }',
              [(2, 3)] * 2)
    np.testing.assert_allclose(p(a, b).numpy(), (a * b).numpy())
    m = build('name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { operation: MAX }',
              [(2, 3)] * 2)
    # Ties send the whole gradient to the first bottom, as Caffe's argmax mask does.
    x1 = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x2 = torch.tensor([1.0, 5.0, 0.0], requires_grad=True)
    m(x1, x2).sum().backward()
    assert x1.grad.tolist() == [1.0, 0.0, 1.0] and x2.grad.tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ProtonetError, match="coeff"):
        build('name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { coeff: 1 }', [(2, 3)] * 2)


def test_flatten_and_reshape():
    f = build('name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 end_axis: 2 }', [(2, 3, 4, 5)])
    assert f.top_shapes == [(2, 12, 5)]
    assert f(rand(2, 3, 4, 5)).shape == (2, 12, 5)
    cases = [
        ("shape { dim: 0 dim: -1 dim: 2 }", (2, 3, 4), (2, 6, 2)),
        ("shape { dim: 0 dim: -1 dim: 21 }", (1, 133896), (1, 6376, 21)),
        ("shape { dim: 2 dim: 2 } axis: 1 num_axes: 1", (3, 4, 5), (3, 2, 2, 5)),
        ("shape { dim: 1 } axis: -1 num_axes: 0", (3, 4), (3, 4, 1)),
        ("shape { dim: -1 } axis: 1", (3, 4, 5), (3, 20)),
        ("shape { dim: 1 dim: 1 } axis: 0 num_axes: 0", (3, 4), (1, 1, 3, 4)),
    ]
    for text, shape, expect in cases:
        r = build(f'name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param {{ {text} }}', [shape])
        assert r.top_shapes == [expect], text
        assert tuple(r(torch.zeros(shape)).shape) == expect
    with pytest.raises(ShapeError, match="layer r"):
        build('name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 7 dim: -1 } }', [(3, 4)])


def test_softmax_crop_tile_split_silence():
    x = rand(2, 3, 4)
    sm = build('name: "s" type: "Softmax" bottom: "x" top: "y" softmax_param { axis: 2 }', [(2, 3, 4)])
    e = np.exp(x.numpy() - x.numpy().max(2, keepdims=True))
    np.testing.assert_allclose(sm(x).numpy(), e / e.sum(2, keepdims=True), rtol=1e-6)
    crop = build('name: "c" type: "Crop" bottom: "a" bottom: "b" top: "y" crop_param { axis: 1 offset: 1 offset: 2 '
                 'offset: 0 }', [(2, 4, 5, 6), (1, 2, 3, 6)])
    a = rand(2, 4, 5, 6)
    assert crop.top_shapes == [(2, 2, 3, 6)]
    np.testing.assert_array_equal(crop(a, torch.zeros(1, 2, 3, 6)).numpy(), a.numpy()[:, 1:3, 2:5, :])
    with pytest.raises(ShapeError, match="layer c"):
        build('name: "c" type: "Crop" bottom: "a" bottom: "b" top: "y" crop_param { offset: 3 }',
              [(1, 1, 5, 5), (1, 1, 3, 3)])
    tile = build('name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: 1 tiles: 3 }', [(2, 3, 4)])
    assert tile.top_shapes == [(2, 9, 4)]
    np.testing.assert_array_equal(tile(x).numpy(), np.tile(x.numpy(), (1, 3, 1)))
    split = build('name: "sp" type: "Split" bottom: "x" top: "a" top: "b"', [(2, 3, 4)])
    a1, a2 = split(x)
    assert a1 is x and a2 is x
    silence = build('name: "si" type: "Silence" bottom: "x"', [(2, 3, 4)])
    assert silence.top_shapes == [] and silence(x) == ()


@pytest.mark.parametrize("op,fn", [("SUM", lambda v: v.sum(1)), ("ASUM", lambda v: np.abs(v).sum(1)),
                                   ("SUMSQ", lambda v: (v * v).sum(1)), ("MEAN", lambda v: v.mean(1))])
def test_reduction(op, fn):
    x = rand(2, 3, 4)
    r = build(f'name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param {{ operation: {op} axis: 1 '
              'coeff: 2 }', [(2, 3, 4)])
    assert r.top_shapes == [(2,)]
    np.testing.assert_allclose(r(x).numpy(), 2 * fn(x.numpy().reshape(2, -1)), rtol=1e-5)
    whole = build(f'name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param {{ operation: {op} }}',
                  [(2, 3, 4)])
    assert whole.top_shapes == [()]


def test_argmax_layouts_and_ties():
    x = torch.tensor([[[1.0, 3.0, 3.0, 0.5]], [[2.0, 1.0, 0.0, 2.0]]])  # (2, 1, 4)
    a = build('name: "a" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 2 out_max_val: true }',
              [(2, 1, 4)])
    assert a.top_shapes == [(2, 2, 2)]
    y = a(x).numpy()
    # Ties: the larger index ranks first (pairs (value, index) sorted descending).
    np.testing.assert_array_equal(y[:, 0], [[2, 1], [3, 0]])
    np.testing.assert_array_equal(y[:, 1], [[3, 3], [2, 2]])
    ax = build('name: "a" type: "ArgMax" bottom: "x" top: "y" argmax_param { axis: 2 }', [(2, 1, 4)])
    assert ax.top_shapes == [(2, 1, 1)]
    np.testing.assert_array_equal(ax(x).numpy().ravel(), [2, 3])


def test_accuracy_top_k_ignore_and_per_class():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.8, 0.1, 0.1], [0.2, 0.2, 0.6]])
    label = torch.tensor([2.0, 0.0, 1.0, 2.0])
    acc = build('name: "a" type: "Accuracy" bottom: "x" bottom: "l" top: "y"', [(4, 3), (4,)])
    assert float(acc(scores, label)) == pytest.approx(1 / 4)
    top2 = build('name: "a" type: "Accuracy" bottom: "x" bottom: "l" top: "y" top: "pc" accuracy_param { top_k: 2 }',
                 [(4, 3), (4,)])
    a2, per_class = top2(scores, label)
    # Row 1: label 0 ties label 1 at 0.3; the larger index ranks ahead, so label 0 is third.
    assert float(a2) == pytest.approx(2 / 4)
    np.testing.assert_allclose(per_class.numpy(), [0.0, 0.0, 1.0])
    ign = build('name: "a" type: "Accuracy" bottom: "x" bottom: "l" top: "y" accuracy_param { ignore_label: 2 }',
                [(4, 3), (4,)])
    assert float(ign(scores, label)) == pytest.approx(0.0)


def test_input_parameter_dummydata():
    inp = build('name: "i" type: "Input" top: "a" top: "b" input_param { shape { dim: 1 dim: 3 } '
                'shape { dim: 2 } }', [])
    assert inp.top_shapes == [(1, 3), (2,)]
    p = build('name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 2 dim: 3 } }', [])
    assert p().shape == (2, 3) and p.blobs[0].requires_grad
    d = build('name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { shape { dim: 2 dim: 3 } '
              'data_filler { type: "constant" value: 7 } data_filler { type: "uniform" min: -1 max: 1 } }', [])
    a1, b1 = d()
    a2, b2 = d()
    assert torch.all(a1 == 7) and a1.shape == (2, 3)
    assert not torch.equal(b1, b2)  # non-constant fillers refill every forward
    legacy = build('name: "d" type: "DummyData" top: "a" dummy_data_param { num: 2 channels: 3 height: 4 width: 5 }',
                   [])
    assert legacy.top_shapes == [(2, 3, 4, 5)] and torch.all(legacy() == 0)
