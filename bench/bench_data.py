"""Data-path benchmark: images/second in ONE worker for the full SSD/RefineDet train transform
of examples/refinedet/VGG16_VOC2007_512.py (7 batch samplers, distort, expand x4, emit CENTER,
WARP 512x512 with a random interp mode of 5, mirror, mean), against JPEG decoding alone.

    python bench/bench_data.py [IMAGE_DIR] [--seconds S]

IMAGE_DIR defaults to ../shared/data/voc-images. The images carry no labels here, so each gets
three fixed boxes (the sampler's jaccard constraints need objects). Prints both rates and the
ratio (pipeline time / decode time); the goal is <= 2.
"""
import argparse
import pathlib
import time

import cv2
import numpy as np

from protonet import caffe_pb2
from protonet.data.records import Sample, imdecode
from protonet.data.transform import AnnotatedPipeline, Transformer
from protonet.io.prototxt import parse_prototxt

# The train parameters of the fork's examples/refinedet/VGG16_VOC2007_512.py, as NetSpec emits them.
TRAIN_TRANSFORM = """
mirror: true
mean_value: 104 mean_value: 117 mean_value: 123
resize_param { prob: 1 resize_mode: WARP height: 512 width: 512
               interp_mode: LINEAR interp_mode: AREA interp_mode: NEAREST interp_mode: CUBIC
               interp_mode: LANCZOS4 }
emit_constraint { emit_type: CENTER }
distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 contrast_lower: 0.5
                contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18 saturation_prob: 0.5
                saturation_lower: 0.5 saturation_upper: 1.5 random_order_prob: 0.0 }
expand_param { prob: 0.5 max_expand_ratio: 4.0 }
"""
SAMPLERS = ["sampler { } max_trials: 1 max_sample: 1"] + [
    "sampler { min_scale: 0.3 max_scale: 1.0 min_aspect_ratio: 0.5 max_aspect_ratio: 2.0 } "
    f"sample_constraint {{ {c} }} max_trials: 50 max_sample: 1"
    for c in ("min_jaccard_overlap: 0.1", "min_jaccard_overlap: 0.3", "min_jaccard_overlap: 0.5",
              "min_jaccard_overlap: 0.7", "min_jaccard_overlap: 0.9", "max_jaccard_overlap: 1.0")]
BOXES = np.array([[0.1, 0.2, 0.45, 0.7], [0.5, 0.3, 0.9, 0.95], [0.3, 0.05, 0.6, 0.4]], np.float32)


def pipeline(reencode=False, interp=None):
    tp = parse_prototxt(TRAIN_TRANSFORM, caffe_pb2.TransformationParameter(), "bench")
    if interp:
        del tp.resize_param.interp_mode[:]
        tp.resize_param.interp_mode.append(caffe_pb2.ResizeParameter.Interp_mode.Value(interp))
    samplers = [parse_prototxt(s, caffe_pb2.BatchSampler(), "bench") for s in SAMPLERS]
    return AnnotatedPipeline(Transformer(tp, caffe_pb2.TRAIN, reencode_jpeg=reencode), samplers)


def rates(fns, blobs, seconds, rounds=10):
    """Images/second of each fn, rounds interleaved; the fastest round of each counts (the
    machine may be shared: other load only ever slows a round down)."""
    best = [0.0] * len(fns)
    per_round = seconds / rounds / len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            n, start = 0, time.perf_counter()
            while True:
                for b in blobs:
                    fn(b)
                n += len(blobs)
                elapsed = time.perf_counter() - start
                if elapsed >= per_round:
                    break
            best[i] = max(best[i], n / elapsed)
    return best


def main():
    default = pathlib.Path(__file__).resolve().parents[2] / "shared/data/voc-images"
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("images", nargs="?", default=str(default))
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--reencode", action="store_true", help="Caffe's JPEG round trips on")
    ap.add_argument("--interp", default=None, choices=["LINEAR", "AREA", "NEAREST", "CUBIC",
                                                       "LANCZOS4"],
                    help="use this one interp mode instead of the example's five")
    args = ap.parse_args()
    cv2.setNumThreads(1)  # one worker = one core
    files = sorted(p for p in pathlib.Path(args.images).iterdir()
                   if p.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no JPEG images in {args.images}")
    blobs = [f.read_bytes() for f in files]
    rng = np.random.default_rng(0)
    pipe = pipeline(args.reencode, args.interp)

    def decode(b):
        return imdecode(b, None, "bench")

    def full(b):
        s = Sample("bench", decode(b), annotated=True, boxes=BOXES.copy(),
                   labels=np.array([1, 2, 3]), instance_ids=np.zeros(3, np.int64),
                   difficult=np.zeros(3, bool))
        return pipe(s, rng)

    sizes = sorted({decode(b).shape[:2] for b in blobs})
    decode_rate, full_rate = rates([decode, full], blobs, args.seconds)
    print(f"images: {len(files)} from {args.images} (sizes {sizes[0]}..{sizes[-1]}), "
          f"cv2 {cv2.__version__}, 1 worker, cv2 threads 1"
          + (", JPEG re-encode ON" if args.reencode else "")
          + (f", interp {args.interp} only" if args.interp else ", interp: random of 5"))
    print(f"jpeg decode only : {decode_rate:8.1f} images/s  ({1000 / decode_rate:6.2f} ms/image)")
    print(f"full train 512   : {full_rate:8.1f} images/s  ({1000 / full_rate:6.2f} ms/image)")
    print(f"ratio full/decode: {decode_rate / full_rate:8.2f}  (goal <= 2)")


if __name__ == "__main__":
    main()
