"""Training throughput on a GPU: SSD300 and RefineDet320 (VGG16, VOC train.prototxt of the forks),
batch 32, images/s and peak memory for fp32, --amp bf16, --amp bf16 --channels-last and
torch.compile, with the share of the step spent waiting for data; against torchvision's
ssd300_vgg16 training step (random weights, same batch, same GPU) when torchvision imports.

    python bench/bench_gpu.py [--batch 32] [--steps 7] [--models ssd300,refinedet320] [--configs ...]
    python bench/bench_gpu.py --smoke      # CPU, batch 1, one step per config: checks the script runs

The data layers read an LMDB of the JPEGs in ../shared/data/voc-images (three boxes each) with the
full SSD augmentation in worker processes (--workers); medians of --steps steps after --warmup.
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

REF = HERE.parent / "tests" / "fixtures" / "reference"
MODELS = {"ssd300": REF / "ssd" / "ssd_pascal" / "train.prototxt",
          "refinedet320": REF / "refinedet" / "VGG16_VOC2007_320" / "train.prototxt"}
CONFIGS = {"fp32": {}, "bf16": {"amp": "bf16"}, "bf16-cl": {"amp": "bf16", "channels_last": True},
           "bf16-cl-compile": {"amp": "bf16", "channels_last": True, "compile": True}}


def solver_for(model, lmdb, labelmap, batch, device, workers, config, tmp):
    from protonet import caffe_pb2
    from protonet.io.prototxt import read_prototxt
    from protonet.solver.solver import RunOptions, Solver

    net = read_prototxt(MODELS[model], caffe_pb2.NetParameter)
    data = next(l for l in net.layer if l.type == "AnnotatedData")
    data.data_param.source = lmdb
    data.data_param.batch_size = batch
    data.annotated_data_param.label_map_file = labelmap
    sp = caffe_pb2.SolverParameter(base_lr=0.0001, momentum=0.9, weight_decay=0.0005, lr_policy="fixed",
                                   max_iter=10**6, type="SGD", random_seed=1, snapshot_prefix=f"{tmp}/s",
                                   snapshot_after_train=False)
    sp.train_net_param.CopyFrom(net)
    options = RunOptions(device=str(device), amp=config.get("amp"), channels_last=config.get("channels_last", False),
                         data_workers=workers)
    solver = Solver(sp, options)
    if config.get("compile"):
        # The layers' arithmetic compiled; the net's Python walk over its layers stays eager.
        for layer in solver.net.layers.values():
            if layer.param.type in ("Convolution", "ReLU", "Pooling", "Normalize"):
                layer.forward = torch.compile(layer.forward, dynamic=False)
    return solver


def time_protonet(solver, steps, warmup, sync):
    data_layer = next(l for l in solver.net.layers.values() if getattr(l, "is_data", False))
    waits = []
    data_layer.register_forward_pre_hook(lambda m, a: waits.append(-time.perf_counter()))
    data_layer.register_forward_hook(lambda m, a, o: waits.__setitem__(-1, waits[-1] + time.perf_counter()))
    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        solver.step(1)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return step, statistics.median(waits[warmup:]) / step


def torchvision_step(batch, device, steps, warmup, sync):
    """torchvision's ssd300_vgg16 (random weights), same batch size, synthetic boxes."""
    import torchvision

    model = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None, num_classes=21)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0001, momentum=0.9, weight_decay=0.0005)
    images = [torch.rand(3, 300, 300, device=device) for _ in range(batch)]
    boxes = torch.tensor(peers.BOXES[:, :4] * 300, device=device)
    targets = [{"boxes": boxes, "labels": torch.tensor([12, 15, 7], device=device)} for _ in range(batch)]
    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        losses = model(images, targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="data worker processes (default: protonet's)")
    ap.add_argument("--models", default="ssd300,refinedet320")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="CPU, batch 1, one step, fp32 and bf16: the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.device, args.batch, args.steps, args.warmup, args.workers = "cpu", 1, 1, 0, 0
        args.configs = "fp32,bf16"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("GPU not measured: no CUDA device here (use --smoke for the CPU check)")
        return 0
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = torch.cuda.get_device_name(device) if cuda else "CPU (smoke)"
    print(f"{name}, torch {torch.__version__}, batch {args.batch}, medians of {args.steps} steps after {args.warmup}")
    print(f"{'model':14s} {'config':16s} {'images/s':>9s} {'step ms':>9s} {'peak GiB':>9s} {'data wait':>10s}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lmdb, labelmap = peers.make_lmdb(peers.IMAGES, tmp)
        for model in args.models.split(","):
            for config in args.configs.split(","):
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    solver = solver_for(model, lmdb, labelmap, args.batch, device, args.workers, CONFIGS[config], tmp)
                    step, wait = time_protonet(solver, args.steps, args.warmup, sync)
                except Exception as exc:  # a config that cannot run here is a row, not the end of the run
                    print(f"{model:14s} {config:16s} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
                    continue
                peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
                rows.append((model, config, args.batch / step, step * 1000, peak, wait))
                print(f"{model:14s} {config:16s} {args.batch / step:9.1f} {step * 1000:9.1f} {peak:9.2f} {wait:10.1%}")
                del solver
        try:
            import torchvision  # noqa: F401
        except ImportError:
            print("torchvision ssd300_vgg16: not measured (torchvision does not import beside this torch)")
        else:
            step = torchvision_step(args.batch, device, args.steps, args.warmup, sync)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else float("nan")
            print(f"{'torchvision':14s} {'ssd300_vgg16':16s} {args.batch / step:9.1f} {step * 1000:9.1f} {peak:9.2f}")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
