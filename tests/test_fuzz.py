"""Fuzzing every reader and the net builder with mutated files (issue 13).

Each target takes the bytes of one file, mutated by hypothesis from a seed corpus (tests/fixtures and
../shared/reference): bits flipped, bytes changed, inserted, deleted, the file cut short, numbers in
text replaced by extreme values, lines dropped or repeated. The only exception a reader or the
builder may raise is ProtonetError (the CLI's one-line error); a case must also finish within 5 s
and within 2 GB of memory. The default suite runs a few thousand cases; `-m slow` over 100,000.
"""
import contextlib
import io
import os
import pathlib
import re
import resource
import time

import lmdb
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protonet import caffe_pb2
from protonet.errors import ProtonetError
# imported here so that no case pays for the first import of torch, OpenCV, pycocotools or the layers
import protonet.cli  # noqa: F401,E402
import protonet.net  # noqa: F401,E402
import protonet.tools.create_annoset  # noqa: F401,E402
import protonet.tools.create_list  # noqa: F401,E402
import pycocotools.coco  # noqa: F401,E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
REFERENCE = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "reference"

# Cases per target: 13 targets at (fast, slow) and the reference nets (slow to parse) at their own.
FAST_CASES, FAST_REFERENCE_CASES = 250, 60      # 3,310 cases in the default suite (about 40 s)
SLOW_CASES, SLOW_REFERENCE_CASES = 8000, 2000   # 106,000 cases with -m slow
CASE_SECONDS = 5.0
CASE_MEMORY = 2 << 30
BUILD_MEMORY = 64 << 20  # nets are built with this memory limit: a size typo must be refused, not allocated

EXTREME_NUMBERS = [b"0", b"-1", b"1", b"2147483647", b"2147483648", b"4294967295", b"4294967296",
                   b"99999999", b"-2147483649", b"9223372036854775808", b"1e30", b"-1e30", b"1e39",
                   b"nan", b"inf", b"-inf", b"0.0", b"-0.5", b"1e-45", b"100000", b"3"]
TEXT_BYTES = [b"\xff", b"\xc3", b"\xe9\x80", b"\x00", b"{", b"}", b'"', b"#", b":", b"\n", b"<", b"&"]
_NUMBER = re.compile(rb"(?<![\w.])-?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+)(?![\w.])")


# ------------------------------------------------------------------------------ seeds and mutations

def _read(*paths):
    return [p.read_bytes() for p in paths if p.is_file()]


def _reference(pattern):
    return sorted(REFERENCE.glob(pattern)) if REFERENCE.is_dir() else []


def _lmdb_values(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        values = [bytes(v) for _, v in txn.cursor()]
    env.close()
    return values


def _mutation():
    where = st.floats(0, 1, allow_nan=False)
    return st.one_of(
        st.tuples(st.just("flip"), where, st.integers(0, 7)),
        st.tuples(st.just("byte"), where, st.integers(0, 255)),
        st.tuples(st.just("insert"), where, st.one_of(st.binary(min_size=1, max_size=8),
                                                      st.sampled_from(TEXT_BYTES))),
        st.tuples(st.just("delete"), where, st.integers(1, 64)),
        st.tuples(st.just("truncate"), where, st.just(0)),
        st.tuples(st.just("number"), where, st.sampled_from(EXTREME_NUMBERS)),
        st.tuples(st.just("dropline"), where, st.just(0)),
        st.tuples(st.just("dupline"), where, st.integers(1, 3)),
    )


def mutate(data, mutations):
    """Apply (kind, where in [0, 1], argument) mutations to `data` in order."""
    data = bytearray(data)
    for kind, where, arg in mutations:
        if kind == "number":
            numbers = list(_NUMBER.finditer(data))
            if numbers:
                m = numbers[min(int(where * len(numbers)), len(numbers) - 1)]
                data[m.start():m.end()] = arg
            continue
        if kind in ("dropline", "dupline"):
            lines = bytes(data).split(b"\n")
            i = min(int(where * len(lines)), len(lines) - 1)
            lines[i:i + 1] = [] if kind == "dropline" else [lines[i]] * (arg + 1)
            data = bytearray(b"\n".join(lines))
            continue
        i = min(int(where * len(data)), max(len(data) - 1, 0))
        if kind == "insert":
            data[i:i] = arg
        elif not data:
            continue
        elif kind == "flip":
            data[i] ^= 1 << arg
        elif kind == "byte":
            data[i] = arg
        elif kind == "delete":
            del data[i:i + arg]
        elif kind == "truncate":
            del data[i:]
    return bytes(data)


def mutated(seeds):
    """A strategy of mutated seeds (and, now and then, a seed as it is)."""
    assert seeds, "no seed files"
    return st.builds(lambda i, ms: mutate(seeds[i], ms), st.integers(0, len(seeds) - 1),
                     st.lists(_mutation(), min_size=0, max_size=4))


# ------------------------------------------------------------------------------ running one case

class Case:
    """Runs one input through a target: ProtonetError is fine, anything else fails the test, as does
    a case over CASE_SECONDS or one that raises the process's peak memory by more than CASE_MEMORY."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.count = 0
        self.base_rss = _peak_rss()

    def file(self, data, name="input"):
        path = self.dir / name
        path.write_bytes(data)
        return str(path)

    def run(self, target, *args):
        self.count += 1
        start = time.monotonic()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                target(*args)
        except ProtonetError as exc:
            assert "\n" not in str(exc).strip(), f"a multi-line error: {exc!r}"
        elapsed = time.monotonic() - start
        assert elapsed < CASE_SECONDS, f"case took {elapsed:.1f} s"
        grown = _peak_rss() - self.base_rss
        assert grown < CASE_MEMORY, f"peak memory grew by {grown >> 20} MB"


def _peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fuzz(strategy, cases):
    """Decorator: a hypothesis test over `strategy`, `cases` examples, reproducible and stored nowhere."""
    def deco(fn):
        return settings(max_examples=cases, deadline=None, database=None, derandomize=True,
                        suppress_health_check=list(HealthCheck), print_blob=True)(given(data=strategy)(fn))
    return deco


# ------------------------------------------------------------------------------ targets

def build_net(path):
    from protonet.layers.base import NetContext
    from protonet.net import Net

    for phase in ("TEST", "TRAIN"):
        Net(path, phase=phase, ctx=NetContext(max_memory=BUILD_MEMORY, data_workers=0))


def read_nets(path):
    from protonet.io.prototxt import read_net_prototxt

    read_net_prototxt(path)
    read_net_prototxt(path, input_fields_to_layer=True)


def read_solver(path):
    from protonet.io.prototxt import read_solver_prototxt

    read_solver_prototxt(path)


def read_labelmaps(path):
    from protonet.io.labelmap import (map_label_to_display_name, map_label_to_name, map_name_to_label,
                                      read_label_file, read_labelmap)

    try:
        label_map = read_labelmap(path)
    except ProtonetError:
        label_map = read_label_file(path)
    for mapping in (map_name_to_label, map_label_to_name, map_label_to_display_name):
        mapping(label_map, strict=False, source=path)
        mapping(label_map, strict=True, source=path)


def read_name_size_file(path):
    from protonet.io.name_size import read_name_size

    read_name_size(path)


def read_weights(path):
    from protonet.io.caffemodel import read_caffemodel, read_caffemodel_arrays

    read_caffemodel_arrays(path)
    read_caffemodel(path)


def load_weights(net, path):
    net.load_weights(path)


def read_state(path):
    from protonet.io.solverstate import read_solverstate, solverstate_history_arrays

    solverstate_history_arrays(read_solverstate(path), path)


def inspect(path):
    from protonet.cli import main

    try:
        main(["inspect", path])
    except SystemExit as exc:
        assert exc.code in (0, 2, None), f"inspect exited {exc.code}"


def decode_records(value):
    from protonet.data.records import decode_record

    for annotated in (True, False):
        try:
            decode_record(b"00000001_x.jpg", value, annotated)
        except ProtonetError:
            pass


def read_voc_xml(path):
    from protonet.tools.create_annoset import read_xml

    read_xml(path, (100, 200), {"cat": 1, "dog": 2, "person": 3}, caffe_pb2.AnnotatedDatum())


def read_annotation_json(path):
    from protonet.io.json_files import load_coco
    from protonet.tools import create_annoset

    create_annoset._COCO.clear()  # the same file name holds a new document each case
    create_annoset.read_json(path, "images/a.jpg", (100, 200), {"1": 1, "2": 2, "cat": 1}, caffe_pb2.AnnotatedDatum())
    load_coco(path, for_eval=True)


def read_csv_list(path):
    from protonet.tools.create_annoset import read_csv_rows, read_list

    for _, _, rows in read_list(path, "detection", "csv"):
        read_csv_rows(rows, path, (100, 200), {"cat": 1, "dog": 2}, caffe_pb2.AnnotatedDatum())


def read_lists(path):
    from protonet.tools.convert_imageset import read_image_list
    from protonet.tools.create_annoset import read_list, read_txt
    from protonet.tools.create_list import read_pairs

    for call in (lambda: read_list(path, "classification", "xml"), lambda: read_list(path, "detection", "xml"),
                 lambda: read_pairs(path), lambda: read_txt(path, (100, 200), caffe_pb2.AnnotatedDatum()),
                 lambda: read_image_list(path)):
        try:
            call()
        except ProtonetError:
            pass


def read_images(path, data):
    import cv2

    from protonet.data.records import imdecode, read_image_file

    for flag in (cv2.IMREAD_COLOR, cv2.IMREAD_GRAYSCALE):
        read_image_file(path, flag)
    imdecode(data, None, "image")


# ------------------------------------------------------------------------------ seed corpora

NET_SEEDS = _read(FIXTURES / "fuzz" / "layer_zoo.prototxt", FIXTURES / "io" / "tiny_ssd_deploy.prototxt",
                  FIXTURES / "quickstart" / "tiny_ssd_deploy.prototxt", FIXTURES / "solver" / "train.prototxt",
                  FIXTURES / "net" / "detectionoutput_refinedet_cv.prototxt")
BIG_NET_SEEDS = _read(FIXTURES / "io" / "MobileNetSSD_deploy.prototxt", FIXTURES / "io" / "ssd_pascal_train.prototxt",
                      FIXTURES / "io" / "refinedet_vgg16_320_test.prototxt",
                      *[p for p in _reference("*/*/*.prototxt") if "solver" not in p.name],
                      *[p for p in _reference("*/*.prototxt") if "solver" not in p.name])
SOLVER_SEEDS = _read(FIXTURES / "io" / "ssd_pascal_solver.prototxt", FIXTURES / "solver" / "adam" / "solver.prototxt",
                     FIXTURES / "eval" / "map_11point" / "solver.prototxt", *_reference("*/*/solver*.prototxt"),
                     *_reference("*/solver*.prototxt"))
LABELMAP_SEEDS = _read(FIXTURES / "io" / "labelmap.prototxt", FIXTURES / "quickstart" / "labelmap.prototxt") + [
    b"background\ncat\ndog\n", b"cat 1 Cat\ndog 2 Dog\n", b"cat:1\ndog:2\n"]
NAME_SIZE_SEEDS = [b"000001 500 353\n000002 375 500\n", b"1 480 640\n2 427 640\n3 640 480\n"]
WEIGHT_SEEDS = _read(FIXTURES / "io" / "tiny_ssd.caffemodel", FIXTURES / "solver" / "init.caffemodel")
STATE_SEEDS = _read(FIXTURES / "io" / "sgd_multistep_iter_10.solverstate", FIXTURES / "io" / "adam_iter_5.solverstate")
RECORD_SEEDS = _lmdb_values(FIXTURES / "data" / "lmdb" / "annoset_encoded_lmdb")[:3]
XML_SEEDS = _read(*sorted((FIXTURES / "data" / "lmdb" / "Dataset" / "Labels").glob("*.xml")))
JSON_SEEDS = [
    b'{"images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 200}], "categories": '
    b'[{"id": 1, "name": "cat"}], "annotations": [{"id": 7, "image_id": 1, "category_id": 1, '
    b'"bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0}]}',
    b'{"image": {"file_name": "a.jpg", "height": 100, "width": 200}, "annotation": '
    b'[{"category_id": 1, "bbox": [1.5, 2, 30, 40], "iscrowd": 1}, {"category_id": 2, "bbox": [0, 0, 5, 5]}]}',
]
CSV_SEEDS = [b"a.jpg,10,20,30,40,cat\na.jpg,1,2,3,4,dog\nb.jpg,,,,,\n", b'"c d.jpg",0.5,1,99.5,100,"cat"\n']
LIST_SEEDS = _read(FIXTURES / "data" / "lmdb" / "list.txt") + [b"Images/1.jpg 1\nImages/2.jpg 0\n",
                                                                b"1 10 20 30 40\n2 1.5 2.5 50 60\n"]
IMAGE_SEEDS = _read(FIXTURES / "data" / "lmdb" / "Dataset" / "Images" / "1.jpg")


def _png_seed():
    import cv2

    ok, buf = cv2.imencode(".png", (np.arange(48, dtype=np.uint8).reshape(4, 4, 3)))
    return buf.tobytes()


IMAGE_SEEDS.append(_png_seed())


@pytest.fixture(scope="module", autouse=True)
def warm_up(tmp_path_factory):
    """Each target once on its first seed: first calls into torch and OpenCV are slow, not the cases."""
    build_net(str(FIXTURES / "fuzz" / "layer_zoo.prototxt"))
    path = tmp_path_factory.mktemp("warm") / "image.jpg"
    path.write_bytes(IMAGE_SEEDS[0])
    read_images(str(path), IMAGE_SEEDS[0])
    decode_records(RECORD_SEEDS[0])


@pytest.fixture(scope="module")
def tiny_net():
    from protonet.net import Net

    return Net(str(FIXTURES / "io" / "tiny_ssd_deploy.prototxt"), phase="TEST")


# ------------------------------------------------------------------------------ the tests

def _tests(cases, reference_cases):
    """The fuzz tests with `cases` examples per target (the default suite and the slow one share them)."""

    @fuzz(mutated(NET_SEEDS), cases)
    def net_builder(tmp_path, data):
        Case(tmp_path).run(build_net, Case(tmp_path).file(data, "net.prototxt"))

    @fuzz(mutated(BIG_NET_SEEDS), reference_cases)
    def reference_nets(tmp_path, data):
        case = Case(tmp_path)
        path = case.file(data, "net.prototxt")
        case.run(read_nets, path)
        case.run(build_net, path)

    @fuzz(mutated(SOLVER_SEEDS), cases)
    def solvers(tmp_path, data):
        Case(tmp_path).run(read_solver, Case(tmp_path).file(data, "solver.prototxt"))

    @fuzz(mutated(LABELMAP_SEEDS), cases)
    def label_maps(tmp_path, data):
        Case(tmp_path).run(read_labelmaps, Case(tmp_path).file(data, "labelmap.prototxt"))

    @fuzz(mutated(NAME_SIZE_SEEDS), cases)
    def name_size_files(tmp_path, data):
        Case(tmp_path).run(read_name_size_file, Case(tmp_path).file(data, "name_size.txt"))

    @fuzz(mutated(WEIGHT_SEEDS), cases)
    def caffemodels(tmp_path, tiny_net, data):
        case = Case(tmp_path)
        path = case.file(data, "w.caffemodel")
        case.run(read_weights, path)
        case.run(load_weights, tiny_net, path)

    @fuzz(mutated(STATE_SEEDS), cases)
    def solverstates(tmp_path, data):
        Case(tmp_path).run(read_state, Case(tmp_path).file(data, "s.solverstate"))

    @fuzz(mutated(NET_SEEDS + LABELMAP_SEEDS + WEIGHT_SEEDS + STATE_SEEDS + SOLVER_SEEDS[:2]), cases)
    def inspect_any_file(tmp_path, data):
        Case(tmp_path).run(inspect, Case(tmp_path).file(data, "any.file"))

    @fuzz(mutated(RECORD_SEEDS), cases)
    def lmdb_records(tmp_path, data):
        Case(tmp_path).run(decode_records, data)

    @fuzz(mutated(XML_SEEDS), cases)
    def voc_xml(tmp_path, data):
        Case(tmp_path).run(read_voc_xml, Case(tmp_path).file(data, "a.xml"))

    @fuzz(mutated(JSON_SEEDS), cases)
    def annotation_json(tmp_path, data):
        Case(tmp_path).run(read_annotation_json, Case(tmp_path).file(data, "a.json"))

    @fuzz(mutated(CSV_SEEDS), cases)
    def csv_lists(tmp_path, data):
        Case(tmp_path).run(read_csv_list, Case(tmp_path).file(data, "list.csv"))

    @fuzz(mutated(LIST_SEEDS), cases)
    def list_files(tmp_path, data):
        Case(tmp_path).run(read_lists, Case(tmp_path).file(data, "list.txt"))

    @fuzz(mutated(IMAGE_SEEDS), cases)
    def images(tmp_path, data):
        Case(tmp_path).run(read_images, Case(tmp_path).file(data, "a.jpg"), data)

    return {name: fn for name, fn in locals().items() if callable(fn) and hasattr(fn, "hypothesis")}


for _name, _test in _tests(FAST_CASES, FAST_REFERENCE_CASES).items():
    globals()[f"test_fuzz_{_name}"] = _test
for _name, _test in _tests(SLOW_CASES, SLOW_REFERENCE_CASES).items():
    globals()[f"test_fuzz_{_name}_slow"] = pytest.mark.slow(_test)


def test_mutations_change_the_seeds():
    seed = b'layer { name: "a" convolution_param { num_output: 8 pad: 1 } }\n'
    assert mutate(seed, [("number", 0.0, b"2147483648")]).count(b"2147483648") == 1
    assert mutate(seed, [("number", 0.99, b"nan")]).endswith(b"pad: nan } }\n")
    assert mutate(seed, [("truncate", 0.5, 0)]) == seed[:len(seed) // 2]
    assert mutate(seed, [("dupline", 0.0, 1)]).count(b"layer") == 2
