"""The Caffe NetSpec helpers of the SSD and RefineDet forks, with their names, signatures,
defaults and emitted layers.

The two forks' `model_libs.py` differ, and both are here:

* `model_libs.ssd` — weiliu89/caffe (branch ssd): `ConvBNLayer` gives BatchNorm three frozen
  `param`s plus `eps` / `moving_average_fraction` (or `use_global_stats`), and Scale/Bias their
  own `param`s and fillers; `CreateMultiBoxHead` names its concats `mbox_loc`, `mbox_conf`,
  `mbox_priorbox` (`mbox_objectness`); no `DeconvBNLayer`, `EltwiseLayer`, `CreateRefineDetHead`.
* `model_libs.refinedet` — sfzhang15/RefineDet: BatchNorm and Scale carry no parameters,
  `CreateMultiBoxHead` takes `prefix=''` and names the concats `<prefix>_loc` ...; adds
  `DeconvBNLayer`, `EltwiseLayer` and `CreateRefineDetHead`.

`from protonet.spec.model_libs import *` gives the RefineDet flavour (it has every helper);
`model_libs.flavor("ssd")` (or `model_libs.ssd`) the other.

Where Python 2 made an integer (`pad = (k - 1) / 2`) these use integer division, so the
output is the one the forks' Python 2 scripts wrote. Checks that the forks made with `assert`
raise ProtonetError with the same message.
"""
import os
import types

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.spec.net_spec import layers as L
from protonet.spec.net_spec import params as P

FLAVORS = ("ssd", "refinedet")

HELPER_NAMES = (
    "check_if_exist", "make_if_not_exist", "UnpackVariable", "ConvBNLayer", "DeconvBNLayer",
    "EltwiseLayer", "ResBody", "InceptionTower", "CreateAnnotatedDataLayer", "ZFNetBody",
    "VGGNetBody", "ResNet101Body", "ResNet152Body", "InceptionV3Body", "CreateMultiBoxHead",
    "CreateRefineDetHead",
)
_REFINEDET_ONLY = ("DeconvBNLayer", "EltwiseLayer", "CreateRefineDetHead")


def _require(condition, message):
    if not condition:
        raise ProtonetError(message)


# ---------------------------------------------------------------------------------------------
# Helpers the two forks share word for word.

def check_if_exist(path):
    """True when `path` exists (the forks only ask; they do not stop)."""
    return os.path.exists(path)


def make_if_not_exist(path):
    if not os.path.exists(path):
        os.makedirs(path)


def UnpackVariable(var, num):
    """`var` as a list of `num` values: a list of that length as it is, a one-element list or a
    lone value repeated."""
    if isinstance(var, (list, tuple)):
        if len(var) == num:
            return list(var)
        _require(len(var) == 1, f"UnpackVariable: expected 1 or {num} values, got {len(var)}")
        return [var[0]] * num
    return [var] * num


def CreateAnnotatedDataLayer(source, batch_size=32, backend=P.Data.LMDB,
                             output_label=True, train=True, label_map_file='', anno_type=None,
                             transform_param={}, batch_sampler=[{}]):
    phase = caffe_pb2.Phase.Value('TRAIN' if train else 'TEST')
    annotated_data_param = {'label_map_file': label_map_file, 'batch_sampler': batch_sampler}
    if anno_type is not None:
        annotated_data_param['anno_type'] = anno_type
    return L.AnnotatedData(name="data", annotated_data_param=annotated_data_param,
                           data_param=dict(batch_size=batch_size, backend=backend, source=source),
                           ntop=2 if output_label else 1,
                           include=dict(phase=phase), transform_param=transform_param)


def _xavier_conv_kwargs(lr_mult=1, decay_mult=1):
    """Convolution with bias: weight (lr, decay) and bias (2 lr, no decay), xavier, zero bias."""
    return {
        'param': [dict(lr_mult=lr_mult, decay_mult=decay_mult), dict(lr_mult=2 * lr_mult, decay_mult=0)],
        'weight_filler': dict(type='xavier'),
        'bias_filler': dict(type='constant', value=0),
    }


def _freeze(net, freeze_layers):
    frozen = {'param': [dict(lr_mult=0, decay_mult=0), dict(lr_mult=0, decay_mult=0)],
              'weight_filler': dict(type='xavier'), 'bias_filler': dict(type='constant', value=0)}
    names = net.keys()
    for name in freeze_layers:
        if name in names:
            net.update(name, frozen)


def _same_pad(kernel_size, dilation):
    # Output size = input size for stride 1 (an int, as Python 2 computed it).
    return (kernel_size + (dilation - 1) * (kernel_size - 1) - 1) // 2


def ZFNetBody(net, from_layer, need_fc=True, fully_conv=False, reduced=False,
              dilated=False, dropout=True, need_fc8=False, freeze_layers=[]):
    kwargs = _xavier_conv_kwargs()
    _require(from_layer in net.keys(), f"ZFNetBody: '{from_layer}' is not a top of the net")
    lrn = dict(local_size=3, alpha=0.00005, beta=0.75, norm_region=P.LRN.WITHIN_CHANNEL, engine=P.LRN.CAFFE)

    net.conv1 = L.Convolution(net[from_layer], num_output=96, pad=3, kernel_size=7, stride=2, **kwargs)
    net.relu1 = L.ReLU(net.conv1, in_place=True)
    net.norm1 = L.LRN(net.relu1, **lrn)
    net.pool1 = L.Pooling(net.norm1, pool=P.Pooling.MAX, pad=1, kernel_size=3, stride=2)

    net.conv2 = L.Convolution(net.pool1, num_output=256, pad=2, kernel_size=5, stride=2, **kwargs)
    net.relu2 = L.ReLU(net.conv2, in_place=True)
    net.norm2 = L.LRN(net.relu2, **lrn)
    net.pool2 = L.Pooling(net.norm2, pool=P.Pooling.MAX, pad=1, kernel_size=3, stride=2)

    net.conv3 = L.Convolution(net.pool2, num_output=384, pad=1, kernel_size=3, **kwargs)
    net.relu3 = L.ReLU(net.conv3, in_place=True)
    net.conv4 = L.Convolution(net.relu3, num_output=384, pad=1, kernel_size=3, **kwargs)
    net.relu4 = L.ReLU(net.conv4, in_place=True)
    net.conv5 = L.Convolution(net.relu4, num_output=256, pad=1, kernel_size=3, **kwargs)
    net.relu5 = L.ReLU(net.conv5, in_place=True)

    if need_fc:
        net.pool5 = L.Pooling(net.relu5, pool=P.Pooling.MAX, pad=1, kernel_size=3, stride=1 if dilated else 2)
        width = 1024 if reduced else 4096
        if fully_conv:
            if dilated and reduced:
                fc6 = dict(pad=5, kernel_size=3, dilation=5)
            elif dilated:
                fc6 = dict(pad=5, kernel_size=6, dilation=2)
            elif reduced:
                fc6 = dict(pad=2, kernel_size=3, dilation=2)
            else:
                fc6 = dict(pad=2, kernel_size=6)
            net.fc6 = L.Convolution(net.pool5, num_output=width, **fc6, **kwargs)
            net.relu6 = L.ReLU(net.fc6, in_place=True)
            if dropout:
                net.drop6 = L.Dropout(net.relu6, dropout_ratio=0.5, in_place=True)
            net.fc7 = L.Convolution(net.relu6, num_output=width, kernel_size=1, **kwargs)
        else:
            net.fc6 = L.InnerProduct(net.pool5, num_output=4096)
            net.relu6 = L.ReLU(net.fc6, in_place=True)
            if dropout:
                net.drop6 = L.Dropout(net.relu6, dropout_ratio=0.5, in_place=True)
            net.fc7 = L.InnerProduct(net.relu6, num_output=4096)
        net.relu7 = L.ReLU(net.fc7, in_place=True)
        if dropout:
            net.drop7 = L.Dropout(net.relu7, dropout_ratio=0.5, in_place=True)

    if need_fc8:
        last = net.keys()[-1]
        if fully_conv:
            net.fc8 = L.Convolution(net[last], num_output=1000, kernel_size=1, **kwargs)
        else:
            net.fc8 = L.InnerProduct(net[last], num_output=1000)
        net.prob = L.Softmax(net.fc8)

    _freeze(net, freeze_layers)
    return net


def VGGNetBody(net, from_layer, need_fc=True, fully_conv=False, reduced=False,
               dilated=False, nopool=False, dropout=True, freeze_layers=[], dilate_pool4=False):
    kwargs = _xavier_conv_kwargs()
    _require(from_layer in net.keys(), f"VGGNetBody: '{from_layer}' is not a top of the net")

    def conv_block(bottom, stage, num_output, count):
        """conv<stage>_1..count, each followed by an in-place ReLU; returns the last ReLU."""
        for i in range(1, count + 1):
            conv = 'conv{}_{}'.format(stage, i)
            net[conv] = L.Convolution(bottom, num_output=num_output, pad=1, kernel_size=3, **kwargs)
            net['relu{}_{}'.format(stage, i)] = L.ReLU(net[conv], in_place=True)
            bottom = net['relu{}_{}'.format(stage, i)]
        return bottom

    def downsample(bottom, stage, num_output, count):
        """The stride-2 step after a stage: a pooling, or with `nopool` a strided conv."""
        if nopool:
            name = 'conv{}_{}'.format(stage, count + 1)
            net[name] = L.Convolution(bottom, num_output=num_output, pad=1, kernel_size=3, stride=2, **kwargs)
        else:
            name = 'pool{}'.format(stage)
            net[name] = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=2, stride=2)
        return net[name]

    top = conv_block(net[from_layer], 1, 64, 2)
    top = downsample(top, 1, 64, 2)
    top = conv_block(top, 2, 128, 2)
    top = downsample(top, 2, 128, 2)
    top = conv_block(top, 3, 256, 3)
    top = downsample(top, 3, 256, 3)
    top = conv_block(top, 4, 512, 3)

    dilation = 1
    if nopool:
        net.conv4_4 = L.Convolution(top, num_output=512, pad=1, kernel_size=3, stride=2, **kwargs)
        top = net.conv4_4
    elif dilate_pool4:
        net.pool4 = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=1, pad=1)
        top = net.pool4
        dilation = 2
    else:
        net.pool4 = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=2, stride=2)
        top = net.pool4

    pad = _same_pad(3, dilation)
    for i in range(1, 4):
        conv = 'conv5_{}'.format(i)
        net[conv] = L.Convolution(top, num_output=512, pad=pad, kernel_size=3, dilation=dilation, **kwargs)
        net['relu5_{}'.format(i)] = L.ReLU(net[conv], in_place=True)
        top = net['relu5_{}'.format(i)]

    if need_fc:
        stride = 1 if dilated else 2
        if nopool:
            name = 'conv5_4'
            net[name] = L.Convolution(top, num_output=512, pad=1, kernel_size=3, stride=stride, **kwargs)
        else:
            name = 'pool5'
            if dilated:
                net[name] = L.Pooling(top, pool=P.Pooling.MAX, pad=1, kernel_size=3, stride=1)
            else:
                net[name] = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=2, stride=2)

        if fully_conv:
            if reduced:
                dilation *= 6 if dilated else 3
                kernel_size, num_output = 3, 1024
            else:
                if dilated:
                    dilation *= 2
                kernel_size, num_output = 7, 4096
            net.fc6 = L.Convolution(net[name], num_output=num_output, pad=_same_pad(kernel_size, dilation),
                                    kernel_size=kernel_size, dilation=dilation, **kwargs)
            net.relu6 = L.ReLU(net.fc6, in_place=True)
            if dropout:
                net.drop6 = L.Dropout(net.relu6, dropout_ratio=0.5, in_place=True)
            net.fc7 = L.Convolution(net.relu6, num_output=1024 if reduced else 4096, kernel_size=1, **kwargs)
        else:
            net.fc6 = L.InnerProduct(net.pool5, num_output=4096)
            net.relu6 = L.ReLU(net.fc6, in_place=True)
            if dropout:
                net.drop6 = L.Dropout(net.relu6, dropout_ratio=0.5, in_place=True)
            net.fc7 = L.InnerProduct(net.relu6, num_output=4096)
        net.relu7 = L.ReLU(net.fc7, in_place=True)
        if dropout:
            net.drop7 = L.Dropout(net.relu7, dropout_ratio=0.5, in_place=True)

    _freeze(net, freeze_layers)
    return net


def _priors_per_location(min_size, max_size, aspect_ratio, flip):
    """PriorBox's count per cell: per min size one square (two with a max size), one box per
    aspect ratio, and with flip one more per aspect ratio."""
    per_min = (2 if max_size else 1) + len(aspect_ratio) * (2 if flip else 1)
    return per_min * len(min_size)


def _as_list(value):
    return value if type(value) is list else [value]


def _head_sizes(i, min_sizes, max_sizes, aspect_ratios):
    min_size = _as_list(min_sizes[i])
    aspect_ratio = _as_list(aspect_ratios[i]) if len(aspect_ratios) > i else []
    max_size = _as_list(max_sizes[i]) if len(max_sizes) > i else []
    if max_size:
        _require(len(max_size) == len(min_size), "max_size and min_size should have same length.")
    return min_size, max_size, aspect_ratio


def _check_head_args(num_classes, from_layers, normalizations, min_sizes, max_sizes, aspect_ratios,
                     steps, net, data_layer, inter_layer_depth):
    _require(num_classes, "must provide num_classes")
    _require(num_classes > 0, "num_classes must be positive number")
    for other, label in ((normalizations, "normalizations"), (max_sizes, "max_sizes"),
                         (aspect_ratios, "aspect_ratios"), (steps, "steps")):
        if other:
            _require(len(from_layers) == len(other), f"from_layers and {label} should have same length")
    _require(len(from_layers) == len(min_sizes), "from_layers and min_sizes should have same length")
    _require(data_layer in net.keys(), "data_layer is not in net's layers")
    if inter_layer_depth:
        _require(len(from_layers) == len(inter_layer_depth),
                 "from_layers and inter_layer_depth should have same length")


def _normalized(net, from_layer, normalizations, i):
    """The source after an optional L2 Normalize (`<source>_norm`, scale from normalizations[i])."""
    if normalizations and normalizations[i] != -1:
        norm_name = "{}_norm".format(from_layer)
        net[norm_name] = L.Normalize(net[from_layer], scale_filler=dict(type="constant", value=normalizations[i]),
                                     across_spatial=False, channel_shared=False)
        return norm_name
    return from_layer


def _add_prior_box(net, from_layer, data_layer, min_size, max_size, aspect_ratio, step, flip, clip,
                   prior_variance, offset, img_height, img_width):
    name = "{}_mbox_priorbox".format(from_layer)
    net[name] = L.PriorBox(net[from_layer], net[data_layer], min_size=min_size, clip=clip,
                           variance=prior_variance, offset=offset)
    if max_size:
        net.update(name, {'max_size': max_size})
    if aspect_ratio:
        net.update(name, {'aspect_ratio': aspect_ratio, 'flip': flip})
    if step:
        net.update(name, {'step': step})
    if img_height != 0 and img_width != 0:
        if img_height == img_width:
            net.update(name, {'img_size': img_height})
        else:
            net.update(name, {'img_h': img_height, 'img_w': img_width})
    return net[name]


# ---------------------------------------------------------------------------------------------
# Helpers whose output depends on the fork: built once per flavour.

def _build(flavor):
    ssd = flavor == "ssd"

    def _bn_layers(net, conv_name, out_layer, use_scale, lr_mult, bn_prefix, bn_postfix, scale_prefix,
                   scale_postfix, bias_prefix, bias_postfix, bn_params):
        """BatchNorm, then Scale (with bias) or Bias, all in place on `conv_name`."""
        bn_kwargs, affine_lr = {}, lr_mult
        if ssd:
            frozen = [dict(lr_mult=0, decay_mult=0)] * 3
            eps = bn_params.get('eps', 0.001)
            use_global_stats = bn_params.get('use_global_stats', False)
            if use_global_stats:
                # Global statistics are fixed, and so are the scale and bias after them.
                bn_kwargs = {'param': frozen, 'eps': eps, 'use_global_stats': use_global_stats}
                affine_lr = 0
            else:
                bn_kwargs = {'param': frozen, 'eps': eps,
                             'moving_average_fraction': bn_params.get('moving_average_fraction', 0.999)}
        bn_name = '{}{}{}'.format(bn_prefix, out_layer, bn_postfix)
        net[bn_name] = L.BatchNorm(net[conv_name], in_place=True, **bn_kwargs)
        if use_scale:
            scale_kwargs = {'bias_term': True}
            if ssd:
                scale_kwargs.update({
                    'param': [dict(lr_mult=affine_lr, decay_mult=0), dict(lr_mult=affine_lr, decay_mult=0)],
                    'filler': dict(type='constant', value=1.0),
                    'bias_filler': dict(type='constant', value=0.0),
                })
            sb_name = '{}{}{}'.format(scale_prefix, out_layer, scale_postfix)
            net[sb_name] = L.Scale(net[bn_name], in_place=True, **scale_kwargs)
        else:
            bias_name = '{}{}{}'.format(bias_prefix, out_layer, bias_postfix)
            net[bias_name] = L.Bias(net[bn_name], in_place=True,
                                    param=[dict(lr_mult=affine_lr, decay_mult=0)],
                                    filler=dict(type='constant', value=0.0))

    def _conv_kwargs(use_bn, lr_mult):
        if use_bn:
            # BatchNorm follows: no bias, small gaussian weights.
            return {'param': [dict(lr_mult=lr_mult, decay_mult=1)],
                    'weight_filler': dict(type='gaussian', std=0.01), 'bias_term': False}
        return _xavier_conv_kwargs(lr_mult)

    def ConvBNLayer(net, from_layer, out_layer, use_bn, use_relu, num_output,
                    kernel_size, pad, stride, dilation=1, use_scale=True, lr_mult=1,
                    conv_prefix='', conv_postfix='', bn_prefix='', bn_postfix='_bn',
                    scale_prefix='', scale_postfix='_scale', bias_prefix='', bias_postfix='_bias',
                    **bn_params):
        kwargs = _conv_kwargs(use_bn, lr_mult)
        conv_name = '{}{}{}'.format(conv_prefix, out_layer, conv_postfix)
        kernel_h, kernel_w = UnpackVariable(kernel_size, 2)
        pad_h, pad_w = UnpackVariable(pad, 2)
        stride_h, stride_w = UnpackVariable(stride, 2)
        if kernel_h == kernel_w:
            net[conv_name] = L.Convolution(net[from_layer], num_output=num_output,
                                           kernel_size=kernel_h, pad=pad_h, stride=stride_h, **kwargs)
        else:
            net[conv_name] = L.Convolution(net[from_layer], num_output=num_output,
                                           kernel_h=kernel_h, kernel_w=kernel_w, pad_h=pad_h, pad_w=pad_w,
                                           stride_h=stride_h, stride_w=stride_w, **kwargs)
        if dilation > 1:
            net.update(conv_name, {'dilation': dilation})
        if use_bn:
            _bn_layers(net, conv_name, out_layer, use_scale, lr_mult, bn_prefix, bn_postfix, scale_prefix,
                       scale_postfix, bias_prefix, bias_postfix, bn_params)
        if use_relu:
            net['{}_relu'.format(conv_name)] = L.ReLU(net[conv_name], in_place=True)

    def DeconvBNLayer(net, from_layer, out_layer, use_bn, use_relu, num_output,
                      kernel_size, pad, stride, use_scale=True, lr_mult=1, deconv_prefix='', deconv_postfix='',
                      bn_prefix='', bn_postfix='_bn', scale_prefix='', scale_postfix='_scale', bias_prefix='',
                      bias_postfix='_bias', **bn_params):
        deconv_name = '{}{}{}'.format(deconv_prefix, out_layer, deconv_postfix)
        net[deconv_name] = L.Deconvolution(net[from_layer], num_output=num_output, kernel_size=kernel_size,
                                           pad=pad, stride=stride, **_conv_kwargs(use_bn, lr_mult))
        if use_bn:
            _bn_layers(net, deconv_name, out_layer, use_scale, lr_mult, bn_prefix, bn_postfix, scale_prefix,
                       scale_postfix, bias_prefix, bias_postfix, bn_params)
        if use_relu:
            net['{}_relu'.format(deconv_name)] = L.ReLU(net[deconv_name], in_place=True)

    def EltwiseLayer(net, from_layer, out_layer):
        net[out_layer] = L.Eltwise(net[from_layer[0]], net[from_layer[1]])

    def ResBody(net, from_layer, block_name, out2a, out2b, out2c, stride, use_branch1, dilation=1, **bn_param):
        names = dict(conv_prefix='res{}_'.format(block_name), conv_postfix='',
                     bn_prefix='bn{}_'.format(block_name), bn_postfix='',
                     scale_prefix='scale{}_'.format(block_name), scale_postfix='')
        conv_prefix = names['conv_prefix']

        def unit(bottom, branch, num_output, kernel_size, pad, stride, use_relu, **extra):
            ConvBNLayer(net, bottom, branch, use_bn=True, use_relu=use_relu, num_output=num_output,
                        kernel_size=kernel_size, pad=pad, stride=stride, use_scale=True,
                        **extra, **names, **bn_param)
            return conv_prefix + branch

        shortcut = unit(from_layer, 'branch1', out2c, 1, 0, stride, False) if use_branch1 else from_layer
        top = unit(from_layer, 'branch2a', out2a, 1, 0, stride, True)
        if dilation == 1:
            top = unit(top, 'branch2b', out2b, 3, 1, 1, True)
        else:
            top = unit(top, 'branch2b', out2b, 3, _same_pad(3, dilation), 1, True, dilation=dilation)
        top = unit(top, 'branch2c', out2c, 1, 0, 1, False)

        res_name = 'res{}'.format(block_name)
        net[res_name] = L.Eltwise(net[shortcut], net[top])
        net['{}_relu'.format(res_name)] = L.ReLU(net[res_name], in_place=True)

    def InceptionTower(net, from_layer, tower_name, layer_params, **bn_param):
        for spec in layer_params:
            spec = dict(spec)
            tower_layer = '{}/{}'.format(tower_name, spec.pop('name'))
            if 'pool' in tower_layer:
                net[tower_layer] = L.Pooling(net[from_layer], **spec)
            else:
                spec.update(bn_param)
                ConvBNLayer(net, from_layer, tower_layer, use_bn=True, use_relu=True, use_scale=False, **spec)
            from_layer = tower_layer
        return net[from_layer]

    def _resnet_body(net, from_layer, blocks3, blocks4, use_pool5, use_dilation_conv5, bn_param):
        ConvBNLayer(net, from_layer, 'conv1', use_bn=True, use_relu=True, num_output=64, kernel_size=7, pad=3,
                    stride=2, conv_prefix='', conv_postfix='', bn_prefix='bn_', bn_postfix='',
                    scale_prefix='scale_', scale_postfix='', **bn_param)
        net.pool1 = L.Pooling(net.conv1, pool=P.Pooling.MAX, kernel_size=3, stride=2)

        ResBody(net, 'pool1', '2a', out2a=64, out2b=64, out2c=256, stride=1, use_branch1=True, **bn_param)
        ResBody(net, 'res2a', '2b', out2a=64, out2b=64, out2c=256, stride=1, use_branch1=False, **bn_param)
        ResBody(net, 'res2b', '2c', out2a=64, out2b=64, out2c=256, stride=1, use_branch1=False, **bn_param)

        last = 'res2c'
        for stage, blocks, width in (('3', blocks3, 128), ('4', blocks4, 256)):
            ResBody(net, last, stage + 'a', out2a=width, out2b=width, out2c=4 * width, stride=2,
                    use_branch1=True, **bn_param)
            last = 'res{}a'.format(stage)
            for i in range(1, blocks):
                block_name = '{}b{}'.format(stage, i)
                ResBody(net, last, block_name, out2a=width, out2b=width, out2c=4 * width, stride=1,
                        use_branch1=False, **bn_param)
                last = 'res{}'.format(block_name)

        stride, dilation = (1, 2) if use_dilation_conv5 else (2, 1)
        ResBody(net, last, '5a', out2a=512, out2b=512, out2c=2048, stride=stride, use_branch1=True,
                dilation=dilation, **bn_param)
        ResBody(net, 'res5a', '5b', out2a=512, out2b=512, out2c=2048, stride=1, use_branch1=False,
                dilation=dilation, **bn_param)
        ResBody(net, 'res5b', '5c', out2a=512, out2b=512, out2c=2048, stride=1, use_branch1=False,
                dilation=dilation, **bn_param)
        if use_pool5:
            net.pool5 = L.Pooling(net.res5c, pool=P.Pooling.AVE, global_pooling=True)
        return net

    def ResNet101Body(net, from_layer, use_pool5=True, use_dilation_conv5=False, **bn_param):
        return _resnet_body(net, from_layer, 4, 23, use_pool5, use_dilation_conv5, bn_param)

    def ResNet152Body(net, from_layer, use_pool5=True, use_dilation_conv5=False, **bn_param):
        return _resnet_body(net, from_layer, 8, 36, use_pool5, use_dilation_conv5, bn_param)

    def InceptionV3Body(net, from_layer, output_pred=False, **bn_param):
        def conv(name, num_output, kernel_size, pad, stride):
            return dict(name=name, num_output=num_output, kernel_size=kernel_size, pad=pad, stride=stride)

        def pool(kind, kernel_size, pad, stride):
            return dict(name='pool', pool=kind, kernel_size=kernel_size, pad=pad, stride=stride)

        def join(out_layer, towers):
            name = '{}/join'.format(out_layer)
            net[name] = L.Concat(*towers, axis=1)
            return name

        def split_pair(tower_name, source, num_output):
            """Two parallel 1x3 / 3x1 convs on `source`, concatenated as `<tower>/mixed`."""
            mixed = '{}/mixed'.format(tower_name)
            parts = [InceptionTower(net, source, mixed, [conv('conv', num_output, [1, 3], [0, 1], [1, 1])], **bn_param),
                     InceptionTower(net, source, mixed, [conv('conv_1', num_output, [3, 1], [1, 0], [1, 1])], **bn_param)]
            net[mixed] = L.Concat(*parts, axis=1)
            return net[mixed]

        # The stem: scale is fixed to 1 in these BatchNorms, so no Scale layers (use_scale=False).
        for out_layer, num_output, kernel_size, pad, stride in (('conv', 32, 3, 0, 2), ('conv_1', 32, 3, 0, 1),
                                                                 ('conv_2', 64, 3, 1, 1)):
            ConvBNLayer(net, from_layer, out_layer, use_bn=True, use_relu=True, num_output=num_output,
                        kernel_size=kernel_size, pad=pad, stride=stride, use_scale=False, **bn_param)
            from_layer = out_layer
        net.pool = L.Pooling(net[from_layer], pool=P.Pooling.MAX, kernel_size=3, stride=2, pad=0)
        from_layer = 'pool'
        for out_layer, num_output, kernel_size, pad in (('conv_3', 80, 1, 0), ('conv_4', 192, 3, 0)):
            ConvBNLayer(net, from_layer, out_layer, use_bn=True, use_relu=True, num_output=num_output,
                        kernel_size=kernel_size, pad=pad, stride=1, use_scale=False, **bn_param)
            from_layer = out_layer
        net.pool_1 = L.Pooling(net[from_layer], pool=P.Pooling.MAX, kernel_size=3, stride=2, pad=0)
        from_layer = 'pool_1'

        # 1x1, 5x5 and double 3x3 towers.
        for inception_id in range(0, 3):
            out_layer = 'mixed' if inception_id == 0 else 'mixed_{}'.format(inception_id)
            pool_conv_width = 32 if inception_id == 0 else 64
            towers = [
                InceptionTower(net, from_layer, out_layer, [conv('conv', 64, 1, 0, 1)], **bn_param),
                InceptionTower(net, from_layer, out_layer + '/tower',
                               [conv('conv', 48, 1, 0, 1), conv('conv_1', 64, 5, 2, 1)], **bn_param),
                InceptionTower(net, from_layer, out_layer + '/tower_1',
                               [conv('conv', 64, 1, 0, 1), conv('conv_1', 96, 3, 1, 1),
                                conv('conv_2', 96, 3, 1, 1)], **bn_param),
                InceptionTower(net, from_layer, out_layer + '/tower_2',
                               [pool(P.Pooling.AVE, 3, 1, 1), conv('conv', pool_conv_width, 1, 0, 1)], **bn_param),
            ]
            from_layer = join(out_layer, towers)

        # Grid reduction.
        out_layer = 'mixed_3'
        towers = [
            InceptionTower(net, from_layer, out_layer, [conv('conv', 384, 3, 0, 2)], **bn_param),
            InceptionTower(net, from_layer, out_layer + '/tower',
                           [conv('conv', 64, 1, 0, 1), conv('conv_1', 96, 3, 1, 1), conv('conv_2', 96, 3, 0, 2)],
                           **bn_param),
            InceptionTower(net, from_layer, out_layer, [pool(P.Pooling.MAX, 3, 0, 2)], **bn_param),
        ]
        from_layer = join(out_layer, towers)

        # Factorised 7x7 towers.
        for inception_id in range(4, 8):
            width = {4: 128, 5: 160, 6: 160, 7: 192}[inception_id]
            out_layer = 'mixed_{}'.format(inception_id)
            towers = [
                InceptionTower(net, from_layer, out_layer, [conv('conv', 192, 1, 0, 1)], **bn_param),
                InceptionTower(net, from_layer, out_layer + '/tower',
                               [conv('conv', width, 1, 0, 1), conv('conv_1', width, [1, 7], [0, 3], [1, 1]),
                                conv('conv_2', 192, [7, 1], [3, 0], [1, 1])], **bn_param),
                InceptionTower(net, from_layer, out_layer + '/tower_1',
                               [conv('conv', width, 1, 0, 1), conv('conv_1', width, [7, 1], [3, 0], [1, 1]),
                                conv('conv_2', width, [1, 7], [0, 3], [1, 1]),
                                conv('conv_3', width, [7, 1], [3, 0], [1, 1]),
                                conv('conv_4', 192, [1, 7], [0, 3], [1, 1])], **bn_param),
                InceptionTower(net, from_layer, out_layer + '/tower_2',
                               [pool(P.Pooling.AVE, 3, 1, 1), conv('conv', 192, 1, 0, 1)], **bn_param),
            ]
            from_layer = join(out_layer, towers)

        # Second grid reduction.
        out_layer = 'mixed_8'
        towers = [
            InceptionTower(net, from_layer, out_layer + '/tower',
                           [conv('conv', 192, 1, 0, 1), conv('conv_1', 320, 3, 0, 2)], **bn_param),
            InceptionTower(net, from_layer, out_layer + '/tower_1',
                           [conv('conv', 192, 1, 0, 1), conv('conv_1', 192, [1, 7], [0, 3], [1, 1]),
                            conv('conv_2', 192, [7, 1], [3, 0], [1, 1]), conv('conv_3', 192, 3, 0, 2)], **bn_param),
            InceptionTower(net, from_layer, out_layer, [pool(P.Pooling.MAX, 3, 0, 2)], **bn_param),
        ]
        from_layer = join(out_layer, towers)

        # Expanded filter banks.
        for inception_id in range(9, 11):
            out_layer = 'mixed_{}'.format(inception_id)
            towers = [InceptionTower(net, from_layer, out_layer, [conv('conv', 320, 1, 0, 1)], **bn_param)]
            tower_name = out_layer + '/tower'
            InceptionTower(net, from_layer, tower_name, [conv('conv', 384, 1, 0, 1)], **bn_param)
            towers.append(split_pair(tower_name, tower_name + '/conv', 384))
            tower_name = out_layer + '/tower_1'
            InceptionTower(net, from_layer, tower_name, [conv('conv', 448, 1, 0, 1), conv('conv_1', 384, 3, 1, 1)],
                           **bn_param)
            towers.append(split_pair(tower_name, tower_name + '/conv_1', 384))
            kind = P.Pooling.AVE if inception_id == 9 else P.Pooling.MAX
            towers.append(InceptionTower(net, from_layer, out_layer + '/tower_2',
                                         [pool(kind, 3, 1, 1), conv('conv', 192, 1, 0, 1)], **bn_param))
            from_layer = join(out_layer, towers)

        if output_pred:
            net.pool_3 = L.Pooling(net[from_layer], pool=P.Pooling.AVE, kernel_size=8, pad=0, stride=1)
            net.softmax = L.InnerProduct(net.pool_3, num_output=1008)
            net.softmax_prob = L.Softmax(net.softmax)
        return net

    def _prediction(net, from_layer, name, num_output, use_batchnorm, lr_mult, kernel_size, pad, bn_param):
        """A conv predictor on `from_layer`, permuted to NHWC and flattened: returns the flat top."""
        ConvBNLayer(net, from_layer, name, use_bn=use_batchnorm, use_relu=False, lr_mult=lr_mult,
                    num_output=num_output, kernel_size=kernel_size, pad=pad, stride=1, **bn_param)
        permute_name = "{}_perm".format(name)
        net[permute_name] = L.Permute(net[name], order=[0, 2, 3, 1])
        flatten_name = "{}_flat".format(name)
        net[flatten_name] = L.Flatten(net[permute_name], axis=1)
        return net[flatten_name]

    def _concat(net, name, tops, axis):
        net[name] = L.Concat(*tops, axis=axis)
        return net[name]

    def _multibox_head(net, data_layer, num_classes, from_layers, use_objectness, normalizations,
                       use_batchnorm, lr_mult, min_sizes, max_sizes, prior_variance, aspect_ratios, steps,
                       img_height, img_width, share_location, flip, clip, offset, inter_layer_depth,
                       kernel_size, pad, concat_names, conf_postfix, loc_postfix, bn_param):
        _check_head_args(num_classes, from_layers, normalizations, min_sizes, max_sizes, aspect_ratios, steps,
                         net, data_layer, inter_layer_depth)
        loc_layers, conf_layers, priorbox_layers, objectness_layers = [], [], [], []
        for i, from_layer in enumerate(from_layers):
            from_layer = _normalized(net, from_layer, normalizations, i)
            if inter_layer_depth and inter_layer_depth[i] > 0:
                inter_name = "{}_inter".format(from_layer)
                ConvBNLayer(net, from_layer, inter_name, use_bn=use_batchnorm, use_relu=True, lr_mult=lr_mult,
                            num_output=inter_layer_depth[i], kernel_size=3, pad=1, stride=1, **bn_param)
                from_layer = inter_name
            min_size, max_size, aspect_ratio = _head_sizes(i, min_sizes, max_sizes, aspect_ratios)
            num_priors = _priors_per_location(min_size, max_size, aspect_ratio, flip)
            step = steps[i] if len(steps) > i else []

            num_loc_output = num_priors * 4 * (1 if share_location else num_classes)
            loc_layers.append(_prediction(net, from_layer, "{}_mbox_loc{}".format(from_layer, loc_postfix),
                                          num_loc_output, use_batchnorm, lr_mult, kernel_size, pad, bn_param))
            conf_layers.append(_prediction(net, from_layer, "{}_mbox_conf{}".format(from_layer, conf_postfix),
                                           num_priors * num_classes, use_batchnorm, lr_mult, kernel_size, pad,
                                           bn_param))
            priorbox_layers.append(_add_prior_box(net, from_layer, data_layer, min_size, max_size, aspect_ratio,
                                                  step, flip, clip, prior_variance, offset, img_height, img_width))
            if use_objectness:
                objectness_layers.append(_prediction(net, from_layer, "{}_mbox_objectness".format(from_layer),
                                                     num_priors * 2, use_batchnorm, lr_mult, kernel_size, pad,
                                                     bn_param))
        mbox_layers = [_concat(net, concat_names[0], loc_layers, 1),
                       _concat(net, concat_names[1], conf_layers, 1),
                       _concat(net, concat_names[2], priorbox_layers, 2)]
        if use_objectness:
            mbox_layers.append(_concat(net, concat_names[3], objectness_layers, 1))
        return mbox_layers

    if ssd:
        def CreateMultiBoxHead(net, data_layer="data", num_classes=[], from_layers=[],
                               use_objectness=False, normalizations=[], use_batchnorm=True, lr_mult=1,
                               use_scale=True, min_sizes=[], max_sizes=[], prior_variance=[0.1],
                               aspect_ratios=[], steps=[], img_height=0, img_width=0, share_location=True,
                               flip=True, clip=True, offset=0.5, inter_layer_depth=[], kernel_size=1, pad=0,
                               conf_postfix='', loc_postfix='', **bn_param):
            return _multibox_head(net, data_layer, num_classes, from_layers, use_objectness, normalizations,
                                  use_batchnorm, lr_mult, min_sizes, max_sizes, prior_variance, aspect_ratios,
                                  steps, img_height, img_width, share_location, flip, clip, offset,
                                  inter_layer_depth, kernel_size, pad,
                                  ("mbox_loc", "mbox_conf", "mbox_priorbox", "mbox_objectness"),
                                  conf_postfix, loc_postfix, bn_param)
    else:
        def CreateMultiBoxHead(net, data_layer="data", num_classes=[], from_layers=[],
                               use_objectness=False, normalizations=[], use_batchnorm=True, lr_mult=1,
                               use_scale=True, min_sizes=[], max_sizes=[], prior_variance=[0.1],
                               aspect_ratios=[], steps=[], img_height=0, img_width=0, share_location=True,
                               flip=True, clip=True, offset=0.5, inter_layer_depth=[], kernel_size=1, pad=0,
                               prefix='', conf_postfix='', loc_postfix='', **bn_param):
            names = tuple(prefix + suffix for suffix in ("_loc", "_conf", "_priorbox", "_objectness"))
            return _multibox_head(net, data_layer, num_classes, from_layers, use_objectness, normalizations,
                                  use_batchnorm, lr_mult, min_sizes, max_sizes, prior_variance, aspect_ratios,
                                  steps, img_height, img_width, share_location, flip, clip, offset,
                                  inter_layer_depth, kernel_size, pad, names, conf_postfix, loc_postfix, bn_param)

    def CreateRefineDetHead(net, data_layer="data", num_classes=[], from_layers=[], from_layers2=[],
                            normalizations=[], use_batchnorm=True, lr_mult=1, min_sizes=[], max_sizes=[],
                            prior_variance=[0.1], aspect_ratios=[], steps=[], img_height=0, img_width=0,
                            share_location=True, flip=True, clip=True, offset=0.5, inter_layer_depth=[],
                            kernel_size=1, pad=0, conf_postfix='', loc_postfix='', **bn_param):
        """Two heads: the anchor refinement module (ARM: binary objectness, refined boxes and the
        priors) on `from_layers`, and the object detection module (ODM: classes) on `from_layers2`.
        Returns [arm_loc, arm_conf, arm_priorbox, odm_loc, odm_conf]."""
        _check_head_args(num_classes, from_layers, normalizations, min_sizes, max_sizes, aspect_ratios, steps,
                         net, data_layer, inter_layer_depth)

        def source(i, from_layer):
            from_layer = _normalized(net, from_layer, normalizations, i)
            if inter_layer_depth and inter_layer_depth[i] > 0:
                # The fork replaced the intermediate conv with a bottleneck residual block.
                inter_name = "{}_inter".format(from_layer)
                ResBody(net, from_layer, inter_name, out2a=256, out2b=256, out2c=1024, stride=1, use_branch1=True)
                from_layer = "res{}".format(inter_name)
            return from_layer

        def predictions(from_layer, i, classes):
            min_size, max_size, aspect_ratio = _head_sizes(i, min_sizes, max_sizes, aspect_ratios)
            num_priors = _priors_per_location(min_size, max_size, aspect_ratio, flip)
            num_loc_output = num_priors * 4 * (1 if share_location else classes)
            loc = _prediction(net, from_layer, "{}_mbox_loc{}".format(from_layer, loc_postfix), num_loc_output,
                              use_batchnorm, lr_mult, kernel_size, pad, bn_param)
            conf = _prediction(net, from_layer, "{}_mbox_conf{}".format(from_layer, conf_postfix),
                               num_priors * classes, use_batchnorm, lr_mult, kernel_size, pad, bn_param)
            return loc, conf, (min_size, max_size, aspect_ratio)

        loc_layers, conf_layers, priorbox_layers = [], [], []
        for i, from_layer in enumerate(from_layers):
            from_layer = source(i, from_layer)
            loc, conf, (min_size, max_size, aspect_ratio) = predictions(from_layer, i, 2)
            loc_layers.append(loc)
            conf_layers.append(conf)
            step = steps[i] if len(steps) > i else []
            priorbox_layers.append(_add_prior_box(net, from_layer, data_layer, min_size, max_size, aspect_ratio,
                                                  step, flip, clip, prior_variance, offset, img_height, img_width))
        mbox_layers = [_concat(net, "arm_loc", loc_layers, 1), _concat(net, "arm_conf", conf_layers, 1),
                       _concat(net, "arm_priorbox", priorbox_layers, 2)]

        loc_layers, conf_layers = [], []
        for i, from_layer in enumerate(from_layers2):
            loc, conf, _ = predictions(source(i, from_layer), i, num_classes)
            loc_layers.append(loc)
            conf_layers.append(conf)
        mbox_layers += [_concat(net, "odm_loc", loc_layers, 1), _concat(net, "odm_conf", conf_layers, 1)]
        return mbox_layers

    helpers = dict(locals())
    namespace = types.ModuleType(f"{__name__}.{flavor}", f"model_libs helpers of the {flavor} fork")
    shared = dict(check_if_exist=check_if_exist, make_if_not_exist=make_if_not_exist, UnpackVariable=UnpackVariable,
                  CreateAnnotatedDataLayer=CreateAnnotatedDataLayer, ZFNetBody=ZFNetBody, VGGNetBody=VGGNetBody)
    exported = [name for name in HELPER_NAMES if not (ssd and name in _REFINEDET_ONLY)]
    for name in exported:
        setattr(namespace, name, shared[name] if name in shared else helpers[name])
    # What `from caffe.model_libs import *` gave besides the helpers.
    namespace.L, namespace.P, namespace.caffe_pb2, namespace.os = L, P, caffe_pb2, os
    namespace.__all__ = exported + ["L", "P", "caffe_pb2", "os"]
    return namespace


ssd = _build("ssd")
refinedet = _build("refinedet")


def flavor(name):
    """The helpers of one fork: `flavor("ssd")` or `flavor("refinedet")`."""
    if name not in FLAVORS:
        raise ProtonetError(f"unknown model_libs flavour '{name}' (choose from {', '.join(FLAVORS)})")
    return ssd if name == "ssd" else refinedet


ConvBNLayer = refinedet.ConvBNLayer
DeconvBNLayer = refinedet.DeconvBNLayer
EltwiseLayer = refinedet.EltwiseLayer
ResBody = refinedet.ResBody
InceptionTower = refinedet.InceptionTower
ResNet101Body = refinedet.ResNet101Body
ResNet152Body = refinedet.ResNet152Body
InceptionV3Body = refinedet.InceptionV3Body
CreateMultiBoxHead = refinedet.CreateMultiBoxHead
CreateRefineDetHead = refinedet.CreateRefineDetHead

__all__ = list(HELPER_NAMES) + ["L", "P", "caffe_pb2", "ssd", "refinedet", "flavor"]
