"""The Caffe NetSpec helpers of the SSD and RefineDet forks, with their names, signatures,
defaults and emitted layers.

The two forks' `model_libs.py` differ, and both are here, as two flavours over a shared core:

  common.py, bodies.py, heads.py, inception.py   what the forks share (plain functions)
  core.py        ForkHelpers: every helper built on ConvBNLayer (ResBody, the ResNet and
                 Inception bodies, the multibox head), over two hooks saying what BatchNorm
                 and Scale carry
  ssd.py         weiliu89/caffe (branch ssd): the module `model_libs.ssd`
  refinedet.py   sfzhang15/RefineDet: the module `model_libs.refinedet`

`from protonet.spec.model_libs import *` gives the RefineDet flavour (it has every helper);
`model_libs.flavor("ssd")` (or `model_libs.ssd`) the other.

Where Python 2 made an integer (`pad = (k - 1) / 2`) these use integer division, so the
output is the one the forks' Python 2 scripts wrote. Checks that the forks made with `assert`
raise ProtonetError with the same message.
"""
from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.spec.model_libs import refinedet, ssd
from protonet.spec.model_libs.common import FLAVORS, HELPER_NAMES
# The module's own helpers are RefineDet's, which has every one.
from protonet.spec.model_libs.refinedet import (  # noqa: F401
    ConvBNLayer, CreateAnnotatedDataLayer, CreateMultiBoxHead, CreateRefineDetHead, DeconvBNLayer, EltwiseLayer,
    InceptionTower, InceptionV3Body, ResBody, ResNet101Body, ResNet152Body, UnpackVariable, VGGNetBody, ZFNetBody,
    check_if_exist, make_if_not_exist)
from protonet.spec.net_spec import layers as L
from protonet.spec.net_spec import params as P


def flavor(name):
    """The helpers of one fork: `flavor("ssd")` or `flavor("refinedet")` (a module)."""
    if name not in FLAVORS:
        raise ProtonetError(f"unknown model_libs flavour '{name}' (choose from {', '.join(FLAVORS)})")
    return ssd if name == "ssd" else refinedet


__all__ = list(HELPER_NAMES) + ["L", "P", "caffe_pb2", "ssd", "refinedet", "flavor"]
