"""Writing a training job the way Caffe's example scripts did: net, deploy and solver
prototxts, a copy of each in the job directory, and a job script that trains and tees a log.

The example scripts under examples/ use these. While `protonet gen` runs a script it hands its
GenSession to `recording()`, and what these write (files, job scripts, missing inputs) is noted
there, so that gen can warn and start the job with `--run`. A script run on its own prints its
missing inputs instead.
"""
import contextlib
import os
import re
import stat
import sys

from protonet import caffe_pb2
from protonet.io.prototxt import atomic_write
from protonet.spec.net_spec import make_message

# The GenSession of the `protonet gen` run in progress, or None. The example scripts call this
# module's functions with no session to pass, so gen sets it for the duration of a script.
_session = None


@contextlib.contextmanager
def recording(session):
    """Note what the functions below write and miss in `session` (a protonet.spec.session.GenSession)."""
    global _session
    previous, _session = _session, session
    try:
        yield session
    finally:
        _session = previous


def check_inputs(*paths):
    """Note the inputs that do not exist yet (LMDBs, label map, pretrained weights). Generating
    the prototxts does not need them; training does, so they are reported, not fatal."""
    missing = [p for p in paths if not os.path.exists(p)]
    for path in missing:
        if _session is not None:
            _session.note_missing(path)  # gen warns
        else:
            print(f"warning: {path} does not exist yet; the job needs it", file=sys.stderr)
    return not missing


def make_dirs(*paths):
    for path in paths:
        os.makedirs(path, exist_ok=True)


def _write(path, data):
    atomic_write(path, data)
    if _session is not None:
        _session.note_written(path)


def _write_text(message, path, copy_to=None):
    # str() is protobuf's native text encoder: Caffe's own formatting (`mean_value: 104`) and fast.
    data = str(message).encode("utf-8")
    _write(path, data)
    if copy_to:
        _write(os.path.join(copy_to, os.path.basename(path)), data)


def write_net(net_param, path, name, copy_to=None):
    """Write a net as `path` with `name`, and a copy in directory `copy_to`."""
    net_param.name = name
    _write_text(net_param, path, copy_to)


def write_deploy(test_net_param, path, name, input_shape, copy_to=None):
    """The deploy net: the test net without its first (data) and last (evaluation) layers,
    fed by an input blob `data` of `input_shape`."""
    deploy = caffe_pb2.NetParameter()
    deploy.CopyFrom(test_net_param)
    del deploy.layer[0]
    del deploy.layer[-1]
    deploy.name = name
    deploy.input.append("data")
    deploy.input_shape.add().dim.extend(input_shape)
    _write_text(deploy, path, copy_to)
    return deploy


def write_solver(path, copy_to=None, **fields):
    """A SolverParameter from keyword fields (integral floats accepted for int fields)."""
    solver = make_message(caffe_pb2.SolverParameter, **fields)
    _write_text(solver, path, copy_to)
    return solver


def _snapshot_iters(snapshot_dir, model_name, suffix):
    pattern = re.compile(re.escape(model_name) + r"_iter_(\d+)" + re.escape(suffix) + "$")
    found = {}
    if os.path.isdir(snapshot_dir):
        for name in os.listdir(snapshot_dir):
            match = pattern.match(name)
            if match:
                found[int(match.group(1))] = os.path.join(snapshot_dir, name)
    return found


def latest_snapshot_iter(snapshot_dir, model_name):
    """The highest N of `<model_name>_iter_N.solverstate` in `snapshot_dir` (0 when none)."""
    return max(_snapshot_iters(snapshot_dir, model_name, ".solverstate"), default=0)


def remove_snapshots_before(snapshot_dir, model_name, iteration):
    """Delete solverstates and caffemodels of iterations before `iteration`."""
    for suffix in (".solverstate", ".caffemodel"):
        for it, path in _snapshot_iters(snapshot_dir, model_name, suffix).items():
            if it < iteration:
                os.remove(path)


def write_job_script(job_file, root, solver_file, log_file, weights=None, snapshot=None, gpus=None):
    """A shell script that trains from `root`: `protonet train --solver=... --weights=...` (or
    `--snapshot=...` to resume), `--gpu` when given, output teed to `log_file`."""
    lines = [f"cd {root}", "protonet train \\", f'--solver="{solver_file}" \\']
    if snapshot:
        lines.append(f'--snapshot="{snapshot}" \\')
    elif weights:
        lines.append(f'--weights="{weights}" \\')
    if gpus:
        lines.append(f"--gpu {gpus} 2>&1 | tee {log_file}")
    else:
        lines.append(f"2>&1 | tee {log_file}")
    _write(job_file, ("\n".join(lines) + "\n").encode("utf-8"))
    os.chmod(job_file, stat.S_IRWXU)
    if _session is not None:
        _session.note_job_script(job_file)
    return job_file
