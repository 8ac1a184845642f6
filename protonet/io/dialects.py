"""Other Caffe dialects in one schema: which dialect a field comes from, and binary files whose
fields sit at the numbers their dialect gives them (proto/README.md has the rule).

The schema marks each field and enum value a dialect adds with the `field_dialect` /
`value_dialect` option. `translate_net_bytes` renames, before protobuf parses a binary
NetParameter, the keys of fields that another dialect numbers differently where the bytes tell
which dialect wrote them (wire type, enclosing field, or contents).
"""
import collections

from protonet import caffe_pb2
from protonet.io.blobs import varint
from protonet.io.foreign import foreign_type
from protonet.io.prototxt import read_varint

# The dialects, in the order of precedence of proto/README.md (the schema names them in its options)
DIALECTS = ("NVCaffe", "Intel Caffe", "OpenCV", "TF converters", "layer ports", "BVLC master")
# For refusals: what protonet reads and runs.
KNOWN = ("BVLC, SSD and RefineDet Caffe, BVLC's master, NVCaffe, Intel Caffe, OpenCV's importer, TF converters "
         "(Synopsys Caffe) and the layer ports (MobileNet, ShuffleNet, SENet, YOLO/SSD forks, PSPNet, SegNet, "
         "FaceBoxes)")

_LAYER = "caffe.LayerParameter"
_OPENCV = "opencv"


def field_dialect(fd):
    """The dialect that adds field `fd` (a FieldDescriptor), or "" for the base's fields."""
    return fd.GetOptions().Extensions[caffe_pb2.field_dialect]


def value_dialect(enum_value_descriptor):
    return enum_value_descriptor.GetOptions().Extensions[caffe_pb2.value_dialect]


# ------------------------------------------------------------------------------------- usage


def dialect_uses(message, path="", skip=()):
    """(dialect, "path.to.field") for every set field and enum value of another dialect in
    `message` (fields named in `skip` left out), depth first. Blob values are not walked."""
    out = []
    for fd, value in message.ListFields():
        if fd.name in skip:
            continue
        where = f"{path}.{fd.name}" if path else fd.name
        dialect = field_dialect(fd)
        if dialect:
            out.append((dialect, where))
        values = value if fd.is_repeated else [value]
        if fd.enum_type is not None and not dialect:
            for v in values:
                ev = fd.enum_type.values_by_number.get(v)
                if ev is not None and value_dialect(ev):
                    out.append((value_dialect(ev), f"{where}: {ev.name}"))
        elif fd.message_type is not None:
            for i, v in enumerate(values):
                out += dialect_uses(v, f"{where}[{i}]" if fd.is_repeated else where)
    return out


def net_dialects(net_param):
    """Dialect -> list of "layer NAME: field" (or "net: field") uses in a NetParameter."""
    found = collections.OrderedDict()
    for dialect, where in dialect_uses(net_param, skip=("layer", "layers")):
        found.setdefault(dialect, []).append(f"net: {where}")
    for layer in net_param.layer:
        for dialect, where in dialect_uses(layer):
            found.setdefault(dialect, []).append(f"layer {layer.name}: {where}")
    return found


# ------------------------------------------------------------------------- binary translation


def _printable_name(payload):
    """Intel's engine strings ("MKL2017", "MKLDNN:CPU", "CAFFE") rather than a message's bytes."""
    return 0 < len(payload) <= 64 and all(32 < b < 127 for b in payload)


def _all_varints(payload):
    try:
        return all(wire == 0 for _, wire, _, _ in _fields(payload, 0, len(payload)))
    except ValueError:
        return False


def _floats_numbered(numbers, empty):
    """A test: the payload is a message of 32-bit fields numbered in `numbers` (BVLC's SwishParameter,
    ClipParameter), not one of OpenCV's SSD parameters at the same number (their first fields are
    varints); `empty`: whether an empty payload passes."""
    def test(payload):
        try:
            fields = [(n, wire) for n, wire, _, _ in _fields(payload, 0, len(payload))]
        except ValueError:
            return False
        return (empty or bool(fields)) and all(wire == 5 and n in numbers for n, wire in fields)
    return test


# (message full name, context) -> {(number, wire type): [(test of the payload or None, our field
# name, context inside)]}; the first rule whose test passes renames the field.
_RULES = {
    (_LAYER, None): {
        (145, 0): [(None, "forward_type", None)],  # NVCaffe (the base's 145 is a message)
        (146, 0): [(None, "backward_type", None)],
        # BVLC master's swish_param/clip_param, else OpenCV's numbering of SSD's parameters. Empty:
        # swish_param with its default beta (OpenCV's detection_output_param is never empty), an
        # identity permute_param (BVLC's clip_param never is: min and max are required)
        (147, 2): [(_floats_numbered({1}, True), "swish_param", None), (None, "detection_output_param", _OPENCV)],
        (148, 2): [(_floats_numbered({1, 2}, False), "clip_param", None), (None, "permute_param", None)],
        (149, 2): [(_printable_name, "engine", None), (None, "norm_param", None)],  # Intel / OpenCV
        (150, 2): [(_all_varints, "upsample_param", None), (None, "prior_box_param", None)],
        # Synopsys Caffe and eric612's numbers for the layer ports' parameters
        (163, 2): [(None, "interp_param", None)],
        (166, 2): [(None, "shuffle_channel_param", None)],
        (177, 2): [(None, "upsample_param", None)],
        (211, 2): [(None, "relu6_param", None)],
        (248, 2): [(None, "clip_param", None)],  # Synopsys Caffe's clip_param
        (20001, 2): [(None, "interp_param", None)],  # FSSD's (lzx1413/CAFFE_SSD)
    },
    # Synopsys' faceboxes (a bool) at OpenCV's offset_h (floats)
    ("caffe.PriorBoxParameter", None): {
        (14, 0): [(None, "faceboxes", None)],
    },
    ("caffe.DetectionOutputParameter", _OPENCV): {
        (10, 0): [(None, "normalized_bbox", None)],
    },
}
# Messages to walk into for nested rules: (message, context) -> {number: context inside}
_DESCEND = {
    ("caffe.NetParameter", None): {100: None},
    (_LAYER, None): {203: None},
}


def _fields(buf, start, end):
    """(number, wire, (offset, size) of a length-delimited payload or None, (key start, field end))
    of each field of the message in buf[start:end]; ValueError when the bytes are not a message."""
    pos = start
    while pos < end:
        key_start = pos
        key, pos = read_varint(buf, pos)
        number, wire, payload = key >> 3, key & 7, None
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            _, pos = read_varint(buf, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            size, pos = read_varint(buf, pos)
            payload, pos = (pos, size), pos + size
        else:
            raise ValueError(f"wire type {wire}")
        if pos > end:
            raise ValueError("truncated field")
        yield number, wire, payload, (key_start, pos)


def _rewrite(buf, start, end, descriptor, context):
    """The bytes of the message in buf[start:end] with its dialect keys renamed, or None when
    nothing changes (the caller then keeps the original bytes)."""
    rules = _RULES.get((descriptor.full_name, context), {})
    descend = _DESCEND.get((descriptor.full_name, context), {})
    if not rules and not descend:
        return None
    pieces, changed = [], False
    for number, wire, payload, (key_start, field_end) in _fields(buf, start, end):
        target, inner = _rename(buf, number, wire, payload, rules, descriptor)
        if target is None and number in descend:
            target, inner = descriptor.fields_by_number[number], descend[number]
        new_payload = None
        if target is not None and payload is not None and target.message_type is not None:
            new_payload = _rewrite(buf, payload[0], payload[0] + payload[1], target.message_type, inner)
        if target is None or (target.number == number and new_payload is None):
            pieces.append(buf[key_start:field_end])
            continue
        changed = True
        key = varint((target.number << 3) | wire)
        if new_payload is not None:
            pieces.append(key + varint(len(new_payload)) + new_payload)
        else:
            body_start = key_start + len(varint((number << 3) | wire))
            pieces.append(key + bytes(buf[body_start:field_end]))
    return b"".join(bytes(p) for p in pieces) if changed else None


def _rename(buf, number, wire, payload, rules, descriptor):
    """(our FieldDescriptor, context inside) for a field a rule renames, else (None, None)."""
    for test, name, inner in rules.get((number, wire), ()):
        if test is None or test(bytes(buf[payload[0]:payload[0] + payload[1]])):
            return descriptor.fields_by_name[name], inner
    return None, None


def translate_net_bytes(data):
    """A serialized NetParameter with other dialects' moved fields under protonet's numbers
    (`data` itself when there are none). ValueError when the bytes are not a message."""
    view = memoryview(data)
    out = _rewrite(view, 0, len(view), caffe_pb2.NetParameter.DESCRIPTOR, None)
    return data if out is None else out


# ------------------------------------------------------------------------------------ ignored

# Fields of other dialects that change nothing in protonet's float32 run, and why.
_NO_EFFECT = {
    "forward_type": "NVCaffe's storage/math types have no effect on protonet's float32 run",
    "backward_type": None, "forward_math": None, "backward_math": None, "debug": None, "cudnn_math_override": None,
    "engine": "Intel Caffe's engines are ignored: protonet has one implementation of each layer",
    "quantization_param": "Intel Caffe's int8 quantization_param is ignored: protonet runs the float weights",
}


def ignored_fields(net_param):
    """{reason: [layer names]} for the other dialects' layer fields that protonet reads and ignores
    (NVCaffe's types, Intel's engines and int8 calibration); one entry per reason."""
    out = collections.OrderedDict()
    for layer in net_param.layer:
        for dialect, where in dialect_uses(layer):
            field = where.split(".")[-1].split(":")[0]
            if field not in _NO_EFFECT:
                continue
            reason = _NO_EFFECT[field] or _NO_EFFECT["forward_type"]
            names = out.setdefault(reason, [])
            if not names or names[-1] != layer.name:
                names.append(layer.name)
    return out


# ------------------------------------------------------------------------------------ report


def dialect_report(net_param, type_dialects, runnable_types):
    """Lines for `protonet inspect`: the dialects a net uses (fields, enum values, layer types, with
    a few examples each) and the layers whose type protonet does not run.

    type_dialects: layer type -> dialect of the types protonet runs from other forks;
    runnable_types: every type protonet runs."""
    uses = net_dialects(net_param)
    for layer in net_param.layer:
        dialect = type_dialects.get(layer.type)
        if dialect:
            uses.setdefault(dialect, []).append(f"layer {layer.name}: type {layer.type}")
    lines = []
    for dialect, where in uses.items():
        shown = "; ".join(where[:3]) + (f"; ... ({len(where)} in all)" if len(where) > 3 else "")
        lines.append(f"  dialect {dialect}: {shown}")
    for layer in net_param.layer:
        if layer.type not in runnable_types:
            fork = foreign_type(layer.type)
            why = f"a type of {fork}" if fork else "a type no known Caffe dialect defines"
            lines.append(f"  cannot run layer {layer.name}: type {layer.type} ({why})")
    return lines
