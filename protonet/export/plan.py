"""What an export writes: the inputs, the traced part of the net (the trunk), and DetectionOutput.

The trunk is the net run up to DetectionOutput's bottoms (or up to --until LAYER) with
Net(outputs=...), so only the layers those blobs need are traced. Layers that cannot be part of
a shipped model are named in one line before anything is traced.
"""
import dataclasses
import json
import logging

import numpy as np
import torch
from torch import nn

from protonet.detection_decode import DetectionSettings, detection_output
from protonet.errors import ProtonetError
from protonet.io.atomic import atomic_open

log = logging.getLogger("protonet.export")

# Layer types that a shipped model cannot contain, and why.
REFUSED = {
    "Python": "runs Python code of the prototxt's module",
    "DetectionEvaluate": "scores detections against ground truth",
    "HDF5Output": "writes HDF5 files",
}
DUMMY_BATCH = 2  # traced with two images, so that no size 1 is taken for a constant


@dataclasses.dataclass
class Detection:
    """The DetectionOutput layer that ends the net."""

    layer: str
    top: str
    bottoms: list            # loc, conf, prior[, arm_conf, arm_loc]
    settings: DetectionSettings
    num_priors: int


@dataclasses.dataclass
class ExportPlan:
    net: nn.Module
    inputs: list             # input blob names (the net's Input layers)
    trunk_outputs: list      # blobs the traced part returns
    detection: Detection | None   # None: the trunk is all that is written

    @property
    def outputs(self):
        return [self.detection.top] if self.detection else list(self.trunk_outputs)

    def dummy_inputs(self, batch=DUMMY_BATCH, seed=0):
        g = torch.Generator().manual_seed(seed)
        return tuple(torch.randn((batch,) + tuple(self.net.blob_shapes[n][1:]), generator=g) for n in self.inputs)


def detection_layers(net):
    return [(name, layer) for name, layer in net.layers.items() if layer.param.type == "DetectionOutput"]


def describe_detection(net, name, layer):
    top = layer.param.top[0]
    if getattr(layer, "heads", None) is not None:
        raise ProtonetError(f"layer {name} (DetectionOutput): Synopsys Caffe's heads one per feature map (nbottom) "
                            "are not exported; export up to a head with --until LAYER")
    # OpenCV's fourth bottom (the input image) is not read
    bottoms = list(layer.param.bottom)[:3] if getattr(layer, "image_bottom", False) else list(layer.param.bottom)
    return Detection(name, top, bottoms, layer.settings, layer.num_priors)


def plan_export(net, until=None, detection=True):
    """The ExportPlan of `net` (a Net in TEST phase): the whole detector, or only the trunk
    (detection=False: DetectionOutput's bottoms; until: the tops of that layer)."""
    where = f"net {net.name or '?'}"
    if not net.input_names:
        raise ProtonetError(f"{where}: no Input layer to export from (a deploy prototxt starts with one; "
                            "data layers read files)")
    found = detection_layers(net)
    det = None
    if until is not None:
        if until not in net.layers:
            raise ProtonetError(f"{where}: --until: no layer '{until}'")
        outputs = list(net.layers[until].param.top)
        if not outputs:
            raise ProtonetError(f"{where}: --until: layer '{until}' has no top")
    elif found:
        if len(found) > 1:
            raise ProtonetError(f"{where}: {len(found)} DetectionOutput layers ({', '.join(n for n, _ in found)}); "
                                "export one with --until LAYER")
        det = describe_detection(net, *found[0])
        if detection:
            outputs = list(det.bottoms)
        else:  # the priors (a constant) go beside the model
            outputs = [b for i, b in enumerate(det.bottoms) if i != 2]
            det = None
    else:
        outputs = list(net.output_names)
    check_exportable(net, outputs)
    if det is not None and not det.settings.graph_friendly:
        raise ProtonetError(f"layer {det.layer} (DetectionOutput): adaptive NMS (nms_param.eta "
                            f"{det.settings.eta:g} < 1) cannot be exported: its threshold changes with each kept "
                            "box; export the trunk with --no-detection-output")
    return ExportPlan(net, list(net.input_names), outputs, det)


def check_exportable(net, outputs):
    """One line naming every layer that the blobs `outputs` need and a shipped model cannot hold."""
    refused = []
    for step in net._plan(tuple(outputs)):
        layer = step.layer
        kind = layer.param.type
        if step.is_input:
            continue
        if getattr(layer, "is_data", False):
            refused.append(f"{step.name} ({kind}): reads its data from files (export the deploy net, "
                           "whose images come from an Input layer)")
        elif getattr(layer, "is_loss", False):
            refused.append(f"{step.name} ({kind}): a loss needs labels (export the deploy net)")
        elif kind in REFUSED:
            refused.append(f"{step.name} ({kind}): {REFUSED[kind]}")
        elif kind == "DetectionOutput":
            refused.append(f"{step.name} ({kind}): feeds other layers (export up to it with --until)")
    if refused:
        raise ProtonetError("cannot export layer " + "; layer ".join(refused))


class Trunk(nn.Module):
    """The net from its inputs to the trunk outputs, as a tuple (what the tracers see)."""

    def __init__(self, net, outputs):
        super().__init__()
        self.net = net
        self.outputs = list(outputs)

    def forward(self, *inputs):
        return tuple(self.net(*inputs, outputs=self.outputs).values())


class Detector(nn.Module):
    """The trunk, then DetectionOutput with tensor operations only: one tensor [1, 1, D, 7]."""

    def __init__(self, net, detection):
        super().__init__()
        self.trunk = Trunk(net, detection.bottoms)
        self.settings = detection.settings

    def forward(self, *inputs):
        bottoms = [b.detach() for b in self.trunk(*inputs)]  # rows carry no gradient (as the layer's)
        return detection_output(*bottoms[:3], self.settings, *bottoms[3:])


def write_sidecar(plan, path):
    """Beside a trunk export: the priors (PATH.priors.npy, [1, 2, P*4] as PriorBox's blob) and the
    decode settings (PATH.detection.json), for a DetectionOutput run outside the model."""
    found = detection_layers(plan.net)
    if len(found) != 1:
        return []
    det = describe_detection(plan.net, *found[0])
    with torch.no_grad():
        prior = plan.net(*plan.dummy_inputs(1), outputs=det.bottoms[2])
    base = str(path)
    with atomic_open(base + ".priors.npy") as fh:
        np.save(fh, prior.detach().cpu().numpy().astype(np.float32))
    names = ["loc", "conf", "prior", "arm_conf", "arm_loc"]
    info = json.loads(det.settings.to_json())
    info.update(layer=det.layer, num_priors=det.num_priors, bottoms=dict(zip(names, det.bottoms)),
                model_outputs=plan.trunk_outputs)
    with atomic_open(base + ".detection.json") as fh:
        fh.write((json.dumps(info, indent=2) + "\n").encode())
    return [base + ".priors.npy", base + ".detection.json"]
