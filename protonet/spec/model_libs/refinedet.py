"""model_libs of the RefineDet fork (sfzhang15/RefineDet), as `from caffe.model_libs import *`
gave them: BatchNorm and Scale carry no parameters; CreateMultiBoxHead takes `prefix=''` and
names its concats `<prefix>_loc` ...; DeconvBNLayer, EltwiseLayer and CreateRefineDetHead
(the anchor refinement and object detection modules) are this fork's own.
"""
import os  # noqa: F401  (exported: the fork's module had it)

from protonet import caffe_pb2  # noqa: F401  (exported)
from protonet.spec.model_libs.bodies import VGGNetBody, ZFNetBody  # noqa: F401
from protonet.spec.model_libs.common import (HELPER_NAMES, MODULE_NAMES, CreateAnnotatedDataLayer,  # noqa: F401
                                             UnpackVariable, check_if_exist, make_if_not_exist)
from protonet.spec.model_libs.core import ForkHelpers
from protonet.spec.model_libs.heads import add_prior_box, check_head_args, concat, head_sizes, normalized, \
    priors_per_location
from protonet.spec.net_spec import layers as L
from protonet.spec.net_spec import params as P  # noqa: F401  (exported)


class RefineDetHelpers(ForkHelpers):
    def _batchnorm_kwargs(self, lr_mult, bn_params):
        return {}, lr_mult  # the fork ignores ConvBNLayer's **bn_params

    def _scale_kwargs(self, affine_lr):
        return {}

    def DeconvBNLayer(self, net, from_layer, out_layer, use_bn, use_relu, num_output,
                      kernel_size, pad, stride, use_scale=True, lr_mult=1, deconv_prefix='', deconv_postfix='',
                      bn_prefix='', bn_postfix='_bn', scale_prefix='', scale_postfix='_scale', bias_prefix='',
                      bias_postfix='_bias', **bn_params):
        deconv_name = '{}{}{}'.format(deconv_prefix, out_layer, deconv_postfix)
        net[deconv_name] = L.Deconvolution(net[from_layer], num_output=num_output, kernel_size=kernel_size,
                                           pad=pad, stride=stride, **self._conv_kwargs(use_bn, lr_mult))
        if use_bn:
            self._bn_layers(net, deconv_name, out_layer, use_scale, lr_mult, bn_prefix, bn_postfix, scale_prefix,
                            scale_postfix, bias_prefix, bias_postfix, bn_params)
        if use_relu:
            net['{}_relu'.format(deconv_name)] = L.ReLU(net[deconv_name], in_place=True)

    def EltwiseLayer(self, net, from_layer, out_layer):
        net[out_layer] = L.Eltwise(net[from_layer[0]], net[from_layer[1]])

    def CreateMultiBoxHead(self, net, data_layer="data", num_classes=[], from_layers=[],
                           use_objectness=False, normalizations=[], use_batchnorm=True, lr_mult=1,
                           use_scale=True, min_sizes=[], max_sizes=[], prior_variance=[0.1],
                           aspect_ratios=[], steps=[], img_height=0, img_width=0, share_location=True,
                           flip=True, clip=True, offset=0.5, inter_layer_depth=[], kernel_size=1, pad=0,
                           prefix='', conf_postfix='', loc_postfix='', **bn_param):
        names = tuple(prefix + suffix for suffix in ("_loc", "_conf", "_priorbox", "_objectness"))
        return self._multibox_head(net, data_layer, num_classes, from_layers, use_objectness, normalizations,
                                   use_batchnorm, lr_mult, min_sizes, max_sizes, prior_variance, aspect_ratios,
                                   steps, img_height, img_width, share_location, flip, clip, offset,
                                   inter_layer_depth, kernel_size, pad, names, conf_postfix, loc_postfix, bn_param)

    def CreateRefineDetHead(self, net, data_layer="data", num_classes=[], from_layers=[], from_layers2=[],
                            normalizations=[], use_batchnorm=True, lr_mult=1, min_sizes=[], max_sizes=[],
                            prior_variance=[0.1], aspect_ratios=[], steps=[], img_height=0, img_width=0,
                            share_location=True, flip=True, clip=True, offset=0.5, inter_layer_depth=[],
                            kernel_size=1, pad=0, conf_postfix='', loc_postfix='', **bn_param):
        """Two heads: the anchor refinement module (ARM: binary objectness, refined boxes and the
        priors) on `from_layers`, and the object detection module (ODM: classes) on `from_layers2`.
        Returns [arm_loc, arm_conf, arm_priorbox, odm_loc, odm_conf]."""
        check_head_args(num_classes, from_layers, normalizations, min_sizes, max_sizes, aspect_ratios, steps,
                        net, data_layer, inter_layer_depth)

        def source(i, from_layer):
            from_layer = normalized(net, from_layer, normalizations, i)
            if inter_layer_depth and inter_layer_depth[i] > 0:
                # The fork replaced the intermediate conv with a bottleneck residual block.
                inter_name = "{}_inter".format(from_layer)
                self.ResBody(net, from_layer, inter_name, out2a=256, out2b=256, out2c=1024, stride=1,
                             use_branch1=True)
                from_layer = "res{}".format(inter_name)
            return from_layer

        def predictions(from_layer, i, classes):
            min_size, max_size, aspect_ratio = head_sizes(i, min_sizes, max_sizes, aspect_ratios)
            num_priors = priors_per_location(min_size, max_size, aspect_ratio, flip)
            num_loc_output = num_priors * 4 * (1 if share_location else classes)
            loc = self._prediction(net, from_layer, "{}_mbox_loc{}".format(from_layer, loc_postfix),
                                   num_loc_output, use_batchnorm, lr_mult, kernel_size, pad, bn_param)
            conf = self._prediction(net, from_layer, "{}_mbox_conf{}".format(from_layer, conf_postfix),
                                    num_priors * classes, use_batchnorm, lr_mult, kernel_size, pad, bn_param)
            return loc, conf, (min_size, max_size, aspect_ratio)

        loc_layers, conf_layers, priorbox_layers = [], [], []
        for i, from_layer in enumerate(from_layers):
            from_layer = source(i, from_layer)
            loc, conf, (min_size, max_size, aspect_ratio) = predictions(from_layer, i, 2)
            loc_layers.append(loc)
            conf_layers.append(conf)
            step = steps[i] if len(steps) > i else []
            priorbox_layers.append(add_prior_box(net, from_layer, data_layer, min_size, max_size, aspect_ratio,
                                                 step, flip, clip, prior_variance, offset, img_height, img_width))
        mbox_layers = [concat(net, "arm_loc", loc_layers, 1), concat(net, "arm_conf", conf_layers, 1),
                       concat(net, "arm_priorbox", priorbox_layers, 2)]

        loc_layers, conf_layers = [], []
        for i, from_layer in enumerate(from_layers2):
            loc, conf, _ = predictions(source(i, from_layer), i, num_classes)
            loc_layers.append(loc)
            conf_layers.append(conf)
        mbox_layers += [concat(net, "odm_loc", loc_layers, 1), concat(net, "odm_conf", conf_layers, 1)]
        return mbox_layers


_helpers = RefineDetHelpers()
ConvBNLayer = _helpers.ConvBNLayer
DeconvBNLayer = _helpers.DeconvBNLayer
EltwiseLayer = _helpers.EltwiseLayer
ResBody = _helpers.ResBody
InceptionTower = _helpers.InceptionTower
ResNet101Body = _helpers.ResNet101Body
ResNet152Body = _helpers.ResNet152Body
InceptionV3Body = _helpers.InceptionV3Body
CreateMultiBoxHead = _helpers.CreateMultiBoxHead
CreateRefineDetHead = _helpers.CreateRefineDetHead

__all__ = [name for name in HELPER_NAMES if name in globals()] + list(MODULE_NAMES)
