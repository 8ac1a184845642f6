"""`from caffe.model_libs import *` inside `protonet gen`: the helpers of the fork chosen for the
script (protonet.compat.active_flavor), with `caffe`, `L`, `P`, `caffe_pb2` and `os` as the
fork's module exported them."""
import os

from protonet import compat as _compat
from protonet.compat import caffe
from protonet.compat.caffe import layers as L
from protonet.compat.caffe import params as P
from protonet.compat.caffe.proto import caffe_pb2
from protonet.spec import model_libs as _model_libs

_helpers = _model_libs.flavor(_compat.active_flavor)


def check_if_exist(path):
    """As the forks': True when `path` exists. A missing path is remembered so that
    `protonet gen` can warn (and refuse --run) instead of the job failing later."""
    exists = os.path.exists(path)
    if not exists:
        _compat.missing_paths.append(path)
    return exists


_names = [name for name in _model_libs.HELPER_NAMES if hasattr(_helpers, name)]
for _name in _names:
    if _name != "check_if_exist":
        globals()[_name] = getattr(_helpers, _name)

__all__ = _names + ["caffe", "L", "P", "caffe_pb2", "os"]
del _name
