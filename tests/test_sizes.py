"""Sizes checked before anything is allocated, values Caffe's types cannot hold, nonsense parameters
refused naming the layer and field (issue 13, item 3)."""
import contextlib
import io
import math
import pathlib
import resource
import subprocess
import sys

import pytest
import torch

from protonet import caffe_pb2, sizes
from protonet.errors import ProtonetError
from protonet.io.prototxt import count_layer_blocks, parse_prototxt
from protonet.layers.base import NetContext
from protonet.net import Net

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
INPUT = 'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {dims} }} }} }}\n'
CONV = ('layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
        'convolution_param {{ num_output: {num_output} kernel_size: {kernel} pad: {pad} stride: {stride} }} }}\n')


def net_text(dims="1 dim: 3 dim: 32 dim: 32", num_output=8, kernel=3, pad=1, stride=1, extra=""):
    return (INPUT.format(dims=dims) + CONV.format(num_output=num_output, kernel=kernel, pad=pad, stride=stride)
            + extra)


def build(text, phase="TEST", **ctx):
    return Net(parse_prototxt(text, caffe_pb2.NetParameter()), phase=phase, ctx=NetContext(**ctx))


def refused(text, *words, phase="TEST", **ctx):
    with pytest.raises(ProtonetError) as info:
        build(text, phase=phase, **ctx)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    return message


def _peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------ Caffe's int limits

@pytest.mark.parametrize("field, text", [
    ("convolution_param.num_output", net_text(num_output=2147483648)),
    ("convolution_param.pad 2147483648", net_text(pad=2147483648)),
    ("convolution_param.kernel_size 4294967295", net_text(kernel=4294967295)),
    ("input_param.shape[0].dim", net_text(dims="2147483648 dim: 3")),
])
def test_values_over_int32_are_refused_naming_layer_and_field(field, text):
    refused(text, field, "2147483647")


def test_blob_sizes_over_int_max_are_refused_before_allocation():
    before = _peak_rss()
    message = refused(net_text(num_output=99999999), "layer conv1", "[99999999, 3, 3, 3]", "2699999973",
                      "INT_MAX")
    assert "GiB" in message
    refused(net_text(pad=99999999), "layer conv1", "top 'conv1'", "[1, 8, 200000028, 200000028]")
    refused(net_text(dims="1 dim: 3 dim: 100000 dim: 100000"), "layer data", "[1, 3, 100000, 100000]",
            "30000000000")
    refused(net_text(dims="1 dim: -3 dim: 32 dim: 32"), "layer data", "negative dimension")
    assert _peak_rss() - before < 256 << 20


def test_time_on_a_huge_input_is_one_line(tmp_path):
    from protonet.cli import main

    model = tmp_path / "big.prototxt"
    model.write_text(net_text(dims="1 dim: 3 dim: 100000 dim: 100000"))
    err = io.StringIO()
    before = _peak_rss()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        with pytest.raises(SystemExit) as info:
            main(["time", "--model", str(model), "--iterations", "1"])
    assert info.value.code == 2
    lines = [line for line in err.getvalue().splitlines() if line.startswith("protonet:")]
    assert lines == [lines[-1]] and "[1, 3, 100000, 100000]" in lines[0] and "111.8 GiB" in lines[0]
    assert "Traceback" not in err.getvalue()
    assert _peak_rss() - before < 256 << 20


# ------------------------------------------------------------------------------ the memory budget

def test_a_net_over_the_memory_limit_names_the_layer_shape_and_bytes():
    message = refused(net_text(dims="8 dim: 3 dim: 256 dim: 256", num_output=64), "layer conv1", "top 'conv1'",
                      "[8, 64, 256, 256]", "(134217728 bytes)", "memory limit", max_memory=100 << 20)
    assert "see --max-memory" in message
    net = build(net_text(dims="8 dim: 3 dim: 256 dim: 256", num_output=64), max_memory=200 << 20)
    assert net.blob_shapes["conv1"] == (8, 64, 256, 256)


def test_weights_are_reserved_before_they_are_filled():
    text = net_text(dims="1 dim: 1024 dim: 4 dim: 4", num_output=4096, kernel=3)  # 37.7M weights: 151 MB
    refused(text, "layer conv1 weight", "[4096, 1024, 3, 3]", max_memory=64 << 20)


def test_many_layers_are_refused_before_the_file_is_parsed(tmp_path):
    path = tmp_path / "many.prototxt"
    relu = 'layer {{\n  name: "r{0}"\n  type: "ReLU"\n  bottom: "data"\n  top: "data"\n}}\n'
    path.write_text(INPUT.format(dims="1 dim: 3") + "".join(relu.format(i) for i in range(3000))
                    + "# layer { name: 'commented out' }\n")
    assert count_layer_blocks(path) == 3001
    with pytest.raises(ProtonetError, match=r"many.prototxt: 3001 layers .* Python objects"):
        Net(str(path), ctx=NetContext(max_memory=3001 * sizes.LAYER_BYTES - 1))
    assert len(Net(str(path), ctx=NetContext(max_memory=64 << 20)).layers) == 3001


def test_parse_bytes_and_format_bytes():
    assert sizes.parse_bytes("64G") == 64 << 30
    assert sizes.parse_bytes("1.5GiB") == 3 << 29
    assert sizes.parse_bytes("512MB") == 512 << 20
    assert sizes.parse_bytes("1000") == 1000
    for bad in ("abc", "-1", "0", "nan", ""):
        with pytest.raises(ProtonetError, match="memory size"):
            sizes.parse_bytes(bad)
    assert sizes.format_bytes(1536) == "1.5 KiB" and sizes.format_bytes(10) == "10 bytes"
    assert sizes.machine_memory() > 1 << 28


def test_max_memory_flag(tmp_path):
    from protonet.cli import main

    model = tmp_path / "net.prototxt"
    model.write_text(net_text())
    for argv, code, text in ((["inspect", str(model), "--shapes", "--max-memory", "1K"], 2, "memory limit (1.0 KiB"),
                             (["inspect", str(model), "--shapes", "--max-memory", "lots"], 2, "memory size 'lots'"),
                             (["inspect", str(model), "--shapes", "--max-memory", "1G"], 0, "conv1")):
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                main(argv)
                status = 0
            except SystemExit as exc:
                status = exc.code
        assert status == code and text in err.getvalue() + out.getvalue()


@pytest.mark.slow
def test_a_200_mb_prototxt_is_refused_without_growing(tmp_path):
    """2.7 million layers: the file is counted, not parsed, and refused in one line (it grew to 15 GB)."""
    path = tmp_path / "huge.prototxt"
    relu = 'layer {{\n  name: "relu{0}"\n  type: "ReLU"\n  bottom: "data"\n  top: "data"\n}}\n'
    with open(path, "w") as fh:
        fh.write(INPUT.format(dims="1 dim: 3 dim: 8 dim: 8"))
        for start in range(0, 2_740_000, 10_000):
            fh.write("".join(relu.format(i) for i in range(start, start + 10_000)))
    assert path.stat().st_size > 200e6
    run = subprocess.run([sys.executable, "-m", "protonet", "time", "--model", str(path), "--max-memory", "16G"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "2740001 layers" in run.stderr and "Traceback" not in run.stderr
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 < 2 << 30


def test_a_prototxt_is_parsed_line_by_line(tmp_path):
    """A large blob written as text does not sit in memory as text or as a list of lines while parsed."""
    path = tmp_path / "blob.prototxt"
    with open(path, "w") as fh:
        fh.write('name: "b"\nlayer { name: "x" type: "Input" top: "d" input_param { shape { dim: 1 } }\n blobs {\n')
        fh.write("data: 0.125\n" * 500_000)
        fh.write("} }\n")
    from protonet.io.prototxt import read_prototxt

    before = _peak_rss()
    net = read_prototxt(path, caffe_pb2.NetParameter)
    assert len(net.layer[0].blobs[0].data) == 500_000
    assert _peak_rss() - before < 40 << 20  # the 6 MB text as lines would take about 40 MB


# ------------------------------------------------------------------------------ nonsense parameters

PRIOR = ('layer {{ name: "prior" type: "PriorBox" bottom: "conv1" bottom: "data" top: "prior" '
         'prior_box_param {{ min_size: {min_size} {extra} }} }}\n')


@pytest.mark.parametrize("extra, words", [
    ("aspect_ratio: 0 flip: true", ("layer prior", "aspect_ratio 0")),
    ("aspect_ratio: -2", ("layer prior", "aspect_ratio -2")),
    ("aspect_ratio: inf", ("layer prior", "aspect_ratio inf")),
    ("variance: 0.1 variance: 0.1 variance: 0 variance: 0.2", ("layer prior", "variance")),
    ("max_size: inf", ("layer prior", "max_size")),
    ("offset: nan", ("layer prior", "prior_box_param.offset nan", "NaN")),
])
def test_prior_box_nonsense_is_refused(extra, words):
    refused(net_text() + PRIOR.format(min_size=4, extra=extra), *words)


@pytest.mark.parametrize("filler, words", [
    ('type: "gaussian" std: nan', ("layer conv1", "weight_filler.std nan", "NaN")),
    ('type: "gaussian" std: -1', ("layer conv1 weight", "std must not be negative")),
    ('type: "uniform" min: 1 max: -1', ("layer conv1 weight", "min 1 is greater than max -1")),
    ('type: "constant" value: inf', ("layer conv1 weight", "value is inf")),
    ('type: "gaussian" sparse: 100', ("layer conv1 weight", "sparse 100")),
])
def test_filler_nonsense_is_refused(filler, words):
    text = net_text().replace("stride: 1 }", "stride: 1 weight_filler { %s } }" % filler)
    refused(text, *words)


@pytest.mark.parametrize("layer, words", [
    (net_text(stride=0), ("layer conv1", "stride")),
    (net_text(dims="1 dim: 0 dim: 8 dim: 8"), ("layer conv1", "no channels")),
    (net_text() + 'layer { name: "p" type: "Pooling" bottom: "conv1" top: "p" pooling_param { kernel_size: 2 '
                  'stride: 0 } }', ("layer p", "stride")),
    (net_text() + 'layer { name: "l" type: "Log" bottom: "conv1" top: "l" log_param { base: 1 } }',
     ("layer l", "base")),
])
def test_zero_strides_and_other_nonsense_are_refused(layer, words):
    refused(layer, *words)


def test_exp_with_a_huge_shift_is_infinite_as_in_caffe():
    net = build(net_text() + 'layer { name: "e" type: "Exp" bottom: "conv1" top: "e" exp_param { shift: 1000 } }')
    assert math.isinf(net.layers["e"].outer_scale)


def test_lrn_window_wider_than_the_channels():
    """Caffe sums the channels that are there; torch's pooling refused a window wider than the input."""
    x = torch.rand(2, 4, 3, 3)
    for size in (5, 7, 99999999):
        net = build(INPUT.format(dims="2 dim: 4 dim: 3 dim: 3") + 'layer { name: "n" type: "LRN" bottom: "data" '
                    'top: "n" lrn_param { local_size: %d alpha: 0.5 } }' % size)
        pre = (size - 1) // 2
        sums = torch.stack([(x[:, max(0, c - pre):c + pre + 1] ** 2).sum(1) for c in range(4)], 1)
        expected = x * (1 + 0.5 / size * sums) ** -0.75
        torch.testing.assert_close(net(data=x)["n"], expected)
