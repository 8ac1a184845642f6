"""The torch implementation of every Caffe layer type, one family per module.

Importing this package registers every type (`layer_class(type_name)` finds them). It is not
pycaffe's `L`: the NetSpec DSL is `protonet.spec.layers` (see protonet/__init__.py).
"""
from protonet.layers import (  # noqa: F401  (each family registers its types on import)
    channels,
    common,
    data,
    detection_evaluate,
    detection_output,
    hdf5,
    loss,
    multibox_loss,
    neuron,
    normalization,
    priorbox,
    python,
    upsampling,
    vision,
)
from protonet.layers.base import LAYERS, Layer, NetContext, layer_class, register  # noqa: F401
