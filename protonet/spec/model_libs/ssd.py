"""model_libs of the SSD fork (weiliu89/caffe, branch ssd), as `from caffe.model_libs import *`
gave them: ConvBNLayer gives BatchNorm three frozen `param`s plus `eps` and
`moving_average_fraction` (or `use_global_stats`, which freezes the Scale/Bias after it too), and
Scale its own `param`s and fillers; CreateMultiBoxHead names its concats `mbox_loc`,
`mbox_conf`, `mbox_priorbox` (`mbox_objectness`). No DeconvBNLayer, EltwiseLayer or
CreateRefineDetHead.
"""
import os  # noqa: F401  (exported: the fork's module had it)

from protonet import caffe_pb2  # noqa: F401  (exported)
from protonet.spec.model_libs.bodies import VGGNetBody, ZFNetBody  # noqa: F401
from protonet.spec.model_libs.common import (HELPER_NAMES, MODULE_NAMES, CreateAnnotatedDataLayer,  # noqa: F401
                                             UnpackVariable, check_if_exist, make_if_not_exist)
from protonet.spec.model_libs.core import ForkHelpers
from protonet.spec.net_spec import layers as L  # noqa: F401  (exported)
from protonet.spec.net_spec import params as P  # noqa: F401  (exported)

_FROZEN = dict(lr_mult=0, decay_mult=0)


class SSDHelpers(ForkHelpers):
    def _batchnorm_kwargs(self, lr_mult, bn_params):
        eps = bn_params.get('eps', 0.001)
        use_global_stats = bn_params.get('use_global_stats', False)
        if use_global_stats:
            # Global statistics are fixed, and so are the scale and bias after them.
            return {'param': [_FROZEN] * 3, 'eps': eps, 'use_global_stats': use_global_stats}, 0
        return {'param': [_FROZEN] * 3, 'eps': eps,
                'moving_average_fraction': bn_params.get('moving_average_fraction', 0.999)}, lr_mult

    def _scale_kwargs(self, affine_lr):
        return {'param': [dict(lr_mult=affine_lr, decay_mult=0), dict(lr_mult=affine_lr, decay_mult=0)],
                'filler': dict(type='constant', value=1.0),
                'bias_filler': dict(type='constant', value=0.0)}

    def CreateMultiBoxHead(self, net, data_layer="data", num_classes=[], from_layers=[],
                           use_objectness=False, normalizations=[], use_batchnorm=True, lr_mult=1,
                           use_scale=True, min_sizes=[], max_sizes=[], prior_variance=[0.1],
                           aspect_ratios=[], steps=[], img_height=0, img_width=0, share_location=True,
                           flip=True, clip=True, offset=0.5, inter_layer_depth=[], kernel_size=1, pad=0,
                           conf_postfix='', loc_postfix='', **bn_param):
        return self._multibox_head(net, data_layer, num_classes, from_layers, use_objectness, normalizations,
                                   use_batchnorm, lr_mult, min_sizes, max_sizes, prior_variance, aspect_ratios,
                                   steps, img_height, img_width, share_location, flip, clip, offset,
                                   inter_layer_depth, kernel_size, pad,
                                   ("mbox_loc", "mbox_conf", "mbox_priorbox", "mbox_objectness"),
                                   conf_postfix, loc_postfix, bn_param)


_helpers = SSDHelpers()
ConvBNLayer = _helpers.ConvBNLayer
ResBody = _helpers.ResBody
InceptionTower = _helpers.InceptionTower
ResNet101Body = _helpers.ResNet101Body
ResNet152Body = _helpers.ResNet152Body
InceptionV3Body = _helpers.InceptionV3Body
CreateMultiBoxHead = _helpers.CreateMultiBoxHead

__all__ = [name for name in HELPER_NAMES if name in globals()] + list(MODULE_NAMES)
