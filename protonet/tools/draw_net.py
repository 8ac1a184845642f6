"""The layer graph of a net, as Caffe's python/draw_net.py draws it (`protonet draw-net NET OUT`):
layers as boxes coloured by kind (convolutions red, pooling orange, inner products purple, in-place
layers green, others blue) with their type and kernel/stride/pad, blobs as octagons with their
shapes, edges labelled with num_output or the batch size. Graphviz's `dot` renders the picture;
a .dot (or .gv, .raw) file is the graph's text and needs nothing installed.

Layers are chosen for a phase as the net builds them (protonet.net.filtering); `ALL` (Caffe's
default) draws every layer. Shapes come from building the net (the TEST net for ALL); when it does
not build (its data is missing) the graph is drawn without them and the reason is returned.
"""
import os
import shutil
import subprocess

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.prototxt import read_net_prototxt
from protonet.net import Net
from protonet.net.filtering import layer_included

TEXT_FORMATS = (".dot", ".gv", ".raw")
INSTALL_GRAPHVIZ = ("install Graphviz (apt install graphviz, brew install graphviz or conda install graphviz), "
                    "or write a .dot file")
_COLOURS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
            "InnerProduct": "#CC33FF"}


def _quote(text):
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def layer_label(layer, separator):
    """Caffe's node label: name, (type), and kernel size, stride and pad of convolutions and pooling."""
    if layer.type in ("Convolution", "Deconvolution"):
        cp = layer.convolution_param
        first = (lambda values, default: values[0] if len(values) else default)
        return separator.join([layer.name, f"({layer.type})", f"kernel size: {first(cp.kernel_size, 1)}",
                               f"stride: {first(cp.stride, 1)}", f"pad: {first(cp.pad, 0)}"])
    if layer.type == "Pooling":
        pp = layer.pooling_param
        method = caffe_pb2.PoolingParameter.PoolMethod.Name(pp.pool)
        return separator.join([layer.name, f"({method} {layer.type})", f"kernel size: {pp.kernel_size}",
                               f"stride: {pp.stride}", f"pad: {pp.pad}"])
    return separator.join([layer.name, f"({layer.type})"])


def edge_label(layer):
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return ""


def net_to_dot(net_param, rankdir="LR", phase=None, shapes=None):
    """The DOT text of the net's graph (layers of `phase`, or all with None; blob shapes from `shapes`)."""
    separator = " " if rankdir in ("TB", "BT") else "\\n"
    shapes = shapes or {}
    state = caffe_pb2.NetState(phase=phase) if phase is not None else None
    nodes, edges = {}, []
    for layer in net_param.layer:
        if state is not None and not layer_included(layer, state):
            continue
        node = f"{layer.name}_{layer.type}"
        in_place = len(layer.bottom) == 1 and list(layer.bottom) == list(layer.top)
        colour = "#90EE90" if in_place else _COLOURS.get(layer.type, "#6495ED")
        nodes[node] = (f"label={_quote(layer_label(layer, separator))}, shape=record, style=filled, "
                       f"fillcolor={_quote(colour)}")
        for blob in list(layer.bottom) + list(layer.top):
            shape = shapes.get(blob)
            text = blob + (separator + "[" + ",".join(map(str, shape)) + "]" if shape is not None else "")
            nodes[f"{blob}_blob"] = f"label={_quote(text)}, shape=octagon, style=filled, fillcolor=\"#E0E0E0\""
        edges += [(f"{blob}_blob", node, "") for blob in layer.bottom]
        edges += [(node, f"{blob}_blob", edge_label(layer)) for blob in layer.top]
    lines = [f"digraph {_quote(net_param.name or 'Net')} {{", f"  rankdir={rankdir};"]
    lines += [f"  {_quote(node)} [{attrs}];" for node, attrs in nodes.items()]
    lines += [f"  {_quote(a)} -> {_quote(b)} [label={_quote(label)}];" for a, b, label in edges]
    return "\n".join(lines + ["}"]) + "\n"


def blob_shapes(net_param, phase):
    """({blob: shape} of the net built in `phase`, None) or ({}, why it does not build)."""
    try:
        net = Net(net_param, phase=phase if phase is not None else caffe_pb2.TEST)
    except ProtonetError as exc:
        return {}, str(exc)
    return {name: tuple(shape) for name, shape in net.blob_shapes.items()}, None


def draw_net(model, out, rankdir="LR", phase="ALL"):
    """Draw `model` into `out` (.dot/.gv/.raw text, or any format Graphviz's dot writes: .png, .svg,
    .pdf, ...). Returns why the shapes are missing, or None."""
    if phase not in ("ALL", "TRAIN", "TEST"):
        raise ProtonetError(f"--phase {phase}: one of ALL, TRAIN, TEST")
    net_param = read_net_prototxt(model)
    phase_value = None if phase == "ALL" else caffe_pb2.Phase.Value(phase)
    shapes, why = blob_shapes(net_param, phase_value)
    text = net_to_dot(net_param, rankdir, phase_value, shapes)
    ext = os.path.splitext(out)[1].lower()
    if ext in TEXT_FORMATS:
        with open(out, "w") as fh:
            fh.write(text)
        return why
    if not ext:
        raise ProtonetError(f"{out}: give the picture's format as the file's extension (.png, .svg, .pdf, .dot)")
    dot = shutil.which("dot")
    if dot is None:
        raise ProtonetError(f"draw-net: writing {out} needs Graphviz's `dot` program, which is not installed: "
                            + INSTALL_GRAPHVIZ)
    run = subprocess.run([dot, f"-T{ext[1:]}", "-o", out], input=text.encode(), capture_output=True)
    if run.returncode != 0:
        message = run.stderr.decode(errors="replace").strip().splitlines()
        raise ProtonetError(f"draw-net: dot could not write {out}: {message[-1] if message else run.returncode}")
    return why
