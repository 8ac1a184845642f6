"""SSD300's data path (decode + the full SSD augmentation of ssd_pascal's train.prototxt -> a batch):
images/s in one process for protonet, for ssd.pytorch's SSDAugmentation and for JPEG decoding
alone, then protonet's worker processes (1 and 2 by default) feeding batches through its
Prefetcher, with the scaling against one worker.

    python bench/bench_data_path.py [--ssd-pytorch PATH] [--rounds 7] [--workers 1,2] [--batch 8]

Same JPEGs and boxes for all (bench/peers.py); medians of --rounds rounds, the variants
interleaved within each round. Without --ssd-pytorch its column is left out.
"""
import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
# As the protonet command does (protonet/cli.py): waiting OpenMP threads sleep, so a shared
# machine's other work does not starve the threads doing ours. ACTIVE in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peers  # noqa: E402

TRAIN_NET = HERE.parent / "tests" / "fixtures" / "reference" / "ssd" / "ssd_pascal" / "train.prototxt"


def protonet_maker(lmdb, labelmap, batch, seed=1):
    """protonet's BatchMaker for the SSD300 train data layer over `lmdb`."""
    from protonet import caffe_pb2
    from protonet.io.prototxt import read_prototxt
    from protonet.layers.base import NetContext
    from protonet.layers.data import AnnotatedDataLayer

    net = read_prototxt(TRAIN_NET, caffe_pb2.NetParameter)
    layer = net.layer[0]
    layer.data_param.source = lmdb
    layer.data_param.batch_size = batch
    layer.annotated_data_param.label_map_file = labelmap
    data = AnnotatedDataLayer(layer, [], NetContext(phase=caffe_pb2.TRAIN, seed=seed, data_workers=0))
    return data.batches.maker


def ssd_pytorch_batch(peer, blobs, batch):
    augment = peer.SSDAugmentation(300, (104, 117, 123))
    state = {"i": 0}

    def make():
        items = []
        for _ in range(batch):
            blob = blobs[state["i"] % len(blobs)]
            state["i"] += 1
            img = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
            img, boxes, labels = augment(img, peers.BOXES[:, :4].copy(), peers.BOXES[:, 4].copy())
            items.append((torch.from_numpy(img[:, :, (2, 1, 0)]).permute(2, 0, 1),
                          np.hstack((boxes, labels[:, None] - 1))))
        return peer.detection_collate(items)

    return make


def per_process(fns, batch, rounds, seconds, clock=time.perf_counter):
    """images/s of each fn (one batch per call): median over rounds, interleaved."""
    rates = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            n, t0 = 0, clock()
            while True:
                fn()
                n += batch
                elapsed = clock() - t0
                if elapsed >= seconds:
                    break
            rates[k].append(n / elapsed)
    return {k: statistics.median(v) for k, v in rates.items()}


def with_workers(maker, workers, batches):
    """(images/s, worker CPU ms per image, main-process CPU ms per image) through a Prefetcher
    with `workers` processes. The CPU times tell the scaling a machine with idle cores would see
    (on a loaded machine wall time cannot scale)."""
    import gc
    import resource

    from protonet.data.loader import Prefetcher

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    feed = Prefetcher(maker, workers=workers, prefetch=2 * workers)
    next(feed)
    t0, main0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(feed)
    wall, main = time.perf_counter() - t0, time.process_time() - main0
    feed.close()
    gc.collect()
    time.sleep(0.5)   # the workers exit; their CPU time is then counted in RUSAGE_CHILDREN
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    images = (batches + 1) * maker.batch_size
    cpu = (after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime) * 1000 / images
    return batches * maker.batch_size / wall, cpu, main * 1000 / (batches * maker.batch_size)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ssd-pytorch", default=None, help="path of an amdegroot/ssd.pytorch checkout")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=1.0, help="per variant per round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", default="1,2", help="worker counts to measure ('' for none)")
    ap.add_argument("--worker-batches", type=int, default=24)
    ap.add_argument("--images", default=str(peers.IMAGES))
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--wall-time", action="store_true",
                    help="time the one-process rates by the wall clock (default: this process's CPU time, which "
                         "other work on a shared machine does not inflate; the work is single-threaded)")
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    blobs = [pathlib.Path(p).read_bytes() for p in peers.image_paths(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        lmdb, labelmap = peers.make_lmdb(args.images, tmp)
        maker = protonet_maker(lmdb, labelmap, args.batch)
        counter = iter(range(10**9))
        fns = {"decode alone": lambda: [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
                                        for b in (blobs * args.batch)[:args.batch]],
               "protonet": lambda: maker[next(counter)]}
        if args.ssd_pytorch:
            fns["ssd.pytorch"] = ssd_pytorch_batch(peers.load_ssd_pytorch(args.ssd_pytorch), blobs, args.batch)
        rates = per_process(fns, args.batch, args.rounds, args.seconds,
                            clock=time.perf_counter if args.wall_time else time.process_time)
        scaling = {}
        for w in [int(v) for v in args.workers.split(",") if v.strip()]:
            scaling[w] = with_workers(maker, w, args.worker_batches)
    print(f"SSD300 train data path (ssd_pascal transform + 7 batch samplers), batch {args.batch}, "
          f"{len(blobs)} JPEGs, cv2 {cv2.__version__}; medians of {args.rounds} rounds; one-process rates by "
          f"{'wall' if args.wall_time else 'process CPU'} time, workers by wall time")
    for k, r in rates.items():
        print(f"  1 process  {k:14s} {r:8.1f} images/s")
    if "ssd.pytorch" in rates:
        print(f"  protonet / ssd.pytorch: {rates['protonet'] / rates['ssd.pytorch']:.2f}x faster (goal >= 2.5)")
    print(f"  protonet costs {rates['decode alone'] / rates['protonet']:.2f}x the decode alone")
    base = scaling.get(1)
    for w, (r, cpu, main) in scaling.items():
        extra = ""
        if base and w > 1:
            extra = (f"  wall {r / base[0]:.2f}x one worker; by CPU per image {w * base[1] / cpu:.2f}x "
                     f"(goal >= {0.85 * w:.2f})")
        print(f"  {w} worker process(es): {r:8.1f} images/s, workers {cpu:.2f} CPU ms/image, main process "
              f"{main:.2f} CPU ms/image{extra}")
    if args.markdown:
        peer = f"{rates['ssd.pytorch']:.1f}" if "ssd.pytorch" in rates else "not measured"
        ratio = (f"{rates['protonet'] / rates['ssd.pytorch']:.2f}x faster than ssd.pytorch; "
                 if "ssd.pytorch" in rates else "")
        print(f"| decode + SSD augmentation -> batch (img/s, 1 process) | decode alone {rates['decode alone']:.0f} "
              f"| {peer} | {rates['protonet']:.0f} | {ratio}{rates['decode alone'] / rates['protonet']:.1f}x the "
              f"decode cost |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
