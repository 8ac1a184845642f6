"""Label maps: the golden LMDB's labelmap, the fork's name/label/display-name lookups, plain label lists."""
import pytest

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io import (
    map_label_to_display_name,
    map_label_to_name,
    map_name_to_label,
    read_label_file,
    read_labelmap,
    write_labelmap,
)


def test_golden_labelmap(fixtures):
    label_map = read_labelmap(fixtures / "io" / "labelmap.prototxt")
    assert [(i.name, i.label, i.display_name) for i in label_map.item] == [
        ("none_of_the_above", 0, "background"), ("car", 1, "car"), ("bus", 2, "bus"),
        ("motorcycle", 3, "motorcycle"), ("bicycle", 4, "bicycle"), ("truck", 5, "truck")]
    assert map_name_to_label(label_map) == {"none_of_the_above": 0, "car": 1, "bus": 2, "motorcycle": 3,
                                            "bicycle": 4, "truck": 5}
    assert map_label_to_name(label_map)[0] == "none_of_the_above"
    assert map_label_to_display_name(label_map) == {0: "background", 1: "car", 2: "bus", 3: "motorcycle",
                                                    4: "bicycle", 5: "truck"}


def test_write_read_round_trip(fixtures, tmp_path):
    label_map = read_labelmap(fixtures / "io" / "labelmap.prototxt")
    write_labelmap(label_map, tmp_path / "lm.prototxt")
    assert read_labelmap(tmp_path / "lm.prototxt") == label_map


def _map(*items):
    label_map = caffe_pb2.LabelMap()
    for name, label, display in items:
        label_map.item.add(name=name, label=label, display_name=display)
    return label_map


def test_duplicates_are_errors_when_strict_and_last_wins_otherwise():
    dup_name = _map(("cat", 1, "Cat"), ("cat", 2, "Kitty"))
    with pytest.raises(ProtonetError, match="more than one item with name 'cat'"):
        map_name_to_label(dup_name, source="lm.prototxt")
    assert map_name_to_label(dup_name, strict=False) == {"cat": 2}
    assert map_label_to_display_name(dup_name) == {1: "Cat", 2: "Kitty"}

    dup_label = _map(("cat", 1, "Cat"), ("dog", 1, "Dog"))
    assert map_name_to_label(dup_label) == {"cat": 1, "dog": 1}
    with pytest.raises(ProtonetError, match="^lm.prototxt: .*label 1"):
        map_label_to_name(dup_label, source="lm.prototxt")
    with pytest.raises(ProtonetError, match="label 1"):
        map_label_to_display_name(dup_label)
    assert map_label_to_name(dup_label, strict=False) == {1: "dog"}
    assert map_label_to_display_name(dup_label, strict=False) == {1: "Dog"}


def test_label_file_with_one_field_numbers_after_background(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("aeroplane\nbicycle\nbird\n")
    label_map = read_label_file(path)
    assert [(i.name, i.label, i.display_name) for i in label_map.item] == [
        ("none_of_the_above", 0, "background"), ("aeroplane", 1, "aeroplane"), ("bicycle", 2, "bicycle"),
        ("bird", 3, "bird")]
    assert [i.label for i in read_label_file(path, include_background=False).item] == [0, 1, 2]


def test_label_file_with_labels_and_display_names(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("person:1:Person\ncar;3;Motor car\n")
    # every character of the delimiter separates: "Motor car" is two fields
    with pytest.raises(ProtonetError, match="labels.txt:2: 4 fields, but the first line has 3"):
        read_label_file(path, include_background=False)
    path.write_text("person:1:Person\ncar;3;Motorcar\n")
    label_map = read_label_file(path, include_background=False)
    assert [(i.name, i.label, i.display_name) for i in label_map.item] == [("person", 1, "Person"),
                                                                         ("car", 3, "Motorcar")]
    path.write_text("dog 7\ncat x\n")  # atoi: not a number gives 0
    assert [(i.name, i.label) for i in read_label_file(path, include_background=False).item] == [
        ("dog", 7), ("cat", 0)]


def test_label_file_errors_name_the_line(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a 1\nb 2 B\n")
    with pytest.raises(ProtonetError, match=r"labels.txt:2: 3 fields, but the first line has 2"):
        read_label_file(path)
    path.write_text("a 1 A x\n")
    with pytest.raises(ProtonetError, match=r"labels.txt:1: 4 fields"):
        read_label_file(path)
