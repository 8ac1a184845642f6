"""Survey deploy prototxts: does protonet build each, run it on a random input with seeded weights,
and (with --opencv) agree with OpenCV's dnn blob for blob?

    python bench/survey_deploys.py DIR_OR_FILES... [--opencv] [--out results.jsonl]

One JSON line per file (stage build | run | ok; the error; OpenCV's verdict: agree, differs with
the worst blob, or opencv-fails), then the counts. Each file runs in a process of its own with a
time limit, so one huge or broken net does not stop the survey. No file is shipped with protonet:
point it at deploys you have (e.g. ../shared/realworld).
"""
import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile

LIMIT_S = 600


def seed_weights(net, torch):
    """He-scaled convolutions, BatchNorm statistics of order 1, Scale near 1, small biases; then each
    convolution rescaled so its output has unit spread on the input (box heads a quarter)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in net.layers.values():
            kind = layer.param.type
            for i, b in enumerate(layer.blobs):
                if kind == "BatchNorm":
                    b.copy_([0.1 * torch.randn(b.shape, generator=g), 1 + 0.2 * torch.rand(b.shape, generator=g),
                             torch.ones_like(b)][min(i, 2)])
                elif kind in ("Scale", "Normalize") and i == 0:
                    b.copy_((20 if kind == "Normalize" else 1) + 0.1 * torch.randn(b.shape, generator=g))
                elif kind == "PReLU":
                    b.copy_(0.25 + 0.05 * torch.randn(b.shape, generator=g))
                elif i == 0 and b.dim() >= 2:
                    b.copy_(torch.randn(b.shape, generator=g) * math.sqrt(2.0 / b[0].numel()))
                else:
                    b.copy_(0.05 * torch.randn(b.shape, generator=g))
    return g


def calibrate(net, inputs, torch):
    kinds = ("Convolution", "DepthwiseConvolution", "ConvolutionDepthwise", "InnerProduct", "Deconvolution")

    def rescale(layer, args, out):
        if isinstance(out, tuple) or out.numel() < 2:
            return out
        factor = (0.25 if "loc" in layer.name else 1.0) / max(float(out.std()), 1e-12)
        for blob in layer.blobs:
            blob.mul_(factor)
        return out * factor

    hooks = [l.register_forward_hook(rescale) for l in net.layers.values() if l.param.type in kinds]
    with torch.no_grad():
        net(**inputs)
    for h in hooks:
        h.remove()


def center_taps_on_one_pixel_maps(net, torch):
    """OpenCV 4.14 computes grouped convolutions over 1x1 maps wrongly (tests/test_realworld.py):
    keep only their centre taps, so both give the exact result."""
    with torch.no_grad():
        for layer in net.layers.values():
            if getattr(layer, "group", 1) > 1 and layer.bottom_shapes[0][2:] == (1, 1) and layer.asym_pad is None:
                keep = torch.zeros_like(layer.blobs[0])
                keep[:, :, layer.pad[0], layer.pad[1]] = 1
                layer.blobs[0].mul_(keep)


def opencv_verdict(net, ours, inputs):
    """Compare every blob OpenCV exposes (its layer fusion off). OpenCV lacks the name
    DepthwiseConvolution (Caffe's grouped convolution): renamed Convolution for it."""
    import cv2
    import numpy as np
    from protonet.io.prototxt import write_prototxt

    param = type(net.net_param)()
    param.CopyFrom(net.net_param)
    for layer in param.layer:
        if layer.type == "DepthwiseConvolution":
            layer.type = "Convolution"
        if layer.type == "DetectionOutput":
            layer.detection_output_param.ClearField("save_output_param")
    seen, producers = {}, {}
    for key, lp in zip(net.layers, net.net_param.layer):  # OpenCV names a repeated name NAME_1, ...
        k = seen.get(lp.name, 0)
        seen[lp.name] = k + 1
        if lp.type not in ("Input", "DetectionOutput", "Silence") and len(lp.top):
            producers[lp.top[0]] = lp.name if k == 0 else f"{lp.name}_{k}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            write_prototxt(param, f"{tmp}/d.prototxt")
            net.save_weights(f"{tmp}/w.caffemodel")
            cv = cv2.dnn.readNetFromCaffe(f"{tmp}/d.prototxt", f"{tmp}/w.caffemodel")
            cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            cv.enableFusion(False)
            for name, x in inputs.items():
                cv.setInput(x.numpy(), name)
            exposed = set(cv.getLayerNames())
            blobs = [b for b in producers if producers[b] in exposed]
            outs = cv.forward([producers[b] for b in blobs])
    except Exception as exc:  # noqa: BLE001 - OpenCV's own failures are a verdict
        return {"status": "opencv-fails", "error": str(exc).strip().splitlines()[-1][:200]}
    worst, where = 0.0, None
    for blob, theirs in zip(blobs, outs):
        a = ours[blob].numpy()
        if theirs.size != a.size:
            return {"status": "size-differs", "blob": blob}
        err = float(np.abs(a - theirs.reshape(a.shape)).max()) / max(1.0, float(np.abs(a).max()))
        if err > worst:
            worst, where = err, blob
    return {"status": "agree" if worst <= 1e-4 else "differs", "worst": worst, "blob": where, "compared": len(blobs)}


def survey_one(path, with_opencv):
    import logging

    import torch
    from protonet.net import Net

    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    out = {"file": os.path.basename(path)}
    try:
        net = Net(path, phase="TEST")
    except Exception as exc:  # noqa: BLE001 - every failure is a survey result
        return dict(out, stage="build", error=f"{type(exc).__name__}: {exc}"[:400])
    try:
        g = seed_weights(net, torch)
        inputs = {n: torch.randn(net.blob_shapes[n], generator=g) for n in net.input_names}
        calibrate(net, inputs, torch)
        if with_opencv:
            center_taps_on_one_pixel_maps(net, torch)
        with torch.no_grad():
            ours = net(**inputs)
    except Exception as exc:  # noqa: BLE001
        return dict(out, stage="run", error=f"{type(exc).__name__}: {exc}"[:400])
    out["stage"] = "ok"
    if with_opencv:
        out["opencv"] = opencv_verdict(net, ours, inputs)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--opencv", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(survey_one(args.one, args.opencv)))
        return
    files = sorted(str(f) for p in args.paths for f in (pathlib.Path(p).iterdir() if pathlib.Path(p).is_dir()
                                                          else [pathlib.Path(p)]) if f.suffix in (".prototxt", ".txt"))
    counts, sink = {}, open(args.out, "w") if args.out else None
    for path in files:
        cmd = [sys.executable, __file__, "--one", path] + (["--opencv"] if args.opencv else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT_S)
            lines = proc.stdout.strip().splitlines()
            rec = json.loads(lines[-1]) if lines else {"file": os.path.basename(path), "stage": "crash",
                                                       "error": proc.stderr.strip()[-300:]}
        except subprocess.TimeoutExpired:
            rec = {"file": os.path.basename(path), "stage": "timeout"}
        key = rec["stage"] + (f"/{rec['opencv']['status']}" if "opencv" in rec else "")
        counts[key] = counts.get(key, 0) + 1
        line = json.dumps(rec)
        print(line, flush=True)
        if sink:
            sink.write(line + "\n")
    print(json.dumps({"files": len(files), "counts": counts}))


if __name__ == "__main__":
    main()
