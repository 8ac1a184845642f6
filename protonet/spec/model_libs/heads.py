"""Pieces of the SSD and RefineDet detection heads that both forks build the same way:
argument checks, per-source prior sizes, the optional L2 Normalize, PriorBox, the concats."""
from protonet.spec.model_libs.common import require
from protonet.spec.net_spec import layers as L


def priors_per_location(min_size, max_size, aspect_ratio, flip):
    """PriorBox's count per cell: per min size one square (two with a max size), one box per
    aspect ratio, and with flip one more per aspect ratio."""
    per_min = (2 if max_size else 1) + len(aspect_ratio) * (2 if flip else 1)
    return per_min * len(min_size)


def _as_list(value):
    return value if type(value) is list else [value]


def head_sizes(i, min_sizes, max_sizes, aspect_ratios):
    """(min_size, max_size, aspect_ratio) of source `i`, each a list."""
    min_size = _as_list(min_sizes[i])
    aspect_ratio = _as_list(aspect_ratios[i]) if len(aspect_ratios) > i else []
    max_size = _as_list(max_sizes[i]) if len(max_sizes) > i else []
    if max_size:
        require(len(max_size) == len(min_size), "max_size and min_size should have same length.")
    return min_size, max_size, aspect_ratio


def check_head_args(num_classes, from_layers, normalizations, min_sizes, max_sizes, aspect_ratios,
                    steps, net, data_layer, inter_layer_depth):
    """The forks' asserts at the top of CreateMultiBoxHead / CreateRefineDetHead."""
    require(num_classes, "must provide num_classes")
    require(num_classes > 0, "num_classes must be positive number")
    for other, label in ((normalizations, "normalizations"), (max_sizes, "max_sizes"),
                         (aspect_ratios, "aspect_ratios"), (steps, "steps")):
        if other:
            require(len(from_layers) == len(other), f"from_layers and {label} should have same length")
    require(len(from_layers) == len(min_sizes), "from_layers and min_sizes should have same length")
    require(data_layer in net.keys(), "data_layer is not in net's layers")
    if inter_layer_depth:
        require(len(from_layers) == len(inter_layer_depth),
                "from_layers and inter_layer_depth should have same length")


def normalized(net, from_layer, normalizations, i):
    """The source after an optional L2 Normalize (`<source>_norm`, scale from normalizations[i])."""
    if normalizations and normalizations[i] != -1:
        norm_name = "{}_norm".format(from_layer)
        net[norm_name] = L.Normalize(net[from_layer], scale_filler=dict(type="constant", value=normalizations[i]),
                                     across_spatial=False, channel_shared=False)
        return norm_name
    return from_layer


def add_prior_box(net, from_layer, data_layer, min_size, max_size, aspect_ratio, step, flip, clip,
                  prior_variance, offset, img_height, img_width):
    """`<source>_mbox_priorbox`, with only the fields the script gave (as the forks write it)."""
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


def concat(net, name, tops, axis):
    net[name] = L.Concat(*tops, axis=axis)
    return net[name]
