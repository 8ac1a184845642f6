"""protonet: Caffe-compatible SSD/RefineDet nets, trained on PyTorch.

`from protonet import NetSpec, layers as L, params as P, caffe_pb2` gives pycaffe's NetSpec.
"""
import sys
import types

from protonet import caffe_pb2  # noqa: F401
from protonet.spec import NetSpec, layers, params, to_proto  # noqa: F401  (pycaffe's DSL: L, P)

__version__ = "0.1.0"


class _Package(types.ModuleType):
    # `protonet.layers` is the DSL alias above, as `from caffe import layers as L` is pycaffe's;
    # protonet/layers/ is also the package of torch layer implementations, and Python would bind
    # it here as `layers` when first imported, so `L` would depend on import order. The alias
    # wins: the implementations are reached only through the import system
    # (`import protonet.layers`, `from protonet.layers.priorbox import PriorBoxLayer`), never as
    # this attribute (so `import protonet.layers as X` gives the DSL). tests/test_spec_net_spec.py
    # pins this.
    def __setattr__(self, name, value):
        if name == "layers" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    # Net pulls in torch: imported on first use so that `import protonet` stays light for the CLI.
    if name == "Net":
        from protonet.net import Net

        return Net
    raise AttributeError(f"module 'protonet' has no attribute {name!r}")
