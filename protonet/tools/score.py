"""Caffe's `caffe test`: score a model over N batches, mean of every output, mAP of detection outputs."""
import dataclasses

import numpy as np
import torch

from protonet import caffe_pb2
from protonet.eval.voc import DetectionAccumulator
from protonet.layers.base import NetContext
from protonet.net.net import Net
from protonet.solver.logger import format_float, get_logger
from protonet.solver.progress import track

log = get_logger("caffe")


def score_model(model, weights, iterations, device="cpu", level=0, stages=(), ap_version="11point",
                per_class=False, ctx=None, progress_bar=False, strict_weights=False, precision="fp32"):
    """Caffe's test(): mean of every output over `iterations` batches; mAP for detection outputs.
    `ctx` is the NetContext of the TEST net (its options). A net whose outputs are all detection
    rows (Caffe logs nothing per batch for them) shows its progress: a bar with `progress_bar`,
    else a log line every tenth of the pass. `strict_weights`: weights matching no layer are an error. Returns {output name: mean values or (mAP, {label: AP})}."""
    ctx = ctx or NetContext(phase=caffe_pb2.TEST)
    # Result files the test net's DetectionOutput asks for are part of what `test` produces.
    ctx = dataclasses.replace(ctx, result_files_required=True)
    net = Net(model, phase="TEST", stages=stages, level=level, ctx=ctx)
    net.to(device)
    net.load_weights(weights, strict=strict_weights)
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
    steps = range(iterations)
    if detection_outputs and detection_outputs == set(net.output_names):
        steps = track(steps, iterations, "Test", log.info, progress_bar)
    for i in steps:
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
