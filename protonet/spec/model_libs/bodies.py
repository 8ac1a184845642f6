"""ZFNet and VGG16 bodies, the same in both forks: plain convolutions with bias (no BatchNorm)."""
from protonet.spec.model_libs.common import fc_tail, freeze, require, same_pad, xavier_conv_kwargs
from protonet.spec.net_spec import layers as L
from protonet.spec.net_spec import params as P


def _zf_fc6(dilated, reduced):
    """fc6's geometry when ZFNet is made fully convolutional."""
    if dilated and reduced:
        return dict(pad=5, kernel_size=3, dilation=5)
    if dilated:
        return dict(pad=5, kernel_size=6, dilation=2)
    if reduced:
        return dict(pad=2, kernel_size=3, dilation=2)
    return dict(pad=2, kernel_size=6)


def ZFNetBody(net, from_layer, need_fc=True, fully_conv=False, reduced=False,
              dilated=False, dropout=True, need_fc8=False, freeze_layers=[]):
    kwargs = xavier_conv_kwargs()
    require(from_layer in net.keys(), f"ZFNetBody: '{from_layer}' is not a top of the net")
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
        fc_tail(net, net.pool5, dropout, fully_conv, dict(num_output=width, **_zf_fc6(dilated, reduced)),
                width, kwargs)

    if need_fc8:
        last = net.keys()[-1]
        if fully_conv:
            net.fc8 = L.Convolution(net[last], num_output=1000, kernel_size=1, **kwargs)
        else:
            net.fc8 = L.InnerProduct(net[last], num_output=1000)
        net.prob = L.Softmax(net.fc8)

    freeze(net, freeze_layers)
    return net


def _vgg_block(net, bottom, stage, num_output, count, kwargs):
    """conv<stage>_1..count, each followed by an in-place ReLU; returns the last ReLU."""
    for i in range(1, count + 1):
        conv = 'conv{}_{}'.format(stage, i)
        net[conv] = L.Convolution(bottom, num_output=num_output, pad=1, kernel_size=3, **kwargs)
        net['relu{}_{}'.format(stage, i)] = L.ReLU(net[conv], in_place=True)
        bottom = net['relu{}_{}'.format(stage, i)]
    return bottom


def _vgg_downsample(net, bottom, stage, num_output, count, nopool, kwargs):
    """The stride-2 step after a stage: a pooling, or with `nopool` a strided conv."""
    if nopool:
        name = 'conv{}_{}'.format(stage, count + 1)
        net[name] = L.Convolution(bottom, num_output=num_output, pad=1, kernel_size=3, stride=2, **kwargs)
    else:
        name = 'pool{}'.format(stage)
        net[name] = L.Pooling(bottom, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    return net[name]


def _vgg_after_conv4(net, top, nopool, dilate_pool4, kwargs):
    """The step after conv4_3 and conv5's dilation: (top, dilation)."""
    if nopool:
        net.conv4_4 = L.Convolution(top, num_output=512, pad=1, kernel_size=3, stride=2, **kwargs)
        return net.conv4_4, 1
    if dilate_pool4:
        net.pool4 = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=3, stride=1, pad=1)
        return net.pool4, 2
    net.pool4 = L.Pooling(top, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    return net.pool4, 1


def _vgg_fc(net, top, dilation, fully_conv, reduced, dilated, nopool, dropout, kwargs):
    """pool5 (or with nopool a strided conv5_4), then fc6/fc7: with `reduced` the atrous 3x3
    1024-wide fc6 of SSD's VGG16, dilated further with `dilated`."""
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

    if reduced:
        dilation *= 6 if dilated else 3
        kernel_size, num_output = 3, 1024
    else:
        if dilated:
            dilation *= 2
        kernel_size, num_output = 7, 4096
    fc6 = dict(num_output=num_output, pad=same_pad(kernel_size, dilation), kernel_size=kernel_size,
               dilation=dilation)
    fc_tail(net, net[name], dropout, fully_conv, fc6, 1024 if reduced else 4096, kwargs)


def VGGNetBody(net, from_layer, need_fc=True, fully_conv=False, reduced=False,
               dilated=False, nopool=False, dropout=True, freeze_layers=[], dilate_pool4=False):
    kwargs = xavier_conv_kwargs()
    require(from_layer in net.keys(), f"VGGNetBody: '{from_layer}' is not a top of the net")

    top = net[from_layer]
    for stage, num_output, count in ((1, 64, 2), (2, 128, 2), (3, 256, 3)):
        top = _vgg_block(net, top, stage, num_output, count, kwargs)
        top = _vgg_downsample(net, top, stage, num_output, count, nopool, kwargs)
    top = _vgg_block(net, top, 4, 512, 3, kwargs)
    top, dilation = _vgg_after_conv4(net, top, nopool, dilate_pool4, kwargs)

    pad = same_pad(3, dilation)
    for i in range(1, 4):
        conv = 'conv5_{}'.format(i)
        net[conv] = L.Convolution(top, num_output=512, pad=pad, kernel_size=3, dilation=dilation, **kwargs)
        net['relu5_{}'.format(i)] = L.ReLU(net[conv], in_place=True)
        top = net['relu5_{}'.format(i)]

    if need_fc:
        _vgg_fc(net, top, dilation, fully_conv, reduced, dilated, nopool, dropout, kwargs)

    freeze(net, freeze_layers)
    return net
