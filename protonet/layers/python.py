"""Python layers, run as pycaffe runs them — only when the user allows it (ctx.allow_python_layers,
`--allow-python-layers`): a prototxt must not run arbitrary code by default.

The layer object gets pycaffe's interface: `param_str`, `phase`, and setup/reshape/forward/backward
called with lists of blobs that have `.data`, `.diff` (numpy float32), `.reshape(*shape)`, `.shape`,
`.count`, `.num`, `.channels`, `.height`, `.width`.
"""
import importlib
import math
import os
import sys

import numpy as np
import torch

from protonet.errors import ProtonetError
from protonet.layers.base import Layer, register


class PyBlob:
    """The part of pycaffe's Blob a Python layer uses."""

    def __init__(self, shape=(0,), data=None):
        self.data = np.zeros(shape, np.float32) if data is None else data
        self.diff = np.zeros_like(self.data)

    def reshape(self, *shape):
        shape = tuple(int(d) for d in shape)
        if self.data.shape != shape:
            self.data = np.zeros(shape, np.float32)
            self.diff = np.zeros(shape, np.float32)

    @property
    def shape(self):
        return self.data.shape

    @property
    def count(self):
        return int(math.prod(self.data.shape))

    def _legacy(self, i):
        return self.data.shape[i] if self.data.ndim > i else 1

    num = property(lambda self: self._legacy(0))
    channels = property(lambda self: self._legacy(1))
    height = property(lambda self: self._legacy(2))
    width = property(lambda self: self._legacy(3))


class _PythonFunction(torch.autograd.Function):
    @staticmethod
    def forward(fctx, layer, *xs):
        bottoms = [PyBlob(data=np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)) for x in xs]
        layer.obj.reshape(bottoms, layer.tops)
        layer.obj.forward(bottoms, layer.tops)
        fctx.layer, fctx.bottoms = layer, bottoms
        fctx.meta = [(x.device, x.dtype) for x in xs]
        dev, dtype = (xs[0].device, xs[0].dtype) if xs else (torch.device("cpu"), torch.float32)
        return tuple(torch.from_numpy(np.array(t.data, dtype=np.float32)).to(dev, dtype) for t in layer.tops)

    @staticmethod
    def backward(fctx, *grads):
        layer, bottoms = fctx.layer, fctx.bottoms
        if not hasattr(layer.obj, "backward"):
            raise ProtonetError(f"layer {layer.name} (Python): the layer has no backward")
        for t, g in zip(layer.tops, grads):
            t.diff = np.ascontiguousarray(g.detach().cpu().numpy(), dtype=np.float32).reshape(t.data.shape)
        for b in bottoms:
            b.diff = np.zeros_like(b.data)
        layer.obj.backward(layer.tops, [True] * len(bottoms), bottoms)
        return (None,) + tuple(torch.from_numpy(np.array(b.diff, dtype=np.float32)).to(dev, dtype)
                               for b, (dev, dtype) in zip(bottoms, fctx.meta))


@register("Python")
class PythonLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.python_param
        if not ctx.allow_python_layers:
            raise ProtonetError(f"layer {self.name}: Python layer ({p.module}.{p.layer}) refused; it would run "
                                "code named by the prototxt (allow it with --allow-python-layers)")
        if not p.module or not p.layer:
            raise ProtonetError(f"layer {self.name} (Python): python_param needs module and layer")
        if ctx.root_dir and ctx.root_dir not in sys.path:
            sys.path.insert(0, os.path.abspath(ctx.root_dir))
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(p.module)
        except ImportError as exc:
            raise ProtonetError(f"layer {self.name} (Python): cannot import module '{p.module}' ({exc})") from None
        cls = getattr(module, p.layer, None)
        if cls is None:
            raise ProtonetError(f"layer {self.name} (Python): module '{p.module}' has no '{p.layer}'")
        # pycaffe constructs the class with the LayerParameter, then sets param_str and phase.
        try:
            obj = cls(param)
        except TypeError:
            obj = cls()
        obj.param_str = p.param_str
        obj.phase = ctx.phase
        if not hasattr(obj, "blobs"):
            obj.blobs = []
        self.obj = obj
        bottoms = [PyBlob(shape) for shape in self.bottom_shapes]
        self.tops = [PyBlob() for _ in param.top]
        obj.setup(bottoms, self.tops)
        obj.reshape(bottoms, self.tops)
        self.top_shapes = [t.shape for t in self.tops]

    def forward(self, *xs):
        outs = _PythonFunction.apply(self, *xs)
        return outs[0] if len(outs) == 1 else outs
