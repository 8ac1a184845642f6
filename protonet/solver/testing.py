"""Caffe's test passes (Solver::TestAll): classification outputs averaged over test_iter batches,
or detection rows (DetectionEvaluate) accumulated into mAP, with Caffe's log lines.

Each test net shares the train net's weights; a signal between test batches is acted on at once
(a snapshot, or a stop that ends the pass as "Test interrupted.").
"""
import numpy as np
import torch

from protonet.errors import ProtonetError
from protonet.eval.voc import DetectionAccumulator
from protonet.solver.logger import format_float, get_logger
from protonet.solver.progress import track
from protonet.solver.signals import NONE, SNAPSHOT, STOP

log = get_logger("solver")

_f32 = np.float32


def test_all(solver):
    """One pass over every test net; a list of each net's results (None where interrupted)."""
    results = []
    for i in range(len(solver.test_nets)):
        if solver.requested_early_exit:
            break
        if solver.param.eval_type == "classification":
            results.append(test_classification(solver, i))
        elif solver.param.eval_type == "detection":
            results.append(test_detection(solver, i))
        else:
            raise ProtonetError(f"solver: unknown eval_type '{solver.param.eval_type}' "
                                "(classification or detection)")
    return results


def _test_batches(solver, test_id):
    """Forward passes of test net `test_id`, sharing the train net's weights; stops on request."""
    net = solver.test_nets[test_id]
    net.share_weights_from(solver.net)
    net.eval()
    total = solver.param.test_iter[test_id]
    for _ in track(range(total), total, f"Test net #{test_id}", log.info, solver.options.progress_bars):
        # only the root tests: ask the local handler, without a collective call
        request = solver.request(collective=False)
        while request != NONE:
            if request == SNAPSHOT:
                solver.snapshot()
            elif request == STOP:
                solver.requested_early_exit = True
            request = solver.request(collective=False)
        if solver.requested_early_exit:
            return
        with torch.no_grad(), solver.autocast():
            blobs = net(**{})
            loss = _f32(net.loss(blobs).float().item()) if net.loss_weights else _f32(0)
        yield net, blobs, loss


def test_classification(solver, test_id):
    log.info("Iteration %d, Testing net (#%d)", solver.progress.iter, test_id)
    net = solver.test_nets[test_id]
    compute_loss = solver.param.test_compute_loss
    scores = None
    sizes = []
    loss = _f32(0)
    for _, blobs, iter_loss in _test_batches(solver, test_id):
        if compute_loss:
            loss = _f32(loss + iter_loss)
        arrays = [blobs[n].detach().float().cpu().numpy().ravel() for n in net.output_names]
        sizes = [a.size for a in arrays]
        values = np.concatenate(arrays or [np.zeros(0, np.float32)]).astype(np.float32)
        scores = values if scores is None else (scores + values).astype(np.float32)
    if solver.requested_early_exit:
        log.info("Test interrupted.")
        return None
    n_iter = solver.param.test_iter[test_id]
    if compute_loss:
        log.info("Test loss: %s", format_float(_f32(loss / _f32(n_iter))))
    out = {}
    index = 0
    for name, count in zip(net.output_names, sizes):
        weight = net.loss_weights.get(name, 0.0)
        for _ in range(count):
            mean = _f32(scores[index] / _f32(n_iter))
            suffix = f" (* {format_float(weight)} = {format_float(_f32(weight) * mean)} loss)" if weight else ""
            log.info("    Test net output #%d: %s = %s%s", index, name, format_float(mean), suffix)
            out.setdefault(name, []).append(float(mean))
            index += 1
    return out


def test_detection(solver, test_id):
    log.info("Iteration %d, Testing net (#%d)", solver.progress.iter, test_id)
    net = solver.test_nets[test_id]
    param = solver.param
    accumulators = [DetectionAccumulator() for _ in net.output_names]
    loss = _f32(0)
    for _, blobs, iter_loss in _test_batches(solver, test_id):
        if param.test_compute_loss:
            loss = _f32(loss + iter_loss)
        for acc, name in zip(accumulators, net.output_names):
            rows = blobs[name].detach().float().cpu().numpy()
            if rows.ndim < 2 or rows.shape[-1] != 5:
                raise ProtonetError(f"test net #{test_id}: output '{name}' has shape {list(rows.shape)}; "
                                    "eval_type detection needs DetectionEvaluate rows of width 5")
            acc.add(rows)
    if solver.requested_early_exit:
        log.info("Test interrupted.")
        return None
    if param.test_compute_loss:
        log.info("Test loss: %s", format_float(_f32(loss / _f32(param.test_iter[test_id]))))
    out = {}
    for j, (acc, name) in enumerate(zip(accumulators, net.output_names)):
        m_ap, aps = acc.evaluate(param.ap_version)
        for label in acc.missing:
            log.warning("Missing true_pos for label: %d", label)
        if param.show_per_class_result:
            for label, ap in aps.items():
                log.info("class%d: %s", label, format_float(ap))
        log.info("    Test net output #%d: %s = %s", j, name, format_float(m_ap))
        out[name] = (float(m_ap), {k: float(v) for k, v in aps.items()})
    return out
