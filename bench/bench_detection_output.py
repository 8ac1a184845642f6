"""DetectionOutput alone at SSD300 sizes (8732 priors, 21 classes, top_k 400, keep_top_k 200,
confidence 0.01), batch 1 and 8, same inputs for all, side by side in one run:

- protonet graph: protonet.detection_decode.detection_output, tensor operations only (what the
  layer runs, and what torch.compile / torch.export / the exporters see);
- protonet box.nms: the same rows through box.nms, whose work follows the candidate count read on
  the host (the implementation before the graph-friendly one; still used for eta < 1);
- OpenCV dnn: a net of three Input layers and the DetectionOutput layer (cv2.dnn.readNetFromCaffe).

Two score patterns: 'trained' (background dominant, about 60 confident priors per image and a few
dozen candidates per class) and 'dense' (near-uniform scores, as with seeded random weights: every
prior passes 0.01, every class fills its top_k). Medians (and minima) of --repeat runs, in ms.
    python bench/bench_detection_output.py [--repeat 15] [--threads 1]
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_detection_layers import OUT, layer_param, ssd300_priors  # noqa: E402

from protonet import caffe_pb2  # noqa: E402
from protonet.detection_decode import DetectionSettings, detection_output, detection_output_adaptive  # noqa: E402
from protonet.io.prototxt import write_prototxt  # noqa: E402

P, C = 8732, 21


def scores(num, pattern, gen):
    if pattern == "dense":
        logits = gen.normal(0, 0.5, (num, P, C)).astype(np.float32)
    else:
        logits = gen.normal(0, 1, (num, P, C)).astype(np.float32)
        logits[..., 0] += 8
        for i in range(num):
            hot = gen.choice(P, 60, replace=False)
            logits[i, hot, gen.integers(1, C, 60)] += 9
    return torch.softmax(torch.from_numpy(logits), -1).reshape(num, -1)


def opencv_net(tmp, num):
    import cv2

    net = caffe_pb2.NetParameter(name="detection_output")
    for name, shape in (("loc", [num, P * 4]), ("conf", [num, P * C]), ("prior", [1, 2, P * 4])):
        layer = net.layer.add(name=name, type="Input", top=[name])
        layer.input_param.shape.add().dim.extend(shape)
    det = net.layer.add()
    det.CopyFrom(layer_param("DetectionOutput", OUT))
    det.name = "detection_out"
    det.bottom.extend(["loc", "conf", "prior"])
    det.top.append("detection_out")
    path = os.path.join(tmp, f"det{num}.prototxt")
    write_prototxt(net, path)
    cv = cv2.dnn.readNetFromCaffe(path)
    cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return cv


def timed(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (0: library defaults)")
    args = ap.parse_args(argv)
    import cv2

    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    settings = DetectionSettings.from_param(layer_param("DetectionOutput", OUT).detection_output_param)
    prior = ssd300_priors()
    gen = np.random.default_rng(0)
    print(f"torch {torch.__version__} threads {torch.get_num_threads()}, opencv {cv2.__version__} threads "
          f"{cv2.getNumThreads()}; ms, median (min) of {args.repeat}")
    print(f"{'inputs':14s} {'protonet graph':>16s} {'protonet box.nms':>18s} {'OpenCV dnn':>16s}  rows")
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for num in (1, 8):
            cv = opencv_net(tmp, num)
            for pattern in ("trained", "dense"):
                conf = scores(num, pattern, gen)
                loc = torch.tensor(gen.normal(0, 0.3, (num, P * 4)), dtype=torch.float32)
                graph = detection_output(loc, conf, prior, settings)
                old = detection_output_adaptive(loc, conf, prior, settings)
                cv.setInput(loc.numpy(), "loc")
                cv.setInput(conf.numpy(), "conf")
                cv.setInput(prior.numpy(), "prior")
                cv_rows = cv.forward("detection_out").reshape(-1, 7)
                same = "same rows" if torch.equal(graph, old) else "ROWS DIFFER"
                t_graph = timed(lambda: detection_output(loc, conf, prior, settings), args.repeat)
                t_old = timed(lambda: detection_output_adaptive(loc, conf, prior, settings), args.repeat)
                t_cv = timed(lambda: cv.forward("detection_out"), args.repeat)
                cells = [f"{m:8.1f} ({lo:.1f})" for m, lo in (t_graph, t_old, t_cv)]
                print(f"b{num} {pattern:10s} {cells[0]:>16s} {cells[1]:>18s} {cells[2]:>16s}  "
                      f"{graph.shape[2]} ({same}; OpenCV {cv_rows.shape[0]})")


if __name__ == "__main__":
    main()
