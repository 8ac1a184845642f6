"""A corpus of bad inputs through the command line (issue 13): every reader and command given files a
careless hand or a broken disk makes. Each must end in one clear line (`protonet: error: ...`, exit 2,
no traceback) or, where the issue says so, in a warning and a normal exit.

The corpus is generated here from small templates; `CORPUS` lists (id, files, argv, exit status,
text the output must hold). Files are written once into a shared workspace; argv names them
relative to it (the commands run there)."""
import contextlib
import io
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

from protonet import caffe_pb2

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NET = ('name: "t"\n'
       'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {dims} }} }} }}\n'
       'layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
       'convolution_param {{ num_output: {num_output} kernel_size: {kernel} pad: {pad} stride: {stride} {conv} }} }}\n'
       'layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}\n{extra}')


def net(dims="1 dim: 3 dim: 16 dim: 16", num_output=4, kernel=3, pad=1, stride=1, conv="", extra=""):
    return NET.format(dims=dims, num_output=num_output, kernel=kernel, pad=pad, stride=stride, conv=conv,
                      extra=extra).encode()


def layer(text):
    return net(extra=text + "\n")


# ---- nets that must be refused when built: (id, file bytes, text of the error) ----------------------------------

BAD_NETS = [
    ("num_output_int32", net(num_output=2147483648), "num_output 2147483648"),
    ("num_output_huge", net(num_output=99999999), "more than a Caffe blob holds"),
    ("num_output_zero", net(num_output=0), "num_output must be given and > 0"),
    ("pad_int32", net(pad=2147483648), "pad 2147483648"),
    ("pad_huge", net(pad=99999999), "more than a Caffe blob holds"),
    ("kernel_int32", net(kernel=4294967295), "kernel_size 4294967295"),
    ("kernel_zero", net(kernel=0), "must be positive"),
    ("kernel_too_big", net(kernel=99, pad=0), "output size"),
    ("stride_zero", net(stride=0), "must be positive"),
    ("dim_int32", net(dims="2147483648 dim: 3"), "dim 2147483648"),
    ("dim_negative", net(dims="1 dim: -3 dim: 16 dim: 16"), "negative dimension"),
    ("input_huge", net(dims="1 dim: 3 dim: 100000 dim: 100000"), "[1, 3, 100000, 100000]"),
    ("no_channels", net(dims="1 dim: 0 dim: 16 dim: 16"), "no channels"),
    ("group", net(conv="group: 3"), "group 3 must divide"),
    ("weight_std_nan", net(conv='weight_filler { type: "gaussian" std: nan }'), "weight_filler.std nan"),
    ("weight_std_negative", net(conv='weight_filler { type: "gaussian" std: -1 }'), "std must not be negative"),
    ("uniform_min_max", net(conv='weight_filler { type: "uniform" min: 2 max: 1 }'), "greater than max"),
    ("filler_unknown", net(conv='weight_filler { type: "magic" }'), "unknown filler type 'magic'"),
    ("sparse_too_big", net(conv='weight_filler { type: "gaussian" sparse: 99 }'), "sparse 99"),
    ("prior_ratio_zero", layer('layer { name: "p" type: "PriorBox" bottom: "conv1" bottom: "data" top: "p" '
                               'prior_box_param { min_size: 4 aspect_ratio: 0 flip: true } }'), "aspect_ratio 0"),
    ("prior_ratio_negative", layer('layer { name: "p" type: "PriorBox" bottom: "conv1" bottom: "data" top: "p" '
                                   'prior_box_param { min_size: 4 aspect_ratio: -1 } }'), "aspect_ratio -1"),
    ("prior_min_zero", layer('layer { name: "p" type: "PriorBox" bottom: "conv1" bottom: "data" top: "p" '
                             'prior_box_param { min_size: 0 } }'), "min_size"),
    ("prior_max_below_min", layer('layer { name: "p" type: "PriorBox" bottom: "conv1" bottom: "data" top: "p" '
                                  'prior_box_param { min_size: 8 max_size: 4 } }'), "max_size"),
    ("prior_variance_zero", layer('layer { name: "p" type: "PriorBox" bottom: "conv1" bottom: "data" top: "p" '
                                  'prior_box_param { min_size: 4 variance: 0 } }'), "variance"),
    ("prior_offset_nan", layer('layer { name: "p" type: "PriorBox" bottom: "conv1" bottom: "data" top: "p" '
                               'prior_box_param { min_size: 4 offset: nan } }'), "offset nan"),
    ("pool_stride_zero", layer('layer { name: "p" type: "Pooling" bottom: "conv1" top: "p" '
                               'pooling_param { kernel_size: 2 stride: 0 } }'), "must be positive"),
    ("pool_kernel_big", layer('layer { name: "p" type: "Pooling" bottom: "conv1" top: "p" '
                              'pooling_param { kernel_size: 99 } }'), "larger than the padded bottom"),
    ("pool_stochastic", layer('layer { name: "p" type: "Pooling" bottom: "conv1" top: "p" '
                              'pooling_param { kernel_size: 2 pool: STOCHASTIC } }'), "STOCHASTIC"),
    ("log_base_one", layer('layer { name: "l" type: "Log" bottom: "conv1" top: "l" log_param { base: 1 } }'),
     "base must be"),
    ("exp_base_negative", layer('layer { name: "e" type: "Exp" bottom: "conv1" top: "e" exp_param { base: -2 } }'),
     "base must be"),
    ("lrn_even", layer('layer { name: "n" type: "LRN" bottom: "conv1" top: "n" lrn_param { local_size: 4 } }'),
     "local_size must be odd"),
    ("dropout_nan", layer('layer { name: "d" type: "Dropout" bottom: "conv1" top: "d" '
                          'dropout_param { dropout_ratio: nan } }'), "is NaN"),
    ("slice_points", layer('layer { name: "s" type: "Slice" bottom: "conv1" top: "a" top: "b" '
                           'slice_param { slice_point: 9 } }'), "slice points"),
    ("reshape", layer('layer { name: "r" type: "Reshape" bottom: "conv1" top: "r" '
                      'reshape_param { shape { dim: 7 dim: -1 } } }'), "cannot infer -1"),
    ("concat", layer('layer { name: "c" type: "Concat" bottom: "conv1" bottom: "data" top: "c" '
                     'concat_param { axis: 2 } }'), "does not match bottom 0"),
    ("crop", layer('layer { name: "c" type: "Crop" bottom: "data" bottom: "conv1" top: "c" '
                   'crop_param { axis: 2 offset: 9 } }'), "cannot be cropped"),
    ("tile_zero", layer('layer { name: "t2" type: "Tile" bottom: "conv1" top: "t2" tile_param { tiles: 0 } }'),
     "tiles must be"),
    ("permute_twice", layer('layer { name: "p" type: "Permute" bottom: "conv1" top: "p" '
                            'permute_param { order: 0 order: 0 } }'), "duplicate order"),
    ("argmax_top_k", layer('layer { name: "a" type: "ArgMax" bottom: "conv1" top: "a" '
                           'argmax_param { top_k: 99 axis: 1 } }'), "top_k 99"),
    ("ip_zero", layer('layer { name: "f" type: "InnerProduct" bottom: "conv1" top: "f" '
                      'inner_product_param { num_output: 0 } }'), "num_output must be given"),
    ("bn_learned", layer('layer { name: "b" type: "BatchNorm" bottom: "conv1" top: "b" param { lr_mult: 1 } }'),
     "BatchNorm statistics cannot be learned"),
    ("eltwise_shapes", layer('layer { name: "e" type: "Eltwise" bottom: "conv1" bottom: "data" top: "e" }'),
     "bottom 1 has shape"),
    ("detection_nms", layer('layer { name: "d" type: "DetectionOutput" bottom: "conv1" bottom: "conv1" '
                            'bottom: "conv1" top: "d" detection_output_param { num_classes: 2 '
                            'nms_param { nms_threshold: -1 } } }'), "nms_threshold"),
    ("unknown_type", layer('layer { name: "u" type: "Magic" bottom: "conv1" top: "u" }'), "unknown layer type"),
    ("unknown_bottom", layer('layer { name: "u" type: "ReLU" bottom: "nope" top: "u" }'), "unknown bottom blob"),
    ("two_producers", layer('layer { name: "u" type: "ReLU" bottom: "data" top: "conv1" }'),
     "produced by more than one layer"),
    ("python_layer", layer('layer { name: "py" type: "Python" bottom: "conv1" top: "py" '
                           'python_param { module: "os" layer: "system" } }'), "--allow-python-layers"),
    ("propagate_down", layer('layer { name: "u" type: "ReLU" bottom: "conv1" top: "u" propagate_down: true '
                             'propagate_down: false }'), "propagate_down"),
    ("inputs_without_shapes", b'input: "a" input: "b" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n',
     "2 inputs but 1 input_shape"),
    ("input_dims_short", b'input: "a" input_dim: 1 input_dim: 3 input_dim: 8\n', "1 inputs but 3 input_dim values"),
    ("mvn_eps_nan", layer('layer { name: "m" type: "MVN" bottom: "conv1" top: "m" mvn_param { eps: nan } }'),
     "eps nan"),
]

# ---- files no parser takes: (id, bytes, text of the error) ------------------------------------------------------

UNPARSABLE = [
    ("enum_not_utf8", net() + b'state { phase: TR\xffAIN }\n', ":5:16: Enum type"),
    ("enum_byte_after_colon", b'layer { name: "a" type: "Pooling" pooling_param { pool:\xff MAX } }\n', "not UTF-8"),
    ("name_not_utf8", b'layer { name: "a\xe9" type: "ReLU" }\n', "not UTF-8"),
    ("unknown_field", b'layer { name: "a" typo: "ReLU" }\n', 'no field named "typo"'),
    ("unclosed", net()[:-5], ":"),
    ("int_overflow", b"layer { name: 'a' convolution_param { num_output: 4294967296 } }\n", "out of range"),
    ("binary", bytes(range(256)), "binary"),
    ("empty", b"", "empty"),
    ("nested_deep", b"state { " * 80 + b"}" * 80, ":"),
    ("string_for_int", b'layer { name: "a" convolution_param { num_output: "four" } }\n', ":"),
]


def _blob(shape, values):
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(shape)
    blob.data.extend(values)
    return blob


def _caffemodel(layers, old=False):
    msg = caffe_pb2.NetParameter(name="t")
    for name, blobs in layers:
        lp = msg.layers.add(name=name) if old else msg.layer.add(name=name, type="Convolution")
        for b in blobs:
            lp.blobs.add().CopyFrom(b)
    return msg.SerializeToString()


def _good_weights():
    return _caffemodel([("conv1", [_blob([4, 3, 3, 3], np.ones(108)), _blob([4], np.zeros(4))])])


def _both_layer_fields():
    msg = caffe_pb2.NetParameter.FromString(_good_weights())
    msg.layers.add(name="old")
    return msg.SerializeToString()


# ---- caffemodels: (id, bytes, inspect's expected exit and text, `time --weights`'s expected exit and text) -------

CAFFEMODELS = [
    ("huge_length", b"\x0a\xff\xff\xff\xff\x0f", (2, "neither a text prototxt nor"), (2, "not a valid binary caffemodel")),
    ("wire_type_7", b"\x0f\x01", (2, "neither a text prototxt nor"), (2, "not a valid binary caffemodel")),
    ("field_zero", b"\x00\x01", (2, "neither a text prototxt nor"), (2, "not a valid binary caffemodel")),
    ("truncated", _good_weights()[:-7], (2, "neither a text prototxt nor"), (2, "not a valid binary caffemodel")),
    ("values_short", _caffemodel([("conv1", [_blob([4, 3, 3, 3], np.ones(100)), _blob([4], np.zeros(4))])]),
     (0, "needs 108 values, the file holds 100"), (2, "blob holds 100 values but its shape [4, 3, 3, 3] needs 108")),
    ("shape_huge", _caffemodel([("conv1", [_blob([1 << 40, 1 << 40], np.ones(4))])]),
     (0, "the file holds 4"), (2, "blob holds 4 values")),
    ("shape_mismatch", _caffemodel([("conv1", [_blob([4, 3, 5, 5], np.ones(300)), _blob([4], np.zeros(4))])]),
     (0, "[4,3,5,5]"), (2, "the net needs [4, 3, 3, 3]")),
    ("blob_count", _caffemodel([("conv1", [_blob([4, 3, 3, 3], np.ones(108))])]),
     (0, "1 with blobs"), (2, "the file has 1 blobs")),
    ("name_not_utf8", _good_weights().replace(b"conv1", b"conv\xff"), (2, "not UTF-8"),
     (0, "none of its 1 layers with weights")),
    ("no_matching_layer", _caffemodel([("other", [_blob([2], [1, 2])])]), (0, "1 with blobs"),
     (0, "none of its 1 layers with weights")),
    ("both_layer_fields", _both_layer_fields(), (2, "both 'layer' and 'layers'"), (2, "both 'layer' and 'layers'")),
    ("text_as_weights", net(), (0, "net t"), (2, "not a valid binary caffemodel")),
    ("jpeg_as_weights", open(os.path.join(FIXTURES, "data/lmdb/Dataset/Images/1.jpg"), "rb").read(),
     (2, "neither a text prototxt nor"), (2, "not a valid binary caffemodel")),
]


def _solverstate(history, iteration=10):
    state = caffe_pb2.SolverState(iter=iteration, learned_net="solver/none.caffemodel")
    for b in history:
        state.history.add().CopyFrom(b)
    return state.SerializeToString()


SOLVERSTATES = [
    ("history_short", _solverstate([_blob([2, 3], [1, 2, 3, 4, 5])]), (0, "the file holds 5 values")),
    ("truncated", _solverstate([_blob([2, 3], range(6))])[:-5], (2, "neither a text prototxt nor")),
    ("learned_name_not_utf8", _solverstate([]).replace(b"none", b"n\xffne"), (2, "not UTF-8")),
    ("garbage", b"\xff" * 64, (2, "1:1: Expected identifier or number, got \\xff")),
]

LABELMAPS = [
    ("name_not_utf8", b'item { name: "c\xe9t" label: 1 }\n', "not UTF-8"),
    ("label_text", b'item { name: "cat" label: "one" }\n', ":"),
    ("label_int64", b'item { name: "cat" label: 4294967296 }\n', "out of range"),
    ("unknown_field", b'item { nome: "cat" label: 1 }\n', "no field named"),
    ("binary", b"\x00\x01\x02\x03", "binary"),
]

XML_OK = open(os.path.join(FIXTURES, "data/lmdb/Dataset/Labels/1.xml"), "rb").read()
XMLS = [
    ("malformed", XML_OK[:-40], "not valid XML"),
    ("wrong_root", b"<annotations></annotations>", "expected <annotation>"),
    ("unknown_class", XML_OK.replace(b"<name>car</name>", b"<name>dragon</name>", 1), "unknown name 'dragon'"),
    ("nan_coordinate", XML_OK.replace(b"<xmin>297</xmin>", b"<xmin>nan</xmin>", 1), "not finite"),
    ("inf_coordinate", XML_OK.replace(b"<xmax>322</xmax>", b"<xmax>1e999</xmax>", 1), "not finite"),
    ("text_coordinate", XML_OK.replace(b"<ymin>275</ymin>", b"<ymin>abc</ymin>", 1), "not numbers"),
    ("bndbox_first", b"<annotation><size><width>5</width><height>5</height></size><object><bndbox><xmin>1</xmin>"
                     b"</bndbox><name>car</name></object></annotation>", "<bndbox> before <name>"),
    ("empty", b"", "not valid XML"),
    ("not_utf8", XML_OK.replace(b"cropped", b"cr\xffpped", 1), "not valid XML"),
    ("entity_bomb", b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a0 "xxxxxxxxxx">' + b"".join(
        b'<!ENTITY a%d "%s">' % (i, b"&a%d;" % (i - 1) * 10) for i in range(1, 10)) + b']><annotation>&a9;</annotation>',
     "amplification"),
    ("external_entity", b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                        b'<annotation>&x;</annotation>', "not valid XML"),
]

COCO = (b'{"images": [{"id": 1, "file_name": "1.jpg", "height": 500, "width": 500}], "categories": '
        b'[{"id": 1, "name": "car"}], "annotations": [{"id": 7, "image_id": 1, "category_id": 1, '
        b'"bbox": [10, 20, 30, 40], "area": 1200, "iscrowd": 0}]}')
PER_IMAGE = b'{"image": {"height": 500, "width": 500}, "annotation": [{"category_id": 1, "bbox": [1, 2, 30, 40]}]}'
JSONS = [
    ("invalid", PER_IMAGE[:-3], "not valid JSON"),
    ("a_list", b"[1, 2, 3]", "expected an object"),
    ("bbox_strings", PER_IMAGE.replace(b"[1, 2, 30, 40]", b'["1", "2", "3", "4"]'), "bbox must be 4 finite"),
    ("bbox_three", PER_IMAGE.replace(b"[1, 2, 30, 40]", b"[1, 2, 30]"), "bbox must be 4 finite"),
    ("bbox_nan", PER_IMAGE.replace(b"[1, 2, 30, 40]", b"[NaN, 2, 30, 40]"), "bbox must be 4 finite"),
    ("bbox_infinity", PER_IMAGE.replace(b"[1, 2, 30, 40]", b"[1, 2, Infinity, 40]"), "bbox must be 4 finite"),
    ("no_category", PER_IMAGE.replace(b'"category_id": 1, ', b""), "needs 'category_id' and 'bbox'"),
    ("unknown_category", PER_IMAGE.replace(b'"category_id": 1', b'"category_id": 9'), "unknown name '9'"),
    ("deep", b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    ("not_utf8", PER_IMAGE.replace(b'"image"', b'"im\xffage"'), "not UTF-8"),
    ("negative_size", PER_IMAGE.replace(b'"height": 500', b'"height": -5'), "no valid image width/height"),
    ("coco_images_dict", COCO.replace(b'"images": [{', b'"images": {"a": {').replace(b'500}]', b'500}}'),
     "'images' must be a list"),
    ("coco_missing_image", COCO.replace(b'"image_id": 1', b'"image_id": 5'), "names image 5"),
    ("coco_id_text", COCO.replace(b'"id": 7', b'"id": "seven"'), "annotations[0].id must be an integer"),
    ("coco_unknown_category", COCO.replace(b'"category_id": 1', b'"category_id": 3').replace(
        b'"id": 1, "name": "car"', b'"id": 3, "name": "dragon"'), "category 3 (dragon) is not in the label map"),
]

CSVS = [
    ("five_fields", b"Images/1.jpg,1,2,3,car\n", "expected path,x1,y1,x2,y2,class"),
    ("text_coordinate", b"Images/1.jpg,1,two,3,4,car\n", "box coordinates are not numbers"),
    ("unknown_class", b"Images/1.jpg,1,2,3,4,dragon\n", "unknown name 'dragon'"),
    ("nan_coordinate", b"Images/1.jpg,nan,2,3,4,car\n", "not finite"),
    ("not_utf8", b"Images/1.jpg,1,2,3,4,c\xe4r\n", "not UTF-8"),
    ("nul", b"Images/1.jpg,1,2,3,4,car\x00\n", "NUL"),
    ("huge_field", b"Images/1.jpg,1,2,3,4," + b"c" * 200000 + b"\n", "not a CSV row"),
]

LISTS = [
    ("not_utf8", b"Images/1.jpg Labels/1.x\xffml\n", "not UTF-8"),
    ("three_fields", b"Images/1.jpg Labels/1.xml extra\n", "expected 'IMAGE LABELFILE'"),
    ("one_field", b"Images/1.jpg\n", "expected 'IMAGE LABELFILE'"),
    ("missing_image", b"Images/404.jpg Labels/1.xml\n", "could not be read"),
    ("broken_image", b"broken.jpg Labels/1.xml\n", "could not be read"),
]

NAME_SIZES = [
    ("text_height", b"1 abc 500\n", "height and width must be integers"),
    ("two_fields", b"1 500\n", "expected 'NAME HEIGHT WIDTH'"),
    ("zero_width", b"1 500 0\n", "must be positive"),
    ("huge", b"1 500 99999999999\n", "below 2^31"),
    ("not_utf8", b"\xff 500 500\n", "not UTF-8"),
]


def _cases():
    """(id, {file: bytes}, argv, exit status, text of the output)."""
    cases = []
    for name, data, text in BAD_NETS:
        f = {f"nets/{name}.prototxt": data}
        cases.append((f"net-time-{name}", f, ["time", "--model", f"nets/{name}.prototxt", "--iterations", "1"], 2, text))
        cases.append((f"net-shapes-{name}", f, ["inspect", f"nets/{name}.prototxt", "--shapes"], 2, text))
        cases.append((f"net-test-{name}", f, ["test", "--model", f"nets/{name}.prototxt", "--weights", "good.caffemodel",
                                              "--iterations", "1"], 2, text))
    for name, data, text in UNPARSABLE:
        f = {f"text/{name}.prototxt": data}
        cases.append((f"text-inspect-{name}", f, ["inspect", f"text/{name}.prototxt"], 2, text))
        if name != "empty":  # an empty net is a net (Caffe times it too)
            cases.append((f"text-time-{name}", f, ["time", "--model", f"text/{name}.prototxt"], 2, text))
        cases.append((f"text-train-{name}", f, ["train", "--solver", f"text/{name}.prototxt"], 2, ""))
    for name, data, (code, text), (weights_code, weights_text) in CAFFEMODELS:
        f = {f"models/{name}.caffemodel": data}
        cases.append((f"caffemodel-inspect-{name}", f, ["inspect", f"models/{name}.caffemodel"], code, text))
        cases.append((f"caffemodel-weights-{name}", f, ["time", "--model", "good.prototxt", "--weights",
                                                        f"models/{name}.caffemodel", "--iterations", "1"],
                      weights_code, weights_text))
        if weights_code == 0:
            cases.append((f"caffemodel-strict-{name}", f, ["time", "--model", "good.prototxt", "--weights",
                                                           f"models/{name}.caffemodel", "--iterations", "1",
                                                           "--strict-weights"], 2, "--strict-weights"))
    for name, data, (code, text) in SOLVERSTATES:
        f = {f"states/{name}.solverstate": data}
        cases.append((f"solverstate-inspect-{name}", f, ["inspect", f"states/{name}.solverstate"], code, text))
        cases.append((f"solverstate-resume-{name}", f, ["train", "--solver", "solver/sgd_multistep/solver.prototxt",
                                                        "--snapshot", f"states/{name}.solverstate"], 2, ""))
    for name, data, text in LABELMAPS:
        f = {f"labelmaps/{name}.prototxt": data}
        cases.append((f"labelmap-inspect-{name}", f, ["inspect", f"labelmaps/{name}.prototxt"], 2, text))
        cases.append((f"labelmap-eval-{name}", f, ["eval", "--model", "eval/map_test.prototxt", "--iterations", "1",
                                                   "--labelmap", f"labelmaps/{name}.prototxt"], 2, text))
        cases.append((f"labelmap-annoset-{name}", f, _annoset("list_ok.txt", "xml", f"labelmaps/{name}.prototxt",
                                                              f"db/lm-{name}"), 2, text))
    for name, data, text in XMLS:
        f = {f"Labels/{name}.xml": data, f"lists/xml-{name}.txt": f"Images/1.jpg Labels/{name}.xml\n".encode()}
        cases.append((f"xml-{name}", f, _annoset(f"lists/xml-{name}.txt", "xml", "labelmap.prototxt",
                                                 f"db/xml-{name}"), 2, text))
    for name, data, text in JSONS:
        f = {f"Labels/{name}.json": data, f"lists/json-{name}.txt": f"Images/1.jpg Labels/{name}.json\n".encode()}
        cases.append((f"json-{name}", f, _annoset(f"lists/json-{name}.txt", "json", "labelmap.prototxt",
                                                  f"db/json-{name}"), 2, text))
        if name in ("coco_images_dict", "coco_missing_image", "coco_id_text", "invalid", "deep", "not_utf8"):
            cases.append((f"coco-list-{name}", f, ["create-list", "coco", ".", f"lists/coco-{name}.txt",
                                                   "--instances", f"Labels/{name}.json"], 2, text.split(" (")[0]
                          if "category" not in text else ""))
    for name, data, text in CSVS:
        f = {f"lists/{name}.csv": data}
        cases.append((f"csv-{name}", f, _annoset(f"lists/{name}.csv", "csv", "labelmap.prototxt", f"db/csv-{name}"),
                      2, text))
    for name, data, text in LISTS:
        f = {f"lists/list-{name}.txt": data}
        cases.append((f"list-annoset-{name}", f, _annoset(f"lists/list-{name}.txt", "xml", "labelmap.prototxt",
                                                          f"db/list-{name}"), 2, text))
    for name, data, text in NAME_SIZES:
        f = {f"eval/ns-{name}.txt": data, f"eval/ns-{name}.prototxt": _eval_net(f"eval/ns-{name}.txt")}
        cases.append((f"name-size-eval-{name}", f, ["eval", "--model", f"eval/ns-{name}.prototxt"], 2, text))
    cases += _data_cases() + _tool_cases() + _flag_cases()
    return cases


def _annoset(listfile, label_type, labelmap, out):
    return ["create-annoset", ".", listfile, out, "--anno-type", "detection", "--label-type", label_type,
            "--label-map-file", labelmap]


def _eval_net(name_size):
    text = open(os.path.join(FIXTURES, "eval", "map_test.prototxt")).read()
    return text.replace("evaluate_difficult_gt: false", f'evaluate_difficult_gt: false name_size_file: "{name_size}"'
                        ).encode()


DATA_NET = open(os.path.join(FIXTURES, "data", "annotated_data_no_sampler.prototxt"), "rb").read().replace(
    b'"lmdb/labelmap.prototxt"', b'"labelmap.prototxt"')


def _data_cases():
    bad_box = DATA_NET.replace(b"lmdb/annoset_encoded_lmdb", b"lmdb_bad_box")
    corrupt = DATA_NET.replace(b"lmdb/annoset_encoded_lmdb", b"lmdb_corrupt")
    missing = DATA_NET.replace(b"lmdb/annoset_encoded_lmdb", b"no_such_lmdb")
    not_lmdb = DATA_NET.replace(b"lmdb/annoset_encoded_lmdb", b"Labels")
    files = {"data/bad_box.prototxt": bad_box, "data/corrupt.prototxt": corrupt, "data/missing.prototxt": missing,
             "data/not_lmdb.prototxt": not_lmdb}
    time = ["time", "--phase", "TRAIN", "--iterations", "1", "--model"]
    return [("data-bad-box-warning", files, time + ["data/bad_box.prototxt"], 0, "skipping bad record"),
            ("data-bad-box-strict", files, time + ["data/bad_box.prototxt", "--strict-data"], 2, "--strict-data"),
            ("data-corrupt", files, time + ["data/corrupt.prototxt"], 2, "no record decodes"),
            ("data-corrupt-strict", files, time + ["data/corrupt.prototxt", "--strict-data"], 2, "does not parse"),
            ("data-missing", files, time + ["data/missing.prototxt"], 2, "no such LMDB"),
            ("data-not-lmdb", files, time + ["data/not_lmdb.prototxt"], 2, "LMDB"),
            ("detect-broken-image", {}, ["detect", "--model", "deploy.prototxt", "--weights", "deploy.caffemodel",
                                         "broken.jpg", "Images/1.jpg", "--out", "detect-out"], 2, "1 of 2 images"),
            ("name-size-broken-image", {}, ["create-list", "name-size", ".", "lists/list-broken_image.txt",
                                            "ns_out.txt"], 2, "cannot read image"),
            ("eval-missing-label", {"labelmaps/short.prototxt": b'item { name: "bg" label: 0 } item { name: "a" '
                                                                b'label: 1 }'},
             ["eval", "--model", "eval/map_test.prototxt", "--iterations", "1", "--labelmap",
              "labelmaps/short.prototxt"], 2, "no item for label 2")]


def _tool_cases():
    """The commands added beside Caffe's tools: convert-imageset, compute-image-mean, draw-net, parse-log,
    plot-log, upgrade, extract-features."""
    files = {"tools/nonutf.txt": b"Images/1.jpg 0\nImages/\xff.jpg 1\n", "tools/biglabel.txt": b"Images/1.jpg 99999999999\n",
             "tools/broken.txt": b"broken.jpg 0\nImages/1.jpg 1\n", "tools/garbage.log": bytes(range(256)) * 8,
             "tools/text.log": b"I1201 this is not a training log\n"}
    convert = ["convert-imageset", "."]
    return [("convert-nonutf", files, convert + ["tools/nonutf.txt", "db/ci1"], 2, "tools/nonutf.txt:2: not UTF-8"),
            ("convert-biglabel", files, convert + ["tools/biglabel.txt", "db/ci2"], 2, "does not fit in a 32-bit"),
            ("convert-broken-image", files, convert + ["tools/broken.txt", "db/ci3"], 2, "could not be read"),
            ("convert-no-root", files, ["convert-imageset", "nope", "tools/broken.txt", "db/ci4"], 2, "nope"),
            ("mean-not-lmdb", files, ["compute-image-mean", "Images"], 2, "LMDB"),
            ("mean-corrupt", files, ["compute-image-mean", "lmdb_corrupt"], 2, "does not parse"),
            ("mean-missing", files, ["compute-image-mean", "nope"], 2, "no such LMDB"),
            ("draw-binary", files, ["draw-net", "tools/garbage.log", "tools/out.dot"], 2, "binary"),
            ("draw-missing", files, ["draw-net", "nope.prototxt", "tools/out.dot"], 2, "nope.prototxt"),
            ("parse-log-garbage", files, ["parse-log", "tools/garbage.log", "tools/parsed"], 2, "not a training log"),
            ("parse-log-text", files, ["parse-log", "tools/text.log", "tools/parsed"], 2, "not a training log"),
            ("plot-log-garbage", files, ["plot-log", "tools/garbage.log", "tools/plot.png"], 2, "not a training log"),
            ("upgrade-garbage", files, ["upgrade", "tools/garbage.log", "tools/up.prototxt"], 2, "neither"),
            ("features-bad-net", files, ["extract-features", "good.caffemodel", "nets/num_output_int32.prototxt",
                                         "conv1", "tools/feat", "1"], 2, "num_output 2147483648")]


def _flag_cases():
    return [("max-memory-text", {}, ["time", "--model", "good.prototxt", "--max-memory", "lots"], 2, "memory size"),
            ("max-memory-negative", {}, ["time", "--model", "good.prototxt", "--max-memory", "-5G"], 2, "memory size"),
            ("max-memory-small", {}, ["time", "--model", "good.prototxt", "--max-memory", "2K"], 2, "memory limit"),
            ("max-memory-inspect", {}, ["inspect", "good.prototxt", "--shapes", "--max-memory", "1K"], 2,
             "memory limit"),
            ("detect-mean", {}, ["detect", "--model", "good.prototxt", "--weights", "good.caffemodel", "--mean",
                                 "a,b", "Images/1.jpg", "--out", "o"], 2, "not a list of numbers"),
            ("missing-model", {}, ["time", "--model", "nope.prototxt"], 2, "nope.prototxt: no such file"),
            ("directory-model", {}, ["time", "--model", "Images"], 2, "is a directory"),
            ("missing-weights", {}, ["test", "--model", "good.prototxt", "--weights", "nope.caffemodel"], 2,
             "nope.caffemodel: no such file")]


CORPUS = _cases()


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The files every case names: fixtures (images, labels, LMDBs, solver) and the corpus."""
    import lmdb

    root = tmp_path_factory.mktemp("bad_inputs")
    shutil.copytree(os.path.join(FIXTURES, "data", "lmdb", "Dataset", "Images"), root / "Images")
    shutil.copytree(os.path.join(FIXTURES, "data", "lmdb", "Dataset", "Labels"), root / "Labels")
    shutil.copy(os.path.join(FIXTURES, "data", "lmdb", "labelmap.prototxt"), root / "labelmap.prototxt")
    shutil.copytree(os.path.join(FIXTURES, "solver"), root / "solver")
    shutil.copytree(os.path.join(FIXTURES, "eval"), root / "eval")
    (root / "good.prototxt").write_bytes(net())
    (root / "good.caffemodel").write_bytes(_good_weights())
    shutil.copy(os.path.join(FIXTURES, "quickstart", "tiny_ssd_deploy.prototxt"), root / "deploy.prototxt")
    from protonet.net import Net

    Net(str(root / "deploy.prototxt"), phase="TEST").save_weights(root / "deploy.caffemodel")
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "list_ok.txt").write_text("Images/1.jpg Labels/1.xml\n")
    src = os.path.join(FIXTURES, "data", "lmdb", "annoset_encoded_lmdb")
    for name, edit in (("lmdb_bad_box", _nan_box), ("lmdb_corrupt", lambda v: b"\x08garbage")):
        shutil.copytree(src, root / name)
        env = lmdb.open(str(root / name), map_size=1 << 24)
        with env.begin(write=True) as txn:
            for key, value in list(txn.cursor()):
                txn.put(key, edit(bytes(value)) if name == "lmdb_corrupt" or key.startswith(b"00000001") else value)
        env.close()
    for _, files, _, _, _ in CORPUS:
        for rel, data in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return root


def _nan_box(value):
    anno = caffe_pb2.AnnotatedDatum.FromString(value)
    anno.annotation_group[0].annotation[0].bbox.xmin = float("nan")
    return anno.SerializeToString()


def protonet(argv, cwd, in_process=True):
    """`protonet ARGV` run in `cwd`: in this process (no start-up cost), or as a process of its own
    (what data workers log goes to its stderr then, as it does for a user)."""
    if not in_process:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        run = subprocess.run([sys.executable, "-m", "protonet", *argv], cwd=cwd, capture_output=True, text=True,
                             env=env, timeout=300)
        return types.SimpleNamespace(returncode=run.returncode, stdout=run.stdout, stderr=run.stderr)
    from protonet.cli import main

    out, err = io.StringIO(), io.StringIO()
    here, code = os.getcwd(), 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(argv)
            except SystemExit as exc:
                code = exc.code or 0
    finally:
        os.chdir(here)
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def test_the_corpus_is_large():
    assert len(CORPUS) > 200
    assert len({case[0] for case in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case_id, files, argv, code, text", CORPUS, ids=[c[0] for c in CORPUS])
def test_bad_input_gives_one_clear_line(workspace, case_id, files, argv, code, text):
    run = protonet(argv, workspace, in_process=not case_id.startswith(("data-", "mean-")))
    output = run.stdout + run.stderr
    assert "Traceback" not in output, output
    assert run.returncode == code, output
    errors = [line for line in run.stderr.splitlines() if line.startswith("protonet: error:")]
    if code == 2:
        assert len(errors) == 1 and run.stderr.rstrip().splitlines()[-1] == errors[0], run.stderr
        assert text in errors[0], errors[0]
    else:
        assert not errors and text in output, output
