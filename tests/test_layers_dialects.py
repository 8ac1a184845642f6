"""Layer types and fields of other forks. Each is checked against OpenCV's dnn where OpenCV runs
it (outputs, 1e-5 relative), and against the defining fork's formula, written out here, for the
rest and for every gradient (OpenCV does not train)."""
import numpy as np
import pytest
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError, ShapeError
from protonet.io.blobs import array_to_blob
from protonet.io.prototxt import parse_prototxt
from protonet.layers.base import NetContext, layer_class

RNG = np.random.RandomState(7)


def build(text, *shapes):
    lp = parse_prototxt(text, caffe_pb2.LayerParameter())
    return layer_class(lp.type, lp.name)(lp, list(shapes), NetContext())


def rand(*shape, scale=1.0):
    return (RNG.randn(*shape) * scale).astype(np.float32)


def run(layer, *arrays, grad_out=None):
    """The layer's output and, with `grad_out`, the gradients of sum(out * grad_out) w.r.t. the
    bottoms and then the blobs."""
    xs = [torch.tensor(a, requires_grad=grad_out is not None) for a in arrays]
    out = layer(*xs)
    if grad_out is None:
        return out.detach().numpy()
    (out * torch.from_numpy(grad_out)).sum().backward()
    grads = [x.grad.numpy() for x in xs] + [b.grad.numpy() for b in layer.blobs]
    return out.detach().numpy(), grads


def opencv(tmp_path, layer_text, inputs, blobs=()):
    """OpenCV's output of one layer fed by Input layers named as `inputs` (and its blobs)."""
    cv2 = pytest.importorskip("cv2")
    lp = parse_prototxt(layer_text, caffe_pb2.LayerParameter())
    net = caffe_pb2.NetParameter()
    for name, arr in inputs.items():
        net.layer.add(name=name, type="Input", top=[name]).input_param.shape.add().dim.extend(arr.shape)
    net.layer.add().CopyFrom(lp)
    (tmp_path / "net.prototxt").write_text(str(net))
    model = ""
    if blobs:
        weights = caffe_pb2.NetParameter()
        layer = weights.layer.add(name=lp.name, type=lp.type)
        for b in blobs:
            array_to_blob(b, blob=layer.blobs.add())
        model = str(tmp_path / "net.caffemodel")
        (tmp_path / "net.caffemodel").write_bytes(weights.SerializeToString())
    cv = cv2.dnn.readNetFromCaffe(str(tmp_path / "net.prototxt"), model)
    cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    for name, arr in inputs.items():
        cv.setInput(arr, name)
    return cv.forward(lp.name)


def close(a, b, tol=1e-5):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(1.0, float(np.abs(b).max())))


# ------------------------------------------------------------------------------------- ReLU6
RELU6 = 'name: "r" type: "ReLU6" bottom: "x" top: "y"'


def relu6_reference(x, slope, dy):
    """The forks' ReLU6 (chuanqi305/ssd, eric612): forward and Caffe's backward formula."""
    y = np.minimum(np.maximum(x, 0) + slope * np.minimum(x, 0), 6)
    dx = dy * ((x > 0) + slope * (x <= 0)) * (x < 6)
    return y, dx


def test_relu6_matches_opencv(tmp_path):
    x = rand(2, 3, 5, 4, scale=5)
    close(run(build(RELU6, x.shape), x), opencv(tmp_path, RELU6, {"x": x}))


@pytest.mark.parametrize("text,slope", [
    (RELU6, 0.0),
    ('name: "r" type: "ReLU6" bottom: "x" top: "y" relu6_param { negative_slope: 0.1 }', 0.1),
    ('name: "r" type: "ReLU" bottom: "x" top: "y" relu_param { relu6: true }', 0.0),
    ('name: "r" type: "ReLU" bottom: "x" top: "y" relu_param { relu6: true negative_slope: 0.2 }', 0.2),
])
def test_relu6_formula_and_gradient(text, slope):
    x = np.concatenate([rand(40, scale=5), np.float32([0, 6, 6.5, -1e-3, 5.999])])
    dy = rand(x.size)
    y, (dx,) = run(build(text, x.shape), x, grad_out=dy)
    want_y, want_dx = relu6_reference(x, slope, dy)
    close(y, want_y.astype(np.float32))
    close(dx, want_dx.astype(np.float32))


# ---------------------------------------------------------------------- depthwise convolution
def depthwise_reference(x, w, b, stride, pad):
    """conv_dw_layer.cpp's loop: one kernel per channel, taps outside the image skipped."""
    n, c, h, wd = x.shape
    k = w.shape[-1]
    oh, ow = (h + 2 * pad - k) // stride + 1, (wd + 2 * pad - k) // stride + 1
    out = np.zeros((n, c, oh, ow))
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, :, i, j] = (patch * w[None, :, 0]).sum(axis=(2, 3))
    return out + b[None, :, None, None]


def test_convolution_depthwise_ignores_num_output_and_group():
    text = ('name: "c" type: "ConvolutionDepthwise" bottom: "x" top: "y" convolution_param { num_output: 7 '
            'kernel_size: 3 stride: 2 pad: 1 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')
    x = rand(2, 4, 7, 6)
    layer = build(text, x.shape)
    assert [tuple(b.shape) for b in layer.blobs] == [(4, 1, 3, 3), (4,)]
    assert layer.top_shapes == [(2, 4, 4, 3)]
    w, b = (t.detach().numpy() for t in layer.blobs)
    close(run(layer, x), depthwise_reference(x, w, b, 2, 1).astype(np.float32))


def test_convolution_depthwise_matches_opencv(tmp_path):
    # OpenCV maps the type to Convolution: it agrees when num_output and group are the channels.
    text = ('name: "c" type: "ConvolutionDepthwise" bottom: "x" top: "y" '
            'convolution_param { num_output: 3 group: 3 kernel_size: 3 stride: 2 pad: 1 }')
    x, w, b = rand(2, 3, 6, 7), rand(3, 1, 3, 3), rand(3)
    layer = build(text, x.shape)
    with torch.no_grad():
        layer.blobs[0].copy_(torch.from_numpy(w))
        layer.blobs[1].copy_(torch.from_numpy(b))
    close(run(layer, x), opencv(tmp_path, text, {"x": x}, [w, b]))


def test_depthwise_convolution_is_grouped_convolution():
    """yonghenglh6's DepthwiseConvolution computes Caffe's grouped convolution: same blobs, same
    outputs and gradients as Convolution."""
    params = ('convolution_param { num_output: 6 group: 3 kernel_size: 3 pad: 1 '
              'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }')
    x, dy = rand(2, 3, 5, 5), rand(2, 6, 5, 5)
    dw = build(f'name: "d" type: "DepthwiseConvolution" bottom: "x" top: "y" {params}', x.shape)
    conv = build(f'name: "c" type: "Convolution" bottom: "x" top: "y" {params}', x.shape)
    with torch.no_grad():
        for a, b in zip(conv.blobs, dw.blobs):
            a.copy_(b)
    y1, g1 = run(dw, x, grad_out=dy)
    y2, g2 = run(conv, x, grad_out=dy)
    close(y1, y2)
    for a, b in zip(g1, g2):
        close(a, b)
    with pytest.raises(ShapeError, match="group 2 must divide the 3 input channels"):
        build('name: "d" type: "DepthwiseConvolution" bottom: "x" top: "y" '
              'convolution_param { num_output: 6 group: 2 kernel_size: 3 }', x.shape)


# --------------------------------------------------------------- TF converters' asymmetric pads
@pytest.mark.parametrize("pads,stride", [((0, 1, 0, 1), 1), ((1, 0, 1, 0), 2), ((2, 1, 0, 0), 1), ((1, 1, 1, 1), 2)])
def test_convolution_asymmetric_pads(pads, stride):
    """Synopsys Caffe: pad_t/pad_b/pad_l/pad_r pad each side; output (in + before + after - k) / s + 1.
    (OpenCV reads these fields but crashes on such a convolution.)"""
    top, bottom, left, right = pads
    text = (f'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ num_output: 2 kernel_size: 3 '
            f'stride: {stride} pad: 5 pad_t: {top} pad_b: {bottom} pad_l: {left} pad_r: {right} '
            f'weight_filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }} }}')
    x = rand(1, 3, 6, 7)
    layer = build(text, x.shape)
    w, b = (t.detach().numpy().astype(np.float64) for t in layer.blobs)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    oh, ow = (xp.shape[2] - 3) // stride + 1, (xp.shape[3] - 3) // stride + 1
    assert layer.top_shapes == [(1, 2, oh, ow)]
    ref = np.zeros((1, 2, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[0, :, i * stride:i * stride + 3, j * stride:j * stride + 3]
            ref[0, :, i, j] = np.tensordot(w, patch, axes=([1, 2, 3], [0, 1, 2])) + b
    close(run(layer, x), ref.astype(np.float32))


@pytest.mark.parametrize("pool", ["MAX", "AVE"])
@pytest.mark.parametrize("pads", [(0, 1, 0, 1), (1, 0, 1, 0), (1, 1, 0, 1), (1, 1, 1, 1)])
def test_pooling_asymmetric_pads_match_opencv(tmp_path, pool, pads):
    top, bottom, left, right = pads
    # OpenCV reads the four pads only with kernel and stride given as _h/_w pairs.
    text = (f'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ pool: {pool} kernel_h: 3 '
            f'kernel_w: 3 stride_h: 2 stride_w: 2 pad_l: {left} pad_r: {right} pad_t: {top} pad_b: {bottom} }}')
    x = rand(2, 3, 6, 7)
    close(run(build(text, x.shape), x), opencv(tmp_path, text, {"x": x}))


def synopsys_ave_pool(x, k, s, top, bottom, left, right):
    """Synopsys Caffe's pooling_layer.cpp with pad_t/pad_b/pad_l/pad_r (AVE)."""
    h, w = x.shape[2:]
    oh = int(np.ceil((h + top + bottom - k) / s)) + 1
    ow = int(np.ceil((w + left + right - k) / s)) + 1
    oh -= (oh - 1) * s >= h + top
    ow -= (ow - 1) * s >= w + left
    out = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - top, j * s - left
            he, we = min(hs + k, h + bottom), min(ws + k, w + right)
            area = (he - hs) * (we - ws)
            out[:, :, i, j] = x[:, :, max(hs, 0):min(he, h), max(ws, 0):min(we, w)].sum(axis=(2, 3)) / area
    return out


@pytest.mark.parametrize("pads", [(0, 2, 1, 0), (2, 0, 0, 1), (1, 1, 2, 2)])
def test_pooling_asymmetric_pads_formula(pads):
    """Synopsys Caffe: ceil((in + before + after - k) / s) + 1 windows, the last one starting before
    in + before; an AVE window divides by its area clipped to in + after."""
    top, bottom, left, right = pads
    text = 'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE kernel_size: 3 stride: 2 '
    x = rand(1, 2, 5, 6)
    layer = build(text + f'pad_t: {top} pad_b: {bottom} pad_l: {left} pad_r: {right} }}', x.shape)
    close(run(layer, x), synopsys_ave_pool(x.astype(np.float64), 3, 2, *pads).astype(np.float32))
    with pytest.raises(ProtonetError, match="give pad_l/pad_r/pad_t/pad_b or pad"):
        build(text + 'pad: 1 pad_l: 1 }', x.shape)


# ----------------------------------------------------------------------------- ShuffleChannel
SHUFFLE = 'name: "s" type: "ShuffleChannel" bottom: "x" top: "y" shuffle_channel_param { group: 3 }'


def test_shuffle_channel_matches_opencv_and_fork(tmp_path):
    x = rand(2, 6, 4, 5)
    y = run(build(SHUFFLE, x.shape), x)
    close(y, opencv(tmp_path, SHUFFLE, {"x": x}))
    # shuffle_channel_layer.cpp: output channel j * group + i <- input channel i * (C / group) + j
    for i in range(3):
        for j in range(2):
            np.testing.assert_array_equal(y[:, j * 3 + i], x[:, i * 2 + j])


def test_shuffle_channel_gradient_is_the_inverse_shuffle():
    x, dy = rand(2, 6, 3, 3), rand(2, 6, 3, 3)
    _, (dx,) = run(build(SHUFFLE, x.shape), x, grad_out=dy)
    for i in range(3):
        for j in range(2):
            np.testing.assert_array_equal(dx[:, i * 2 + j], dy[:, j * 3 + i])
    with pytest.raises(ShapeError, match="group 4 must divide"):
        build(SHUFFLE.replace("group: 3", "group: 4"), x.shape)


# ------------------------------------------------------------------------------------- Axpy
AXPY = 'name: "axpy" type: "Axpy" bottom: "a" bottom: "x" bottom: "z" top: "y"'


@pytest.mark.parametrize("a_shape", [(2, 3, 1, 1), (2, 3)])
def test_axpy_formula_and_gradients(a_shape):
    """SENet's axpy_layer.cpp: y = a * x + z per channel; da = sum_hw(dy * x), dx = a * dy, dz = dy."""
    a, x, z, dy = rand(*a_shape), rand(2, 3, 4, 5), rand(2, 3, 4, 5), rand(2, 3, 4, 5)
    y, (da, dx, dz) = run(build(AXPY, a.shape, x.shape, z.shape), a, x, z, grad_out=dy)
    a4 = a.reshape(2, 3, 1, 1)
    close(y, a4 * x + z)
    close(da, (dy * x).sum(axis=(2, 3)).reshape(a_shape))
    close(dx, a4 * dy)
    close(dz, dy)
    with pytest.raises(ShapeError, match="scale bottom"):
        build(AXPY, (1, 3, 1, 1), x.shape, z.shape)


# ----------------------------------------------------------------------------------- Upsample
def test_upsample_nearest_and_block_sum_gradient():
    """eric612's upsample_layer.cpp: top[h, w] = bottom[h / s, w / s]; bottom_diff sums s x s blocks."""
    x, dy = rand(2, 3, 4, 5), rand(2, 3, 8, 10)
    y, (dx,) = run(build('name: "u" type: "Upsample" bottom: "x" top: "y" upsample_param { scale: 2 }', x.shape),
                   x, grad_out=dy)
    np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(2, axis=3))
    close(dx, dy.reshape(2, 3, 4, 2, 5, 2).sum(axis=(3, 5)))


def test_upsample_explicit_size_and_refusals():
    x = rand(1, 2, 5, 3)
    layer = build('name: "u" type: "Upsample" bottom: "x" top: "y" upsample_param { upsample_h: 12 upsample_w: 7 }',
                  x.shape)
    y = run(layer, x)
    rows, cols = np.arange(12) * 5 // 12, np.arange(7) * 3 // 7
    np.testing.assert_array_equal(y, x[:, :, rows][:, :, :, cols])
    assert build('name: "u" type: "Upsample" bottom: "x" top: "y"', x.shape).top_shapes == [x.shape]  # scale 1
    with pytest.raises(ShapeError, match="mask"):  # SegNet's form: the mask has the bottom's shape
        build('name: "u" type: "Upsample" bottom: "x" bottom: "m" top: "y"', x.shape, (1, 2, 5, 4))


# ------------------------------------------------------------------------------------- Interp
def interp_reference(x, out_h, out_w, begin=0, eff=None):
    """PSPNet's caffe_cpu_interp2 (float32 ratios) and its adjoint, as matrices per axis."""
    h_eff, w_eff = eff or x.shape[2:]

    def weights(n_in, n_out):
        m = np.zeros((n_out, x.shape[2] if n_in is h_eff else x.shape[3]), np.float64)
        if n_in == n_out:
            m[np.arange(n_out), begin + np.arange(n_out)] = 1
            return m
        ratio = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
        for o in range(n_out):
            r = np.float32(ratio * np.float32(o))
            i0 = int(r)
            step = 1 if i0 < n_in - 1 else 0
            lam = np.float32(r - np.float32(i0))
            m[o, begin + i0] += 1 - lam
            m[o, begin + i0 + step] += lam
        return m

    if (out_h, out_w) == (h_eff, w_eff):  # PSPNet copies
        return x[:, :, begin:begin + h_eff, begin:begin + w_eff], None, None
    mh, mw = weights(h_eff, out_h), weights(w_eff, out_w)
    return np.einsum("oh,nchw,pw->ncop", mh, x.astype(np.float64), mw), mh, mw


@pytest.mark.parametrize("params,out", [("zoom_factor: 2", (11, 13)), ("height: 9 width: 4", (9, 4)),
                                        ("height: 1 width: 1", (1, 1))])
def test_interp_matches_opencv(tmp_path, params, out):
    text = f'name: "i" type: "Interp" bottom: "x" top: "y" interp_param {{ {params} }}'
    x = rand(2, 3, 6, 7)
    y = run(build(text, x.shape), x)
    assert y.shape[2:] == out
    close(y, opencv(tmp_path, text, {"x": x}))


@pytest.mark.parametrize("params,out,begin,eff", [
    ("shrink_factor: 2", (3, 4), 0, None),  # (in - 1) / s + 1; OpenCV has no shrink
    ("shrink_factor: 2 zoom_factor: 3", (7, 10), 0, None),  # OpenCV ignores shrink here
    ("zoom_factor: 2 pad_beg: -1 pad_end: -1", (7, 9), 1, (4, 5)),  # OpenCV ignores the pads
    ("height: 6 width: 7", (6, 7), 0, None),
])
def test_interp_formula_and_gradient(params, out, begin, eff):
    text = f'name: "i" type: "Interp" bottom: "x" top: "y" interp_param {{ {params} }}'
    x = rand(2, 3, 6, 7)
    dy = rand(2, 3, *out)
    y, (dx,) = run(build(text, x.shape), x, grad_out=dy)
    want, mh, mw = interp_reference(x, *out, begin=begin, eff=eff)
    close(y, want.astype(np.float32))
    if mh is not None:  # caffe_cpu_interp2_backward: the adjoint of the same weights
        close(dx, np.einsum("oh,ncop,pw->nchw", mh, dy.astype(np.float64), mw).astype(np.float32))
    with pytest.raises(ProtonetError, match="pad_end <= 0"):
        build(text.replace("}", "pad_end: 1 }"), x.shape)


# --------------------------------------------------------------------- Intel's per_fla_fuse
def test_concat_per_fla_fuse_permutes_and_flattens_each_bottom():
    a, b = rand(2, 4, 3, 3), rand(2, 8, 2, 1)
    layer = build('name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { axis: 1 per_fla_fuse: true }',
                  a.shape, b.shape)
    assert layer.top_shapes == [(2, 36 + 16, 1, 1)]
    want = np.concatenate([a.transpose(0, 2, 3, 1).reshape(2, -1), b.transpose(0, 2, 3, 1).reshape(2, -1)], axis=1)
    np.testing.assert_array_equal(run(layer, a, b), want.reshape(2, -1, 1, 1))


# ------------------------------------------------------------------- NVCaffe's scale_bias BatchNorm
def test_batchnorm_scale_bias_matches_opencv(tmp_path):
    """NVCaffe's batch_norm_layer.cpp: scale_bias adds blobs scale (3) and bias (4) to the three
    statistics: y = scale * (x - mean) / sqrt(var + eps) + bias."""
    text = 'name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { use_global_stats: true scale_bias: true }'
    x = rand(2, 3, 4, 5)
    layer = build(text, x.shape)
    assert [tuple(b.shape) for b in layer.blobs] == [(3,), (3,), (1,), (3,), (3,)]
    assert layer.blobs[3].tolist() == [1, 1, 1] and layer.blobs[4].tolist() == [0, 0, 0]
    # NVCaffe keeps blob 2 (Caffe's moving-average factor) at 1 and uses mean and variance as stored
    blobs = [rand(3), rand(3) ** 2 + 0.5, np.float32([1]), rand(3), rand(3)]
    with torch.no_grad():
        for t, b in zip(layer.blobs, blobs):
            t.copy_(torch.from_numpy(b))
    y = run(layer, x)
    mean, var = blobs[0], blobs[1]
    want = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * blobs[3][:, None, None] + blobs[4][:, None, None]
    close(y, want.astype(np.float32))
    close(y, opencv(tmp_path, text.replace('top: "y"', 'top: "bn"'), {"x": x}, blobs))
