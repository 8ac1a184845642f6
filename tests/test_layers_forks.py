"""Types and fields of BVLC Caffe's master, Synopsys Caffe (TF converters), chuanqi305/ssd, FSSD and
SegNet. Against OpenCV's dnn where OpenCV runs them (1e-5 relative), else against the defining
fork's formula, written out here from its C++ source."""
import math

import numpy as np
import pytest
import torch

from protonet.errors import ProtonetError, ShapeError
from test_layers_dialects import build, close, opencv, rand, run

F32 = np.float32


# ------------------------------------------------------------- BVLC master: Clip and Swish
def test_clip_formula_and_gradient():
    """clip_layer.cpp: top = max(min, min(x, max)); bottom_diff = top_diff * (min <= x <= max)."""
    text = 'name: "c" type: "Clip" bottom: "x" top: "y" clip_param { min: -1 max: 2.5 }'
    x = np.concatenate([rand(50, scale=3), F32([-1, 2.5, -1.0001, 2.5001])])
    dy = rand(x.size)
    y, (dx,) = run(build(text, x.shape), x, grad_out=dy)
    np.testing.assert_array_equal(y, np.maximum(F32(-1), np.minimum(x, F32(2.5))))
    np.testing.assert_array_equal(dx, dy * ((x >= -1) & (x <= 2.5)))
    with pytest.raises(ProtonetError, match="clip_param needs min and max"):
        build('name: "c" type: "Clip" bottom: "x" top: "y" clip_param { min: 0 }', x.shape)


def test_swish_matches_opencv_with_beta_one(tmp_path):
    text = 'name: "s" type: "Swish" bottom: "x" top: "y"'
    x = rand(2, 3, 4, 5, scale=3)
    close(run(build(text, x.shape), x), opencv(tmp_path, text, {"x": x}))


def test_swish_beta_formula_and_gradient():
    """swish_layer.cpp: y = x * sigmoid(beta x); bottom_diff = top_diff * (beta y + s (1 - beta y)),
    s = sigmoid(beta x). (OpenCV's Swish ignores beta.)"""
    x, dy = rand(3, 7, scale=3), rand(3, 7)
    y, (dx,) = run(build('name: "s" type: "Swish" bottom: "x" top: "y" swish_param { beta: 1.7 }', x.shape),
                   x, grad_out=dy)
    s = 1 / (1 + np.exp(-1.7 * x.astype(np.float64)))
    want = x * s
    close(y, want.astype(F32))
    close(dx, (dy * (1.7 * want + s * (1 - 1.7 * want))).astype(F32))


# BVLC types already run: checked against OpenCV here, in the forms deploys use.
BVLC_FORMS = [
    ('name: "l" type: "ELU" bottom: "x" top: "y" elu_param { alpha: 0.7 }', {"x": (2, 3, 4, 5)}),
    ('name: "l" type: "Power" bottom: "x" top: "y" power_param { power: 2 scale: 0.5 shift: 1.5 }', {"x": (2, 3, 4, 5)}),
    ('name: "l" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 end_axis: 2 }', {"x": (2, 3, 4, 5)}),
    ('name: "l" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 2 end_axis: -1 }', {"x": (2, 3, 4, 5)}),
    ('name: "l" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 2 dim: -1 } axis: 1 num_axes: 1 }',
     {"x": (2, 4, 3, 5)}),
    ('name: "l" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: -1 dim: 3 } }',
     {"x": (2, 4, 3, 5)}),
    ('name: "l" type: "Crop" bottom: "x" bottom: "r" top: "y" crop_param { axis: 2 offset: 1 offset: 2 }',
     {"x": (2, 3, 7, 8), "r": (2, 3, 4, 5)}),
    ('name: "l" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { axis: 0 }', {"x": (2, 3, 4, 5), "s": (2, 3)}),
    ('name: "l" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { axis: 1 }', {"x": (2, 3, 4, 5), "s": (3, 4)}),
]


@pytest.mark.parametrize("text,shapes", BVLC_FORMS, ids=lambda v: v.split('"')[3] if isinstance(v, str) else None)
def test_bvlc_forms_match_opencv(tmp_path, text, shapes):
    inputs = {k: rand(*s) for k, s in shapes.items()}
    if "Power" in text:
        inputs["x"] = np.abs(inputs["x"])
    ours = run(build(text, *shapes.values()), *inputs.values())
    close(ours, opencv(tmp_path, text, inputs).reshape(ours.shape))


def test_scale_with_learned_blob_axis_and_num_axes_match_opencv(tmp_path):
    text = ('name: "l" type: "Scale" bottom: "x" top: "y" scale_param { axis: 1 num_axes: 2 bias_term: true '
            'filler { type: "gaussian" } bias_filler { type: "gaussian" } }')
    x = rand(2, 3, 4, 5)
    layer = build(text, x.shape)
    assert [tuple(b.shape) for b in layer.blobs] == [(3, 4), (3, 4)]
    blobs = [b.detach().numpy() for b in layer.blobs]
    close(run(layer, x), opencv(tmp_path, text, {"x": x}, blobs))


# ------------------------------------------------------------------- Synopsys' ResizeBilinear
def resize_reference(x, out_h, out_w, align=False, half=False, torch_half=False):
    """resize_bilinear_layer.cpp's NCHW loop, one output pixel at a time in float32."""
    def weights(o, n):
        scale = F32(n - 1) / F32(o - 1) if align and o > 1 else F32(n) / F32(o)
        rows = []
        for i in range(o):
            if align or not (half or torch_half):
                p = F32(i) * scale
            elif torch_half and o == 1:
                p = F32(-0.5)
            else:
                p = F32(F32(F32(i) + F32(0.5)) * scale) - F32(0.5)
            f = math.floor(p)
            rows.append((max(f, 0), min(math.ceil(p), n - 1), F32(p - F32(f))))
        return rows

    n, c, h, w = x.shape
    out = np.zeros((n, c, out_h, out_w), F32)
    for y, (y0, y1, dy) in enumerate(weights(out_h, h)):
        for xx, (x0, x1, dx) in enumerate(weights(out_w, w)):
            tl, tr, bl, br = x[:, :, y0, x0], x[:, :, y0, x1], x[:, :, y1, x0], x[:, :, y1, x1]
            top = tl + (tr - tl) * dx
            bottom = bl + (br - bl) * dx
            out[:, :, y, xx] = top + (bottom - top) * dy
    return out


@pytest.mark.parametrize("mode", ["", "align_corners: true", "half_pixel_centers: true", "pytorch_half_pixel: true"])
@pytest.mark.parametrize("size", [(9, 5), (3, 11), (1, 1)])
def test_resize_bilinear_nchw_formula(mode, size):
    x = rand(2, 3, 6, 7)
    text = (f'name: "r" type: "ResizeBilinear" bottom: "x" top: "y" resize_bilinear_param {{ output_height: {size[0]} '
            f'output_width: {size[1]} data_format: "NCHW" {mode} }}')
    flags = dict(align="align" in mode, half="half_pixel_centers" in mode, torch_half="pytorch" in mode)
    np.testing.assert_allclose(run(build(text, x.shape), x), resize_reference(x, *size, **flags), rtol=1e-6, atol=1e-6)


def test_resize_bilinear_nhwc_default_scales_and_gradient():
    """NHWC is the default data_format; without output_height/width the size is floor(in * scale)."""
    x = rand(2, 6, 7, 3)
    text = ('name: "r" type: "ResizeBilinear" bottom: "x" top: "y" resize_bilinear_param { scale_height: 1.5 '
            'scale_width: 0.75 }')
    layer = build(text, x.shape)
    assert layer.top_shapes == [(2, 9, 5, 3)]
    y = run(layer, x)
    want = resize_reference(x.transpose(0, 3, 1, 2), 9, 5).transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    # the gradient is the adjoint of the interpolation (Synopsys has no backward)
    xt = torch.tensor(x, requires_grad=True)
    probe = torch.randn(2, 9, 5, 3, generator=torch.Generator().manual_seed(0))
    (layer(xt) * probe).sum().backward()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lhs = float((layer(v) * probe).sum())
    assert abs(lhs - float((xt.grad * v).sum())) < 1e-3 * max(1.0, abs(lhs))


def test_resize_bilinear_refusals():
    x = (1, 2, 3, 4)
    with pytest.raises(ProtonetError, match="exclude each other"):
        build('name: "r" type: "ResizeBilinear" bottom: "x" top: "y" resize_bilinear_param { align_corners: true '
              'half_pixel_centers: true output_height: 2 output_width: 2 }', x)
    with pytest.raises(ProtonetError, match="data_format 'NCHWD'"):
        build('name: "r" type: "ResizeBilinear" bottom: "x" top: "y" resize_bilinear_param { data_format: "NCHWD" }', x)


# ------------------------------------------------------------------- Interp: second bottom, zoom
def test_interp_size_from_second_bottom_matches_opencv_explicit_size(tmp_path):
    """FSSD's use_blob_size: the second bottom's height and width, the same resize as an explicit
    height/width (which OpenCV runs; OpenCV's Interp takes one bottom)."""
    x, ref = rand(2, 3, 5, 6), rand(2, 7, 9, 11)
    layer = build('name: "i" type: "Interp" bottom: "x" bottom: "r" top: "y" interp_param { use_blob_size: true }',
                  x.shape, ref.shape)
    assert layer.top_shapes == [(2, 3, 9, 11)]
    explicit = 'name: "i" type: "Interp" bottom: "x" top: "y" interp_param { height: 9 width: 11 }'
    close(run(layer, x, ref), opencv(tmp_path, explicit, {"x": x}))
    # without use_blob_size FSSD does not read the second bottom
    assert build('name: "i" type: "Interp" bottom: "x" bottom: "r" top: "y" interp_param { zoom_factor: 2 }',
                 x.shape, ref.shape).top_shapes == [(2, 3, 9, 11)]
    with pytest.raises(ShapeError, match="use_blob_size needs a 4-axis second bottom"):
        build('name: "i" type: "Interp" bottom: "x" top: "y" interp_param { use_blob_size: true }', x.shape)


def test_interp_full_zoom_factor():
    """Synopsys' full_zoom_factor f: out = in * f (corner-aligned as every Interp)."""
    x = rand(1, 2, 4, 5)
    layer = build('name: "i" type: "Interp" bottom: "x" top: "y" interp_param { full_zoom_factor: 3 }', x.shape)
    assert layer.top_shapes == [(1, 2, 12, 15)]
    explicit = build('name: "i" type: "Interp" bottom: "x" top: "y" interp_param { height: 12 width: 15 }', x.shape)
    np.testing.assert_array_equal(run(layer, x), run(explicit, x))


# -------------------------------------------------- Pooling's mask top and SegNet's unpooling
def caffe_max_pool_with_mask(x, k, s, p, out_hw):
    """pooling_layer.cpp's MAX loop: windows clipped to the image, first strict maximum, mask = its
    flat index h * W + w (-1 when nothing beats -FLT_MAX)."""
    n, c, h, w = x.shape
    top = np.full((n, c) + out_hw, -np.finfo(F32).max, F32)
    mask = np.full((n, c) + out_hw, -1, F32)
    for ph in range(out_hw[0]):
        for pw in range(out_hw[1]):
            hs, ws = ph * s - p, pw * s - p
            he, we = min(hs + k, h), min(ws + k, w)
            for i in range(n):
                for j in range(c):
                    for hh in range(max(hs, 0), he):
                        for ww in range(max(ws, 0), we):
                            if x[i, j, hh, ww] > top[i, j, ph, pw]:
                                top[i, j, ph, pw] = x[i, j, hh, ww]
                                mask[i, j, ph, pw] = hh * w + ww
    return top, mask


@pytest.mark.parametrize("k,s,p,shape", [(2, 2, 0, (2, 3, 6, 8)), (3, 2, 1, (1, 2, 7, 6)), (3, 3, 0, (1, 2, 7, 8))])
def test_pooling_mask_top_matches_caffe_loop_and_opencv(tmp_path, k, s, p, shape):
    x = rand(*shape)
    x[0, 0, :2, :2] = 1.5  # a tie: the first maximum in window order wins
    text = (f'name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" pooling_param {{ pool: MAX kernel_size: {k} '
            f'stride: {s} pad: {p} }}')
    layer = build(text, x.shape)
    y, mask = (t.detach().numpy() for t in layer(torch.from_numpy(x)))
    want_y, want_mask = caffe_max_pool_with_mask(x, k, s, p, layer.top_shapes[0][2:])
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(mask, want_mask)
    close(y, opencv(tmp_path, text, {"x": x}))
    with pytest.raises(ProtonetError, match="only MAX pooling has a second"):
        build(text.replace("MAX", "AVE"), x.shape)


def test_segnet_unpooling_formula_and_gradient():
    """SegNet's upsample_layer.cpp: top zero but top[mask[i]] = bottom[i]; bottom_diff[i] =
    top_diff[mask[i]]; the scale defaults to 2 there."""
    x = rand(2, 3, 6, 8)
    pool = build('name: "p" type: "Pooling" bottom: "x" top: "y" top: "m" pooling_param { pool: MAX kernel_size: 2 '
                 'stride: 2 }', x.shape)
    v, mask = (t.detach().numpy() for t in pool(torch.from_numpy(x)))
    up = build('name: "u" type: "Upsample" bottom: "v" bottom: "m" top: "z"', v.shape, mask.shape)
    assert up.top_shapes == [(2, 3, 6, 8)]
    dy = rand(2, 3, 6, 8)
    vt = torch.tensor(v, requires_grad=True)
    out = up(vt, torch.from_numpy(mask))
    (out * torch.from_numpy(dy)).sum().backward()
    z, dv = out.detach().numpy(), vt.grad.numpy()
    want = np.zeros_like(dy).reshape(2, 3, -1)
    idx = mask.reshape(2, 3, -1).astype(np.int64)
    np.put_along_axis(want, idx, v.reshape(2, 3, -1), axis=2)
    np.testing.assert_array_equal(z, want.reshape(z.shape))
    np.testing.assert_array_equal(dv, np.take_along_axis(dy.reshape(2, 3, -1), idx, axis=2).reshape(v.shape))
    # explicit size (upsample_h/w) and an index outside it
    odd = build('name: "u" type: "Upsample" bottom: "v" bottom: "m" top: "z" upsample_param { upsample_h: 7 '
                'upsample_w: 9 }', v.shape, mask.shape)
    assert odd.top_shapes == [(2, 3, 7, 9)]
    small = build('name: "u" type: "Upsample" bottom: "v" bottom: "m" top: "z" upsample_param { upsample_h: 2 '
                  'upsample_w: 2 }', v.shape, mask.shape)
    with pytest.raises(ProtonetError, match="mask index is outside"):
        run(small, v, mask)


# ------------------------------------------------------ Synopsys' pad_type, chuanqi305's tf_pad
def conv_reference(x, w, stride, before, out_hw):
    """im2col's reading: output (o_h, o_w) takes rows o_h * s + kr - before_h (zero outside)."""
    n, c, h, wd = x.shape
    k = w.shape[-1]
    out = np.zeros((n, w.shape[0]) + out_hw)
    for oh in range(out_hw[0]):
        for ow in range(out_hw[1]):
            for kr in range(k):
                for kc in range(k):
                    r, col = oh * stride + kr - before[0], ow * stride + kc - before[1]
                    if 0 <= r < h and 0 <= col < wd:
                        out[:, :, oh, ow] += x[:, :, r, col] @ w[:, :, kr, kc].T
    return out


@pytest.mark.parametrize("k,s,size,before,out", [
    (3, 2, (8, 7), (0, 1), (4, 4)),    # even: TF pads 1 (after); odd: 2, one before
    (3, 1, (5, 6), (1, 1), (5, 6)),
    (5, 2, (9, 10), (2, 1), (5, 5)),
    (1, 2, (7, 7), (0, 0), (4, 4)),
])
def test_synopsys_pad_type_same_convolution(k, s, size, before, out):
    """base_conv_layer/im2col (Synopsys): output ceil(in / s); TensorFlow's total padding
    max(k - s, 0) (in % s == 0) or max(k - in % s, 0), half (rounded down) before."""
    x = rand(2, 3, *size)
    layer = build(f'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ num_output: 4 '
                  f'kernel_size: {k} stride: {s} pad_type: 1 bias_term: false weight_filler {{ type: "gaussian" }} }}',
                  x.shape)
    assert layer.top_shapes == [(2, 4, *out)]
    w = layer.blobs[0].detach().numpy()
    close(run(layer, x), conv_reference(x, w, s, before, out).astype(F32))


def test_synopsys_pad_type_same_pooling():
    """pooling_layer.cpp (Synopsys) pad_type 1: ceil(in / s) outputs, pads TensorFlow's (odd one
    after); AVE divides by the window clipped to the image plus those pads."""
    x = rand(1, 2, 7, 8)
    text = 'name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ pool: {} kernel_size: 3 stride: 2 pad_type: 1 }}'
    ave, mx = build(text.format("AVE"), x.shape), build(text.format("MAX"), x.shape)
    assert ave.top_shapes == [(1, 2, 4, 4)]
    # rows: total max(3 - 7 % 2, 0) = 2 -> 1 before, 1 after; columns: max(3 - 2, 0) = 1 -> 0, 1
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 1)))
    want_ave = np.zeros((1, 2, 4, 4), F32)
    want_max = np.zeros((1, 2, 4, 4), F32)
    for i in range(4):
        for j in range(4):
            want_ave[:, :, i, j] = xp[:, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].sum(axis=(2, 3)) / 9
            lo_r, lo_c = max(2 * i - 1, 0), 2 * j
            want_max[:, :, i, j] = x[:, :, lo_r:2 * i + 2, lo_c:2 * j + 3].max(axis=(2, 3))
    close(run(ave, x), want_ave)
    np.testing.assert_array_equal(run(mx, x), want_max)
    with pytest.raises(ProtonetError, match="pad_type takes no pad"):
        build(text.format("MAX").replace("pad_type", "pad: 1 pad_type"), x.shape)


@pytest.mark.parametrize("k,s,pad,size,before,out", [
    (3, 2, 1, (8, 8), (0, 0), (4, 4)),   # total 1: top 0 -> read from 0, the pixel of padding after
    (3, 1, 1, (5, 6), (1, 1), (5, 6)),   # total 2: symmetric
    (5, 2, 2, (9, 9), (2, 2), (5, 5)),   # total 4
    (3, 2, 1, (9, 9), (1, 1), (5, 5)),   # total 2
])
def test_chuanqi305_tf_pad_same(k, s, pad, size, before, out):
    """chuanqi305/ssd: the output follows pad; SAME's total (out - 1) s + k - in, top int(total / 2),
    bottom total - top; im2col reads from -bottom (from 0 when top is 0)."""
    x = rand(1, 2, *size)
    layer = build(f'name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ num_output: 3 '
                  f'kernel_size: {k} stride: {s} pad: {pad} tf_pad: SAME bias_term: false '
                  f'weight_filler {{ type: "gaussian" }} }}', x.shape)
    assert layer.top_shapes == [(1, 3, *out)]
    close(run(layer, x), conv_reference(x, layer.blobs[0].detach().numpy(), s, before, out).astype(F32))


def test_chuanqi305_tf_pad_valid_and_refusals():
    x = rand(1, 2, 8, 8)
    text = ('name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 3 kernel_size: 3 '
            'stride: 2 tf_pad: VALID bias_term: false weight_filler { type: "gaussian" } }')
    layer = build(text, x.shape)
    assert layer.top_shapes == [(1, 3, 3, 3)]
    close(run(layer, x), conv_reference(x, layer.blobs[0].detach().numpy(), 2, (0, 0), (3, 3)).astype(F32))
    with pytest.raises(ProtonetError, match="tf_pad VALID with pad 1"):
        build(text.replace("tf_pad", "pad: 1 tf_pad"), x.shape)
    with pytest.raises(ProtonetError, match="one of pad_type, tf_pad"):
        build(text.replace("tf_pad: VALID", "tf_pad: SAME pad_type: 1"), x.shape)
    with pytest.raises(ProtonetError, match="2-D convolution only"):
        build(text.replace("Convolution", "Deconvolution", 1), x.shape)


def test_mish_matches_opencv_and_its_derivative(tmp_path):
    """mish_layer.cpp (darknet2caffe, Synopsys Caffe): x * tanh(softplus(x))."""
    text = 'name: "m" type: "Mish" bottom: "x" top: "y"'
    x = rand(2, 3, 4, 5, scale=4)
    dy = rand(*x.shape)
    y, (dx,) = run(build(text, x.shape), x, grad_out=dy)
    close(y, opencv(tmp_path, text, {"x": x}))
    xd = x.astype(np.float64)
    sp = np.log1p(np.exp(xd))
    t = np.tanh(sp)
    close(dx, (dy * (t + xd * (1 - t * t) / (1 + np.exp(-xd)))).astype(F32))


@pytest.mark.parametrize("pad", ["pad_type: 1", "pad: 1 tf_pad: SAME", "pad_l: 1 pad_b: 2"])
def test_asymmetric_pads_in_inference_mode(pad):
    """The inference plan fuses Caffe's convolutions; one with asymmetric pads runs as it is."""
    from protonet import caffe_pb2
    from protonet.io.prototxt import parse_prototxt
    from protonet.net import Net

    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 9 dim: 8 } } }\n'
            'layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 4 '
            f'kernel_size: 3 stride: 2 {pad} weight_filler {{ type: "gaussian" }} }} }}\n'
            'layer { name: "r" type: "ReLU" bottom: "c" top: "c" }')
    net = Net(parse_prototxt(text, caffe_pb2.NetParameter()))
    x = torch.randn(1, 3, 9, 8)
    with torch.no_grad():
        want = net(data=x)["c"]
    with torch.inference_mode():
        np.testing.assert_array_equal(net(data=x)["c"].numpy(), want.numpy())


def test_pooling_mask_and_unpooling_in_inference_mode():
    """The inference plan's MAX pooling computes no indices: a pooling with a mask top runs as it is."""
    from protonet import caffe_pb2
    from protonet.io.prototxt import parse_prototxt
    from protonet.net import Net

    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 6 } } }\n'
            'layer { name: "p" type: "Pooling" bottom: "data" top: "p" top: "m" pooling_param { pool: MAX '
            'kernel_size: 2 stride: 2 } }\n'
            'layer { name: "u" type: "Upsample" bottom: "p" bottom: "m" top: "u" upsample_param { scale: 2 } }')
    net = Net(parse_prototxt(text, caffe_pb2.NetParameter()))
    x = torch.randn(1, 3, 8, 6)
    with torch.no_grad():
        want = net(data=x)
    with torch.inference_mode():
        got = net(data=x)
    for blob in ("p", "m", "u"):
        np.testing.assert_array_equal(got[blob].numpy(), want[blob].numpy())
