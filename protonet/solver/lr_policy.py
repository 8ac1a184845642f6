"""Caffe's learning-rate policies, computed with Caffe's float/double mix so logs agree digit for digit.

Policies: fixed, step, exp, inv, multistep, poly, sigmoid, plateau (the SSD fork's addition).
step, multistep and plateau move `progress.current_step`, which a snapshot records and a resume restores.
"""
import math
from dataclasses import dataclass

import numpy as np

from protonet.errors import ProtonetError
from protonet.solver.logger import format_float

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid", "plateau")

_f32 = np.float32


@dataclass
class Progress:
    """The solver state that a snapshot keeps besides the history blobs."""

    iter: int = 0
    current_step: int = 0
    iter_last_event: int = 0
    minimum_loss: float = float(np.finfo(np.float32).max)


def check_policy(param):
    """Raise for a policy or a policy argument that Caffe would refuse at its first iteration."""
    policy = param.lr_policy
    if policy not in POLICIES:
        raise ProtonetError(f"solver: unknown lr_policy '{policy}' (one of {', '.join(POLICIES)})")
    if policy == "step" and param.stepsize <= 0:
        raise ProtonetError("solver: lr_policy 'step' needs stepsize > 0")
    if policy == "poly" and param.max_iter <= 0:
        raise ProtonetError("solver: lr_policy 'poly' needs max_iter > 0")


def learning_rate(param, progress, smoothed_loss=None, log=None):
    """The rate for iteration `progress.iter` (a float32), advancing the step counter as Caffe does.

    `smoothed_loss` feeds the plateau policy; `log(msg)` receives the "MultiStep Status" lines.
    """
    policy = param.lr_policy
    base_lr = float(_f32(param.base_lr))
    gamma = _f32(param.gamma)
    it = progress.iter
    if policy == "fixed":
        rate = base_lr
    elif policy == "step":
        progress.current_step = it // param.stepsize
        # pow(float, int) promotes to double in C++11.
        rate = base_lr * math.pow(float(gamma), progress.current_step)
    elif policy == "exp":
        rate = base_lr * math.pow(float(gamma), it)
    elif policy == "inv":
        base = _f32(1) + gamma * _f32(it)
        rate = base_lr * float(np.power(base, -_f32(param.power)))
    elif policy == "multistep":
        steps = param.stepvalue
        if progress.current_step < len(steps) and it >= steps[progress.current_step]:
            progress.current_step += 1
            if log is not None:
                log(f"MultiStep Status: Iteration {it}, step = {progress.current_step}")
        rate = base_lr * math.pow(float(gamma), progress.current_step)
    elif policy == "poly":
        frac = _f32(1) - _f32(it) / _f32(param.max_iter)
        rate = base_lr * float(np.power(frac, _f32(param.power)))
    elif policy == "sigmoid":
        z = -gamma * (_f32(it) - _f32(param.stepsize))
        rate = base_lr * float(_f32(1) / (_f32(1) + np.exp(z)))
    elif policy == "plateau":
        rate = _plateau(param, progress, smoothed_loss, log, base_lr, gamma)
    else:
        check_policy(param)
        raise AssertionError(policy)
    return _f32(rate)


def _plateau(param, progress, smoothed_loss, log, base_lr, gamma):
    it = progress.iter
    if smoothed_loss is not None and smoothed_loss < progress.minimum_loss:
        progress.minimum_loss = float(smoothed_loss)
        progress.iter_last_event = it
    windows = param.plateau_winsize
    if progress.current_step < len(windows):
        if it >= progress.iter_last_event + windows[progress.current_step]:
            progress.current_step += 1
            progress.iter_last_event = it
            if log is not None:
                log(f"Plateau Status: Iteration {it}, step = {progress.current_step}")
    if (log is not None and param.display and it % param.display == 0
            and progress.iter_last_event > it - param.display):
        log(f"Plateau Status: Iteration {it}, current minimum_loss = {format_float(progress.minimum_loss)}")
    return base_lr * math.pow(float(gamma), progress.current_step)

