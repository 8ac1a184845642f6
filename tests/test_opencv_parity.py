"""OpenCV parity: the deploy nets built by protonet with seeded random weights, saved as .caffemodel,
read by cv2.dnn.readNetFromCaffe, give the same loc/conf/prior blobs and detections on one image."""
import math
import pathlib

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")

from protonet import caffe_pb2  # noqa: E402
from protonet.io.prototxt import read_prototxt, write_prototxt  # noqa: E402
from protonet.net import Net  # noqa: E402

FIX = pathlib.Path(__file__).parent / "fixtures" / "net"

SSD_BLOBS = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]
REFINEDET_BLOBS = ["arm_loc", "arm_conf_flatten", "odm_loc", "odm_conf_flatten", "arm_priorbox"]

NETS = {
    "mobilenet_ssd": ("mobilenet_ssd_deploy.prototxt", SSD_BLOBS),
    "ssd300_vgg16": ("ssd300_vgg16_voc_deploy.prototxt", SSD_BLOBS),
    "refinedet320_vgg16": ("refinedet320_vgg16_voc_deploy.prototxt", REFINEDET_BLOBS),
    "refinedet512_vgg16": ("refinedet512_vgg16_voc_deploy.prototxt", REFINEDET_BLOBS),
    "refinedet320_resnet101": ("refinedet320_resnet101_coco_deploy.prototxt", REFINEDET_BLOBS),
}


def deploy_param(filename):
    """The reference deploy net without save_output_param (it would write VOC result files)."""
    param = read_prototxt(FIX / filename, caffe_pb2.NetParameter)
    for layer in param.layer:
        if layer.type == "DetectionOutput":
            layer.detection_output_param.ClearField("save_output_param")
    return param


def randomize(net, image, seed):
    """Seeded weights that keep activations of order 1: He-scaled convolutions, small biases,
    BatchNorm statistics measured on `image` itself, Scale near identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, layer in net.layers.items():
            kind = layer.param.type
            blobs = layer.blobs
            if kind in ("Convolution", "Deconvolution", "InnerProduct", "DepthwiseConvolution", "ConvolutionDepthwise"):
                w = blobs[0]
                # A deconvolution with kernel == stride feeds each output from one tap per input channel.
                fan_in = w.shape[0] if kind == "Deconvolution" else w[0].numel()
                std = math.sqrt(2.0 / fan_in)
                if name.endswith("_loc"):
                    std *= 0.25  # box offsets of order 1: decoded boxes stay near their priors
                w.copy_(torch.randn(w.shape, generator=g) * std)
                if len(blobs) > 1:
                    blobs[1].copy_(torch.randn(blobs[1].shape, generator=g) * 0.05)
            elif kind == "Scale":
                blobs[0].copy_(1 + 0.1 * torch.randn(blobs[0].shape, generator=g))
                if len(blobs) > 1:
                    blobs[1].copy_(0.1 * torch.randn(blobs[1].shape, generator=g))
            elif kind == "Normalize":
                blobs[0].copy_(20 + torch.randn(blobs[0].shape, generator=g))
        # BatchNorm statistics from one pass with batch statistics over the image.
        bns = [l for l in net.layers.values() if l.param.type == "BatchNorm"]
        for l in bns:
            for b in l.blobs:
                b.zero_()
            l.use_global_stats = False
        net(data=image)
        for l in bns:
            l.use_global_stats = True
            # A channel that hardly varies on this image would be amplified by 1/sqrt(eps); keep
            # every channel's variance at least 0.5 (the factor blob is 1 after one update).
            l.blobs[1].add_(0.5)


def make_image(shape, seed=3):
    """A textured image (no flat regions, so no tied scores) scaled to about unit variance."""
    rng = np.random.RandomState(seed)
    n, c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / float(max(h, w))
    base = np.stack([np.sin(6 * xx + k) * np.cos(5 * yy - k) for k in range(c)])
    img = base + 0.5 * rng.randn(c, h, w)
    return torch.from_numpy(img[None].astype(np.float32).repeat(n, 0))


def run_both(net, param, image, names, tmp_path):
    """Our blobs and OpenCV's for `names` after saving the net's weights as a caffemodel."""
    model = tmp_path / "net.caffemodel"
    proto = tmp_path / "deploy.prototxt"
    net.save_weights(model)
    write_prototxt(param, proto)
    with torch.no_grad():
        ours = net(data=image)
    cvnet = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setInput(image.numpy())
    return ours, dict(zip(names, cvnet.forward(names)))


def assert_same_detections(key, det_ours, det_cv):
    det_ours = det_ours.numpy().reshape(-1, 7)
    det_cv = det_cv.reshape(-1, 7)
    # OpenCV pads its output to keep_top_k rows with all-zero rows; Caffe never emits label 0 rows.
    det_cv = det_cv[~np.all(det_cv == 0, axis=1)]
    assert det_ours.shape == det_cv.shape, f"{key}: {det_ours.shape[0]} detections vs OpenCV {det_cv.shape[0]}"
    assert det_ours.shape[0] > 10, f"{key}: too few detections to be a meaningful comparison"

    # Rows pair up one to one (scores equal to ~1e-7 may come in either order).
    dist = np.abs(det_ours[:, None, :] - det_cv[None, :, :]).max(axis=2)
    match = dist.argmin(axis=1)
    assert len(set(match.tolist())) == len(match), f"{key}: detections do not pair up one to one"
    diff = dist[np.arange(len(match)), match].max()
    assert diff <= 1e-4, f"{key}: detections differ by {diff}"


def head_convolutions(net, blob):
    """The convolutions whose outputs reach the concatenated head blob `blob` (e.g. arm_loc)."""
    producer = {}
    for lp in net.net_param.layer:
        for t in lp.top:
            producer[t] = lp
    convs, stack = [], list(producer[blob].bottom)
    while stack:
        lp = producer[stack.pop()]
        if lp.type == "Convolution":
            convs.append(lp.name)
        else:
            stack.extend(lp.bottom)
    return convs


def compare_with_opencv(key, tmp_path):
    filename, blob_names = NETS[key]
    param = deploy_param(filename)
    torch.manual_seed(0)
    net = Net(param, phase="TEST")
    image = make_image(net.blob_shapes[net.input_names[0]])
    randomize(net, image, seed=1)
    ours, theirs = run_both(net, param, image, blob_names + ["detection_out"], tmp_path)
    for name in blob_names:
        a = ours[name].numpy()
        b = theirs[name].reshape(a.shape)
        assert np.abs(a - b).max() <= 1e-4, f"{key}: blob {name} differs by {np.abs(a - b).max()}"
    if "arm_loc" not in blob_names:
        assert_same_detections(key, ours["detection_out"], theirs["detection_out"])
        return
    # OpenCV 4.x decodes RefineDet boxes from the raw priors and ignores arm_loc (checked against the
    # fork's golden detectionoutput_refinedet: the fork decodes odm_loc from the arm-refined priors).
    # With the ARM loc heads zeroed the refined priors are the priors, and both must agree.
    with torch.no_grad():
        for name in head_convolutions(net, "arm_loc"):
            for b in net.params[name]:
                b.zero_()
    ours, theirs = run_both(net, param, image, ["arm_loc", "detection_out"], tmp_path)
    assert float(ours["arm_loc"].abs().max()) == 0.0
    assert_same_detections(key, ours["detection_out"], theirs["detection_out"])


def test_opencv_ignores_arm_loc_unlike_the_fork(tmp_path):
    """Why the RefineDet comparison zeroes arm_loc: on the fork's golden inputs OpenCV's boxes differ."""
    import protonet.layers  # noqa: F401  (the golden needs the detection layers)

    golden = np.load(FIX / "detectionoutput_refinedet_golden.npz")
    text = (FIX / "detectionoutput_refinedet_cv.prototxt").read_text()
    (tmp_path / "d.prototxt").write_text(text)
    cvnet = cv2.dnn.readNetFromCaffe(str(tmp_path / "d.prototxt"))
    for k in ("loc", "conf", "prior", "arm_conf", "arm_loc"):
        cvnet.setInput(np.ascontiguousarray(golden[k][:1] if k != "prior" else golden[k]), k)
    cv_rows = cvnet.forward("detection_out").reshape(-1, 7)
    cv_rows = cv_rows[~np.all(cv_rows == 0, axis=1)]
    fork_rows = golden["detection_out"].reshape(-1, 7)
    fork_rows = fork_rows[fork_rows[:, 0] == 0]
    # The same top detection (label 2, score 0.99957) sits at a different box.
    pick = lambda rows: rows[np.argmin(np.abs(rows[:, 2] - 0.99956995))]
    assert abs(pick(cv_rows)[2] - pick(fork_rows)[2]) < 1e-6
    assert np.abs(pick(cv_rows)[3:] - pick(fork_rows)[3:]).max() > 1e-2


@pytest.mark.parametrize("key", ["mobilenet_ssd", "ssd300_vgg16"])
def test_opencv_parity(key, tmp_path):
    compare_with_opencv(key, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["refinedet320_vgg16", "refinedet512_vgg16", "refinedet320_resnet101"])
def test_opencv_parity_refinedet(key, tmp_path):
    compare_with_opencv(key, tmp_path)
