"""Caffe's Python names for unchanged Caffe scripts run by `protonet gen`.

`caffe_modules(flavor)` makes `import caffe`, `from caffe import layers as L, params as P`,
`from caffe.proto import caffe_pb2` and `from caffe.model_libs import *` resolve to protonet
for the duration of a `with` block, with the model_libs helpers of the chosen fork, and puts
back whatever `caffe` modules were there before (a real pycaffe stays untouched outside).
"""
import contextlib
import importlib
import sys

from protonet.spec import model_libs, net_spec

_ALIASES = ("caffe", "caffe.proto", "caffe.proto.caffe_pb2", "caffe.net_spec", "caffe.model_libs")
_OURS = "protonet.compat.caffe"

# The flavour `caffe.model_libs` takes when it is imported (set by caffe_modules).
active_flavor = "refinedet"
# Paths that the script's check_if_exist found missing, in order (read by `protonet gen`).
missing_paths = []


def _fresh(name):
    sys.modules.pop(name, None)
    return importlib.import_module(name)


@contextlib.contextmanager
def caffe_modules(flavor):
    global active_flavor
    model_libs.flavor(flavor)  # validates the name
    saved = {name: sys.modules.get(name) for name in _ALIASES}
    previous_flavor, active_flavor = active_flavor, flavor
    missing_paths.clear()
    try:
        package = importlib.import_module(_OURS)
        proto = importlib.import_module(_OURS + ".proto")
        pb2 = importlib.import_module(_OURS + ".proto.caffe_pb2")
        libs = _fresh(_OURS + ".model_libs")
        sys.modules.update({"caffe": package, "caffe.proto": proto, "caffe.proto.caffe_pb2": pb2,
                            "caffe.net_spec": net_spec, "caffe.model_libs": libs})
        package.model_libs = libs
        yield
    finally:
        active_flavor = previous_flavor
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
