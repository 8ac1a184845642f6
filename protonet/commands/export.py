"""`protonet export`: a net as ONNX or TorchScript, DetectionOutput included."""
import click

from protonet.export import FORMATS, export_model


@click.command("export")
@click.option("--model", required=True, help="Deploy (or TEST) net prototxt.")
@click.option("--weights", default=None, help="Trained .caffemodel (default: the prototxt's fillers).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), required=True,
              help="onnx: opset 17, standard operators (NonMaxSuppression, TopK, ...); "
                   "torchscript: for torch.jit.load.")
@click.option("--out", required=True, help="The file to write.")
@click.option("--until", default=None, metavar="LAYER",
              help="Export up to LAYER's tops; with a DetectionOutput in the net, its priors and decode "
                   "settings are written beside OUT (OUT.priors.npy, OUT.detection.json).")
@click.option("--no-detection-output", "no_detection", is_flag=True,
              help="Export the trunk up to DetectionOutput's bottoms; priors and settings beside OUT.")
def export_command(model, weights, fmt, out, until, no_detection):
    """Write the net of MODEL with WEIGHTS as one file that runs without protonet: ONNX for
    onnxruntime and other runtimes, TorchScript for torch.jit.load. The batch size is free.
    DetectionOutput becomes part of the graph; adaptive NMS (eta < 1) and layers that read or
    write files or run Python are refused, each named."""
    result = export_model(model, weights, fmt, out, until=until, detection=not no_detection and until is None)
    plan = result.plan
    what = f"{plan.detection.layer} (DetectionOutput) included" if plan.detection else \
        f"trunk to {', '.join(plan.trunk_outputs)}"
    click.echo(f"wrote {fmt} {result.path} ({result.size / 1e6:.1f} MB, {result.seconds:.1f} s): inputs "
               f"{', '.join(plan.inputs)} (batch free), outputs {', '.join(plan.outputs)}; {what}")
    for path in result.extra_files:
        click.echo(f"wrote {path}")
