"""torch.autograd.gradcheck (float64) of every differentiable layer, w.r.t. its inputs and its blobs."""
import numpy as np
import pytest
import torch
from torch.func import functional_call

from protonet import caffe_pb2
from protonet.io.prototxt import parse_prototxt
from protonet.layers.base import NetContext, layer_class

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
G = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


def label(*values):
    return torch.tensor(values, dtype=torch.float64)


# (id, layer text, bottom shapes, fixed (non-differentiable) bottoms by index, phase, input transform)
CASES = [
    ("conv", f'type: "Convolution" convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 stride: 2 group: 2 {G} }}',
     [(1, 4, 4, 4)], {}, TEST, None),
    ("conv_dilated", f'type: "Convolution" convolution_param {{ num_output: 2 kernel_h: 2 kernel_w: 3 dilation: 2 {G} }}',
     [(1, 2, 6, 6)], {}, TEST, None),
    ("deconv", f'type: "Deconvolution" convolution_param {{ num_output: 2 kernel_size: 2 stride: 2 {G} }}',
     [(1, 3, 3, 3)], {}, TEST, None),
    ("pool_max", 'type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }', [(1, 2, 5, 6)], {},
     TEST, None),
    ("pool_ave", 'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }', [(1, 2, 5, 6)], {},
     TEST, None),
    ("pool_ave_bigpad", 'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 2 }', [(1, 2, 5, 6)],
     {}, TEST, None),
    ("pool_global", 'type: "Pooling" pooling_param { pool: AVE global_pooling: true }', [(1, 2, 3, 3)], {}, TEST, None),
    ("ip", f'type: "InnerProduct" inner_product_param {{ num_output: 3 transpose: true {G} }}', [(2, 2, 3)], {}, TEST,
     None),
    ("lrn", 'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 }', [(1, 4, 2, 3)], {}, TEST, None),
    ("lrn_within", 'type: "LRN" lrn_param { local_size: 3 alpha: 0.5 norm_region: WITHIN_CHANNEL }', [(1, 2, 4, 3)], {},
     TEST, None),
    ("spp", 'type: "SPP" spp_param { pyramid_height: 2 pool: AVE }', [(1, 2, 5, 4)], {}, TEST, None),
    ("batchnorm_train", 'type: "BatchNorm"', [(3, 2, 2)], {}, TRAIN, None),
    ("batchnorm_test", 'type: "BatchNorm"', [(3, 2, 2)], {}, TEST, None),
    ("batchnorm_scale_bias", 'type: "BatchNorm" batch_norm_param { scale_filler { type: "gaussian" } '
     'bias_filler { type: "gaussian" } }', [(3, 2, 2)], {}, TRAIN, None),
    ("scale", 'type: "Scale" scale_param { bias_term: true filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
     [(2, 3, 2)], {}, TEST, None),
    ("scale_two_bottoms", 'type: "Scale" scale_param { axis: 0 }', [(2, 3, 2), (2, 3)], {}, TEST, None),
    ("bias", 'type: "Bias" bias_param { filler { type: "gaussian" } }', [(2, 3, 2)], {}, TEST, None),
    ("mvn", 'type: "MVN"', [(2, 2, 5)], {}, TEST, None),
    ("mvn_across", 'type: "MVN" mvn_param { across_channels: true }', [(2, 2, 5)], {}, TEST, None),
    ("relu_leaky", 'type: "ReLU" relu_param { negative_slope: 0.2 }', [(2, 5)], {}, TEST, None),
    ("prelu", 'type: "PReLU" prelu_param { filler { type: "gaussian" } }', [(2, 3, 2)], {}, TEST, None),
    ("elu", 'type: "ELU"', [(2, 5)], {}, TEST, None),
    ("sigmoid", 'type: "Sigmoid"', [(2, 5)], {}, TEST, None),
    ("tanh", 'type: "TanH"', [(2, 5)], {}, TEST, None),
    ("absval", 'type: "AbsVal"', [(2, 5)], {}, TEST, None),
    ("power", 'type: "Power" power_param { power: 3 scale: 0.5 shift: 0.2 }', [(2, 5)], {}, TEST, None),
    ("exp", 'type: "Exp" exp_param { base: 2 scale: 0.5 shift: 1 }', [(2, 5)], {}, TEST, None),
    ("log", 'type: "Log" log_param { base: 10 scale: 2 shift: 10 }', [(2, 5)], {}, TEST, None),
    ("bnll", 'type: "BNLL"', [(2, 5)], {}, TEST, None),
    ("dropout_train", 'type: "Dropout"', [(4, 5)], {}, TRAIN, None),
    ("concat", 'type: "Concat"', [(2, 1, 2), (2, 3, 2)], {}, TEST, None),
    ("slice", 'type: "Slice" slice_param { slice_point: 1 }', [(2, 3, 2)], {}, TEST, None),
    ("eltwise_sum", 'type: "Eltwise" eltwise_param { coeff: 2 coeff: -1 }', [(2, 3), (2, 3)], {}, TEST, None),
    ("eltwise_prod", 'type: "Eltwise" eltwise_param { operation: PROD }', [(2, 3), (2, 3), (2, 3)], {}, TEST, None),
    ("eltwise_max", 'type: "Eltwise" eltwise_param { operation: MAX }', [(2, 3), (2, 3)], {}, TEST, None),
    ("flatten", 'type: "Flatten"', [(2, 3, 2)], {}, TEST, None),
    ("reshape", 'type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', [(2, 3, 2)], {}, TEST, None),
    ("softmax", 'type: "Softmax" softmax_param { axis: 2 }', [(2, 3, 4)], {}, TEST, None),
    ("crop", 'type: "Crop" crop_param { offset: 1 }', [(1, 2, 4, 4), (1, 2, 2, 3)], {1: torch.zeros(1, 2, 2, 3)},
     TEST, None),
    ("tile", 'type: "Tile" tile_param { tiles: 2 }', [(2, 3)], {}, TEST, None),
    ("reduction_asum", 'type: "Reduction" reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 }', [(2, 3)], {}, TEST,
     None),
    ("reduction_mean", 'type: "Reduction" reduction_param { operation: MEAN }', [(2, 3)], {}, TEST, None),
    ("softmax_loss", 'type: "SoftmaxWithLoss" loss_param { ignore_label: 2 }', [(3, 4), (3,)],
     {1: label(0, 2, 3)}, TRAIN, None),
    ("sigmoid_ce", 'type: "SigmoidCrossEntropyLoss"', [(2, 3), (2, 3)],
     {1: torch.tensor([[1.0, 0, 1], [0, 0, 1]], dtype=torch.float64)}, TRAIN, None),
    ("euclidean", 'type: "EuclideanLoss"', [(2, 3), (2, 3)], {}, TRAIN, None),
    ("hinge_l2", 'type: "HingeLoss" hinge_loss_param { norm: L2 }', [(2, 3), (2,)], {1: label(1, 2)}, TRAIN, None),
    ("multinomial", 'type: "MultinomialLogisticLoss"', [(2, 3), (2,)], {1: label(1, 2)}, TRAIN,
     lambda x: 0.1 + x.abs()),
    # other forks' types and fields
    ("relu6", 'type: "ReLU6" relu6_param { negative_slope: 0.1 }', [(2, 5)], {}, TEST, lambda x: 4 * x),
    ("relu_relu6", 'type: "ReLU" relu_param { relu6: true }', [(2, 5)], {}, TEST, lambda x: 4 * x),
    ("conv_depthwise", f'type: "ConvolutionDepthwise" convolution_param {{ kernel_size: 3 pad: 1 stride: 2 {G} }}',
     [(1, 3, 4, 4)], {}, TEST, None),
    ("conv_depthwise_grouped", f'type: "DepthwiseConvolution" convolution_param {{ num_output: 3 group: 3 '
     f'kernel_size: 3 {G} }}', [(1, 3, 4, 4)], {}, TEST, None),
    ("conv_tf_pads", f'type: "Convolution" convolution_param {{ num_output: 2 kernel_size: 3 pad_t: 1 pad_r: 1 {G} }}',
     [(1, 2, 4, 4)], {}, TEST, None),
    ("pool_ave_tf_pads", 'type: "Pooling" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad_b: 1 pad_l: 1 }',
     [(1, 2, 5, 6)], {}, TEST, None),
    ("shuffle_channel", 'type: "ShuffleChannel" shuffle_channel_param { group: 2 }', [(2, 4, 2, 1)], {}, TEST, None),
    ("axpy", 'type: "Axpy"', [(2, 3, 1, 1), (2, 3, 2, 2), (2, 3, 2, 2)], {}, TEST, None),
    ("upsample", 'type: "Upsample" upsample_param { scale: 2 }', [(1, 2, 2, 3)], {}, TEST, None),
    ("interp", 'type: "Interp" interp_param { zoom_factor: 2 pad_beg: -1 }', [(1, 2, 4, 3)], {}, TEST, None),
    ("concat_per_fla_fuse", 'type: "Concat" concat_param { per_fla_fuse: true }', [(2, 2, 2, 1), (2, 3, 1, 2)], {},
     TEST, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradcheck(case):
    name, text, shapes, fixed, phase, transform = case
    bottoms = " ".join(f'bottom: "b{i}"' for i in range(len(shapes)))
    n_top = 2 if name == "slice" else 1
    tops = " ".join(f'top: "t{i}"' for i in range(n_top))
    lp = parse_prototxt(f'name: "{name}" {bottoms} {tops} {text}', caffe_pb2.LayerParameter())
    torch.manual_seed(0)
    layer = layer_class(lp.type, lp.name)(lp, shapes, NetContext(phase=phase)).double()
    rng = np.random.RandomState(1)
    inputs = []
    for i, s in enumerate(shapes):
        if i in fixed:
            continue
        x = torch.from_numpy(rng.randn(*s))
        if name.startswith("relu") or name in ("absval", "pool_max", "eltwise_max"):
            x = x + 0.05 * torch.sign(x)  # keep away from kinks
        inputs.append(x.requires_grad_(True))
    blob_names = [n for n, p in layer.named_parameters() if p.requires_grad]
    blobs = [p.detach().clone().requires_grad_(True) for n, p in layer.named_parameters() if p.requires_grad]

    def fn(*args):
        xs, ps = list(args[:len(inputs)]), args[len(inputs):]
        if transform is not None:
            xs = [transform(xs[0])] + xs[1:]
        full, it = [], iter(xs)
        for i in range(len(shapes)):
            full.append(fixed[i] if i in fixed else next(it))
        if name == "dropout_train":
            torch.manual_seed(5)  # the same mask on every evaluation
        out = functional_call(layer, dict(zip(blob_names, ps)), tuple(full))
        return out

    assert torch.autograd.gradcheck(fn, tuple(inputs + blobs), eps=1e-6, atol=1e-6, rtol=1e-4,
                                   fast_mode=name.startswith("conv"))
