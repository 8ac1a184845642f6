"""The core both forks' model_libs share: every helper built on ConvBNLayer.

The forks differ in what ConvBNLayer gives its BatchNorm and Scale (the SSD fork: frozen
`param`s, `eps`, fillers; RefineDet: nothing) and in the multibox head's concat names. A flavour
(`ssd.py`, `refinedet.py`) subclasses ForkHelpers, answers those two questions in
`_batchnorm_kwargs` / `_scale_kwargs`, and adds its own heads; the ResNet, Inception and head
code here then emits that fork's layers.
"""
from protonet.spec.model_libs import inception
from protonet.spec.model_libs.common import UnpackVariable, same_pad, xavier_conv_kwargs
from protonet.spec.model_libs.heads import (add_prior_box, check_head_args, concat, head_sizes, normalized,
                                            priors_per_location)
from protonet.spec.net_spec import layers as L
from protonet.spec.net_spec import params as P


class ForkHelpers:
    """The helpers of one fork; the public methods keep the forks' names and signatures."""

    def _batchnorm_kwargs(self, lr_mult, bn_params):
        """(BatchNorm's fields, the lr_mult of the Scale/Bias after it) for ConvBNLayer's **bn_params."""
        raise NotImplementedError

    def _scale_kwargs(self, affine_lr):
        """Scale's fields besides bias_term."""
        raise NotImplementedError

    def _bn_layers(self, net, conv_name, out_layer, use_scale, lr_mult, bn_prefix, bn_postfix, scale_prefix,
                   scale_postfix, bias_prefix, bias_postfix, bn_params):
        """BatchNorm, then Scale (with bias) or Bias, all in place on `conv_name`."""
        bn_kwargs, affine_lr = self._batchnorm_kwargs(lr_mult, bn_params)
        bn_name = '{}{}{}'.format(bn_prefix, out_layer, bn_postfix)
        net[bn_name] = L.BatchNorm(net[conv_name], in_place=True, **bn_kwargs)
        if use_scale:
            sb_name = '{}{}{}'.format(scale_prefix, out_layer, scale_postfix)
            net[sb_name] = L.Scale(net[bn_name], in_place=True, bias_term=True, **self._scale_kwargs(affine_lr))
        else:
            bias_name = '{}{}{}'.format(bias_prefix, out_layer, bias_postfix)
            net[bias_name] = L.Bias(net[bn_name], in_place=True,
                                    param=[dict(lr_mult=affine_lr, decay_mult=0)],
                                    filler=dict(type='constant', value=0.0))

    @staticmethod
    def _conv_kwargs(use_bn, lr_mult):
        if use_bn:
            # BatchNorm follows: no bias, small gaussian weights.
            return {'param': [dict(lr_mult=lr_mult, decay_mult=1)],
                    'weight_filler': dict(type='gaussian', std=0.01), 'bias_term': False}
        return xavier_conv_kwargs(lr_mult)

    def ConvBNLayer(self, net, from_layer, out_layer, use_bn, use_relu, num_output,
                    kernel_size, pad, stride, dilation=1, use_scale=True, lr_mult=1,
                    conv_prefix='', conv_postfix='', bn_prefix='', bn_postfix='_bn',
                    scale_prefix='', scale_postfix='_scale', bias_prefix='', bias_postfix='_bias',
                    **bn_params):
        kwargs = self._conv_kwargs(use_bn, lr_mult)
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
            self._bn_layers(net, conv_name, out_layer, use_scale, lr_mult, bn_prefix, bn_postfix, scale_prefix,
                            scale_postfix, bias_prefix, bias_postfix, bn_params)
        if use_relu:
            net['{}_relu'.format(conv_name)] = L.ReLU(net[conv_name], in_place=True)

    def ResBody(self, net, from_layer, block_name, out2a, out2b, out2c, stride, use_branch1, dilation=1,
                **bn_param):
        names = dict(conv_prefix='res{}_'.format(block_name), conv_postfix='',
                     bn_prefix='bn{}_'.format(block_name), bn_postfix='',
                     scale_prefix='scale{}_'.format(block_name), scale_postfix='')
        conv_prefix = names['conv_prefix']

        def unit(bottom, branch, num_output, kernel_size, pad, stride, use_relu, **extra):
            self.ConvBNLayer(net, bottom, branch, use_bn=True, use_relu=use_relu, num_output=num_output,
                             kernel_size=kernel_size, pad=pad, stride=stride, use_scale=True,
                             **extra, **names, **bn_param)
            return conv_prefix + branch

        shortcut = unit(from_layer, 'branch1', out2c, 1, 0, stride, False) if use_branch1 else from_layer
        top = unit(from_layer, 'branch2a', out2a, 1, 0, stride, True)
        if dilation == 1:
            top = unit(top, 'branch2b', out2b, 3, 1, 1, True)
        else:
            top = unit(top, 'branch2b', out2b, 3, same_pad(3, dilation), 1, True, dilation=dilation)
        top = unit(top, 'branch2c', out2c, 1, 0, 1, False)

        res_name = 'res{}'.format(block_name)
        net[res_name] = L.Eltwise(net[shortcut], net[top])
        net['{}_relu'.format(res_name)] = L.ReLU(net[res_name], in_place=True)

    def InceptionTower(self, net, from_layer, tower_name, layer_params, **bn_param):
        for spec in layer_params:
            spec = dict(spec)
            tower_layer = '{}/{}'.format(tower_name, spec.pop('name'))
            if 'pool' in tower_layer:
                net[tower_layer] = L.Pooling(net[from_layer], **spec)
            else:
                spec.update(bn_param)
                self.ConvBNLayer(net, from_layer, tower_layer, use_bn=True, use_relu=True, use_scale=False, **spec)
            from_layer = tower_layer
        return net[from_layer]

    def _resnet_body(self, net, from_layer, blocks3, blocks4, use_pool5, use_dilation_conv5, bn_param):
        self.ConvBNLayer(net, from_layer, 'conv1', use_bn=True, use_relu=True, num_output=64, kernel_size=7,
                         pad=3, stride=2, conv_prefix='', conv_postfix='', bn_prefix='bn_', bn_postfix='',
                         scale_prefix='scale_', scale_postfix='', **bn_param)
        net.pool1 = L.Pooling(net.conv1, pool=P.Pooling.MAX, kernel_size=3, stride=2)

        self.ResBody(net, 'pool1', '2a', out2a=64, out2b=64, out2c=256, stride=1, use_branch1=True, **bn_param)
        self.ResBody(net, 'res2a', '2b', out2a=64, out2b=64, out2c=256, stride=1, use_branch1=False, **bn_param)
        self.ResBody(net, 'res2b', '2c', out2a=64, out2b=64, out2c=256, stride=1, use_branch1=False, **bn_param)

        last = 'res2c'
        for stage, blocks, width in (('3', blocks3, 128), ('4', blocks4, 256)):
            self.ResBody(net, last, stage + 'a', out2a=width, out2b=width, out2c=4 * width, stride=2,
                         use_branch1=True, **bn_param)
            last = 'res{}a'.format(stage)
            for i in range(1, blocks):
                block_name = '{}b{}'.format(stage, i)
                self.ResBody(net, last, block_name, out2a=width, out2b=width, out2c=4 * width, stride=1,
                             use_branch1=False, **bn_param)
                last = 'res{}'.format(block_name)

        stride, dilation = (1, 2) if use_dilation_conv5 else (2, 1)
        self.ResBody(net, last, '5a', out2a=512, out2b=512, out2c=2048, stride=stride, use_branch1=True,
                     dilation=dilation, **bn_param)
        self.ResBody(net, 'res5a', '5b', out2a=512, out2b=512, out2c=2048, stride=1, use_branch1=False,
                     dilation=dilation, **bn_param)
        self.ResBody(net, 'res5b', '5c', out2a=512, out2b=512, out2c=2048, stride=1, use_branch1=False,
                     dilation=dilation, **bn_param)
        if use_pool5:
            net.pool5 = L.Pooling(net.res5c, pool=P.Pooling.AVE, global_pooling=True)
        return net

    def ResNet101Body(self, net, from_layer, use_pool5=True, use_dilation_conv5=False, **bn_param):
        return self._resnet_body(net, from_layer, 4, 23, use_pool5, use_dilation_conv5, bn_param)

    def ResNet152Body(self, net, from_layer, use_pool5=True, use_dilation_conv5=False, **bn_param):
        return self._resnet_body(net, from_layer, 8, 36, use_pool5, use_dilation_conv5, bn_param)

    def InceptionV3Body(self, net, from_layer, output_pred=False, **bn_param):
        return inception.inception_v3_body(self.ConvBNLayer, self.InceptionTower, net, from_layer, output_pred,
                                           bn_param)

    def _prediction(self, net, from_layer, name, num_output, use_batchnorm, lr_mult, kernel_size, pad, bn_param):
        """A conv predictor on `from_layer`, permuted to NHWC and flattened: returns the flat top."""
        self.ConvBNLayer(net, from_layer, name, use_bn=use_batchnorm, use_relu=False, lr_mult=lr_mult,
                         num_output=num_output, kernel_size=kernel_size, pad=pad, stride=1, **bn_param)
        permute_name = "{}_perm".format(name)
        net[permute_name] = L.Permute(net[name], order=[0, 2, 3, 1])
        flatten_name = "{}_flat".format(name)
        net[flatten_name] = L.Flatten(net[permute_name], axis=1)
        return net[flatten_name]

    def _multibox_head(self, net, data_layer, num_classes, from_layers, use_objectness, normalizations,
                       use_batchnorm, lr_mult, min_sizes, max_sizes, prior_variance, aspect_ratios, steps,
                       img_height, img_width, share_location, flip, clip, offset, inter_layer_depth,
                       kernel_size, pad, concat_names, conf_postfix, loc_postfix, bn_param):
        """CreateMultiBoxHead of either fork; `concat_names` are its loc, conf, priorbox and
        objectness concats."""
        check_head_args(num_classes, from_layers, normalizations, min_sizes, max_sizes, aspect_ratios, steps,
                        net, data_layer, inter_layer_depth)
        loc_layers, conf_layers, priorbox_layers, objectness_layers = [], [], [], []
        for i, from_layer in enumerate(from_layers):
            from_layer = normalized(net, from_layer, normalizations, i)
            if inter_layer_depth and inter_layer_depth[i] > 0:
                inter_name = "{}_inter".format(from_layer)
                self.ConvBNLayer(net, from_layer, inter_name, use_bn=use_batchnorm, use_relu=True, lr_mult=lr_mult,
                                 num_output=inter_layer_depth[i], kernel_size=3, pad=1, stride=1, **bn_param)
                from_layer = inter_name
            min_size, max_size, aspect_ratio = head_sizes(i, min_sizes, max_sizes, aspect_ratios)
            num_priors = priors_per_location(min_size, max_size, aspect_ratio, flip)
            step = steps[i] if len(steps) > i else []

            def predict(name, num_output):
                return self._prediction(net, from_layer, name, num_output, use_batchnorm, lr_mult, kernel_size,
                                        pad, bn_param)

            num_loc_output = num_priors * 4 * (1 if share_location else num_classes)
            loc_layers.append(predict("{}_mbox_loc{}".format(from_layer, loc_postfix), num_loc_output))
            conf_layers.append(predict("{}_mbox_conf{}".format(from_layer, conf_postfix), num_priors * num_classes))
            priorbox_layers.append(add_prior_box(net, from_layer, data_layer, min_size, max_size, aspect_ratio,
                                                 step, flip, clip, prior_variance, offset, img_height, img_width))
            if use_objectness:
                objectness_layers.append(predict("{}_mbox_objectness".format(from_layer), num_priors * 2))
        mbox_layers = [concat(net, concat_names[0], loc_layers, 1),
                       concat(net, concat_names[1], conf_layers, 1),
                       concat(net, concat_names[2], priorbox_layers, 2)]
        if use_objectness:
            mbox_layers.append(concat(net, concat_names[3], objectness_layers, 1))
        return mbox_layers
