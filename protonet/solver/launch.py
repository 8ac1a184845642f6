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
import torch.distributed as dist
import torch.multiprocessing as mp

from protonet.data.workers import die_with_parent
from protonet.errors import ProtonetError
from protonet.solver.logger import install_handler, remove_handlers
from protonet.solver.signals import SignalHandler, stop_status
from protonet.solver.snapshot import Snapshots
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
    sigterm_effect: str = "stop"
    resume: bool = False            # from the newest complete snapshot pair of the prefix, if any
    max_iter: int | None = None
    log_to_stderr: bool = False     # install the glog-shaped handler (rank 0 only)
    log_path: str | None = None     # and also append the log to this file


def run_job(job, on_solver=None):
    """Build the solver for this process and train; returns the solver (see exit_status)."""
    handlers = []
    if job.log_to_stderr and job.options.rank == 0:
        handlers = install_handler(path=job.log_path)
    try:
        param = read_solver(job.solver)
        if job.max_iter is not None:
            param.max_iter = int(job.max_iter)
        if job.snapshot and job.weights:
            raise ProtonetError("give --snapshot to resume or --weights to finetune, not both")
        if job.snapshot and job.resume:
            raise ProtonetError("give --snapshot to resume from a given state or --resume for the newest, not both")
        with SignalHandler(job.sigint_effect, job.sighup_effect, job.sigterm_effect) as signals:
            solver = Solver(param, job.options, action=signals.check, solver_path=os.fspath(job.solver))
            try:
                resume_file = job.snapshot or (_newest_snapshot(solver) if job.resume else None)
                if job.weights and not resume_file:
                    solver.copy_weights(job.weights)
                if on_solver is not None:
                    on_solver(solver)
                solver.solve(resume_file)  # a snapshot is restored inside, as Caffe's Solve(file)
            finally:
                solver.stop_signal = signals.stop_signal
                solver.close()
        return solver
    finally:
        remove_handlers(handlers)


def _newest_snapshot(solver):
    """The state of the newest complete snapshot pair of the solver's prefix (None: start afresh)."""
    snapshots = Snapshots(solver.param, solver.solver_path)
    pair = snapshots.newest_pair()
    if pair is None:
        solver.log_info("--resume: no complete snapshot pair %s_iter_N: training from the start",
                        snapshots.prefix)
        return None
    solver.log_info("--resume: the newest complete snapshot pair is %s and %s", *pair)
    return pair[1]


def exit_status(solver):
    """0 when training reached max_iter; 128 + the signal's number when a signal stopped it before
    (another process's signal, in data-parallel runs: counted as SIGTERM's)."""
    if not solver.requested_early_exit or solver.progress.iter >= solver.param.max_iter:
        return 0
    return stop_status(solver.stop_signal or signal.SIGTERM)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, job, devices, backend, port, result_dir, parent_pid, status):
    die_with_parent(parent_pid)  # a killed parent leaves no rank waiting at a collective
    world_size = len(devices)
    device = devices[rank]
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=TIMEOUT)
    try:
        options = dataclasses.replace(job.options, rank=rank, world_size=world_size, device=device)
        solver = run_job(dataclasses.replace(job, options=options))
        if rank == 0:
            status.value = exit_status(solver)
        if result_dir is not None and rank == 0:
            torch.save({"iter": solver.progress.iter,
                        "params": [t.detach().cpu() for t, _, _ in solver.net.learnable_params]},
                       os.path.join(result_dir, "rank0.pt"))
    finally:
        dist.destroy_process_group()


class _Forwarder:
    """The parent's SIGTERM goes on to the ranks (Kubernetes signals only the first process);
    SIGINT and SIGHUP reach them from the terminal themselves, the parent only notes them."""

    def __init__(self):
        self.processes = []
        self.got = set()

    def __call__(self, signum, frame):
        self.got.add(signum)
        if signum == signal.SIGTERM:
            for p in self.processes:
                if p.is_alive():
                    os.kill(p.pid, signum)


def spawn_training(job, devices, backend=None, result_dir=None):
    """Train with one process per device (['cuda:0', 'cuda:1'] or ['cpu', 'cpu']); returns the exit
    status (exit_status of rank 0)."""
    if backend is None:
        backend = "nccl" if devices[0].startswith("cuda") else "gloo"
    port = free_port()
    status = mp.get_context("spawn").Value("i", 0)
    forwarder = _Forwarder()
    previous = {s: signal.signal(s, forwarder) for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)}
    try:
        context = mp.start_processes(_worker, args=(job, devices, backend, port, result_dir, os.getpid(), status),
                                     nprocs=len(devices), join=False, start_method="spawn")
        forwarder.processes = context.processes
        if signal.SIGTERM in forwarder.got:  # came while the ranks were being started
            forwarder(signal.SIGTERM, None)
        while not context.join():
            pass
    except mp.ProcessExitedException as exc:
        if forwarder.got and exc.signal_name:  # a rank ended by the signal before it could act on it
            return stop_status(min(forwarder.got))
        raise ProtonetError(f"data-parallel training: process {exc.error_index} exited with code "
                            f"{exc.exit_code}") from None
    except Exception as exc:  # a worker's exception, re-raised by mp.spawn with its traceback text
        text = str(exc).strip().splitlines()
        last = text[-1] if text else repr(exc)
        raise ProtonetError(f"data-parallel training failed: {last}") from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status.value


def run_under_torchrun(job, rank, world_size, local_rank):
    """Train as one of torchrun's processes (rank, world size and local rank as torchrun set them)."""
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
