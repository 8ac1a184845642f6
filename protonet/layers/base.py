"""The layer contract: one nn.Module per Caffe type, registered by its type name.

A layer class is built as `cls(param, bottom_shapes, ctx)`:
- `param` is its `caffe_pb2.LayerParameter` (read its `<type>_param` field for options);
- `bottom_shapes` is a list of tuples, one per bottom, known before any data flows;
- `ctx` is the `NetContext` of the net being built (phase, options such as allow_python_layers).
In `__init__` it must set `self.top_shapes` (a list of tuples, one per top; a data-dependent
size such as DetectionOutput's row count is given a nominal value) and create its blobs in
Caffe's order with `self.add_blob(...)`. A shape that does not fit raises ShapeError naming
`param.name`. `forward(*bottoms)` returns one tensor for one top, or a tuple for several.
"""
from dataclasses import dataclass

import torch
from torch import nn

from protonet import caffe_pb2
from protonet.errors import ProtonetError, ShapeError
from protonet.io.dialects import KNOWN as KNOWN_DIALECTS
from protonet.io.foreign import foreign_type

TRAIN = caffe_pb2.TRAIN
TEST = caffe_pb2.TEST

LAYERS = {}


def register(*type_names):
    """Class decorator: register a Layer subclass under one or more Caffe type names."""

    def deco(cls):
        for name in type_names:
            if name in LAYERS:
                raise RuntimeError(f"layer type {name} registered twice")
            LAYERS[name] = cls
        cls.type_names = type_names
        return cls

    return deco


@dataclass
class NetContext:
    """What a layer may need to know about the net it is built into."""

    phase: int = TEST
    allow_python_layers: bool = False
    seed: int | None = None          # data workers and random layers derive their seeds from it
    rank: int = 0                    # data-parallel rank and world size: data layers read their shard
    world_size: int = 1
    data_workers: int | None = None  # worker processes for data layers (None: the layer decides)
    root_dir: str | None = None      # relative paths (sources, label maps) resolve against it
    data_shuffle: bool = False       # data layers shuffle their records every epoch (Caffe: in order)
    reencode_jpeg: bool = False      # AnnotatedData re-encodes cropped/expanded/distorted images as
                                     # JPEG like Caffe (bit-parity with Caffe's batches)
    data_on_device: bool = False     # AnnotatedData (TRAIN): photometric distortion and the final
                                     # resize/mirror/mean/scale on the net's device, per batch
    max_memory: int | None = None    # bytes a net may need when built (None: the machine's memory)
    strict_data: bool = False        # a corrupt record or one with bad boxes is an error, not skipped
    # DetectionOutput's save_output_param: when its label map or name/size file is missing (or its
    # output directory cannot be made), fail (protonet test) instead of warning once and running
    # without writing result files (the default, for zoo deploys naming their author's files)
    result_files_required: bool = False
    # Every PriorBox follows sfzhang15/FaceBoxes' fork (set by Net when the SSD fork's priors do not
    # fit the net's heads and FaceBoxes' do)
    faceboxes_priors: bool = False
    # ...and TextBoxes' (MhLiao/TextBoxes: every prior doubled half a step lower)
    textboxes_priors: bool = False


class Layer(nn.Module):
    """Base of every layer. Subclasses set `top_shapes` and add blobs in Caffe's order."""

    # Loss layers: top 0 gets loss_weight 1 unless the prototxt says otherwise.
    is_loss = False
    # Data layers produce tops without bottoms and are fed by the data pipeline.
    is_data = False

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__()
        self.param = param
        self.name = param.name
        self.ctx = ctx
        self.phase = ctx.phase
        self.bottom_shapes = [tuple(s) for s in bottom_shapes]
        self.top_shapes = []
        self._blob_names = []

    def add_blob(self, tensor, learnable=True):
        """Append a blob (Caffe order). Learnable blobs are Parameters the solver updates;
        others (BatchNorm statistics) are Parameters with requires_grad=False, saved likewise."""
        name = f"blob{len(self._blob_names)}"
        p = nn.Parameter(tensor.detach().clone().float(), requires_grad=learnable)
        self.register_parameter(name, p)
        self._blob_names.append(name)
        return p

    @property
    def blobs(self):
        return [getattr(self, n) for n in self._blob_names]

    def check_bottoms(self, n_min, n_max=None):
        n = len(self.bottom_shapes)
        n_max = n_min if n_max is None else n_max
        if n < n_min or n > n_max:
            want = str(n_min) if n_min == n_max else f"{n_min} to {n_max}"
            raise ShapeError(f"layer {self.name} ({self.param.type}): takes {want} bottoms, got {n}")

    def extra_repr(self):
        return f"name={self.name!r}, type={self.param.type}"


def layer_class(type_name, layer_name="?"):
    # Import the families so that they register themselves.
    import protonet.layers  # noqa: F401

    cls = LAYERS.get(type_name)
    if cls is None:
        fork = foreign_type(type_name)
        where = f" (a type of {fork}, which protonet does not run)" if fork else ""
        raise ProtonetError(f"layer {layer_name}: unknown layer type '{type_name}'{where}; protonet runs the types "
                            f"of {KNOWN_DIALECTS}")
    return cls


__all__ = ["Layer", "LAYERS", "register", "layer_class", "NetContext", "TRAIN", "TEST", "torch"]
