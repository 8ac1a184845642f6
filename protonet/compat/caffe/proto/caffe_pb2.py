"""`from caffe.proto import caffe_pb2` inside `protonet gen`: protonet's schema, whose message
constructors take NetSpec's values, so `caffe_pb2.SolverParameter(**solver_param)` accepts
`iter_size = 32 / 32` (an integral float for an int field) as old Python 2 scripts meant it.
Enums, constants and everything else are protonet.caffe_pb2's own."""
from protonet import caffe_pb2 as _pb2
from protonet.caffe_pb2 import *  # noqa: F401,F403
from protonet.spec.net_spec import make_message as _make_message


class _LenientMessageType(type):
    """Stands for one message class: calling it builds the real message with NetSpec's
    assignment rules; attribute access and isinstance go to the real class."""

    def __call__(cls, **fields):
        return _make_message(cls._message_class, **fields)

    def __getattr__(cls, name):
        return getattr(cls._message_class, name)

    def __instancecheck__(cls, obj):
        return isinstance(obj, cls._message_class)


for _name in _pb2.DESCRIPTOR.message_types_by_name:
    _real = getattr(_pb2, _name)
    globals()[_name] = _LenientMessageType(_name, (), {"_message_class": _real, "__doc__": _real.__doc__})
del _name, _real
