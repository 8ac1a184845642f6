"""Real deploys from public repositories (../shared/realworld, see its README): each builds, runs on
an image with seeded weights, and agrees with OpenCV's dnn blob for blob (1e-4; OpenCV's layer
fusion off, so every layer's output exists there) and detection for detection.

OpenCV has no DepthwiseConvolution: the copy it reads names those layers Convolution, the same
computation (Caffe's grouped convolution; tests/test_layers_dialects.py checks that)."""
import logging

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")

from conftest import shared_path  # noqa: E402
from protonet import caffe_pb2  # noqa: E402
from protonet.io.prototxt import read_prototxt, write_prototxt  # noqa: E402
from protonet.net import Net  # noqa: E402
from test_opencv_parity import assert_same_detections, make_image, randomize  # noqa: E402

FILES = {
    "res18_ssd": "1694439208+Res18_SSD__deploy.prototxt",
    "vgg_depthwise_ssd": "Nortinwell+VGG-depthwise-SSD__deploy.prototxt",
    "sfd_nvcaffe": "bonseyes+SFD__models_SFD-320x320-MobileNetV2-mod5-caffeNVIDIA-fp16-person+face_deploy.prototxt",
    "mobilenetv2_ssdlite": "chuanqi305+MobileNetv2-SSDLite__ssdlite_voc_deploy.prototxt",
    "shufflenet_ssd": "imistyrain+ssd-models__shufflenet_shufflenet_ssd_deploy.prototxt",
    "opencv_face": "supernabisht+Deeptrust-Project__deploy.prototxt",
}


def opencv_copy(param):
    """The prototxt OpenCV reads: DepthwiseConvolution named Convolution (OpenCV lacks the name), and
    prior sizes truncated to integers as the SSD fork does (prior_box_layer.cpp's int min_size_;
    OpenCV keeps 20.48)."""
    cv = caffe_pb2.NetParameter()
    cv.CopyFrom(param)
    for layer in cv.layer:
        if layer.type == "DepthwiseConvolution":
            layer.type = "Convolution"
        if layer.type == "PriorBox":
            p = layer.prior_box_param
            for field in (p.min_size, p.max_size):
                field[:] = [float(int(v)) for v in field]
    return cv


def calibrate(net, image):
    """Scale each convolution so that its output has unit spread on `image` (box heads a quarter),
    in one forward pass: nets with BatchNorm merged into the weights (ShuffleNet-SSD) would
    otherwise grow their activations layer after layer until the boxes overflow."""
    kinds = ("Convolution", "DepthwiseConvolution", "ConvolutionDepthwise", "InnerProduct")

    def rescale(layer, inputs, out):
        target = 0.25 if "loc" in layer.name else 1.0
        factor = target / max(float(out.std()), 1e-12)
        for blob in layer.blobs:
            blob.mul_(factor)
        return out * factor

    hooks = [layer.register_forward_hook(rescale) for layer in net.layers.values() if layer.param.type in kinds]
    with torch.no_grad():
        net(**{net.input_names[0]: image})
    for h in hooks:
        h.remove()


def center_taps_on_one_pixel_maps(net):
    """Zero the taps that only ever see padding in grouped convolutions over 1x1 maps: OpenCV 4.14
    computes those wrongly (test_opencv_grouped_convolution_on_a_one_pixel_map), protonet exactly;
    with them zero both give the exact result and the rest of the net can be compared."""
    for layer in net.layers.values():
        if getattr(layer, "group", 1) > 1 and layer.bottom_shapes[0][2:] == (1, 1):
            w = layer.blobs[0]
            keep = torch.zeros_like(w)
            keep[:, :, layer.pad[0], layer.pad[1]] = 1
            with torch.no_grad():
                w.mul_(keep)


def blob_producers(net):
    """Blob name -> (our layer key, OpenCV's layer name) of the last layer writing it (in-place
    layers rewrite their bottom), for each layer's first top. OpenCV names a second layer of the
    same name NAME_1, NAME_2, ..."""
    seen, out = {}, {}
    for key, lparam in zip(net.layers, net.net_param.layer):
        k = seen.get(lparam.name, 0)
        seen[lparam.name] = k + 1
        if lparam.type != "Input" and len(lparam.top):
            out[lparam.top[0]] = (key, lparam.name if k == 0 else f"{lparam.name}_{k}")
    return out


@pytest.mark.parametrize("key", list(FILES))
def test_realworld_deploy_agrees_with_opencv(key, tmp_path, caplog):
    path = shared_path("realworld", FILES[key])
    param = read_prototxt(path, caffe_pb2.NetParameter)
    with caplog.at_level(logging.WARNING):
        net = Net(path, phase="TEST")
    torch.manual_seed(0)
    image = make_image(net.blob_shapes[net.input_names[0]])
    randomize(net, image, seed=1)
    calibrate(net, image)
    center_taps_on_one_pixel_maps(net)
    with torch.no_grad():
        ours = net(**{net.input_names[0]: image})
    assert torch.isfinite(ours["detection_out"]).all()

    model, proto = tmp_path / "net.caffemodel", tmp_path / "deploy.prototxt"
    net.save_weights(model)
    write_prototxt(opencv_copy(param), proto)
    cvnet = cv2.dnn.readNetFromCaffe(str(proto), str(model))
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.enableFusion(False)
    cvnet.setInput(image.numpy())
    producers = blob_producers(net)
    # OpenCV leaves out a few layers (a convolution whose top a later Slice crops and renames)
    exposed = set(cvnet.getLayerNames())
    names = [blob for blob in producers if blob != "detection_out" and producers[blob][1] in exposed]
    outs = cvnet.forward([producers[b][1] for b in names] + ["detection_out"])
    compared = 0
    for blob, theirs in zip(names, outs):
        a = ours[blob].numpy()
        b = theirs.reshape(a.shape)
        scale = max(1.0, float(np.abs(a).max()))
        assert np.abs(a - b).max() <= 1e-4 * scale, f"{key}: blob {blob} differs by {np.abs(a - b).max()}"
        compared += 1
    assert compared > 50
    assert_same_detections(key, ours["detection_out"], outs[-1])


def test_opencv_grouped_convolution_on_a_one_pixel_map(tmp_path):
    """Why center_taps_on_one_pixel_maps: a 3x3 depthwise convolution with pad 1 of a 1x1 map is its
    centre tap times the pixel (the other taps see padding); OpenCV 4.14 gets other values."""
    from test_layers_dialects import build, opencv, rand

    text = ('name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 64 '
            'group: 64 bias_term: false pad: 1 kernel_size: 3 weight_filler { type: "gaussian" } }')
    x = rand(1, 64, 1, 1)
    layer = build(text, x.shape)
    w = layer.blobs[0].detach().numpy()
    with torch.no_grad():
        ours = layer(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, x * w[:, :, 1:2, 1:2].transpose(1, 0, 2, 3), rtol=1e-6)
    theirs = opencv(tmp_path, text, {"x": x}, [w])
    assert np.abs(theirs - ours).max() > 1e-3
