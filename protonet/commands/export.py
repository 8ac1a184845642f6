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


@click.command("import-weights")
@click.option("--model", required=True, help="The net prototxt whose .caffemodel to write.")
@click.option("--state-dict", "state_dict", required=True,
              help="A torch.save'd state_dict (.pth), read with torch.load(weights_only=True).")
@click.option("--mapping", required=True, help="Caffe blob <-> state_dict key lines (see protonet.export.import_weights).")
@click.option("--out", required=True, help="The .caffemodel to write.")
@click.option("--allow-unmapped", is_flag=True, help="Blobs without a mapping line keep their fillers.")
def import_weights_command(model, state_dict, mapping, out, allow_unmapped):
    """Write OUT, a .caffemodel for MODEL, from a PyTorch state_dict and a mapping file: one line
    per Caffe blob (LAYER.INDEX) or layer, its state_dict key, and transforms where the layouts
    differ (transpose, permute:A,B,..., flip:AXIS, reshape). Shapes are checked blob by blob."""
    from protonet.export.import_weights import import_weights

    net, done = import_weights(model, state_dict, mapping, out, allow_unmapped=allow_unmapped)
    total = sum(len(layer.blobs) for layer in net.layers.values())
    click.echo(f"wrote {out}: {len(done)} of {total} blobs from {state_dict}")
