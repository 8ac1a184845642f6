"""Starting training: one process, or data-parallel with torch.distributed, one process per device,
like Caffe's multi-GPU.

Every process builds the same solver with the per-device batch of the prototxt and reads its
shard of the data (NetContext rank/world_size); gradients are summed over processes and scaled
by 1/world_size before Caffe's update (parallel.py), so N processes act as one with N times
the batch. Rank 0 logs, tests and snapshots. Backends: NCCL on GPUs, gloo on CPU. Under torchrun the process group
comes from torchrun's environment; the command layer reads the rank and world size from it.
"""
import dataclasses
import datetime
import os
import signal
import socket

import torch

from protonet.errors import ProtonetError
from protonet.solver.logger import install_handler, remove_handlers
from protonet.solver.signals import SignalHandler
from protonet.solver.solver import Solver, read_solver

# a long test pass on rank 0 keeps the others waiting at their next collective
TIMEOUT = datetime.timedelta(hours=4)


@dataclasses.dataclass
class TrainJob:
    """Everything a process needs to train (picklable for spawned processes)."""

    solver: str
    options: object                 # RunOptions; rank/world_size/device are set per process
    weights: str | None = None
    snapshot: str | None = None
    sigint_effect: str = "stop"
    sighup_effect: str = "snapshot"
    max_iter: int | None = None
    log_to_stderr: bool = False     # install the glog-shaped handler (rank 0 only)
    log_path: str | None = None     # and also append the log to this file


def run_job(job, on_solver=None):
    """Build the solver for this process and train; returns the solver."""
    handlers = []
    if job.log_to_stderr and job.options.rank == 0:
        handlers = install_handler(path=job.log_path)
    try:
        param = read_solver(job.solver)
        if job.max_iter is not None:
            param.max_iter = int(job.max_iter)
        with SignalHandler(job.sigint_effect, job.sighup_effect) as signals:
            solver = Solver(param, job.options, action=signals.check)
            solver.solver_path = os.fspath(job.solver)
            if job.snapshot and job.weights:
                raise ProtonetError("give --snapshot to resume or --weights to finetune, not both")
            if job.weights:
                solver.copy_weights(job.weights)
            if on_solver is not None:
                on_solver(solver)
            solver.solve(job.snapshot or None)  # a snapshot is restored inside, as Caffe's Solve(file)
        return solver
    finally:
        remove_handlers(handlers)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, job, devices, backend, port, result_dir):
    import torch.distributed as dist

    world_size = len(devices)
    device = devices[rank]
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=TIMEOUT)
    try:
        options = dataclasses.replace(job.options, rank=rank, world_size=world_size, device=device)
        solver = run_job(dataclasses.replace(job, options=options))
        if result_dir is not None and rank == 0:
            torch.save({"iter": solver.progress.iter,
                        "params": [t.detach().cpu() for t, _, _ in solver.net.learnable_params]},
                       os.path.join(result_dir, "rank0.pt"))
    finally:
        dist.destroy_process_group()


def spawn_training(job, devices, backend=None, result_dir=None):
    """Train with one process per device (['cuda:0', 'cuda:1'] or ['cpu', 'cpu'])."""
    import torch.multiprocessing as mp

    if backend is None:
        backend = "nccl" if devices[0].startswith("cuda") else "gloo"
    port = free_port()
    # the children get Ctrl-C from the terminal themselves and agree on what to do; the parent waits
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        mp.spawn(_worker, args=(job, devices, backend, port, result_dir), nprocs=len(devices), join=True)
    except mp.ProcessExitedException as exc:
        raise ProtonetError(f"data-parallel training: process {exc.error_index} exited with code "
                            f"{exc.exit_code}") from None
    except Exception as exc:  # a worker's exception, re-raised by mp.spawn with its traceback text
        text = str(exc).strip().splitlines()
        last = text[-1] if text else repr(exc)
        raise ProtonetError(f"data-parallel training failed: {last}") from None
    finally:
        signal.signal(signal.SIGINT, previous)


def run_under_torchrun(job, rank, world_size, local_rank):
    """Train as one of torchrun's processes (rank, world size and local rank as torchrun set them)."""
    import torch.distributed as dist

    if torch.cuda.is_available():
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        device, backend = "cpu", "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        options = dataclasses.replace(job.options, rank=rank, world_size=world_size, device=device)
        return run_job(dataclasses.replace(job, options=options))
    finally:
        dist.destroy_process_group()
