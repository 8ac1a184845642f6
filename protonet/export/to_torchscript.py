"""TorchScript: the whole detector traced (DetectionOutput's tensor operations included), so
`torch.jit.load` runs it in a process without protonet; dynamic batch."""
import io
import warnings

import torch

from protonet.errors import ProtonetError
from protonet.export.plan import Detector, Trunk
from protonet.io.atomic import atomic_open

# The trace unrolls NMS's greedy scan over the ranks: beyond this many it refuses.
MAX_UNROLLED_RANKS = 1024


def export_torchscript(plan, path):
    """Write `plan` as a TorchScript archive at `path` (atomically); returns the ScriptModule.
    The trace is checked on batches of 1 and 3 against the net itself."""
    d = plan.detection
    if d is not None and d.settings.top_k < 0 and d.num_priors > MAX_UNROLLED_RANKS:
        raise ProtonetError(f"layer {d.layer} (DetectionOutput): nms_param.top_k is unset, so NMS would rank all "
                            f"{d.num_priors} priors in the traced graph; set top_k (the fork's deploy files use "
                            "400) or export ONNX")
    module = (Detector(plan.net, plan.detection) if plan.detection is not None
              else Trunk(plan.net, plan.trunk_outputs)).eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(module, plan.dummy_inputs(), check_trace=False, strict=False)
    except Exception as exc:  # noqa: BLE001 - any tracer failure becomes one line
        raise ProtonetError(f"TorchScript export of net {plan.net.name or '?'} failed: "
                            f"{str(exc).strip().splitlines()[0]}") from None
    for batch in (1, 3):
        inputs = plan.dummy_inputs(batch, seed=batch)
        with torch.no_grad():
            ours, theirs = module(*inputs), traced(*inputs)
        ours = ours if isinstance(ours, tuple) else (ours,)
        theirs = theirs if isinstance(theirs, tuple) else (theirs,)
        for name, a, b in zip(plan.outputs, ours, theirs):
            if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-5, atol=1e-6):
                raise ProtonetError(f"TorchScript export of net {plan.net.name or '?'}: the trace gives other "
                                    f"values for '{name}' at batch {batch} (a layer depends on the batch size "
                                    "in Python)")
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.save's deprecation notice
        torch.jit.save(traced, buf)
    with atomic_open(path) as fh:
        fh.write(buf.getvalue())
    return traced
