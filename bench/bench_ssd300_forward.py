"""Forward latency of the SSD300 (VGG16, VOC) deploy net: protonet vs OpenCV dnn, side by side.

Same prototxt, same seeded weights (written by protonet, read by cv2.dnn.readNetFromCaffe), same
input image, same process. Prints per-run medians and the ratio, for the whole net and for the
convolutions and heads alone; first checks that both give the same number of detections.

    .venv/bin/python bench/bench_ssd300_forward.py [--iterations 20] [--threads N] [--device cpu|cuda] [--channels-last]
"""
import argparse
import math
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_PROTOTXT = ROOT / "tests" / "fixtures" / "net" / "ssd300_vgg16_voc_deploy.prototxt"


def seeded_weights(net, seed):
    """He-scaled convolutions (box heads smaller), small biases, Normalize scale 20."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, layer in net.layers.items():
            blobs = layer.blobs
            kind = layer.param.type
            if kind in ("Convolution", "Deconvolution", "InnerProduct"):
                std = math.sqrt(2.0 / blobs[0][0].numel()) * (0.25 if name.endswith("_loc") else 1.0)
                blobs[0].copy_(torch.randn(blobs[0].shape, generator=g) * std)
                if len(blobs) > 1:
                    blobs[1].copy_(torch.randn(blobs[1].shape, generator=g) * 0.05)
            elif kind == "Normalize":
                blobs[0].copy_(20 + torch.randn(blobs[0].shape, generator=g))


def median_ms(fn, iterations, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(times), min(times), max(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_PROTOTXT), help="deploy prototxt (default: SSD300 VOC)")
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for both (0: library defaults)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device for protonet")
    ap.add_argument("--channels-last", action="store_true",
                    help="protonet weights and input in channels-last memory format (faster oneDNN convolutions)")
    args = ap.parse_args(argv)

    import cv2

    from protonet import caffe_pb2
    from protonet.io.prototxt import read_prototxt, write_prototxt
    from protonet.net import Net

    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    param = read_prototxt(args.model, caffe_pb2.NetParameter)
    for layer in param.layer:
        if layer.type == "DetectionOutput":
            layer.detection_output_param.ClearField("save_output_param")
    torch.manual_seed(0)
    net = Net(param, phase="TEST")
    seeded_weights(net, seed=1)
    shape = net.blob_shapes[net.input_names[0]]
    image = torch.from_numpy(np.random.RandomState(3).randn(*shape).astype(np.float32))

    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "net.caffemodel")
        proto = os.path.join(tmp, "deploy.prototxt")
        net.save_weights(model)
        write_prototxt(param, proto)
        cvnet = cv2.dnn.readNetFromCaffe(proto, model)
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    image_np = image.numpy()

    device = torch.device(args.device)
    net.to(device)
    x = image.to(device)

    # The same net without its DetectionOutput layer: the convolutional part and the heads alone.
    heads_param = caffe_pb2.NetParameter()
    heads_param.CopyFrom(param)
    del heads_param.layer[:]
    heads_param.layer.extend(l for l in param.layer if l.type != "DetectionOutput")
    heads = Net(heads_param, phase="TEST")
    heads.share_weights_from(net)
    if args.channels_last:
        net.to(memory_format=torch.channels_last)
        heads.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    head_names = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]

    def run_protonet():
        with torch.inference_mode():
            out = net(data=x)["detection_out"]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    def run_protonet_heads():
        with torch.inference_mode():
            out = heads(data=x)["mbox_loc"]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    def run_opencv():
        cvnet.setInput(image_np)
        return cvnet.forward("detection_out")

    def run_opencv_heads():
        cvnet.setInput(image_np)
        return cvnet.forward(head_names)

    ours = run_protonet().cpu().numpy().reshape(-1, 7)
    theirs = run_opencv().reshape(-1, 7)
    theirs = theirs[~np.all(theirs == 0, axis=1)]
    same = ours.shape == theirs.shape
    print(f"model: {args.model}")
    print(f"input: {list(shape)}  torch threads: {torch.get_num_threads()}  opencv threads: {cv2.getNumThreads()}  "
          f"protonet device: {device}{' channels-last' if args.channels_last else ''}  torch {torch.__version__}  "
          f"opencv {cv2.__version__}")
    print(f"detections: protonet {ours.shape[0]}, opencv {theirs.shape[0]}{'' if same else '  (MISMATCH)'}")

    # Interleave the two libraries so that machine load drifts affect both alike.
    rows = []
    for label, fn_p, fn_c in (("full net (to detection_out)", run_protonet, run_opencv),
                              ("convolutions + heads (to mbox_*)", run_protonet_heads, run_opencv_heads)):
        p = median_ms(fn_p, args.iterations, args.warmup)
        c = median_ms(fn_c, args.iterations, args.warmup)
        rows.append((label, p, c))
    print(f"{'':34s} {'library':9s} {'median ms':>10s} {'min ms':>9s} {'max ms':>9s}   ({args.iterations} runs, "
          f"{args.warmup} warm-up)")
    for label, p, c in rows:
        print(f"{label:34s} {'protonet':9s} {p[0]:10.1f} {p[1]:9.1f} {p[2]:9.1f}")
        print(f"{'':34s} {'opencv':9s} {c[0]:10.1f} {c[1]:9.1f} {c[2]:9.1f}")
        print(f"{'':34s} ratio protonet/opencv (median): {p[0] / c[0]:.2f}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
