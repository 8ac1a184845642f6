"""Writing nets in Python, as Caffe users did.

net_spec    NetSpec, layers (L), params (P), to_proto: pycaffe's DSL, exported here
model_libs  the SSD and RefineDet forks' helpers (ConvBNLayer, VGGNetBody, CreateMultiBoxHead, ...):
            two flavours (model_libs.ssd, model_libs.refinedet) over a shared core
jobs        writing the prototxts, solver and job script of a training job
session     GenSession: what one script run by `protonet gen` wrote, lacks and tried to launch
gen         `protonet gen SCRIPT`: runs a NetSpec script (protonet's examples or Caffe's own, unchanged)
"""
from protonet.spec.net_spec import NetSpec, layers, params, to_proto  # noqa: F401
