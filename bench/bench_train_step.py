"""SSD300 (VGG16, VOC) training step, batch 4, on the CPU: protonet's Solver (SSD's train.prototxt,
its LMDB data layer with the full augmentation, MultiBoxLoss, SGD) against ssd.pytorch's train loop
(SSDAugmentation, DataLoader, MultiBoxLoss, torch.optim.SGD), same images and boxes, same process.

Each step is split into data wait, forward, loss, backward and update; what remains of the
step is Python between them. Steps alternate between the two so that machine load hits both.

    python bench/bench_train_step.py [--ssd-pytorch PATH] [--steps 7] [--batch 4] [--workers 0]

Without --ssd-pytorch (a checkout of amdegroot/ssd.pytorch) only protonet's column is printed.
"""
import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

# As the protonet command does (protonet/cli.py): waiting OpenMP threads sleep, so a shared
# machine's other work does not starve the threads doing ours. ACTIVE in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peers  # noqa: E402

TRAIN_NET = HERE.parent / "tests" / "fixtures" / "reference" / "ssd" / "ssd_pascal" / "train.prototxt"
PARTS = ("data", "forward", "loss", "backward", "update")
NOW = time.perf_counter   # --cpu-time: time.process_time (this process's CPU seconds: on a shared
                          # machine, time taken by other processes does not count)


class Clock:
    """Seconds per named part of the current step."""

    def __init__(self):
        self.parts = {}
        self._open = {}

    def start(self, name):
        self._open[name] = NOW()

    def stop(self, name):
        self.parts[name] = self.parts.get(name, 0.0) + NOW() - self._open.pop(name)


def protonet_step_fn(lmdb, labelmap, batch, workers, tmp):
    from protonet import caffe_pb2
    from protonet.io.prototxt import read_prototxt
    from protonet.solver.solver import RunOptions, Solver

    net = read_prototxt(TRAIN_NET, caffe_pb2.NetParameter)
    data = net.layer[0]
    data.data_param.source = lmdb
    data.data_param.batch_size = batch
    data.annotated_data_param.label_map_file = labelmap
    sp = caffe_pb2.SolverParameter(base_lr=0.001, momentum=0.9, weight_decay=0.0005, lr_policy="fixed",
                                   max_iter=10**6, type="SGD", random_seed=1, snapshot_prefix=f"{tmp}/snap",
                                   snapshot_after_train=False)
    sp.train_net_param.CopyFrom(net)
    solver = Solver(sp, RunOptions(data_workers=workers))
    layers = solver.net.layers
    clock = Clock()
    loss_layer = next(l for l in layers.values() if l.param.type == "MultiBoxLoss")
    data_layer = next(l for l in layers.values() if getattr(l, "is_data", False))
    for name, layer in (("data", data_layer), ("loss", loss_layer)):
        layer.register_forward_pre_hook(lambda m, a, name=name: clock.start(name))
        layer.register_forward_hook(lambda m, a, o, name=name: clock.stop(name))
    def net_done(module, args, kwargs, out):
        clock.stop("net")
        clock.start("backward")

    solver.net.register_forward_pre_hook(lambda m, a, k: clock.start("net"), with_kwargs=True)
    solver.net.register_forward_hook(net_done, with_kwargs=True)
    apply = solver.updater.apply

    def timed_apply(*args):
        clock.stop("backward")
        clock.start("update")
        apply(*args)
        clock.stop("update")

    solver.updater.apply = timed_apply

    def step():
        clock.parts = {}
        t0 = NOW()
        solver.step(1)
        parts = dict(clock.parts)
        parts["forward"] = parts.pop("net") - parts["data"] - parts["loss"]
        return NOW() - t0, parts

    return step


def ssd_pytorch_step_fn(peer, batch, workers):
    import cv2
    import numpy as np

    class Images(torch.utils.data.Dataset):
        def __init__(self):
            self.paths = peers.image_paths()
            self.augment = peer.SSDAugmentation(300, (104, 117, 123))

        def __len__(self):
            return 10**9

        def __getitem__(self, i):
            img = cv2.imread(self.paths[i % len(self.paths)])
            boxes, labels = peers.BOXES[:, :4].copy(), peers.BOXES[:, 4].copy()
            img, boxes, labels = self.augment(img, boxes, labels)
            img = torch.from_numpy(img[:, :, (2, 1, 0)]).permute(2, 0, 1)
            return img, np.hstack((boxes, np.expand_dims(labels - 1, axis=1)))

    torch.manual_seed(1)
    net = peer.build_ssd("train", 300, 21)
    net.train()
    criterion = peer.MultiBoxLoss(21, 0.5, True, 0, True, 3, 0.5, False, use_gpu=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9, weight_decay=0.0005)
    loader = iter(torch.utils.data.DataLoader(Images(), batch_size=batch, num_workers=workers, shuffle=False,
                                              collate_fn=peer.detection_collate))
    clock = Clock()

    def step():
        clock.parts = {}
        t0 = NOW()
        clock.start("data")
        images, targets = next(loader)
        clock.stop("data")
        clock.start("forward")
        out = net(images)
        clock.stop("forward")
        clock.start("loss")
        loss_l, loss_c = criterion(out, targets)
        loss = loss_l + loss_c
        clock.stop("loss")
        optimizer.zero_grad()
        clock.start("backward")
        loss.backward()
        clock.stop("backward")
        clock.start("update")
        optimizer.step()
        clock.stop("update")
        return NOW() - t0, dict(clock.parts)

    return step


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ssd-pytorch", default=None, help="path of an amdegroot/ssd.pytorch checkout")
    ap.add_argument("--steps", type=int, default=7, help="timed steps of each (medians)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0, help="data worker processes for both")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", default=str(peers.IMAGES))
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--cpu-time", action="store_true",
                    help="count this process's CPU time instead of wall time (use with --threads 1)")
    args = ap.parse_args(argv)
    global NOW
    if args.cpu_time:
        NOW = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        lmdb, labelmap = peers.make_lmdb(args.images, tmp)
        fns = {"protonet": protonet_step_fn(lmdb, labelmap, args.batch, args.workers, tmp)}
        if args.ssd_pytorch:
            fns["ssd.pytorch"] = ssd_pytorch_step_fn(peers.load_ssd_pytorch(args.ssd_pytorch), args.batch,
                                                     args.workers)
        for fn in fns.values():
            for _ in range(args.warmup):
                fn()
        totals = {k: [] for k in fns}
        parts = {k: {p: [] for p in PARTS} for k in fns}
        for _ in range(args.steps):
            for k, fn in fns.items():
                total, split = fn()
                totals[k].append(total * 1000)
                for p in PARTS:
                    parts[k][p].append(split.get(p, 0.0) * 1000)
    print(f"SSD300 train step, batch {args.batch}, {args.workers} data workers, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); medians of {args.steps} steps "
          f"({'process CPU' if args.cpu_time else 'wall'} ms)")
    print(f"{'':12s} {'step':>8s} " + " ".join(f"{p:>9s}" for p in PARTS) + f" {'python':>8s}")
    med = {}
    for k in fns:
        m = {p: statistics.median(parts[k][p]) for p in PARTS}
        med[k] = statistics.median(totals[k])
        print(f"{k:12s} {med[k]:8.1f} " + " ".join(f"{m[p]:9.1f}" for p in PARTS)
              + f" {med[k] - sum(m.values()):8.1f}")
    if "ssd.pytorch" in med:
        print(f"ratio protonet / ssd.pytorch (median step): {med['protonet'] / med['ssd.pytorch']:.2f}")
    if args.markdown:
        peer = f"{med['ssd.pytorch']:.0f}" if "ssd.pytorch" in med else "not measured"
        ratio = f"{med['protonet'] / med['ssd.pytorch']:.2f}" if "ssd.pytorch" in med else ""
        print(f"| train step b{args.batch} (data+fwd+loss+bwd+update, ms) | | {peer} | {med['protonet']:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
