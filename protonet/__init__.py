"""protonet: Caffe-compatible SSD/RefineDet nets, trained on PyTorch.

`from protonet import NetSpec, layers as L, params as P, caffe_pb2` gives pycaffe's NetSpec.
"""
from protonet import caffe_pb2  # noqa: F401

__version__ = "0.1.0"


def __getattr__(name):
    # The NetSpec DSL is imported on first use: `import protonet` stays light for the CLI.
    if name in ("NetSpec", "layers", "params", "to_proto"):
        from protonet.spec import net_spec

        return getattr(net_spec, name)
    if name == "Net":
        from protonet.net import Net

        return Net
    raise AttributeError(f"module 'protonet' has no attribute {name!r}")
