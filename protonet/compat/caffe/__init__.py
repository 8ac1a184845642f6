"""`import caffe` inside `protonet gen`: pycaffe's NetSpec names, served by protonet.

Only the net-writing part of pycaffe is here (NetSpec, layers, params, to_proto, proto,
model_libs, TRAIN/TEST); running nets goes through `protonet train` / `protonet test`.
"""
from protonet.compat.caffe.proto.caffe_pb2 import TEST, TRAIN  # noqa: F401
from protonet.spec.net_spec import NetSpec, layers, params, to_proto  # noqa: F401


def __getattr__(name):
    if name == "model_libs":
        import importlib

        return importlib.import_module(__name__ + ".model_libs")
    raise AttributeError(f"caffe.{name}: protonet's `caffe` stand-in covers NetSpec scripts only "
                         f"(NetSpec, layers, params, to_proto, proto, model_libs); "
                         f"run nets with `protonet train` / `protonet test`")
