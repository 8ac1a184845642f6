"""Weights in from PyTorch: import-weights writes a .caffemodel from a state_dict and a mapping
file (torch.load(weights_only=True) only); the worked example maps torchvision's ssd300_vgg16
keys onto the Caffe SSD300 net with equal trunk outputs."""
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.export.import_weights import import_weights
from protonet.io.prototxt import write_prototxt
from protonet.net import Net

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "import_weights" / "torchvision_ssd300_vgg16.py"
SSD300 = ROOT / "tests" / "fixtures" / "net" / "ssd300_vgg16_voc_deploy.prototxt"

SMALL_NET = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 5 } }
"""


@pytest.fixture
def small(tmp_path):
    net = caffe_pb2.NetParameter()
    text_format.Merge(SMALL_NET, net)
    path = tmp_path / "small.prototxt"
    write_prototxt(net, path)
    return path


def torch_twin():
    torch.manual_seed(0)
    twin = torch.nn.Module()
    twin.features = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
    twin.head = torch.nn.Linear(4 * 8 * 8, 5)
    with torch.no_grad():
        twin.features[1].running_mean.normal_()
        twin.features[1].running_var.uniform_(0.5, 2)
        twin.features[1].weight.normal_()
        twin.features[1].bias.normal_()
    return twin.eval()


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


MAPPING = """
# a whole layer: KEY.weight, KEY.bias
conv.0   features.0.weight_hw   permute:0,1,3,2   # stored with its kernel axes swapped
conv.1   features.0.bias
bn       features.1             # BatchNorm: running_mean, running_var, factor 1
scale.0  features.1.weight
scale.1  features.1.bias
fc.0     head.weight_t          transpose
fc.1     head.bias
"""


def saved_twin(tmp_path):
    """The twin's state_dict with two tensors stored in other layouts."""
    twin = torch_twin()
    state = twin.state_dict()
    state["features.0.weight_hw"] = state.pop("features.0.weight").permute(0, 1, 3, 2).contiguous()
    state["head.weight_t"] = state.pop("head.weight").t().contiguous()
    torch.save(state, tmp_path / "twin.pth")
    return twin


def test_import_weights_gives_the_torch_model(small, tmp_path):
    twin = saved_twin(tmp_path)
    out = tmp_path / "small.caffemodel"
    net, done = import_weights(small, tmp_path / "twin.pth", write(tmp_path, "map.txt", MAPPING), out)
    assert len(done) == 9
    loaded = Net(small, weights=str(out)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ours = loaded(x, outputs="fc")
        theirs = twin.head(twin.features(x).flatten(1))
    # Caffe's BatchNorm eps is 1e-5 as torch's; Scale then applies the affine part.
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-5)
    assert loaded.layers["bn"].blobs[2].item() == 1.0


@pytest.mark.parametrize("mapping,error", [
    ("fc.0 head.weight_t", r"map.txt:1: 'head.weight_t' gives shape \[256, 5\], blob 0 of layer fc has shape "
                           r"\[5, 256\]"),
    ("conv features.0", r"map.txt:1: no key 'features.0.weight' in the state_dict"),
    ("nope.0 features.0.weight", r"map.txt:1: no layer 'nope' in the net"),
    ("conv.2 features.0.weight", r"map.txt:1: layer conv has 2 blobs, no blob 2"),
    ("conv.0 features.0.weight rotate", r"map.txt:1: unknown transform 'rotate'"),
    ("conv", r"map.txt:1: expected 'LAYER\[.INDEX\] KEY \[transforms\]', got 'conv'"),
    ("conv.0 features.0.weight_hw transpose", r"map.txt:1: transpose: transpose needs a matrix, the tensor has 4 axes"),
    ("conv.0 features.0.bias", r"map.txt:1: 'features.0.bias' gives shape \[4\], blob 0 of layer conv has shape "
                               r"\[4, 3, 3, 3\]"),
    ("conv.1 features.0.bias", r"no mapping for 8 blobs: conv.0, bn.0, bn.1, bn.2, scale.0, scale.1, fc.0, fc.1"),
])
def test_mapping_errors_name_the_line(small, tmp_path, mapping, error):
    saved_twin(tmp_path)
    path = write(tmp_path, "map.txt", mapping + "\n")
    with pytest.raises(ProtonetError, match=error):
        import_weights(small, tmp_path / "twin.pth", path, tmp_path / "o.caffemodel")


def test_unmapped_blobs_may_keep_their_fillers(small, tmp_path):
    saved_twin(tmp_path)
    net, done = import_weights(small, tmp_path / "twin.pth", write(tmp_path, "map.txt", "conv.1 features.0.bias\n"),
                               tmp_path / "o.caffemodel", allow_unmapped=True)
    assert sorted(done) == [("conv", 1)]


class NotATensor:
    pass


def test_only_weights_are_loaded(small, tmp_path):
    """A pickle that holds an object of some class is refused: torch.load(weights_only=True)."""
    torch.save({"conv.weight": torch.zeros(4, 3, 3, 3), "evil": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ProtonetError, match=r"evil.pth: not a state_dict that torch.load\(weights_only=True\) reads"):
        import_weights(small, tmp_path / "evil.pth", write(tmp_path, "map.txt", "conv features.0\n"),
                       tmp_path / "o.caffemodel")


def test_import_weights_command_one_line_errors(small, tmp_path):
    saved_twin(tmp_path)
    args = [sys.executable, "-m", "protonet", "import-weights", "--model", str(small), "--state-dict",
            str(tmp_path / "twin.pth"), "--out", str(tmp_path / "o.caffemodel"), "--mapping"]
    ok = subprocess.run(args + [str(write(tmp_path, "map.txt", MAPPING))], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.strip() == f"wrote {tmp_path / 'o.caffemodel'}: 9 of 9 blobs from " \
                                                      f"{tmp_path / 'twin.pth'}"
    bad = subprocess.run(args + [str(tmp_path / "missing.map")], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip() == f"protonet: error: {tmp_path / 'missing.map'}: no such mapping file"


def test_worked_example_torchvision_ssd300_vgg16_trunk_equals(tmp_path):
    spec = importlib.util.spec_from_file_location("torchvision_ssd300_vgg16", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    # The rebuilt module has torchvision's state_dict keys (a sample of them, with their shapes).
    sd = example.SSD300VGG16(num_classes=91).state_dict()
    assert sd["backbone.features.0.weight"].shape == (64, 3, 3, 3)
    assert sd["backbone.scale_weight"].shape == (512,)
    assert sd["backbone.extra.0.7.1.weight"].shape == (1024, 512, 3, 3)
    assert sd["backbone.extra.4.2.weight"].shape == (256, 128, 3, 3)
    assert sd["head.classification_head.module_list.0.weight"].shape == (4 * 91, 512, 3, 3)
    assert sd["head.regression_head.module_list.5.weight"].shape == (4 * 4, 256, 3, 3)
    assert len(sd) == 2 * (13 + 2 + 8 + 12) + 1
    diffs = example.compare(SSD300, num_classes=21, workdir=tmp_path)
    assert set(diffs) >= {"conv4_3_norm", "fc7", "conv9_2", "conv4_3_norm_mbox_conf", "conv9_2_mbox_loc"}
    assert max(diffs.values()) <= 1e-4, diffs
