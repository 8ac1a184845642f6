"""Convolution, Deconvolution, Pooling, InnerProduct, LRN, SPP against loop references written from
Caffe's definitions (output sizes, rounding, padding rules)."""
import math

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


# ----------------------------------------------------------------------------- convolution
def conv_reference(x, w, b, stride, pad, dil, group):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h + 2 * pad[0] - (dil[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dil[1] * (kw - 1) + 1)) // stride[1] + 1
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    out = np.zeros((n, o, oh, ow))
    og = o // group
    for oc in range(o):
        g = oc // og
        for i in range(oh):
            for j in range(ow):
                for ki in range(kh):
                    for kj in range(kw):
                        patch = xp[:, g * cg:(g + 1) * cg, i * stride[0] + ki * dil[0], j * stride[1] + kj * dil[1]]
                        out[:, oc, i, j] += patch @ w[oc, :, ki, kj]
        if b is not None:
            out[:, oc] += b[oc]
    return out


@pytest.mark.parametrize("params,stride,pad,dil,group", [
    ("kernel_size: 3 pad: 1", (1, 1), (1, 1), (1, 1), 1),
    ("kernel_size: 3 stride: 2 pad: 1 group: 2", (2, 2), (1, 1), (1, 1), 2),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 0", (2, 1), (2, 0), (1, 1), 1),
    ("kernel_size: 3 pad: 2 dilation: 2 group: 4", (1, 1), (2, 2), (2, 2), 4),
])
def test_convolution_matches_reference(params, stride, pad, dil, group):
    layer = build(f'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ num_output: 4 {params} '
                  'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 } }',
                  [(2, 4, 7, 6)])
    w, b = layer.blobs
    assert tuple(w.shape)[:2] == (4, 4 // group)
    x = rand(2, 4, 7, 6)
    y = layer(x)
    ref = conv_reference(x.numpy().astype(np.float64), w.detach().numpy().astype(np.float64),
                         b.detach().numpy(), stride, pad, dil, group)
    assert tuple(y.shape) == layer.top_shapes[0] == ref.shape
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_convolution_without_bias_and_errors():
    layer = build('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 6 '
                  'kernel_size: 1 bias_term: false }', [(1, 3, 5, 5)])
    assert len(layer.blobs) == 1 and tuple(layer.blobs[0].shape) == (6, 3, 1, 1)
    assert float(layer.blobs[0].detach().abs().sum()) == 0.0  # default filler: constant 0
    with pytest.raises(ShapeError, match="layer bad"):
        build('name: "bad" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 '
              'kernel_size: 3 group: 2 }', [(1, 3, 5, 5)])
    with pytest.raises(ProtonetError, match="layer k"):
        build('name: "k" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 4 }',
              [(1, 3, 5, 5)])


def test_deconvolution_layout_and_values():
    layer = build('name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 4 '
                  'kernel_size: 3 stride: 2 pad: 1 group: 2 weight_filler { type: "gaussian" std: 1 } '
                  'bias_filler { type: "constant" value: 0.5 } }', [(1, 6, 4, 5)])
    w, b = layer.blobs
    assert tuple(w.shape) == (6, 2, 3, 3)  # (in, out/group, kh, kw)
    assert layer.top_shapes[0] == (1, 4, 2 * 3 + 3 - 2, 2 * 4 + 3 - 2)
    x = rand(1, 6, 4, 5)
    y = layer(x).detach().numpy()
    # Scatter reference: every input pixel adds its kernel into the (padded) output.
    wn, xn = w.detach().numpy(), x.numpy()
    full = np.zeros((1, 4, 2 * 3 + 3, 2 * 4 + 3))
    for ic in range(6):
        g = ic // 3
        for i in range(4):
            for j in range(5):
                for oc in range(2):
                    full[0, g * 2 + oc, 2 * i:2 * i + 3, 2 * j:2 * j + 3] += xn[0, ic, i, j] * wn[ic, oc]
    ref = full[:, :, 1:-1, 1:-1] + 0.5
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- pooling
def pool_reference(x, method, k, s, p):
    """Caffe's PoolingLayer::Forward_cpu loops, from its definition."""
    n, c, h, w = x.shape
    oh = int(math.ceil((h + 2 * p[0] - k[0]) / s[0])) + 1
    ow = int(math.ceil((w + 2 * p[1] - k[1]) / s[1])) + 1
    if p[0] or p[1]:
        if (oh - 1) * s[0] >= h + p[0]:
            oh -= 1
        if (ow - 1) * s[1] >= w + p[1]:
            ow -= 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s[0] - p[0], j * s[1] - p[1]
            if method == "MAX":
                he, we = min(hs + k[0], h), min(ws + k[1], w)
                hs, ws = max(hs, 0), max(ws, 0)
                out[:, :, i, j] = x[:, :, hs:he, ws:we].max(axis=(2, 3))
            else:
                he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
                size = (he - hs) * (we - ws)
                hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                out[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / size
    return out


POOL_CASES = [
    ("kernel_size: 2 stride: 2", (2, 2), (2, 2), (0, 0), (75, 75)),      # SSD pool3: 75 -> 38 (ceil)
    ("kernel_size: 3 stride: 1 pad: 1", (3, 3), (1, 1), (1, 1), (10, 10)),  # SSD pool5
    ("kernel_size: 3 stride: 2 pad: 1", (3, 3), (2, 2), (1, 1), (8, 9)),    # last window would start in pad
    ("kernel_size: 3 stride: 2", (3, 3), (2, 2), (0, 0), (8, 8)),
    ("kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 2 pad_w: 1", (3, 2), (2, 3), (2, 1), (7, 8)),
    ("kernel_size: 4 stride: 3 pad: 3", (4, 4), (3, 3), (3, 3), (6, 5)),    # pad > kernel/2: torch cannot
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("params,k,s,p,hw", POOL_CASES)
def test_pooling_matches_caffe_loops(method, params, k, s, p, hw):
    shape = (2, 3) + hw
    layer = build(f'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ pool: {method} {params} }}',
                  [shape])
    x = rand(*shape, seed=1)
    y = layer(x).numpy()
    ref = pool_reference(x.numpy().astype(np.float64), method, k, s, p)
    assert layer.top_shapes[0] == ref.shape == y.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)


def test_pooling_sizes_and_global():
    shape = (1, 2, 38, 38)
    assert build('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 2 '
                 'stride: 2 }', [shape]).top_shapes[0] == (1, 2, 19, 19)
    assert build('name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX kernel_size: 2 '
                 'stride: 2 }', [(1, 2, 19, 19)]).top_shapes[0] == (1, 2, 10, 10)
    g = build('name: "g" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE global_pooling: true }',
              [(2, 3, 5, 4)])
    x = rand(2, 3, 5, 4)
    assert g.top_shapes[0] == (2, 3, 1, 1)
    np.testing.assert_allclose(g(x).numpy()[..., 0, 0], x.numpy().mean(axis=(2, 3)), rtol=1e-6)
    gm = build('name: "g" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX global_pooling: true }',
               [(2, 3, 5, 4)])
    np.testing.assert_allclose(gm(x).numpy()[..., 0, 0], x.numpy().max(axis=(2, 3)))
    with pytest.raises(ProtonetError, match="STOCHASTIC"):
        build('name: "s" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: STOCHASTIC kernel_size: 2 }',
              [(1, 1, 4, 4)])
    with pytest.raises(ShapeError, match="layer q"):
        build('name: "q" type: "Pooling" bottom: "x" top: "y" pooling_param { kernel_size: 2 pad: 2 }',
              [(1, 1, 4, 4)])


# ----------------------------------------------------------------------------- inner product
@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_axis_and_transpose(transpose):
    t = "true" if transpose else "false"
    layer = build(f'name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param {{ num_output: 5 '
                  f'axis: 2 transpose: {t} weight_filler {{ type: "gaussian" std: 1 }} '
                  'bias_filler { type: "gaussian" std: 1 } }', [(2, 3, 4, 2)])
    w, b = layer.blobs
    assert tuple(w.shape) == ((8, 5) if transpose else (5, 8))
    x = rand(2, 3, 4, 2)
    y = layer(x)
    assert tuple(y.shape) == layer.top_shapes[0] == (2, 3, 5)
    wn = w.detach().numpy()
    ref = x.numpy().reshape(6, 8) @ (wn if transpose else wn.T) + b.detach().numpy()
    np.testing.assert_allclose(y.detach().numpy().reshape(6, 5), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- LRN
def test_lrn_across_channels():
    layer = build('name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 }',
                  [(2, 7, 3, 3)])
    x = rand(2, 7, 3, 3).numpy().astype(np.float64)
    ref = np.empty_like(x)
    for c in range(7):
        lo, hi = max(0, c - 2), min(7, c + 3)
        scale = 2 + 0.3 / 5 * (x[:, lo:hi] ** 2).sum(axis=1)
        ref[:, c] = x[:, c] * scale ** -0.75
    np.testing.assert_allclose(layer(torch.from_numpy(x).float()).numpy(), ref, rtol=1e-5)


def test_lrn_within_channel():
    layer = build('name: "n" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 '
                  'norm_region: WITHIN_CHANNEL }', [(1, 2, 4, 5)])
    x = rand(1, 2, 4, 5).numpy().astype(np.float64)
    sq = np.pad(x ** 2, ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.empty_like(x)
    for i in range(4):
        for j in range(5):
            ref[:, :, i, j] = x[:, :, i, j] * (1 + 0.5 * sq[:, :, i:i + 3, j:j + 3].sum(axis=(2, 3)) / 9) ** -0.6
    np.testing.assert_allclose(layer(torch.from_numpy(x).float()).numpy(), ref, rtol=1e-5)


# ----------------------------------------------------------------------------- SPP
def test_spp_levels():
    layer = build('name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 pool: MAX }',
                  [(2, 3, 7, 9)])
    x = rand(2, 3, 7, 9)
    y = layer(x).numpy()
    parts = []
    for level in range(3):
        bins = 2 ** level
        kh, kw = math.ceil(7 / bins), math.ceil(9 / bins)
        ph, pw = (kh * bins - 7 + 1) // 2, (kw * bins - 9 + 1) // 2
        parts.append(pool_reference(x.numpy(), "MAX", (kh, kw), (kh, kw), (ph, pw)).reshape(2, -1))
    ref = np.concatenate(parts, axis=1)
    assert layer.top_shapes[0] == ref.shape == (2, 3 * (1 + 4 + 16))
    np.testing.assert_allclose(y, ref, rtol=1e-6)
