"""Inception V3 as the forks' InceptionV3Body builds it: towers of ConvBN layers (BatchNorm with
no Scale) joined by Concats, named as in the TensorFlow port (`mixed_4/tower_1/conv_2`).

The functions take the flavour's ConvBNLayer and InceptionTower, so the BatchNorms are that
fork's.
"""
from protonet.spec.net_spec import layers as L
from protonet.spec.net_spec import params as P


def _conv(name, num_output, kernel_size, pad, stride):
    return dict(name=name, num_output=num_output, kernel_size=kernel_size, pad=pad, stride=stride)


def _pool(kind, kernel_size, pad, stride):
    return dict(name='pool', pool=kind, kernel_size=kernel_size, pad=pad, stride=stride)


def _join(net, out_layer, towers):
    name = '{}/join'.format(out_layer)
    net[name] = L.Concat(*towers, axis=1)
    return name


def _stem(conv_bn, net, from_layer, bn_param):
    """conv, conv_1, conv_2, pool, conv_3, conv_4, pool_1. Scale is fixed to 1 in these
    BatchNorms, so no Scale layers (use_scale=False). Returns the last layer's name."""
    for out_layer, num_output, kernel_size, pad, stride in (('conv', 32, 3, 0, 2), ('conv_1', 32, 3, 0, 1),
                                                             ('conv_2', 64, 3, 1, 1)):
        conv_bn(net, from_layer, out_layer, use_bn=True, use_relu=True, num_output=num_output,
                kernel_size=kernel_size, pad=pad, stride=stride, use_scale=False, **bn_param)
        from_layer = out_layer
    net.pool = L.Pooling(net[from_layer], pool=P.Pooling.MAX, kernel_size=3, stride=2, pad=0)
    from_layer = 'pool'
    for out_layer, num_output, kernel_size, pad in (('conv_3', 80, 1, 0), ('conv_4', 192, 3, 0)):
        conv_bn(net, from_layer, out_layer, use_bn=True, use_relu=True, num_output=num_output,
                kernel_size=kernel_size, pad=pad, stride=1, use_scale=False, **bn_param)
        from_layer = out_layer
    net.pool_1 = L.Pooling(net[from_layer], pool=P.Pooling.MAX, kernel_size=3, stride=2, pad=0)
    return 'pool_1'


def _mixed_35(tower, net, from_layer, bn_param):
    """mixed, mixed_1, mixed_2: 1x1, 5x5 and double 3x3 towers."""
    for inception_id in range(0, 3):
        out_layer = 'mixed' if inception_id == 0 else 'mixed_{}'.format(inception_id)
        pool_conv_width = 32 if inception_id == 0 else 64
        towers = [
            tower(net, from_layer, out_layer, [_conv('conv', 64, 1, 0, 1)], **bn_param),
            tower(net, from_layer, out_layer + '/tower',
                  [_conv('conv', 48, 1, 0, 1), _conv('conv_1', 64, 5, 2, 1)], **bn_param),
            tower(net, from_layer, out_layer + '/tower_1',
                  [_conv('conv', 64, 1, 0, 1), _conv('conv_1', 96, 3, 1, 1), _conv('conv_2', 96, 3, 1, 1)],
                  **bn_param),
            tower(net, from_layer, out_layer + '/tower_2',
                  [_pool(P.Pooling.AVE, 3, 1, 1), _conv('conv', pool_conv_width, 1, 0, 1)], **bn_param),
        ]
        from_layer = _join(net, out_layer, towers)
    return from_layer


def _reduction_3(tower, net, from_layer, bn_param):
    """mixed_3: the first grid reduction."""
    out_layer = 'mixed_3'
    towers = [
        tower(net, from_layer, out_layer, [_conv('conv', 384, 3, 0, 2)], **bn_param),
        tower(net, from_layer, out_layer + '/tower',
              [_conv('conv', 64, 1, 0, 1), _conv('conv_1', 96, 3, 1, 1), _conv('conv_2', 96, 3, 0, 2)],
              **bn_param),
        tower(net, from_layer, out_layer, [_pool(P.Pooling.MAX, 3, 0, 2)], **bn_param),
    ]
    return _join(net, out_layer, towers)


def _mixed_17(tower, net, from_layer, bn_param):
    """mixed_4 .. mixed_7: factorised 7x7 towers."""
    for inception_id in range(4, 8):
        width = {4: 128, 5: 160, 6: 160, 7: 192}[inception_id]
        out_layer = 'mixed_{}'.format(inception_id)
        towers = [
            tower(net, from_layer, out_layer, [_conv('conv', 192, 1, 0, 1)], **bn_param),
            tower(net, from_layer, out_layer + '/tower',
                  [_conv('conv', width, 1, 0, 1), _conv('conv_1', width, [1, 7], [0, 3], [1, 1]),
                   _conv('conv_2', 192, [7, 1], [3, 0], [1, 1])], **bn_param),
            tower(net, from_layer, out_layer + '/tower_1',
                  [_conv('conv', width, 1, 0, 1), _conv('conv_1', width, [7, 1], [3, 0], [1, 1]),
                   _conv('conv_2', width, [1, 7], [0, 3], [1, 1]),
                   _conv('conv_3', width, [7, 1], [3, 0], [1, 1]),
                   _conv('conv_4', 192, [1, 7], [0, 3], [1, 1])], **bn_param),
            tower(net, from_layer, out_layer + '/tower_2',
                  [_pool(P.Pooling.AVE, 3, 1, 1), _conv('conv', 192, 1, 0, 1)], **bn_param),
        ]
        from_layer = _join(net, out_layer, towers)
    return from_layer


def _reduction_8(tower, net, from_layer, bn_param):
    """mixed_8: the second grid reduction."""
    out_layer = 'mixed_8'
    towers = [
        tower(net, from_layer, out_layer + '/tower',
              [_conv('conv', 192, 1, 0, 1), _conv('conv_1', 320, 3, 0, 2)], **bn_param),
        tower(net, from_layer, out_layer + '/tower_1',
              [_conv('conv', 192, 1, 0, 1), _conv('conv_1', 192, [1, 7], [0, 3], [1, 1]),
               _conv('conv_2', 192, [7, 1], [3, 0], [1, 1]), _conv('conv_3', 192, 3, 0, 2)], **bn_param),
        tower(net, from_layer, out_layer, [_pool(P.Pooling.MAX, 3, 0, 2)], **bn_param),
    ]
    return _join(net, out_layer, towers)


def _split_pair(tower, net, tower_name, source, num_output, bn_param):
    """Two parallel 1x3 / 3x1 convs on `source`, concatenated as `<tower>/mixed`."""
    mixed = '{}/mixed'.format(tower_name)
    parts = [tower(net, source, mixed, [_conv('conv', num_output, [1, 3], [0, 1], [1, 1])], **bn_param),
             tower(net, source, mixed, [_conv('conv_1', num_output, [3, 1], [1, 0], [1, 1])], **bn_param)]
    net[mixed] = L.Concat(*parts, axis=1)
    return net[mixed]


def _mixed_8x8(tower, net, from_layer, bn_param):
    """mixed_9, mixed_10: expanded filter banks."""
    for inception_id in range(9, 11):
        out_layer = 'mixed_{}'.format(inception_id)
        towers = [tower(net, from_layer, out_layer, [_conv('conv', 320, 1, 0, 1)], **bn_param)]
        tower_name = out_layer + '/tower'
        tower(net, from_layer, tower_name, [_conv('conv', 384, 1, 0, 1)], **bn_param)
        towers.append(_split_pair(tower, net, tower_name, tower_name + '/conv', 384, bn_param))
        tower_name = out_layer + '/tower_1'
        tower(net, from_layer, tower_name, [_conv('conv', 448, 1, 0, 1), _conv('conv_1', 384, 3, 1, 1)], **bn_param)
        towers.append(_split_pair(tower, net, tower_name, tower_name + '/conv_1', 384, bn_param))
        kind = P.Pooling.AVE if inception_id == 9 else P.Pooling.MAX
        towers.append(tower(net, from_layer, out_layer + '/tower_2',
                            [_pool(kind, 3, 1, 1), _conv('conv', 192, 1, 0, 1)], **bn_param))
        from_layer = _join(net, out_layer, towers)
    return from_layer


def inception_v3_body(conv_bn, tower, net, from_layer, output_pred, bn_param):
    """InceptionV3Body with the flavour's ConvBNLayer (`conv_bn`) and InceptionTower (`tower`)."""
    from_layer = _stem(conv_bn, net, from_layer, bn_param)
    for stage in (_mixed_35, _reduction_3, _mixed_17, _reduction_8, _mixed_8x8):
        from_layer = stage(tower, net, from_layer, bn_param)
    if output_pred:
        net.pool_3 = L.Pooling(net[from_layer], pool=P.Pooling.AVE, kernel_size=8, pad=0, stride=1)
        net.softmax = L.InnerProduct(net.pool_3, num_output=1008)
        net.softmax_prob = L.Softmax(net.softmax)
    return net
