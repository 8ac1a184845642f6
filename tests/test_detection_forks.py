"""Detection layers of other forks: Synopsys Caffe's heads one per feature map (nbottom,
no_permute) and FaceBoxes' densified priors (sfzhang15/FaceBoxes; Synopsys' faceboxes field)."""
import numpy as np
import pytest
import torch

from protonet import caffe_pb2
from protonet.errors import PriorCountError, ProtonetError, ShapeError
from protonet.io.prototxt import parse_prototxt
from protonet.net import Net
from test_layers_dialects import build

F32 = np.float32

# Two feature maps (8x8 and 4x4) with SSD heads; HEADS_* are the two ways of feeding DetectionOutput.
BODY = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 32 dim: 32 } } }
layer { name: "f1" type: "Convolution" bottom: "data" top: "f1" convolution_param { num_output: 4 kernel_size: 4 stride: 4
        weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "f2" type: "Convolution" bottom: "f1" top: "f2" convolution_param { num_output: 4 kernel_size: 2 stride: 2
        weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "f1_loc" type: "Convolution" bottom: "f1" top: "f1_loc" convolution_param { num_output: 12 kernel_size: 1
        weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "f1_conf" type: "Convolution" bottom: "f1" top: "f1_conf" convolution_param { num_output: 9 kernel_size: 1
        weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "f2_loc" type: "Convolution" bottom: "f2" top: "f2_loc" convolution_param { num_output: 16 kernel_size: 1
        weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "f2_conf" type: "Convolution" bottom: "f2" top: "f2_conf" convolution_param { num_output: 12 kernel_size: 1
        weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "f1_prior" type: "PriorBox" bottom: "f1" bottom: "data" top: "f1_prior"
        prior_box_param { min_size: 8 aspect_ratio: 2 flip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "f2_prior" type: "PriorBox" bottom: "f2" bottom: "data" top: "f2_prior"
        prior_box_param { min_size: 16 max_size: 24 aspect_ratio: 2 flip: true variance: 0.1 variance: 0.1 variance: 0.2
        variance: 0.2 } }
layer { name: "priors" type: "Concat" bottom: "f1_prior" bottom: "f2_prior" top: "priors" concat_param { axis: 2 } }
"""
OUTPUT = ('detection_output_param {{ num_classes: 3 share_location: true background_label_id: 0 nms_param {{ nms_threshold: 0.45 top_k: 100 }} code_type: CENTER_SIZE '
          'keep_top_k: 50 confidence_threshold: 0.01 {extra} }} }}')


def ssd_heads():
    """The SSD fork's form: permute, flatten and concatenate; softmax over classes."""
    text = ""
    for f in ("f1", "f2"):
        for kind in ("loc", "conf"):
            text += (f'layer {{ name: "{f}_{kind}_perm" type: "Permute" bottom: "{f}_{kind}" top: "{f}_{kind}_perm" '
                     f'permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}\n'
                     f'layer {{ name: "{f}_{kind}_flat" type: "Flatten" bottom: "{f}_{kind}_perm" top: "{f}_{kind}_flat" }}\n')
    text += """
layer { name: "loc" type: "Concat" bottom: "f1_loc_flat" bottom: "f2_loc_flat" top: "loc" }
layer { name: "conf" type: "Concat" bottom: "f1_conf_flat" bottom: "f2_conf_flat" top: "conf" }
layer { name: "conf_r" type: "Reshape" bottom: "conf" top: "conf_r" reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "conf_s" type: "Softmax" bottom: "conf_r" top: "conf_s" softmax_param { axis: 2 } }
layer { name: "conf_f" type: "Flatten" bottom: "conf_s" top: "conf_f" }
layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf_f" bottom: "priors" top: "det" """
    return text + OUTPUT.format(extra="")


def no_permute_heads():
    """Synopsys' no_permute form (as its converted MobileNet-SSD): conf N x (R*C) x H x W reshaped to
    N x R x C x HW, permuted to N x C x R x HW, softmax over classes; loc as the convolution gives it."""
    text = ""
    for f, ratios in (("f1", 3), ("f2", 4)):
        text += (f'layer {{ name: "{f}_conf_r" type: "Reshape" bottom: "{f}_conf" top: "{f}_conf_r" reshape_param {{ '
                 f'shape {{ dim: 0 dim: {ratios} dim: 3 dim: -1 }} }} }}\n'
                 f'layer {{ name: "{f}_conf_p" type: "Permute" bottom: "{f}_conf_r" top: "{f}_conf_p" permute_param {{ '
                 f'order: 0 order: 2 order: 1 order: 3 }} }}\n'
                 f'layer {{ name: "{f}_conf_s" type: "Softmax" bottom: "{f}_conf_p" top: "{f}_conf_s" }}\n')
    return text + ('layer { name: "det" type: "DetectionOutput" bottom: "f1_conf_s" bottom: "f2_conf_s" bottom: "f1_loc" '
                   'bottom: "f2_loc" bottom: "priors" top: "det" ' + OUTPUT.format(extra="nbottom: 2 no_permute: true"))


def ratio_permute_heads():
    """Synopsys' ratio_permute form (its older converted MobileNet-SSD): conf reshaped to N x R x C x
    HW, permuted to N x C x R x HW, softmax over classes, flattened class-major; loc likewise to
    N x 4 x R x HW, flattened coordinate-major."""
    text = ""
    for f, ratios in (("f1", 3), ("f2", 4)):
        for kind, width in (("conf", 3), ("loc", 4)):
            text += (f'layer {{ name: "{f}_{kind}_r" type: "Reshape" bottom: "{f}_{kind}" top: "{f}_{kind}_r" '
                     f'reshape_param {{ shape {{ dim: 0 dim: {ratios} dim: {width} dim: -1 }} }} }}\n'
                     f'layer {{ name: "{f}_{kind}_p" type: "Permute" bottom: "{f}_{kind}_r" top: "{f}_{kind}_p" '
                     f'permute_param {{ order: 0 order: 2 order: 1 order: 3 }} }}\n')
        text += (f'layer {{ name: "{f}_conf_s" type: "Softmax" bottom: "{f}_conf_p" top: "{f}_conf_s" }}\n'
                 f'layer {{ name: "{f}_conf_f" type: "Flatten" bottom: "{f}_conf_s" top: "{f}_conf_f" }}\n'
                 f'layer {{ name: "{f}_loc_f" type: "Flatten" bottom: "{f}_loc_p" top: "{f}_loc_f" }}\n')
    return text + ('layer { name: "det" type: "DetectionOutput" bottom: "f1_conf_f" bottom: "f2_conf_f" bottom: '
                   '"f1_loc_f" bottom: "f2_loc_f" bottom: "priors" top: "det" '
                   + OUTPUT.format(extra="nbottom: 2 ratio_permute: true ratio0: 3 ratio1: 4"))


def separate_ssd_heads(per_map_priors):
    """Synopsys' separate heads in the SSD order: one flattened conf (softmaxed) and loc per map."""
    text = ""
    for f in ("f1", "f2"):
        for kind in ("loc", "conf"):
            text += (f'layer {{ name: "{f}_{kind}_perm" type: "Permute" bottom: "{f}_{kind}" top: "{f}_{kind}_perm" '
                     f'permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}\n'
                     f'layer {{ name: "{f}_{kind}_flat" type: "Flatten" bottom: "{f}_{kind}_perm" top: "{f}_{kind}_flat" }}\n')
        text += (f'layer {{ name: "{f}_conf_r" type: "Reshape" bottom: "{f}_conf_flat" top: "{f}_conf_r" reshape_param {{ '
                 f'shape {{ dim: 0 dim: -1 dim: 3 }} }} }}\n'
                 f'layer {{ name: "{f}_conf_s" type: "Softmax" bottom: "{f}_conf_r" top: "{f}_conf_s" softmax_param {{ '
                 f'axis: 2 }} }}\n'
                 f'layer {{ name: "{f}_conf_f" type: "Flatten" bottom: "{f}_conf_s" top: "{f}_conf_f" }}\n')
    priors = 'bottom: "f1_prior" bottom: "f2_prior"' if per_map_priors else 'bottom: "priors"'
    return text + ('layer { name: "det" type: "DetectionOutput" bottom: "f1_conf_f" bottom: "f2_conf_f" bottom: '
                   f'"f1_loc_flat" bottom: "f2_loc_flat" {priors} top: "det" ' + OUTPUT.format(extra="nbottom: 2"))


def detections(heads, weights_from=None):
    torch.manual_seed(0)  # the fillers' weights: scores without ties
    net = Net(parse_prototxt(BODY + heads, caffe_pb2.NetParameter()), phase="TEST")
    if weights_from is not None:
        for name, blobs in weights_from.params.items():
            for mine, theirs in zip(net.layers[name].blobs, blobs):
                mine.data.copy_(theirs.data)
    image = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return net, net(data=image)["det"][0, 0].numpy()


@pytest.mark.parametrize("heads", ["no_permute", "ratio_permute", "separate", "separate_per_map_priors"])
def test_synopsys_heads_give_the_ssd_forks_detections(heads):
    """The same convolutions read through Synopsys' heads give the SSD fork's detections, for each
    image of a batch of two (Synopsys reads image 0's heads for every image: a bug not copied)."""
    ssd_net, want = detections(ssd_heads())
    text = {"no_permute": no_permute_heads(), "ratio_permute": ratio_permute_heads(), "separate": separate_ssd_heads(False),
            "separate_per_map_priors": separate_ssd_heads(True)}[heads]
    _, got = detections(text, weights_from=ssd_net)
    assert len(want) > 20 and set(want[:, 0]) == {0, 1}
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_no_permute_box_order_is_ratio_then_cell():
    """detection_output_layer.cpp (Synopsys, no_permute): box r * H*W + p of a map takes loc channels
    r*4..r*4+3 at cell p, conf[:, c, r, p] and the concatenated prior p * R + r (cell-major there)."""
    net = Net(parse_prototxt(BODY + no_permute_heads(), caffe_pb2.NetParameter()), phase="TEST")
    layer = net.layers["det"]
    loc1, loc2 = torch.randn(2, 12, 8, 8), torch.randn(2, 16, 4, 4)
    conf1, conf2 = torch.randn(2, 3, 3, 64), torch.randn(2, 3, 4, 16)
    prior = torch.randn(1, 2, (192 + 64) * 4)
    loc, conf, pri = layer.heads.gather([conf1, conf2, loc1, loc2, prior])
    r, p = 2, 37  # map 1, ratio 2, cell 37 (row 4, column 5)
    box = r * 64 + p
    np.testing.assert_array_equal(loc.reshape(2, -1, 4)[1, box], loc1[1, r * 4:r * 4 + 4, 4, 5])
    np.testing.assert_array_equal(conf.reshape(2, -1, 3)[1, box], conf1[1, :, r, p])
    np.testing.assert_array_equal(pri[0, 0].reshape(-1, 4)[box], prior[0, 0].reshape(-1, 4)[p * 3 + r])
    np.testing.assert_array_equal(pri[0, 1], prior[0, 1])  # variances unpermuted, as there
    r, p = 3, 5  # map 2
    box = 192 + r * 16 + p
    np.testing.assert_array_equal(loc.reshape(2, -1, 4)[0, box], loc2[0, r * 4:r * 4 + 4, 1, 1])
    np.testing.assert_array_equal(pri[0, 0].reshape(-1, 4)[box], prior[0, 0].reshape(-1, 4)[192 + p * 4 + r])


def test_synopsys_heads_refusals():
    text = BODY + no_permute_heads()
    with pytest.raises(ProtonetError, match="give 5 bottoms .* or 6 .*, got 4"):
        Net(parse_prototxt(text.replace('bottom: "f2_loc" ', ''), caffe_pb2.NetParameter()))
    with pytest.raises(ShapeError, match=r"head 1: no_permute takes a confidence head N x 3 x 4 x 16"):
        Net(parse_prototxt(text.replace('dim: 4 dim: 3 dim: -1', 'dim: 2 dim: 6 dim: -1'), caffe_pb2.NetParameter()))
    with pytest.raises(ShapeError, match="head 1: ratio1 6 does not divide its 64 boxes"):
        Net(parse_prototxt(BODY + ratio_permute_heads().replace(" ratio1: 4", ""), caffe_pb2.NetParameter()))
    with pytest.raises(ProtonetError, match="no_permute takes the priors concatenated"):
        Net(parse_prototxt(text.replace('bottom: "priors"', 'bottom: "f1_prior" bottom: "f2_prior"')
                           .replace("nbottom: 2", "nbottom: 2"), caffe_pb2.NetParameter()))


# ------------------------------------------------------------------------------ FaceBoxes
def faceboxes_reference(layer_h, layer_w, img, step, min_sizes, offset=0.5):
    """sfzhang15/FaceBoxes prior_box_layer.cpp: per cell and min_size, 32 -> 4 x 4 boxes at centre +
    (j, i) * 8, j, i in -2..1, 64 -> 2 x 2 at (j, i) * 16, others one; corners centre -/+ (size - 1) / 2
    (float centre + int shift, the rest in double), divided by the image size."""
    out = []
    for h in range(layer_h):
        for w in range(layer_w):
            cx, cy = F32(F32(w + F32(offset)) * F32(step)), F32(F32(h + F32(offset)) * F32(step))
            for m in min_sizes:
                shifts, d = {32: (range(-2, 2), 8), 64: (range(-1, 1), 16)}.get(m, (range(0, 1), 0))
                for i in shifts:
                    for j in shifts:
                        x, y = float(F32(cx + F32(j * d))), float(F32(cy + F32(i * d)))
                        half = (F32(m) - 1) / 2.0
                        out.append([(x - half) / img, (y - half) / img, (x + half) / img, (y + half) / img])
    return np.array(out, F32).reshape(-1)


def test_faceboxes_field_densifies_as_the_fork():
    text = ('name: "p" type: "PriorBox" bottom: "f" bottom: "d" top: "y" prior_box_param { min_size: 32 min_size: 64 '
            'min_size: 128 step: 32 faceboxes: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 }')
    layer = build(text, (1, 8, 3, 2), (1, 3, 96, 64))
    assert layer.num_priors == 21 and layer.top_shapes == [(1, 2, 3 * 2 * 21 * 4)]
    out = layer(torch.zeros(1, 8, 3, 2), torch.zeros(1, 3, 96, 64))[0].numpy()
    want = faceboxes_reference(3, 2, 96, 32, (32, 64, 128))
    # the reference divides by one image size: use a square image for the formula
    square = build(text, (1, 8, 3, 2), (1, 3, 96, 96))(torch.zeros(1, 8, 3, 2), torch.zeros(1, 3, 96, 96))[0].numpy()
    np.testing.assert_array_equal(square[0], want)
    np.testing.assert_array_equal(out[1], np.tile(F32([0.1, 0.1, 0.2, 0.2]), 3 * 2 * 21))
    # a single min_size box is pixel-inclusive too (the fork's other PriorBox layers)
    one = build(text.replace("min_size: 32 min_size: 64 min_size: 128", "min_size: 256"), (1, 8, 2, 2),
                (1, 3, 96, 96))(torch.zeros(1, 8, 2, 2), torch.zeros(1, 3, 96, 96))[0].numpy()
    np.testing.assert_array_equal(one[0], faceboxes_reference(2, 2, 96, 32, (256,)))
    with pytest.raises(ProtonetError, match="declares 21 priors per cell .* but writes 27"):
        build(text.replace("step: 32", "step: 32 aspect_ratio: 2"), (1, 8, 3, 2), (1, 3, 96, 96))


FACEBOXES_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 64 dim: 64 } } }
layer { name: "f" type: "Convolution" bottom: "data" top: "f" convolution_param { num_output: 4 kernel_size: 32 stride: 32
        weight_filler { type: "gaussian" std: 0.05 } } }
layer { name: "g" type: "Convolution" bottom: "f" top: "g" convolution_param { num_output: 4 kernel_size: 2
        weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "f_loc" type: "Convolution" bottom: "f" top: "f_loc" convolution_param { num_output: LOC kernel_size: 1 } }
layer { name: "f_conf" type: "Convolution" bottom: "f" top: "f_conf" convolution_param { num_output: CONF kernel_size: 1 } }
layer { name: "g_loc" type: "Convolution" bottom: "g" top: "g_loc" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "g_conf" type: "Convolution" bottom: "g" top: "g_conf" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "f_prior" type: "PriorBox" bottom: "f" bottom: "data" top: "f_prior"
        prior_box_param { min_size: 32 min_size: 64 min_size: 128 step: 32 clip: false } }
layer { name: "g_prior" type: "PriorBox" bottom: "g" bottom: "data" top: "g_prior" prior_box_param { min_size: 128 } }
layer { name: "f_loc_flat" type: "Flatten" bottom: "f_loc" top: "f_loc_flat" }
layer { name: "g_loc_flat" type: "Flatten" bottom: "g_loc" top: "g_loc_flat" }
layer { name: "f_conf_flat" type: "Flatten" bottom: "f_conf" top: "f_conf_flat" }
layer { name: "g_conf_flat" type: "Flatten" bottom: "g_conf" top: "g_conf_flat" }
layer { name: "loc" type: "Concat" bottom: "f_loc_flat" bottom: "g_loc_flat" top: "loc" }
layer { name: "conf" type: "Concat" bottom: "f_conf_flat" bottom: "g_conf_flat" top: "conf" }
layer { name: "priors" type: "Concat" bottom: "f_prior" bottom: "g_prior" top: "priors" concat_param { axis: 2 } }
layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "priors" top: "det"
        detection_output_param { num_classes: 2 nms_param { nms_threshold: 0.3 } code_type: CENTER_SIZE } }
"""


def test_faceboxes_net_is_read_as_the_fork_when_its_heads_need_it():
    """A FaceBoxes deploy (no field says so): its heads predict 21 boxes per cell of the three-size
    map, which only FaceBoxes' tiling gives; every PriorBox of the net is then the fork's."""
    net = Net(parse_prototxt(FACEBOXES_NET.replace("LOC", "84").replace("CONF", "42"), caffe_pb2.NetParameter()))
    assert net.ctx.faceboxes_priors
    assert net.layers["f_prior"].num_priors == 21 and net.blob_shapes["priors"] == (1, 2, (4 * 21 + 1) * 4)
    with torch.no_grad():
        priors = net(data=torch.zeros(1, 3, 64, 64))["priors"][0, 0].numpy()
    want = np.concatenate([faceboxes_reference(2, 2, 64, 32, (32, 64, 128)), faceboxes_reference(1, 1, 64, 64, (128,))])
    np.testing.assert_array_equal(priors, want)
    # g's one box is pixel-inclusive too: centre 32 -/+ 63.5, over 64
    np.testing.assert_array_equal(priors[-4:], F32([-31.5 / 64, -31.5 / 64, 95.5 / 64, 95.5 / 64]))
    # heads of the SSD fork's size: read as the SSD fork
    ssd = Net(parse_prototxt(FACEBOXES_NET.replace("LOC", "12").replace("CONF", "6"), caffe_pb2.NetParameter()))
    assert not ssd.ctx.faceboxes_priors and ssd.layers["f_prior"].num_priors == 3
    # heads that fit neither: the SSD fork's error
    with pytest.raises(PriorCountError, match=r"loc has 324 values per image, expected 52 for 13 priors; with "
                                             r"FaceBoxes' priors \(sfzhang15/FaceBoxes\): .* expected 340 for 85"):
        Net(parse_prototxt(FACEBOXES_NET.replace("LOC", "80").replace("CONF", "40"), caffe_pb2.NetParameter()))


# ------------------------------------------------------------------------------ TextBoxes
def textboxes_reference(layer_h, layer_w, img, sizes):
    """MhLiao/TextBoxes prior_box_layer.cpp: per cell and box, the box at the cell centre, then at
    the centre (h + 1) * step (half a step lower); boxes min, sqrt(min max), then the ratios."""
    step = F32(img) / F32(layer_w)
    out = []
    for h in range(layer_h):
        for w in range(layer_w):
            cx = F32(F32(w + F32(0.5)) * step)
            for bw, bh in sizes:
                for cy in (F32(F32(h + F32(0.5)) * step), F32(F32(h + F32(1.0)) * step)):
                    out.append([(float(cx) - bw / 2.0) / img, (float(cy) - bh / 2.0) / img,
                                (float(cx) + bw / 2.0) / img, (float(cy) + bh / 2.0) / img])
    return np.clip(np.array(out, F32).reshape(-1), 0, 1)


def test_additional_y_offset_doubles_each_prior_as_textboxes():
    text = ('name: "p" type: "PriorBox" bottom: "f" bottom: "d" top: "y" prior_box_param { min_size: 30 max_size: 60 '
            'aspect_ratio: 5 flip: false clip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 '
            'additional_y_offset: true }')
    layer = build(text, (1, 8, 3, 3), (1, 3, 96, 96))
    assert layer.num_priors == 6
    out = layer(torch.zeros(1, 8, 3, 3), torch.zeros(1, 3, 96, 96))[0].numpy()
    r = float(np.sqrt(F32(5)))
    sizes = [(30.0, 30.0), (float(F32(np.sqrt(1800.0))),) * 2, (float(F32(F32(30) * F32(r))), float(F32(F32(30) / F32(r))))]
    np.testing.assert_array_equal(out[0], textboxes_reference(3, 3, 96, sizes))


TEXTBOXES_NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 64 dim: 64 } } }
layer { name: "f" type: "Convolution" bottom: "data" top: "f" convolution_param { num_output: 4 kernel_size: 16 stride: 16 } }
layer { name: "f_loc" type: "Convolution" bottom: "f" top: "f_loc" convolution_param { num_output: LOC kernel_size: 1 } }
layer { name: "f_conf" type: "Convolution" bottom: "f" top: "f_conf" convolution_param { num_output: CONF kernel_size: 1 } }
layer { name: "f_loc_flat" type: "Flatten" bottom: "f_loc" top: "f_loc_flat" }
layer { name: "f_conf_flat" type: "Flatten" bottom: "f_conf" top: "f_conf_flat" }
layer { name: "f_prior" type: "PriorBox" bottom: "f" bottom: "data" top: "f_prior"
        prior_box_param { min_size: 20.5 aspect_ratio: 3 flip: false clip: true variance: 0.1 } }
layer { name: "det" type: "DetectionOutput" bottom: "f_loc_flat" bottom: "f_conf_flat" bottom: "f_prior" top: "det"
        detection_output_param { num_classes: 2 nms_param { nms_threshold: 0.3 } code_type: CENTER_SIZE } }
"""


def test_textboxes_net_is_read_as_the_fork_when_its_heads_need_it():
    """TextBoxes' deploys carry no field: their heads predict twice the SSD fork's priors, and every
    PriorBox is of that fork's fields; its sizes are not truncated (20.5 stays)."""
    net = Net(parse_prototxt(TEXTBOXES_NET.replace("LOC", "16").replace("CONF", "8"), caffe_pb2.NetParameter()))
    assert net.ctx.textboxes_priors and net.layers["f_prior"].num_priors == 4
    with torch.no_grad():
        priors = net(data=torch.zeros(1, 3, 64, 64))["f_prior"][0, 0].numpy()
    r = np.sqrt(F32(3))
    sizes = [(20.5, 20.5), (float(F32(F32(20.5) * r)), float(F32(F32(20.5) / r)))]
    np.testing.assert_array_equal(priors, textboxes_reference(4, 4, 64, sizes))
    assert not Net(parse_prototxt(TEXTBOXES_NET.replace("LOC", "8").replace("CONF", "4"),
                                  caffe_pb2.NetParameter())).ctx.textboxes_priors
    # a field TextBoxes' fork lacks: not its net, the SSD fork's error
    with pytest.raises(PriorCountError, match=r"loc has 256 values per image, expected 128 for 32 priors$"):
        Net(parse_prototxt(TEXTBOXES_NET.replace("LOC", "16").replace("CONF", "8").replace("clip: true", "step: 16"),
                           caffe_pb2.NetParameter()))


def test_opencv_normalize_bbox_param_is_norm_param(tmp_path):
    """OpenCV's earlier dnn named SSD's norm_param normalize_bbox_param (its samples use it)."""
    from test_layers_dialects import opencv, rand
    x = rand(2, 4, 3, 5)
    text = ('name: "n" type: "Normalize" bottom: "x" top: "y" {} {{ across_spatial: false channel_shared: false '
            'scale_filler {{ type: "constant" value: 20 }} }}')
    layer = build(text.format("normalize_bbox_param"), x.shape)
    assert tuple(layer.blobs[0].shape) == (4,) and not layer.across_spatial
    with torch.no_grad():
        ours = layer(torch.from_numpy(x)).numpy()
    theirs = opencv(tmp_path, text.format("norm_param"), {"x": x}, [layer.blobs[0].detach().numpy()])
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())
    # ...and its type NormalizeBBox is Normalize
    bbox = build(text.format("normalize_bbox_param").replace('"Normalize"', '"NormalizeBBox"'), x.shape)
    with torch.no_grad():
        np.testing.assert_array_equal(bbox(torch.from_numpy(x)).numpy(), ours)


def test_opencv_image_bottom_of_detection_output(tmp_path):
    """OpenCV's DetectionOutput takes the input image as an optional fourth bottom (for pixel boxes
    only); not RefineDet's arm_conf (N x P*2), so it is not read: the same detections as without
    it, in protonet as in OpenCV."""
    cv2 = pytest.importorskip("cv2")
    from protonet.io.prototxt import write_prototxt

    def opencv_detections(net):
        write_prototxt(net.net_param, tmp_path / "d.prototxt")
        net.save_weights(tmp_path / "w.caffemodel")
        cv = cv2.dnn.readNetFromCaffe(str(tmp_path / "d.prototxt"), str(tmp_path / "w.caffemodel"))
        cv.setInput(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)).numpy(), "data")
        return cv.forward("det")

    three, want = detections(ssd_heads())
    text = ssd_heads().replace('bottom: "priors" top: "det"', 'bottom: "priors" bottom: "data" top: "det"')
    net, got = detections(text, weights_from=three)
    assert net.layers["det"].image_bottom
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(opencv_detections(net), opencv_detections(three))
