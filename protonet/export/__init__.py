"""Out of protonet: a Caffe net as an ONNX model or a TorchScript archive that runs without
protonet, DetectionOutput included (standard ONNX operators; traced tensor operations).

export_model(prototxt, weights, "onnx" | "torchscript", out) builds the TEST-phase net and writes
it; detection=False or until=LAYER writes only the trunk, with the priors and the decode
settings beside it (OUT.priors.npy, OUT.detection.json). See protonet.export.plan for what is
refused and why.
"""
import dataclasses
import os
import time

from protonet.errors import ProtonetError
from protonet.export.plan import ExportPlan, plan_export, write_sidecar

FORMATS = ("onnx", "torchscript")


@dataclasses.dataclass
class ExportResult:
    path: str
    format: str
    plan: ExportPlan
    seconds: float
    extra_files: list

    @property
    def size(self):
        return os.path.getsize(self.path)


def export_net(net, fmt, out, until=None, detection=True):
    """Write `net` (a Net in TEST phase, weights loaded) as `fmt` at `out`."""
    if fmt not in FORMATS:
        raise ProtonetError(f"export: unknown format '{fmt}' (choose {' or '.join(FORMATS)})")
    net.eval()
    plan = plan_export(net, until=until, detection=detection)
    start = time.perf_counter()
    if fmt == "onnx":
        try:
            import onnx  # noqa: F401 - optional dependency: the `export` extra
        except ImportError:
            raise ProtonetError("ONNX export needs the onnx package: pip install 'protonet[export]'") from None
        from protonet.export.to_onnx import export_onnx

        export_onnx(plan, out)
    else:
        from protonet.export.to_torchscript import export_torchscript

        export_torchscript(plan, out)
    extra = write_sidecar(plan, out) if plan.detection is None else []
    return ExportResult(os.fspath(out), fmt, plan, time.perf_counter() - start, extra)


def export_model(model, weights, fmt, out, until=None, detection=True):
    """Build the TEST-phase net of the prototxt `model`, load `weights` (a .caffemodel, or None
    for the fillers') and write it as `fmt` at `out`."""
    from protonet.net import Net

    net = Net(model, phase="TEST", weights=weights)
    return export_net(net, fmt, out, until=until, detection=detection)


__all__ = ["FORMATS", "ExportResult", "export_model", "export_net", "plan_export"]
