"""`protonet train | test | time | device-query`: the caffe tool's commands with its flags.

Flags are spelled as Caffe spells them (--sigint_effect) and also with dashes (--sigint-effect).
"""
import contextlib
import os
import time

import click
import numpy as np
import torch

from protonet.errors import ProtonetError
from protonet.solver.logger import format_float, get_logger, install_handler, remove_handlers

log = get_logger("caffe")


def _opt(name, dest=None, **kwargs):
    """An option under Caffe's underscore name and its dashed twin."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    return click.option(*names, dest or name, **kwargs)


def parse_gpus(gpu):
    """'' -> [], 'all' -> every CUDA device, '0,1' -> [0, 1] (Caffe's get_gpus)."""
    if gpu is None or gpu == "":
        return []
    if gpu == "all":
        count = torch.cuda.device_count()
        if count == 0:
            raise ProtonetError("--gpu all: no CUDA device is available")
        return list(range(count))
    try:
        ids = [int(x) for x in gpu.split(",")]
    except ValueError:
        raise ProtonetError(f"--gpu: expected device ids separated by ',' or 'all', got '{gpu}'") from None
    count = torch.cuda.device_count()
    for i in ids:
        if i < 0 or i >= count:
            raise ProtonetError(f"--gpu {gpu}: device {i} does not exist ({count} CUDA devices available)")
    return ids


def _stages(stage):
    return tuple(s for s in (stage or "").split(",") if s)


@contextlib.contextmanager
def _logging(log_file=None):
    handlers = install_handler(path=log_file)
    try:
        yield
    finally:
        remove_handlers(handlers)


# ---------------------------------------------------------------------- train

@click.command("train")
@_opt("solver", required=True, help="The solver definition protocol buffer text file.")
@_opt("weights", default="", help="Pretrained weights to finetune from, separated by ','.")
@_opt("snapshot", default="", help="A .solverstate to resume training from.")
@_opt("gpu", default="", help="GPU ids separated by ',' or 'all' (several: data-parallel, one process each).")
@_opt("iterations", type=int, default=None, help="Override the solver's max_iter.")
@_opt("sigint_effect", default="stop", type=click.Choice(["stop", "snapshot", "none"]),
      help="Action on SIGINT: snapshot, stop or none.")
@_opt("sighup_effect", default="snapshot", type=click.Choice(["stop", "snapshot", "none"]),
      help="Action on SIGHUP: snapshot, stop or none.")
@_opt("level", type=int, default=0, help="Net state level.")
@_opt("stage", default="", help="Net state stages, separated by ','.")
@_opt("amp", type=click.Choice(["bf16", "fp16"]), default=None,
      help="Mixed precision forward passes (off: Caffe's float32 numbers).")
@_opt("channels_last", is_flag=True, default=False, help="Channels-last memory format for 4-D weights.")
@_opt("workers", type=int, default=None, help="Data worker processes per data layer.")
@_opt("data_on_device", is_flag=True, default=False,
      help="Photometric distortion and the final resize/mirror/mean/scale of AnnotatedData batches on the "
           "training device (for CPUs that cannot keep up with the GPU; off: all on the CPU workers).")
@_opt("allow_python_layers", is_flag=True, default=False,
      help="Run the prototxt's Python layers (they execute code the prototxt names).")
@_opt("log", "log_file", default=None, help="Also append the log to this file.")
def train_command(solver, weights, snapshot, gpu, iterations, sigint_effect, sighup_effect, level, stage,
                  amp, channels_last, workers, data_on_device, allow_python_layers, log_file):
    """Train or finetune a model (caffe train)."""
    from protonet.solver.parallel import TrainJob, run_job, run_under_torchrun, spawn_training, torchrun_environment
    from protonet.solver.solver import RunOptions, read_solver

    if snapshot and weights:
        raise ProtonetError("give --snapshot to resume training or --weights to finetune, not both")
    param = read_solver(solver)
    if not gpu and param.solver_mode == param.GPU and torch.cuda.is_available():
        gpu = str(param.device_id)
    gpus = parse_gpus(gpu)
    options = RunOptions(device=f"cuda:{gpus[0]}" if gpus else "cpu", stages=_stages(stage), level=level,
                         amp=amp, channels_last=channels_last, data_workers=workers,
                         data_device_transform=data_on_device, allow_python_layers=allow_python_layers)
    job = TrainJob(solver=solver, options=options, weights=weights or None, snapshot=snapshot or None,
                   sigint_effect=sigint_effect, sighup_effect=sighup_effect, max_iter=iterations,
                   log_to_stderr=True, log_path=log_file)
    if torchrun_environment() is not None:
        run_under_torchrun(job)
    elif len(gpus) > 1:
        with _logging(log_file):
            log.info("Using GPUs %s", ", ".join(str(g) for g in gpus))
            for g in gpus:
                log.info("GPU %d: %s", g, torch.cuda.get_device_name(g))
        spawn_training(job, [f"cuda:{g}" for g in gpus])
    else:
        if gpus:
            torch.cuda.set_device(gpus[0])
        with _logging(log_file):
            if gpus:
                log.info("Using GPUs %d", gpus[0])
                log.info("GPU %d: %s", gpus[0], torch.cuda.get_device_name(gpus[0]))
            else:
                if param.solver_mode == param.GPU and not torch.cuda.is_available():
                    log.info("solver_mode GPU but no CUDA device is available: using the CPU")
                log.info("Use CPU.")
        solver_obj = run_job(job)
        with _logging(log_file):
            if not solver_obj.requested_early_exit:
                log.info("Optimization Done.")


# ---------------------------------------------------------------------- test

def _device(gpu):
    gpus = parse_gpus(gpu)
    if gpus:
        torch.cuda.set_device(gpus[0])
        log.info("Use GPU with device ID %d", gpus[0])
        log.info("GPU device name: %s", torch.cuda.get_device_name(gpus[0]))
        return torch.device(f"cuda:{gpus[0]}")
    log.info("Use CPU.")
    return torch.device("cpu")


@click.command("test")
@_opt("model", required=True, help="The model definition protocol buffer text file.")
@_opt("weights", required=True, help="The trained weights, separated by ','.")
@_opt("iterations", type=int, default=50, help="The number of batches to run.")
@_opt("gpu", default="", help="The GPU id to run on (the first of a list).")
@_opt("level", type=int, default=0, help="Net state level.")
@_opt("stage", default="", help="Net state stages, separated by ','.")
@_opt("ap_version", default="11point", type=click.Choice(["11point", "MaxIntegral", "Integral"]),
      help="AP computation for DetectionEvaluate outputs.")
@_opt("show_per_class_result", is_flag=True, default=False, help="Print the AP of every class.")
@_opt("precision", default="fp32", type=click.Choice(["fp32", "bf16"]), help="Inference precision of the forward passes (bf16 needs a CPU with native bfloat16 or a GPU).")
@_opt("allow_python_layers", is_flag=True, default=False,
      help="Run the prototxt's Python layers (they execute code the prototxt names).")
@_opt("log", "log_file", default=None, help="Also append the log to this file.")
def test_command(model, weights, iterations, gpu, level, stage, ap_version, show_per_class_result, precision,
                 allow_python_layers, log_file):
    """Score a model (caffe test); nets ending in DetectionEvaluate print their mAP."""
    with _logging(log_file):
        run_test(model, weights, iterations, gpu, level, _stages(stage), ap_version, show_per_class_result,
                 allow_python_layers, precision)


def run_test(model, weights, iterations, gpu="", level=0, stages=(), ap_version="11point", per_class=False,
             allow_python_layers=False, precision="fp32"):
    """Caffe's test(): mean of every output over `iterations` batches; mAP for detection outputs.
    Returns {output name: mean values or (mAP, {label: AP})}."""
    from protonet.eval.voc import DetectionAccumulator
    from protonet.layers.base import NetContext
    from protonet.net.net import Net

    device = _device(gpu)
    ctx = NetContext(phase=1, allow_python_layers=allow_python_layers)
    net = Net(model, phase="TEST", stages=stages, level=level, ctx=ctx)
    net.to(device)
    net.load_weights(weights)
    net.eval()
    net.set_inference(precision=precision)
    log.info("Running for %d iterations.", iterations)
    detection_outputs = set()
    for name in net.output_names:
        producer = next((l for l in reversed(list(net.layers.values())) if name in l.param.top), None)
        if producer is not None and producer.param.type == "DetectionEvaluate":
            detection_outputs.add(name)
    accumulators = {n: DetectionAccumulator() for n in detection_outputs}
    sums = {}
    loss = np.float32(0)
    for i in range(iterations):
        with torch.no_grad():
            blobs = net()
            iter_loss = np.float32(net.loss(blobs).float().item())
        loss = np.float32(loss + iter_loss)
        for name in net.output_names:
            values = blobs[name].detach().float().cpu().numpy()
            if name in detection_outputs:
                accumulators[name].add(values)
                continue
            flat = values.ravel().astype(np.float32)
            for v in flat:
                log.info("Batch %d, %s = %s", i, name, format_float(v))
            sums[name] = flat if name not in sums else (sums[name] + flat).astype(np.float32)
    log.info("Loss: %s", format_float(np.float32(loss / np.float32(max(iterations, 1)))))
    results = {}
    for name in net.output_names:
        if name in detection_outputs:
            m_ap, aps = accumulators[name].evaluate(ap_version)
            if per_class:
                for label, ap in aps.items():
                    log.info("class%d: %s", label, format_float(ap))
            log.info("%s = %s", name, format_float(m_ap))
            results[name] = (float(m_ap), {k: float(v) for k, v in aps.items()})
            continue
        weight = net.loss_weights.get(name, 0.0)
        means = []
        for v in sums.get(name, []):
            mean = np.float32(v / np.float32(iterations))
            suffix = f" (* {format_float(weight)} = {format_float(np.float32(weight) * mean)} loss)" if weight else ""
            log.info("%s = %s%s", name, format_float(mean), suffix)
            means.append(float(mean))
        results[name] = means
    return results


# ---------------------------------------------------------------------- time

@click.command("time")
@_opt("model", required=True, help="The model definition protocol buffer text file.")
@_opt("iterations", type=int, default=50, help="The number of iterations to time.")
@_opt("gpu", default="", help="The GPU id to run on.")
@_opt("phase", default="", type=click.Choice(["", "TRAIN", "TEST"]), help="Net phase (default TRAIN).")
@_opt("level", type=int, default=0, help="Net state level.")
@_opt("stage", default="", help="Net state stages, separated by ','.")
@_opt("weights", default="", help="Optional weights to load first.")
@_opt("amp", type=click.Choice(["bf16", "fp16"]), default=None, help="Autocast the forward passes.")
@_opt("channels_last", is_flag=True, default=False, help="Channels-last memory format for 4-D weights.")
@_opt("precision", default=None, type=click.Choice(["fp32", "bf16"]),
      help="Time the forward pass alone in inference mode at this precision (no backward).")
@_opt("allow_python_layers", is_flag=True, default=False,
      help="Run the prototxt's Python layers (they execute code the prototxt names).")
def time_command(model, iterations, gpu, phase, level, stage, weights, amp, channels_last, precision,
                 allow_python_layers):
    """Benchmark a model's forward and backward passes (caffe time)."""
    with _logging():
        if precision:
            run_time_inference(model, iterations, gpu, phase or "TEST", level, _stages(stage), weights, precision,
                               allow_python_layers)
            return
        run_time(model, iterations, gpu, phase or "TRAIN", level, _stages(stage), weights, amp, channels_last,
                 allow_python_layers)


def run_time_inference(model, iterations, gpu="", phase="TEST", level=0, stages=(), weights="", precision="fp32",
                       allow_python_layers=False):
    """The forward pass in inference mode (folded, fused, packed; protonet/net/inference.py), timed."""
    from protonet.layers.base import NetContext
    from protonet.net.net import Net

    device = _device(gpu)
    net = Net(model, phase=phase, stages=stages, level=level,
              ctx=NetContext(phase=0 if phase == "TRAIN" else 1, allow_python_layers=allow_python_layers))
    net.to(device)
    if weights:
        net.load_weights(weights)
    net.set_inference(precision=precision)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    inputs = {name: torch.zeros(net.blob_shapes[name], device=device) for name in net.input_names}
    with torch.inference_mode():
        net(**inputs)
        log.info("*** Benchmark begins *** (inference mode, %s)", precision)
        times = []
        for j in range(iterations):
            sync()
            t0 = time.perf_counter()
            net(**inputs)
            sync()
            times.append((time.perf_counter() - t0) * 1000)
            log.info("Iteration: %d forward time: %s ms.", j + 1, format_float(times[-1]))
    n = max(iterations, 1)
    log.info("Average Forward pass: %s ms.", format_float(sum(times) / n))
    log.info("Median Forward pass: %s ms.", format_float(sorted(times)[len(times) // 2] if times else 0.0))
    log.info("*** Benchmark ends ***")
    return {"forward_ms": sum(times) / n, "fused": net._plan.fused_groups if net._plan else []}


def run_time(model, iterations, gpu="", phase="TRAIN", level=0, stages=(), weights="", amp=None,
             channels_last=False, allow_python_layers=False):
    from protonet.layers.base import NetContext
    from protonet.net.net import Net
    from protonet.solver.solver import _to_channels_last

    device = _device(gpu)
    net = Net(model, phase=phase, stages=stages, level=level, ctx=NetContext(phase=0 if phase == "TRAIN" else 1,
                                                                      allow_python_layers=allow_python_layers))
    net.to(device)
    if channels_last:
        _to_channels_last(net)
    if weights:
        net.load_weights(weights)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
                if amp else contextlib.nullcontext())
    layer_times = {name: 0.0 for name in net.layers}
    starts = {}

    def pre(name):
        def hook(module, args):
            sync()
            starts[name] = time.perf_counter()
        return hook

    def post(name):
        def hook(module, args, out):
            sync()
            layer_times[name] += time.perf_counter() - starts[name]
        return hook

    # Caffe times a deploy net on its zero-initialised input blobs.
    inputs = {name: torch.zeros(net.blob_shapes[name], device=device) for name in net.input_names}

    def run_once():
        with autocast:
            blobs = net(**inputs)
            loss = net.loss(blobs)
        return loss

    log.info("Performing Forward")
    loss = run_once()
    log.info("Initial loss: %s", format_float(loss.item()))
    log.info("Performing Backward")
    if loss.requires_grad:
        loss.backward()
    hooks = []
    for name, layer in net.layers.items():
        hooks.append(layer.register_forward_pre_hook(pre(name)))
        hooks.append(layer.register_forward_hook(post(name)))
    log.info("*** Benchmark begins ***")
    log.info("Testing for %d iterations.", iterations)
    forward_time = backward_time = 0.0
    total_start = time.perf_counter()
    for j in range(iterations):
        net.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        loss = run_once()
        sync()
        t1 = time.perf_counter()
        if loss.requires_grad:
            loss.backward()
        sync()
        t2 = time.perf_counter()
        forward_time += t1 - t0
        backward_time += t2 - t1
        log.info("Iteration: %d forward-backward time: %s ms.", j + 1, format_float((t2 - t0) * 1000))
    total = time.perf_counter() - total_start
    for h in hooks:
        h.remove()
    n = max(iterations, 1)
    log.info("Average time per layer: ")
    for name, t in layer_times.items():
        log.info("%10s\tforward: %s ms.", name, format_float(t * 1000 / n))
    log.info("Average Forward pass: %s ms.", format_float(forward_time * 1000 / n))
    log.info("Average Backward pass: %s ms.", format_float(backward_time * 1000 / n))
    log.info("Average Forward-Backward: %s ms.", format_float(total * 1000 / n))
    log.info("Total Time: %s ms.", format_float(total * 1000))
    log.info("*** Benchmark ends ***")
    return {"forward_ms": forward_time * 1000 / n, "backward_ms": backward_time * 1000 / n,
            "layers_ms": {k: v * 1000 / n for k, v in layer_times.items()}}


# ---------------------------------------------------------------------- device query

@click.command("device-query")
@_opt("gpu", default="all", help="GPU ids separated by ',' or 'all'.")
def device_query_command(gpu):
    """Show diagnostic information for CUDA devices (caffe device_query)."""
    with _logging():
        log.info("Querying GPUs %s", gpu)
        if not torch.cuda.is_available():
            raise ProtonetError("no CUDA device is available (torch.cuda.is_available() is false)")
        for i in parse_gpus(gpu):
            p = torch.cuda.get_device_properties(i)
            log.info("Device id:                     %d", i)
            log.info("Name:                          %s", p.name)
            log.info("Major revision number:         %d", p.major)
            log.info("Minor revision number:         %d", p.minor)
            log.info("Total global memory:           %d", p.total_memory)
            log.info("Number of multiprocessors:     %d", p.multi_processor_count)
            log.info("torch %s, CUDA %s, cuDNN %s", torch.__version__, torch.version.cuda,
                     torch.backends.cudnn.version())
