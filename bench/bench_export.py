"""SSD300 (VGG16, VOC) exported: file sizes, export and load times, and CPU latency of the whole
detector (DetectionOutput included) in onnxruntime and TorchScript next to protonet and OpenCV dnn,
same seeded weights, same input, same threads, one process.

    python bench/bench_export.py [--model deploy.prototxt] [--iterations 10] [--threads 1] [--batch 1]
"""
import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_ssd300_forward import DEFAULT_PROTOTXT, seeded_weights  # noqa: E402


def median_ms(fn, iterations, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_PROTOTXT))
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="threads for every runtime (0: their defaults)")
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args(argv)

    import cv2
    import onnxruntime as ort

    from protonet import caffe_pb2
    from protonet.export import export_net
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
    net = Net(param, phase="TEST").eval()
    seeded_weights(net, seed=1)
    shape = (args.batch,) + tuple(net.blob_shapes[net.input_names[0]][1:])
    image = torch.from_numpy(np.random.RandomState(3).randn(*shape).astype(np.float32))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, ts_path = os.path.join(tmp, "ssd.onnx"), os.path.join(tmp, "ssd.pt")
        _, t_onnx = timed(lambda: export_net(net, "onnx", onnx_path))
        _, t_ts = timed(lambda: export_net(net, "torchscript", ts_path))
        options = ort.SessionOptions()
        if args.threads:
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
        session, load_onnx = timed(lambda: ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"]))
        script, load_ts = timed(lambda: torch.jit.load(ts_path))
        caffemodel, prototxt = os.path.join(tmp, "ssd.caffemodel"), os.path.join(tmp, "deploy.prototxt")
        net.save_weights(caffemodel)
        write_prototxt(param, prototxt)
        cvnet, load_cv = timed(lambda: cv2.dnn.readNetFromCaffe(prototxt, caffemodel))
        _, load_protonet = timed(lambda: Net(param, phase="TEST", weights=caffemodel))
        sizes = {"onnx": os.path.getsize(onnx_path), "torchscript": os.path.getsize(ts_path),
                 "caffemodel": os.path.getsize(caffemodel)}
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    x = image.numpy()
    name = session.get_inputs()[0].name

    def run_protonet():
        with torch.inference_mode():
            rows["protonet"] = net(image, outputs="detection_out").numpy()

    def run_ts():
        with torch.inference_mode():
            rows["torchscript"] = script(image).numpy()

    def run_onnx():
        rows["onnxruntime"] = session.run(None, {name: x})[0]

    def run_cv():
        cvnet.setInput(x)
        out = cvnet.forward("detection_out").reshape(-1, 7)
        rows["opencv"] = out[~np.all(out == 0, axis=1)]

    latency = {k: median_ms(fn, args.iterations) for k, fn in
               (("protonet", run_protonet), ("torchscript", run_ts), ("onnxruntime", run_onnx), ("opencv", run_cv))}
    print(f"model {args.model}, input {list(shape)}, threads {args.threads or 'default'}, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, opencv {cv2.__version__}; medians of {args.iterations}")
    print(f"export: onnx {t_onnx:.1f} s, torchscript {t_ts:.1f} s (each with its own check)")
    print(f"{'runtime':12s} {'file MB':>8s} {'load s':>8s} {'latency ms':>11s} {'rows':>6s}")
    files = {"protonet": ("caffemodel", load_protonet), "torchscript": ("torchscript", load_ts),
             "onnxruntime": ("onnx", load_onnx), "opencv": ("caffemodel", load_cv)}
    for runtime, ms in latency.items():
        kind, load = files[runtime]
        print(f"{runtime:12s} {sizes[kind] / 1e6:8.1f} {load:8.2f} {ms:11.1f} {rows[runtime].reshape(-1, 7).shape[0]:6d}")
    ref = rows["protonet"].reshape(-1, 7)
    for runtime in ("torchscript", "onnxruntime"):
        other = rows[runtime].reshape(-1, 7)
        same = other.shape == ref.shape and np.abs(other - ref).max() <= 1e-4
        print(f"{runtime} rows {'equal protonet within 1e-4' if same else 'DIFFER from protonet'}")


if __name__ == "__main__":
    main()
