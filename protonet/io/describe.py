"""What a Caffe file is and holds: the reading and upgrading behind `protonet inspect` and `upgrade`.

The kind of a file is told by its content, not its name: text files are parsed as the message whose
top-level field names they use (NetParameter, SolverParameter, LabelMap); binary files as the message
whose top-level field numbers and wire types they carry (NetParameter = .caffemodel, SolverState,
BlobProto = a binaryproto mean).
"""
import os
import re

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io import upgrade as upgrade_rules
from protonet.io.blobs import BlobError, blob_shape, blob_to_array, shape_count
from protonet.io.prototxt import (
    read_bytes,
    format_prototxt,
    looks_like_text,
    parse_binary_proto,
    parse_prototxt,
    wire_fields,
    wire_fits,
)

TEXT_KINDS = {"net": caffe_pb2.NetParameter, "solver": caffe_pb2.SolverParameter, "labelmap": caffe_pb2.LabelMap}
BINARY_KINDS = {"caffemodel": caffe_pb2.NetParameter, "solverstate": caffe_pb2.SolverState,
                "blob": caffe_pb2.BlobProto}

# ------------------------------------------------------------------------------------ detection

_TEXT_TOKEN = re.compile(r'\s+|#[^\n]*|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|([A-Za-z_][\w.]*)|(.)')


def _top_level_names(text):
    """Field names used at the top level of a text proto (identifiers followed by ':', '{' or '<')."""
    names, depth, pending = [], 0, None
    for match in _TEXT_TOKEN.finditer(text):
        ident, punct = match.group(1), match.group(2)
        if ident is not None:
            pending = ident if depth == 0 else None
            continue
        if punct is None:  # blank, comment or string
            if not match.group(0).isspace() and not match.group(0).startswith("#"):
                pending = None
            continue
        if punct in ":{<" and pending is not None:
            names.append(pending)
        pending = None
        if punct in "{<":
            depth += 1
        elif punct in "}>":
            depth = max(0, depth - 1)
    return names


def _text_kind(text):
    """The text kind whose message knows the most top-level names (ties: net, solver, labelmap)."""
    names = set(_top_level_names(text))
    if not names:
        return None
    scores = {kind: len(names & set(cls.DESCRIPTOR.fields_by_name)) for kind, cls in TEXT_KINDS.items()}
    best = max(scores, key=lambda k: scores[k])
    return best if scores[best] else None


def load_any(path):
    """(kind, message, form) of a Caffe file, form being "text" or "binary"; messages not upgraded."""
    path = os.fspath(path)
    data = read_bytes(path)
    text = looks_like_text(data)
    if text is not None:
        kind = _text_kind(text)
        if kind is None:
            if not text.strip():
                raise ProtonetError(f"{path}: the file is empty")
            # no known field name: let the net parser say what is wrong where
            kind = "net"
        return kind, parse_prototxt(text, TEXT_KINDS[kind](), filename=path), "text"
    fields = wire_fields(data)
    if fields:
        for kind, cls in BINARY_KINDS.items():
            if wire_fits(fields, cls):
                return kind, parse_binary_proto(data, cls, path), "binary"
    raise ProtonetError(f"{path}: neither a text prototxt nor a binary caffemodel, solverstate or binaryproto")


# -------------------------------------------------------------------------------------- inspect


def shape_text(shape):
    return "[" + ",".join(str(d) for d in shape) + "]"


def table(rows):
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows]


def _rule_text(layer):
    rules = []
    for kind, group in (("", layer.include), ("not ", layer.exclude)):
        for rule in group:
            parts = []
            if rule.HasField("phase"):
                parts.append(caffe_pb2.Phase.Name(rule.phase))
            parts += [f"stage={s}" for s in rule.stage] + [f"not_stage={s}" for s in rule.not_stage]
            if rule.HasField("min_level"):
                parts.append(f"level>={rule.min_level}")
            if rule.HasField("max_level"):
                parts.append(f"level<={rule.max_level}")
            rules.append(kind + " ".join(parts))
    return f"  [{'; '.join(rules)}]" if rules else ""


def _values_held(blob):
    return len(blob.data) or len(blob.double_data)


def _values_needed(blob):
    """The values the blob's shape needs; None for a shape with a negative dimension."""
    try:
        return shape_count(blob_shape(blob))
    except BlobError:
        return None


def _unfilled_blobs(net):
    """Lines naming every stored blob whose values do not fill its shape."""
    lines = []
    for layer in net.layer:
        for i, blob in enumerate(layer.blobs):
            held, needed = _values_held(blob), _values_needed(blob)
            if held != needed:
                need = f"needs {needed} values" if needed is not None else "has a negative dimension"
                lines.append(f"  warning: layer {layer.name} blob {i}: its shape {shape_text(blob_shape(blob))} "
                             f"{need}, the file holds {held}")
    return lines


def _describe_net(net, path, with_blobs):
    lines = []
    name = net.name or "(unnamed)"
    if with_blobs:
        held = sum(_values_held(b) for layer in net.layer for b in layer.blobs)
        lines.append(f"{path}: caffemodel, net {name}, {len(net.layer)} layers, "
                     f"{sum(1 for l in net.layer if len(l.blobs))} with blobs, {held} parameters")
        lines += _unfilled_blobs(net)
    else:
        lines.append(f"{path}: net {name}, {len(net.layer)} layers")
    for i, blob in enumerate(net.input):
        if i < len(net.input_shape):
            shape = shape_text(net.input_shape[i].dim)
        elif len(net.input_dim) >= 4 * (i + 1):
            shape = shape_text(net.input_dim[4 * i:4 * i + 4])
        else:
            shape = ""
        lines.append(f"  input {blob} {shape}".rstrip())
    rows = []
    for layer in net.layer:
        flow = f"{', '.join(layer.bottom) or '-'} -> {', '.join(layer.top) or '-'}"
        if with_blobs:
            blobs = " ".join(shape_text(blob_shape(b)) for b in layer.blobs) or "-"
            rows.append((layer.name, layer.type, blobs, flow + _rule_text(layer)))
        else:
            rows.append((layer.name, layer.type, flow + _rule_text(layer)))
    lines += [line.rstrip() for line in table(rows)]
    return lines


def describe(kind, msg, path):
    if kind in ("net", "caffemodel"):
        return _describe_net(msg, path, with_blobs=kind == "caffemodel")
    if kind == "solver":
        return [f"{path}: solver ({msg.type})"] + ["  " + line for line in
                                                  format_prototxt(msg).splitlines()]
    if kind == "labelmap":
        rows = [(str(item.label), item.name, item.display_name) for item in msg.item]
        return [f"{path}: label map, {len(msg.item)} items"] + table([("label", "name", "display_name")] + rows)
    if kind == "solverstate":
        lines = [f"{path}: solverstate, iter {msg.iter}, current_step {msg.current_step}",
                 f"  learned_net {msg.learned_net or '-'}", f"  {len(msg.history)} history blobs"]
        lines += [f"    {i}: {shape_text(blob_shape(b))}" + ("" if _values_held(b) == _values_needed(b) else
                  f" (warning: the file holds {_values_held(b)} values)") for i, b in enumerate(msg.history)]
        return lines
    if kind == "blob":
        arr = blob_to_array(msg)
        line = f"{path}: blob {shape_text(arr.shape)}"
        if arr.ndim == 4 and arr.size:
            line += ", per-channel mean " + " ".join(f"{v:.6g}" for v in arr.mean(axis=(0, 2, 3)))
        return [line]
    raise AssertionError(kind)


def upgrade_loaded(kind, msg, path, input_fields_to_layer=False):
    """Upgrade a message from load_any in place; returns (steps done, problem lines)."""
    if kind in ("net", "caffemodel"):
        steps = [label for label, needed in (
            ("V0 layers -> V1", upgrade_rules.needs_v0_upgrade(msg)),
            ("data transformation fields -> transform_param", upgrade_rules.needs_data_upgrade(msg)),
            ("V1 layers -> layer", upgrade_rules.needs_v1_upgrade(msg)),
            ("input fields -> Input layer", input_fields_to_layer and upgrade_rules.needs_input_upgrade(msg)),
            ("BatchNorm params dropped", upgrade_rules.needs_batchnorm_upgrade(msg)),
        ) if needed]
        problems = upgrade_rules.upgrade_net(msg, source=path, input_fields_to_layer=input_fields_to_layer)
        return steps, problems
    if kind == "solver":
        return (["solver_type -> type"] if upgrade_rules.upgrade_solver(msg, source=path) else []), []
    raise ProtonetError(f"{path}: a {kind} file has no older form to upgrade")
