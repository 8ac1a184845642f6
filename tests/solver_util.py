"""Helpers for the solver tests: run a solver in-process and capture its glog-shaped log."""
import contextlib
import io
import re

import numpy as np
import pytest
import torch

from protonet.io.blobs import blob_to_array
from protonet.io.caffemodel import read_caffemodel
from protonet.solver.logger import install_handler, remove_handlers
from protonet.solver.solver import RunOptions, Solver, read_solver

GLOG = re.compile(r"^[IWEF]\d{4,8} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] (.*)$")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets on a shared 2-core machine: torch's thread pool only adds spin time."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@contextlib.contextmanager
def captured_log():
    stream = io.StringIO()
    handlers = install_handler(stream=stream)
    try:
        yield stream
    finally:
        remove_handlers(handlers)


def messages(text):
    """The message part of each glog-shaped line (continuation lines are skipped)."""
    out = []
    for line in text.splitlines():
        m = GLOG.match(line)
        if m:
            out.append(m.group(1))
    return out


def make_solver(solver_file, prefix=None, weights=None, options=None, action=None, **overrides):
    param = read_solver(solver_file)
    if prefix is not None:
        param.snapshot_prefix = str(prefix)
    for key, value in overrides.items():
        if isinstance(value, (list, tuple)):
            field = getattr(param, key)
            del field[:]
            field.extend(value)
        else:
            setattr(param, key, value)
    solver = Solver(param, options or RunOptions(), action=action)
    if weights:
        solver.copy_weights(str(weights))
    return solver


def caffemodel_arrays(path):
    out = {}
    for layer in read_caffemodel(str(path)).layer:
        for i, blob in enumerate(layer.blobs):
            out[f"{layer.name}/{i}"] = blob_to_array(blob)
    return out


def assert_same_arrays(a, b, exact=True, rtol=1e-4, atol=1e-6, skip=()):
    assert sorted(a) == sorted(b)
    for key in a:
        if key in skip:
            continue
        if exact:
            assert np.array_equal(a[key], b[key]), key
        else:
            np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=atol, err_msg=key)
