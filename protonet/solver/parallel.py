"""The collectives of data-parallel training (torch.distributed), as Caffe's P2PSync does them.

Gradients are summed over the processes in buckets (flattened groups of about 25 MB, as
DistributedDataParallel's; every bucket's all-reduce is started before the first is awaited) and
scaled by 1/world_size, so N processes with batch B update exactly as one with batch N*B.
A process's non-finite loss travels with the last bucket, so that all stop together.
"""
import torch

from protonet.solver.signals import NONE, SNAPSHOT, STOP

BUCKET_BYTES = 25 * 1024 * 1024  # DistributedDataParallel's default bucket_cap_mb


def _buckets(tensors):
    """Consecutive groups of `tensors` of at most BUCKET_BYTES bytes of float32 (a larger tensor alone)."""
    limit = BUCKET_BYTES
    groups, current, size = [], [], 0
    for t in tensors:
        n = t.numel() * 4
        if current and size + n > limit:
            groups.append(current)
            current, size = [], 0
        current.append(t)
        size += n
    if current or not groups:
        groups.append(current)
    return groups


def average_gradients(blobs, world_size, bad=False):
    """Sum every learnable blob's gradient over the processes, scaled by 1/world_size (a blob
    without a gradient counts as zeros). Returns whether any process flagged `bad`."""
    import torch.distributed as dist  # only data-parallel runs need torch.distributed

    for b in blobs:
        if b.requires_grad and b.grad is None:
            b.grad = torch.zeros_like(b)
    grads = [b.grad for b in blobs if b.requires_grad]
    device = grads[0].device if grads else (blobs[0].device if blobs else torch.device("cpu"))
    flag = torch.tensor([1.0 if bad else 0.0], device=device)
    groups = _buckets(grads)
    flats, works = [], []
    for i, group in enumerate(groups):
        pieces = [g.reshape(-1).float() for g in group] + ([flag] if i == len(groups) - 1 else [])
        flat = torch.cat(pieces)
        flats.append(flat)
        works.append(dist.all_reduce(flat, async_op=True))
    for work in works:
        work.wait()
    scale = 1.0 / world_size
    for group, flat in zip(groups, flats):
        offset = 0
        for g in group:
            n = g.numel()
            g.copy_(flat[offset:offset + n].mul_(scale).view_as(g))
            offset += n
    return bool(flats[-1][-1].item() > 0)


def broadcast_params(net):
    """Rank 0's weights to every process (after it loaded weights or a snapshot)."""
    import torch.distributed as dist  # only data-parallel runs need torch.distributed

    with torch.no_grad():
        for tensor, _, _ in net.learnable_params:
            dist.broadcast(tensor.data, src=0)


def agree_on_action(action, device):
    """Every process takes the strongest request any of them got (stop > snapshot > none)."""
    import torch.distributed as dist  # only data-parallel runs need torch.distributed

    code = {NONE: 0, SNAPSHOT: 1, STOP: 2}[action]
    t = torch.tensor([code], dtype=torch.int32, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return {0: NONE, 1: SNAPSHOT, 2: STOP}[int(t.item())]
