"""torchvision's ssd300_vgg16 weights into the Caffe SSD300 net, and the trunks compared.

torchvision does not run beside the torch protonet pins on every machine, so this file rebuilds
its module tree (the same state_dict keys and shapes: backbone.features.*, backbone.scale_weight,
backbone.extra.*, head.{classification,regression}_head.module_list.*) and its forward up to the
heads. Run:

    python examples/import_weights/torchvision_ssd300_vgg16.py --model deploy.prototxt [--num-classes 21]

It seeds a state_dict (nothing is downloaded), saves it, writes the .caffemodel with
`protonet import-weights` and the mapping beside this file, and prints the largest difference of
each trunk blob: protonet's net on a BGR image against this module on the same image in RGB.
"""
import argparse
import os
import pathlib
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

HERE = pathlib.Path(__file__).resolve().parent
MAPPING = HERE / "torchvision_ssd300_vgg16.map"
ANCHORS = [4, 6, 6, 6, 4, 4]                 # boxes per location of the six feature maps
CHANNELS = [512, 1024, 512, 256, 256, 256]   # their channels
# protonet's blobs for torchvision's six feature maps
FEATURES = ["conv4_3_norm", "fc7", "conv6_2", "conv7_2", "conv8_2", "conv9_2"]


def vgg16_features():
    """torchvision's vgg16().features (convolutions at 0, 2, 5, ...; max pooling at 4, 9, 16, 23, 30)."""
    layers, channels = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, v, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = v
    return layers


class SSDFeatureExtractorVGG(nn.Module):
    """torchvision.models.detection.ssd.SSDFeatureExtractorVGG (SSD300)."""

    def __init__(self):
        super().__init__()
        backbone = vgg16_features()
        backbone[16].ceil_mode = True  # maxpool3, as torchvision patches it
        self.scale_weight = nn.Parameter(torch.ones(512) * 20)
        self.features = nn.Sequential(*backbone[:23])
        fc = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
                           nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6), nn.ReLU(inplace=True),
                           nn.Conv2d(1024, 1024, kernel_size=1), nn.ReLU(inplace=True))
        extra = [nn.Sequential(*backbone[23:-1], fc)]
        for cin, mid, cout, stride, pad in ((1024, 256, 512, 2, 1), (512, 128, 256, 2, 1), (256, 128, 256, 1, 0),
                                            (256, 128, 256, 1, 0)):
            extra.append(nn.Sequential(nn.Conv2d(cin, mid, kernel_size=1), nn.ReLU(inplace=True),
                                       nn.Conv2d(mid, cout, kernel_size=3, padding=pad, stride=stride),
                                       nn.ReLU(inplace=True)))
        self.extra = nn.ModuleList(extra)

    def forward(self, x):
        x = self.features(x)
        outputs = [self.scale_weight.view(1, -1, 1, 1) * F.normalize(x)]
        for block in self.extra:
            x = block(x)
            outputs.append(x)
        return outputs


class ScoringHead(nn.Module):
    def __init__(self, per_box):
        super().__init__()
        self.module_list = nn.ModuleList(nn.Conv2d(c, a * per_box, kernel_size=3, padding=1)
                                         for c, a in zip(CHANNELS, ANCHORS))


class SSDHead(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.classification_head = ScoringHead(num_classes)
        self.regression_head = ScoringHead(4)


class SSD300VGG16(nn.Module):
    """The parameters of torchvision's ssd300_vgg16(num_classes=...); forward gives the feature
    maps and the raw head outputs (before torchvision's anchors, decoding and NMS)."""

    def __init__(self, num_classes=91):
        super().__init__()
        self.backbone = SSDFeatureExtractorVGG()
        self.head = SSDHead(num_classes)

    def forward(self, x):
        features = self.backbone(x)
        out = dict(zip(FEATURES, features))
        for name, f, cls, reg in zip(FEATURES, features, self.head.classification_head.module_list,
                                     self.head.regression_head.module_list):
            out[f"{name}_mbox_conf"] = cls(f)
            out[f"{name}_mbox_loc"] = reg(f)
        return out


def seeded(num_classes, seed=0):
    """The module with seeded weights that keep activations of order 1."""
    torch.manual_seed(seed)
    model = SSD300VGG16(num_classes).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.normal_(m.bias, std=0.05)
    return model


def compare(model_path, num_classes=21, workdir=None):
    """{blob: largest |protonet - torchvision-style module|} after import-weights; the image is BGR
    for protonet, RGB for the module."""
    from protonet.net import Net

    model = seeded(num_classes)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        state = os.path.join(tmp, "ssd300_vgg16.pth")
        weights = os.path.join(tmp, "ssd300_vgg16.caffemodel")
        torch.save(model.state_dict(), state)
        run = subprocess.run([sys.executable, "-m", "protonet", "import-weights", "--model", str(model_path),
                              "--state-dict", state, "--mapping", str(MAPPING), "--out", weights],
                             capture_output=True, text=True)
        if run.returncode:
            raise SystemExit(run.stderr.strip())
        net = Net(str(model_path), phase="TEST", weights=weights).eval()
    image = torch.randn(1, 3, 300, 300, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = model(image.flip(1))
        ours = net(image, outputs=list(theirs))
    return {name: float((ours[name] - theirs[name]).abs().max() / theirs[name].abs().max()) for name in theirs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the SSD300 VGG16 deploy prototxt")
    ap.add_argument("--num-classes", type=int, default=21, help="classes of the prototxt's heads")
    args = ap.parse_args(argv)
    worst = 0.0
    for name, diff in compare(args.model, args.num_classes).items():
        print(f"{name:24s} max relative difference {diff:.2e}")
        worst = max(worst, diff)
    print("trunk outputs equal within 1e-4" if worst <= 1e-4 else "TRUNK OUTPUTS DIFFER")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
