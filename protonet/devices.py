"""Which devices a command runs on: Caffe's `--gpu` lists ('' | 'all' | '0,1') -> CUDA ids."""
import torch

from protonet.errors import ProtonetError


def parse_gpus(gpu):
    """'' or None -> [] (the CPU), 'all' -> every CUDA device, '0,1' -> [0, 1] (Caffe's get_gpus)."""
    if gpu is None or str(gpu) == "":
        return []
    gpu = str(gpu)
    count = torch.cuda.device_count()
    if gpu == "all":
        if count == 0:
            raise ProtonetError("--gpu all: no CUDA device is available")
        return list(range(count))
    try:
        ids = [int(x) for x in gpu.split(",")]
    except ValueError:
        raise ProtonetError(f"--gpu: expected device ids separated by ',' or 'all', got '{gpu}'") from None
    for i in ids:
        if i < 0 or i >= count:
            raise ProtonetError(f"--gpu {gpu}: device {i} does not exist ({count} CUDA devices available)")
    return ids


def device_for(gpu):
    """The torch device name for a `--gpu` value: the first id of the list, or 'cpu' without one."""
    ids = parse_gpus(gpu)
    return f"cuda:{ids[0]}" if ids else "cpu"
