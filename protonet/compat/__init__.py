"""Caffe's Python names for unchanged Caffe scripts run by `protonet gen`.

`caffe_modules(flavor, session)` makes `import caffe`, `from caffe import layers as L, params as P`,
`from caffe.proto import caffe_pb2` and `from caffe.model_libs import *` resolve to protonet
for the duration of a `with` block, with the model_libs helpers of the chosen fork, and puts
back whatever `caffe` modules were there before (a real pycaffe stays untouched outside).
"""
import contextlib
import importlib
import os
import sys
import types

from protonet.spec import model_libs, net_spec
from protonet.spec.model_libs.common import MODULE_NAMES
from protonet.spec.session import GenSession

_ALIASES = ("caffe", "caffe.proto", "caffe.proto.caffe_pb2", "caffe.net_spec", "caffe.model_libs")
_OURS = "protonet.compat.caffe"


def _model_libs_module(flavor, session):
    """`caffe.model_libs` for one script: the fork's helpers, with `caffe`, `L`, `P`, `caffe_pb2`
    and `os` as the fork's module exported them, and a check_if_exist that notes a missing path
    in `session` (gen then warns, and refuses --run, instead of the job failing later)."""
    helpers = model_libs.flavor(flavor)
    module = types.ModuleType("caffe.model_libs", f"model_libs of the {flavor} fork, served by protonet")

    def check_if_exist(path):
        """As the forks': True when `path` exists."""
        exists = os.path.exists(path)
        if not exists:
            session.note_missing(path)
        return exists

    names = [name for name in model_libs.HELPER_NAMES if hasattr(helpers, name)]
    for name in names:
        setattr(module, name, check_if_exist if name == "check_if_exist" else getattr(helpers, name))
    module.caffe = importlib.import_module(_OURS)
    # caffe_pb2 is the lenient one of `from caffe.proto import caffe_pb2`, as in the fork's module.
    module.caffe_pb2 = importlib.import_module(_OURS + ".proto.caffe_pb2")
    module.L, module.P, module.os = net_spec.layers, net_spec.params, os
    module.__all__ = names + ["caffe"] + list(MODULE_NAMES)
    return module


@contextlib.contextmanager
def caffe_modules(flavor, session=None):
    """`import caffe` & co. as protonet inside the block; missing paths go to `session`."""
    libs = _model_libs_module(flavor, session if session is not None else GenSession())
    saved = {name: sys.modules.get(name) for name in _ALIASES}
    package = importlib.import_module(_OURS)
    saved_attribute = package.__dict__.get("model_libs")
    try:
        proto = importlib.import_module(_OURS + ".proto")
        pb2 = importlib.import_module(_OURS + ".proto.caffe_pb2")
        sys.modules.update({"caffe": package, "caffe.proto": proto, "caffe.proto.caffe_pb2": pb2,
                            "caffe.net_spec": net_spec, "caffe.model_libs": libs})
        package.model_libs = libs
        yield
    finally:
        if saved_attribute is None:
            package.__dict__.pop("model_libs", None)
        else:
            package.model_libs = saved_attribute
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
