"""Label maps: LabelMap prototxt files (name <-> label <-> display name), as the SSD fork uses them.

The lookups follow the fork's MapNameToLabel / MapLabelToName / MapLabelToDisplayName: with
`strict=True` a repeated key is an error, otherwise the last item wins.
"""
from __future__ import annotations
import os
import re

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.prototxt import PathLike, read_prototxt, read_utf8_lines, write_prototxt


def read_labelmap(path: PathLike) -> caffe_pb2.LabelMap:
    """A LabelMap from its prototxt file."""
    return read_prototxt(path, caffe_pb2.LabelMap)


def write_labelmap(label_map: caffe_pb2.LabelMap, path: PathLike) -> None:
    write_prototxt(label_map, path)


def _mapping(label_map, key_of, value_of, what, strict, source):
    out = {}
    for item in label_map.item:
        key = key_of(item)
        if strict and key in out:
            raise ProtonetError(f"{source}: label map has more than one item with {what} {key!r}")
        out[key] = value_of(item)
    return out


def map_name_to_label(label_map: caffe_pb2.LabelMap, strict: bool = True, source: str = "label map") -> dict[str, int]:
    """name -> label."""
    return _mapping(label_map, lambda i: i.name, lambda i: i.label, "name", strict, source)


def map_label_to_name(label_map: caffe_pb2.LabelMap, strict: bool = True, source: str = "label map") -> dict[int, str]:
    """label -> name."""
    return _mapping(label_map, lambda i: i.label, lambda i: i.name, "label", strict, source)


def map_label_to_display_name(label_map: caffe_pb2.LabelMap, strict: bool = True,
                              source: str = "label map") -> dict[int, str]:
    """label -> display name."""
    return _mapping(label_map, lambda i: i.label, lambda i: i.display_name, "label", strict, source)


def label_names(path: PathLike | None, display: bool = False, strict: bool = False,
                where: str | None = None) -> dict[int, str]:
    """label -> name from a LabelMap file ({} without a path): the one reader of class names for
    DetectionOutput's result files, `eval` and `detect`. `display=True` gives the display name
    where an item has one; `strict` makes a repeated label an error, as the fork's MapLabelToName."""
    if not path:
        return {}
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ProtonetError(f"{where + ': ' if where else ''}label map file {path} not found")
    label_map = read_labelmap(path)
    names = map_label_to_name(label_map, strict=strict, source=path)
    if not display:
        return names
    shown = map_label_to_display_name(label_map, strict=strict, source=path)
    return {label: shown.get(label) or name for label, name in names.items()}


def _atoi(text):
    """C's atoi: optional blanks and sign, then digits; 0 when there are none."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def _label(text, path, lineno):
    """A label field: C's atoi, within the int32 a LabelMapItem holds."""
    label = _atoi(text)
    if not -2**31 <= label < 2**31:
        raise ProtonetError(f"{path}:{lineno}: label {label} does not fit in a 32-bit int")
    return label


def read_label_file(path: PathLike, include_background: bool = True, delimiter: str = " :;") -> caffe_pb2.LabelMap:
    """A LabelMap from a plain list, one `name [label] [display_name]` per line (the fork's
    ReadLabelFileToLabelMap): any character of `delimiter` separates fields, every line has the same
    number of fields; one field numbers the names from 0 (1 after the background item that
    `include_background` puts first as none_of_the_above/background)."""
    path = os.fspath(path)
    label_map = caffe_pb2.LabelMap()
    label = 0
    if include_background:
        label_map.item.add(name="none_of_the_above", label=label, display_name="background")
        label += 1
    lines = read_utf8_lines(path)
    split = re.compile("[" + re.escape(delimiter) + "]") if delimiter else None
    field_count = None
    for lineno, line in enumerate(lines, 1):
        fields = split.split(line) if split else [line]
        if field_count is None:
            field_count = len(fields)
        elif len(fields) != field_count:
            raise ProtonetError(f"{path}:{lineno}: {len(fields)} fields, but the first line has {field_count}")
        if field_count == 1:
            label_map.item.add(name=fields[0], label=label, display_name=fields[0])
            label += 1
        elif field_count == 2:
            label = _label(fields[1], path, lineno)
            label_map.item.add(name=fields[0], label=label, display_name=fields[0])
        elif field_count == 3:
            label = _label(fields[1], path, lineno)
            label_map.item.add(name=fields[0], label=label, display_name=fields[2])
        else:
            raise ProtonetError(f"{path}:{lineno}: {field_count} fields; a line has 1 to 3 "
                                f"(name [label] [display_name])")
    return label_map
