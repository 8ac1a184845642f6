"""Caffe's `caffe time`: forward and backward time of a net, per layer and in total."""
import contextlib
import time

import torch

from protonet import caffe_pb2
from protonet.layers.base import NetContext
from protonet.net.net import Net
from protonet.solver.logger import format_float, get_logger
from protonet.solver.solver import to_channels_last

log = get_logger("caffe")


def _time_layers(net, sync):
    """Forward hooks adding each layer's time into the dict returned with them."""
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

    hooks = []
    for name, layer in net.layers.items():
        hooks.append(layer.register_forward_pre_hook(pre(name)))
        hooks.append(layer.register_forward_hook(post(name)))
    return layer_times, hooks


def time_model(model, iterations, device="cpu", phase="TRAIN", level=0, stages=(), weights="", amp=None,
               channels_last=False, allow_python_layers=False, max_memory=None, strict_data=False,
               strict_weights=False):
    """Caffe's time(): returns {'forward_ms', 'backward_ms', 'layers_ms': {layer: ms}} per iteration."""
    device = torch.device(device)
    ctx = NetContext(phase=caffe_pb2.TRAIN if phase == "TRAIN" else caffe_pb2.TEST,
                     allow_python_layers=allow_python_layers, max_memory=max_memory, strict_data=strict_data)
    net = Net(model, phase=phase, stages=stages, level=level, ctx=ctx)
    net.to(device)
    if channels_last:
        to_channels_last(net)
    if weights:
        net.load_weights(weights, strict=strict_weights)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
                if amp else contextlib.nullcontext())
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
    layer_times, hooks = _time_layers(net, sync)
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


def time_inference(model, iterations, device="cpu", phase="TEST", level=0, stages=(), weights="", precision="fp32",
                   allow_python_layers=False, max_memory=None, strict_data=False, strict_weights=False):
    """The forward pass in inference mode (folded, fused, packed; protonet/net/inference.py), timed:
    returns {'forward_ms', 'median_ms', 'fused'}."""
    device = torch.device(device)
    ctx = NetContext(phase=caffe_pb2.TRAIN if phase == "TRAIN" else caffe_pb2.TEST,
                     allow_python_layers=allow_python_layers, max_memory=max_memory, strict_data=strict_data)
    net = Net(model, phase=phase, stages=stages, level=level, ctx=ctx)
    net.to(device)
    if weights:
        net.load_weights(weights, strict=strict_weights)
    net.set_inference(precision=precision)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    inputs = {name: torch.zeros(net.blob_shapes[name], device=device) for name in net.input_names}
    times = []
    with torch.inference_mode():
        net(**inputs)
        log.info("*** Benchmark begins *** (inference mode, %s)", precision)
        for j in range(iterations):
            sync()
            t0 = time.perf_counter()
            net(**inputs)
            sync()
            times.append((time.perf_counter() - t0) * 1000)
            log.info("Iteration: %d forward time: %s ms.", j + 1, format_float(times[-1]))
    n = max(iterations, 1)
    median = sorted(times)[len(times) // 2] if times else 0.0
    log.info("Average Forward pass: %s ms.", format_float(sum(times) / n))
    log.info("Median Forward pass: %s ms.", format_float(median))
    log.info("*** Benchmark ends ***")
    return {"forward_ms": sum(times) / n, "median_ms": median, "fused": net.fused_layers()}
