"""The helpers the SSD and RefineDet forks' model_libs.py share word for word: their names,
signatures, defaults and emitted layers. Neither touches BatchNorm, where the forks differ."""
import os

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.spec.net_spec import layers as L
from protonet.spec.net_spec import params as P

FLAVORS = ("ssd", "refinedet")

# Every public helper of either fork, in the forks' order (`from caffe.model_libs import *`).
HELPER_NAMES = (
    "check_if_exist", "make_if_not_exist", "UnpackVariable", "ConvBNLayer", "DeconvBNLayer",
    "EltwiseLayer", "ResBody", "InceptionTower", "CreateAnnotatedDataLayer", "ZFNetBody",
    "VGGNetBody", "ResNet101Body", "ResNet152Body", "InceptionV3Body", "CreateMultiBoxHead",
    "CreateRefineDetHead",
)
# What `from caffe.model_libs import *` gave besides the helpers.
MODULE_NAMES = ("L", "P", "caffe_pb2", "os")


def require(condition, message):
    """The forks' `assert condition, message`, as a one-line user error."""
    if not condition:
        raise ProtonetError(message)


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
        require(len(var) == 1, f"UnpackVariable: expected 1 or {num} values, got {len(var)}")
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


def xavier_conv_kwargs(lr_mult=1, decay_mult=1):
    """Convolution with bias: weight (lr, decay) and bias (2 lr, no decay), xavier, zero bias."""
    return {
        'param': [dict(lr_mult=lr_mult, decay_mult=decay_mult), dict(lr_mult=2 * lr_mult, decay_mult=0)],
        'weight_filler': dict(type='xavier'),
        'bias_filler': dict(type='constant', value=0),
    }


def same_pad(kernel_size, dilation):
    """The pad that keeps the size at stride 1 (an int, as Python 2 computed it)."""
    return (kernel_size + (dilation - 1) * (kernel_size - 1) - 1) // 2


def freeze(net, freeze_layers):
    frozen = {'param': [dict(lr_mult=0, decay_mult=0), dict(lr_mult=0, decay_mult=0)],
              'weight_filler': dict(type='xavier'), 'bias_filler': dict(type='constant', value=0)}
    names = net.keys()
    for name in freeze_layers:
        if name in names:
            net.update(name, frozen)


def fc_tail(net, bottom, dropout, fully_conv, fc6, fc7_width, kwargs):
    """fc6, relu6, (drop6), fc7, relu7, (drop7): convolutions on `bottom` with `fc6`'s geometry
    when `fully_conv`, 4096-wide InnerProducts otherwise."""
    if fully_conv:
        net.fc6 = L.Convolution(bottom, **fc6, **kwargs)
    else:
        # The forks read pool5 here, whatever `bottom` is (with nopool there is none: an error).
        net.fc6 = L.InnerProduct(net.pool5, num_output=4096)
    net.relu6 = L.ReLU(net.fc6, in_place=True)
    if dropout:
        net.drop6 = L.Dropout(net.relu6, dropout_ratio=0.5, in_place=True)
    if fully_conv:
        net.fc7 = L.Convolution(net.relu6, num_output=fc7_width, kernel_size=1, **kwargs)
    else:
        net.fc7 = L.InnerProduct(net.relu6, num_output=4096)
    net.relu7 = L.ReLU(net.fc7, in_place=True)
    if dropout:
        net.drop7 = L.Dropout(net.relu7, dropout_ratio=0.5, in_place=True)
