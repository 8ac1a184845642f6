"""`protonet eval`: a detection test net's VOC AP per class and mAP, or COCO's summary."""
import sys

import click

from protonet.commands.options import net_checks
from protonet.devices import device_for
from protonet.eval.voc import AP_VERSIONS
from protonet.tools.evaluate import evaluate


@click.command("eval")
@click.option("--model", required=True, help="test prototxt with DetectionEvaluate (and DetectionOutput for COCO)")
@click.option("--weights", default=None, help="trained .caffemodel (none: the net's fillers)")
@click.option("--iterations", type=int, default=None, help="test batches (default: the whole name/size file)")
@click.option("--ap-version", default="11point", show_default=True, type=click.Choice(AP_VERSIONS),
              help="Caffe's AP: VOC2007's 11 points, VOC2012's MaxIntegral, or Integral")
@click.option("--labelmap", default=None, help="LabelMap for class names (default: the data layer's)")
@click.option("--coco-gt", default=None, help="COCO instances JSON: score with pycocotools' COCOeval too")
@click.option("--gpu", default=None, help="CUDA device id (default: CPU)")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]),
              help="inference precision (bf16 needs a CPU with native bfloat16 or a GPU)")
@net_checks()
def eval_command(model, weights, iterations, ap_version, labelmap, coco_gt, gpu, precision, checks):
    """Evaluate a detection test net: VOC AP per class and mAP, or COCO's summary."""
    device = device_for(gpu)

    def progress(steps):
        with click.progressbar(steps, label="eval", file=sys.stderr, show_pos=True) as bar:
            yield from bar

    result = evaluate(model, weights, iterations, ap_version, labelmap, coco_gt, device, progress,
                      precision=precision, **checks)
    names = result["names"]
    click.echo(f"Evaluated {result['iterations']} batches of {model}" + (f" with {weights}" if weights else ""))
    if result["map"] is not None:
        width = max([len(str(names.get(label, label))) for label in result["ap"]] + [5])
        click.echo(f"{'label':>5}  {'class':<{width}}  AP ({ap_version})")
        for label, ap in sorted(result["ap"].items()):
            click.echo(f"{label:>5}  {str(names.get(label, '')):<{width}}  {ap:.6f}")
        click.echo(f"mAP ({ap_version}) = {result['map']:.6f}")
        for k, value in enumerate(result.get("outputs", [])[1:], 1):
            click.echo(f"detection_eval #{k} = {value:.6f}")
    if result["coco"] is not None:
        click.echo("COCO bbox: " + " ".join(f"{v:.4f}" for v in result["coco"]))
