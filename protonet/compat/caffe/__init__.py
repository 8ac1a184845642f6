"""`import caffe` inside `protonet gen`: pycaffe's NetSpec names, served by protonet.

Only the net-writing part of pycaffe is here (NetSpec, layers, params, to_proto, proto,
model_libs, TRAIN/TEST); running nets goes through `protonet train` / `protonet test`.
"""
from protonet.compat.caffe.proto.caffe_pb2 import TEST, TRAIN  # noqa: F401
from protonet.spec.net_spec import NetSpec, layers, params, to_proto  # noqa: F401


def __getattr__(name):
    # model_libs is set by protonet.compat.caffe_modules for the script being run (its fork's helpers).
    raise AttributeError(f"caffe.{name}: protonet's `caffe` stand-in covers NetSpec scripts run by "
                         f"`protonet gen` only (NetSpec, layers, params, to_proto, proto, model_libs); "
                         f"run nets with `protonet train` / `protonet test`")
