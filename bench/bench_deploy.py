"""Deploy forward b1 including DetectionOutput: protonet (layer by layer, inference mode fp32 and
bf16) against OpenCV dnn, in one process, same prototxt, same seeded weights, same input.

The variants run interleaved, one call each per round, so that load on a shared machine hits all
of them alike; the medians of --repeat rounds are reported with their ratio to OpenCV.

    python bench/bench_deploy.py [--models ssd300,mobilenet] [--repeat 7] [--threads 2] [--markdown]
"""
import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
# As the protonet command does (protonet/cli.py): waiting OpenMP threads sleep, so a shared
# machine's other work does not starve the threads doing ours. ACTIVE in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_ssd300_forward import seeded_weights  # noqa: E402

FIX = HERE.parent / "tests" / "fixtures" / "net"
MODELS = {"ssd300": FIX / "ssd300_vgg16_voc_deploy.prototxt", "mobilenet": FIX / "mobilenet_ssd_deploy.prototxt"}


def build(model):
    from protonet import caffe_pb2
    from protonet.io.prototxt import read_prototxt
    from protonet.net import Net

    param = read_prototxt(model, caffe_pb2.NetParameter)
    for layer in param.layer:
        if layer.type == "DetectionOutput":
            layer.detection_output_param.ClearField("save_output_param")
    torch.manual_seed(0)
    net = Net(param, phase="TEST")
    seeded_weights(net, seed=1)
    return param, net


def opencv_net(param, net):
    import cv2

    from protonet.io.prototxt import write_prototxt

    with tempfile.TemporaryDirectory() as tmp:
        weights, proto = os.path.join(tmp, "net.caffemodel"), os.path.join(tmp, "deploy.prototxt")
        net.save_weights(weights)
        write_prototxt(param, proto)
        cvnet = cv2.dnn.readNetFromCaffe(proto, weights)
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return cvnet


def variants(param, net, image):
    """name -> callable returning detection rows (n, 7)."""
    from protonet.net.fusion import bf16_supported

    cvnet = opencv_net(param, net)
    image_np = image.numpy()

    def opencv():
        cvnet.setInput(image_np)
        rows = cvnet.forward("detection_out").reshape(-1, 7)
        return rows[~np.all(rows == 0, axis=1)]

    def protonet(mode):
        def run():
            if mode == "layers":
                net.set_inference(False)
            else:
                net.set_inference(precision=mode)
            with torch.inference_mode():
                return net(data=image)["detection_out"].reshape(-1, 7).numpy()
        return run

    out = {"opencv": opencv, "protonet layer by layer": protonet("layers"),
           "protonet inference fp32": protonet("fp32")}
    if bf16_supported():
        out["protonet inference bf16"] = protonet("bf16")
    return out


def measure(fns, repeat, warmup=2, clock=time.perf_counter):
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = clock()
            fn()
            times[k].append((clock() - t0) * 1000.0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ssd300,mobilenet")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2, help="threads for both libraries (0: defaults)")
    ap.add_argument("--markdown", action="store_true", help="print the README table rows")
    ap.add_argument("--cpu-time", action="store_true",
                    help="count this process's CPU time, not wall time (a shared machine; use --threads 1)")
    args = ap.parse_args(argv)
    import cv2

    from protonet.net.fusion import bf16_supported

    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), opencv {cv2.__version__} "
          f"({cv2.getNumThreads()} threads), bf16 {'native' if bf16_supported() else 'not supported on this CPU'}; "
          f"medians of {args.repeat}, interleaved, {'process CPU' if args.cpu_time else 'wall'} time, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    rows = []
    for key in args.models.split(","):
        param, net = build(MODELS[key])
        image = torch.from_numpy(np.random.RandomState(3).randn(*net.blob_shapes[net.input_names[0]])
                                 .astype(np.float32))
        fns = variants(param, net, image)
        counts = {k: fn().shape[0] for k, fn in fns.items()}
        med = measure(fns, args.repeat, clock=time.process_time if args.cpu_time else time.perf_counter)
        base = med["opencv"]
        print(f"{key}: detections {counts}")
        for k, ms in med.items():
            print(f"  {k:26s} {ms:8.1f} ms   {ms / base:5.2f} x opencv")
            rows.append((key, k, ms, ms / base))
    if args.markdown:
        print("\n| deploy forward b1 incl. detection | variant | ms | / OpenCV |\n|---|---|---|---|")
        for key, k, ms, ratio in rows:
            print(f"| {key} | {k} | {ms:.1f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
