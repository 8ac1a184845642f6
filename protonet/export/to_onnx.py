"""ONNX (opset 17, dynamic batch): the trunk traced by torch.onnx's TorchScript-based exporter,
DetectionOutput appended in standard operators (protonet.export.onnx_detection)."""
import io
import warnings

import numpy as np
import torch

from protonet.errors import ProtonetError
from protonet.export.plan import DUMMY_BATCH, Trunk
from protonet.io.atomic import atomic_open

OPSET = 17


def export_onnx(plan, path, opset=OPSET):
    """Write `plan` as an ONNX model at `path` (atomically); returns the ModelProto."""
    import onnx
    from onnx import TensorProto, helper

    from protonet.export.onnx_detection import detection_output_nodes

    if opset < OPSET:
        raise ProtonetError(f"ONNX opset {opset}: protonet writes opset {OPSET} or later")
    model = onnx.load_from_string(trace_trunk(plan, opset))
    if plan.detection is not None:
        d = plan.detection
        nodes, inits = detection_output_nodes(d.settings, d.num_priors, *d.bottoms, out_name=d.top, prefix=d.layer)
        model.graph.node.extend(nodes)
        model.graph.initializer.extend(inits)
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info(d.top, TensorProto.FLOAT, [1, 1, "detections", 7]))
    model.producer_name = "protonet"
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ProtonetError(f"{path}: the ONNX model does not validate: {str(exc).splitlines()[0]}") from None
    with atomic_open(path) as fh:
        fh.write(model.SerializeToString())
    return model


def trace_trunk(plan, opset):
    """The trunk as serialized ONNX, inputs and batch-sized outputs with a dynamic first axis."""
    trunk = Trunk(plan.net, plan.trunk_outputs).eval()
    dummy = plan.dummy_inputs()
    with torch.no_grad():
        outs = trunk(*dummy)
    dynamic = {name: {0: "batch"} for name in plan.inputs}
    dynamic.update({name: {0: "batch"} for name, t in zip(plan.trunk_outputs, outs)
                    if t.dim() and t.shape[0] == DUMMY_BATCH})
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(trunk, dummy, buf, dynamo=False, opset_version=opset, input_names=plan.inputs,
                              output_names=plan.trunk_outputs, dynamic_axes=dynamic, do_constant_folding=True)
    except Exception as exc:  # noqa: BLE001 - any exporter failure becomes one line naming the layer
        raise ProtonetError(unexportable_layer(plan, dummy, exc)) from None
    return buf.getvalue()


def unexportable_layer(plan, dummy, exc):
    """The first layer that torch.onnx cannot export on its own, in one line."""
    inputs = {}
    hooks = [layer.register_forward_pre_hook(lambda m, args, n=name: inputs.setdefault(n, args))
             for name, layer in plan.net.layers.items()]
    try:
        with torch.no_grad():
            plan.net(*dummy, outputs=plan.trunk_outputs)
    finally:
        for h in hooks:
            h.remove()
    for step in plan.net._plan(tuple(plan.trunk_outputs)):
        if step.name not in inputs:
            continue
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(step.layer, inputs[step.name], io.BytesIO(), dynamo=False, opset_version=OPSET)
        except Exception as layer_exc:  # noqa: BLE001
            return (f"layer {step.name} ({step.layer.param.type}) cannot be exported to ONNX: "
                    f"{first_line(layer_exc)}")
    return f"ONNX export of net {plan.net.name or '?'} failed: {first_line(exc)}"


def first_line(exc):
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def onnx_input_arrays(plan, inputs):
    return {name: np.ascontiguousarray(t.detach().cpu().numpy()) for name, t in zip(plan.inputs, inputs)}
