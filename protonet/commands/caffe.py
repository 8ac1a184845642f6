"""`protonet train | test | time | device-query`: the `caffe` tool's commands with its flags."""
import os
import signal
import sys

import click
import torch

from protonet.commands.options import CaffeCommand, caffe_option, glog_output, net_checks, stage_list
from protonet import caffe_pb2
from protonet.devices import parse_gpus
from protonet.errors import ProtonetError
from protonet.layers.base import NetContext
from protonet.solver.logger import get_logger
from protonet.solver.launch import TrainJob, exit_status, run_job, run_under_torchrun, spawn_training
from protonet.solver.solver import RunOptions, read_solver
from protonet.tools.score import score_model
from protonet.tools.timing import time_inference, time_model

log = get_logger("caffe")


def torchrun_environment():
    """(rank, world_size, local_rank) when started by torchrun with more than one process, else None."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env and int(env["WORLD_SIZE"]) > 1:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    return None


# ---------------------------------------------------------------------- train

@click.command("train", cls=CaffeCommand)
@caffe_option("solver", required=True, help="The solver definition protocol buffer text file.")
@caffe_option("weights", default="", help="Pretrained weights to finetune from, separated by ','.")
@caffe_option("snapshot", default="", help="A .solverstate to resume training from.")
@caffe_option("gpu", default="", help="GPU ids separated by ',' or 'all' (several: data-parallel, one process each).")
@caffe_option("iterations", type=int, default=None, help="Override the solver's max_iter.")
@caffe_option("sigint_effect", default="stop", type=click.Choice(["stop", "snapshot", "none"]),
              help="Action on SIGINT: snapshot, stop or none.")
@caffe_option("sighup_effect", default="snapshot", type=click.Choice(["stop", "snapshot", "none"]),
              help="Action on SIGHUP: snapshot, stop or none.")
@caffe_option("sigterm_effect", default="stop", type=click.Choice(["stop", "snapshot", "none"]),
              help="Action on SIGTERM (what schedulers send before a kill): stop (with the final snapshot), "
                   "snapshot or none.")
@caffe_option("resume", is_flag=True, default=False,
              help="Resume from the newest complete snapshot pair of the solver's prefix (none: start afresh).")
@caffe_option("level", type=int, default=0, help="Net state level.")
@caffe_option("stage", default="", help="Net state stages, separated by ','.")
@caffe_option("amp", type=click.Choice(["bf16", "fp16"]), default=None,
              help="Mixed precision forward passes (off: Caffe's float32 numbers).")
@caffe_option("channels_last", is_flag=True, default=False, help="Channels-last memory format for 4-D weights.")
@caffe_option("workers", type=int, default=None, help="Data worker processes per data layer.")
@caffe_option("data_shuffle", is_flag=True, default=False,
              help="Shuffle the data layers' records every epoch (Caffe reads them in order).")
@caffe_option("reencode_jpeg", is_flag=True, default=False,
              help="Re-encode distorted/expanded/cropped images as JPEG like Caffe (bit-parity with Caffe).")
@caffe_option("data_on_device", is_flag=True, default=False,
              help="Photometric distortion and the final resize/mirror/mean/scale of AnnotatedData batches on the "
                   "training device (for CPUs that cannot keep up with the GPU; off: all on the CPU workers).")
@caffe_option("allow_python_layers", is_flag=True, default=False,
              help="Run the prototxt's Python layers (they execute code the prototxt names).")
@caffe_option("log", "log_file", default=None, help="Also append the log to this file.")
@caffe_option("tensorboard", default=None, metavar="DIR",
              help="Also write the losses, lr, test outputs (mAP) and images/s as TensorBoard scalars to DIR.")
@net_checks()
def train_command(solver, weights, snapshot, gpu, iterations, sigint_effect, sighup_effect, sigterm_effect, resume,
                  level, stage, amp, channels_last, workers, data_shuffle, reencode_jpeg, data_on_device,
                  allow_python_layers, log_file, tensorboard, checks):
    """Train or finetune a model (caffe train). A signal that stops it before max_iter ends it with
    exit status 128 + the signal's number (SIGINT 130, SIGTERM 143)."""
    if snapshot and weights:
        raise ProtonetError("give --snapshot to resume training or --weights to finetune, not both")
    if snapshot and resume:
        raise ProtonetError("give --snapshot to resume from a given state or --resume for the newest, not both")
    param = read_solver(solver)
    if not gpu and param.solver_mode == param.GPU and torch.cuda.is_available():
        gpu = str(param.device_id)
    gpus = parse_gpus(gpu)
    options = RunOptions(device=f"cuda:{gpus[0]}" if gpus else "cpu", stages=stage_list(stage), level=level,
                         amp=amp, channels_last=channels_last, data_workers=workers, data_shuffle=data_shuffle,
                         reencode_jpeg=reencode_jpeg, data_on_device=data_on_device,
                         allow_python_layers=allow_python_layers,
                         progress_bars=sys.stderr.isatty(), tensorboard_dir=tensorboard, **checks)
    job = TrainJob(solver=solver, options=options, weights=weights or None, snapshot=snapshot or None,
                   sigint_effect=sigint_effect, sighup_effect=sighup_effect, sigterm_effect=sigterm_effect,
                   resume=resume, max_iter=iterations, log_to_stderr=True, log_path=log_file)
    torchrun = torchrun_environment()
    if torchrun is not None:
        status = exit_status(run_under_torchrun(job, *torchrun))
    elif len(gpus) > 1:
        with glog_output(log_file):
            log.info("Using GPUs %s", ", ".join(str(g) for g in gpus))
            for g in gpus:
                log.info("GPU %d: %s", g, torch.cuda.get_device_name(g))
        status = spawn_training(job, [f"cuda:{g}" for g in gpus])
    else:
        status = _train_here(job, param, gpus, log_file)
    if status:
        with glog_output(log_file):
            log.info("Stopped by %s before max_iter: exit status %d", signal.Signals(status - 128).name, status)
        raise SystemExit(status)


def _train_here(job, param, gpus, log_file):
    if gpus:
        torch.cuda.set_device(gpus[0])
    with glog_output(log_file):
        if gpus:
            log.info("Using GPUs %d", gpus[0])
            log.info("GPU %d: %s", gpus[0], torch.cuda.get_device_name(gpus[0]))
        else:
            if param.solver_mode == param.GPU and not torch.cuda.is_available():
                log.info("solver_mode GPU but no CUDA device is available: using the CPU")
            log.info("Use CPU.")
    solver_obj = run_job(job)
    with glog_output(log_file):
        if not solver_obj.requested_early_exit:
            log.info("Optimization Done.")
    return exit_status(solver_obj)


# ---------------------------------------------------------------------- test

def _device(gpu):
    """The device of Caffe's test/time: the first id of --gpu, logged as Caffe logs it."""
    gpus = parse_gpus(gpu)
    if gpus:
        torch.cuda.set_device(gpus[0])
        log.info("Use GPU with device ID %d", gpus[0])
        log.info("GPU device name: %s", torch.cuda.get_device_name(gpus[0]))
        return torch.device(f"cuda:{gpus[0]}")
    log.info("Use CPU.")
    return torch.device("cpu")


@click.command("test", cls=CaffeCommand)
@caffe_option("model", required=True, help="The model definition protocol buffer text file.")
@caffe_option("weights", required=True, help="The trained weights, separated by ','.")
@caffe_option("iterations", type=int, default=50, help="The number of batches to run.")
@caffe_option("gpu", default="", help="The GPU id to run on (the first of a list).")
@caffe_option("level", type=int, default=0, help="Net state level.")
@caffe_option("stage", default="", help="Net state stages, separated by ','.")
@caffe_option("ap_version", default="11point", type=click.Choice(["11point", "MaxIntegral", "Integral"]),
              help="AP computation for DetectionEvaluate outputs.")
@caffe_option("show_per_class_result", is_flag=True, default=False, help="Print the AP of every class.")
@caffe_option("data_shuffle", is_flag=True, default=False, help="Shuffle the data layers' records.")
@caffe_option("reencode_jpeg", is_flag=True, default=False,
              help="Caffe's JPEG round trips in AnnotatedData (bit-parity with Caffe).")
@caffe_option("precision", default="fp32", type=click.Choice(["fp32", "bf16"]),
              help="Inference precision of the forward passes (bf16 needs a CPU with native bfloat16 or a GPU).")
@caffe_option("allow_python_layers", is_flag=True, default=False,
              help="Run the prototxt's Python layers (they execute code the prototxt names).")
@caffe_option("log", "log_file", default=None, help="Also append the log to this file.")
@net_checks()
def test_command(model, weights, iterations, gpu, level, stage, ap_version, show_per_class_result,
                 data_shuffle, reencode_jpeg, precision, allow_python_layers, log_file, checks):
    """Score a model (caffe test); nets ending in DetectionEvaluate print their mAP."""
    with glog_output(log_file):
        ctx = NetContext(phase=caffe_pb2.TEST, data_shuffle=data_shuffle, reencode_jpeg=reencode_jpeg,
                         allow_python_layers=allow_python_layers, max_memory=checks["max_memory"],
                         strict_data=checks["strict_data"])
        score_model(model, weights, iterations, _device(gpu), level, stage_list(stage), ap_version,
                    show_per_class_result, ctx, progress_bar=sys.stderr.isatty(),
                    strict_weights=checks["strict_weights"], precision=precision)


# ---------------------------------------------------------------------- time

@click.command("time", cls=CaffeCommand)
@caffe_option("model", required=True, help="The model definition protocol buffer text file.")
@caffe_option("iterations", type=int, default=50, help="The number of iterations to time.")
@caffe_option("gpu", default="", help="The GPU id to run on.")
@caffe_option("phase", default="", type=click.Choice(["", "TRAIN", "TEST"]), help="Net phase (default TRAIN).")
@caffe_option("level", type=int, default=0, help="Net state level.")
@caffe_option("stage", default="", help="Net state stages, separated by ','.")
@caffe_option("weights", default="", help="Optional weights to load first.")
@caffe_option("amp", type=click.Choice(["bf16", "fp16"]), default=None, help="Autocast the forward passes.")
@caffe_option("channels_last", is_flag=True, default=False, help="Channels-last memory format for 4-D weights.")
@caffe_option("precision", default=None, type=click.Choice(["fp32", "bf16"]),
              help="Time the forward pass alone in inference mode at this precision (no backward).")
@caffe_option("allow_python_layers", is_flag=True, default=False,
              help="Run the prototxt's Python layers (they execute code the prototxt names).")
@net_checks()
def time_command(model, iterations, gpu, phase, level, stage, weights, amp, channels_last, precision,
                 allow_python_layers, checks):
    """Benchmark a model's forward and backward passes (caffe time)."""
    with glog_output():
        if precision:
            time_inference(model, iterations, _device(gpu), phase or "TEST", level, stage_list(stage), weights,
                           precision, allow_python_layers, **checks)
            return
        time_model(model, iterations, _device(gpu), phase or "TRAIN", level, stage_list(stage), weights, amp,
                   channels_last, allow_python_layers, **checks)


# ---------------------------------------------------------------------- device query

@click.command("device-query", cls=CaffeCommand)
@caffe_option("gpu", default="all", help="GPU ids separated by ',' or 'all'.")
def device_query_command(gpu):
    """Show diagnostic information for CUDA devices (caffe device_query)."""
    with glog_output():
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
