"""`protonet detect`: a deploy net on image files; drawn boxes and detections.jsonl."""
import os
import sys

import click

from protonet.commands.options import net_checks
from protonet.devices import device_for
from protonet.errors import ProtonetError
from protonet.tools.detect import parse_floats, run_detect


@click.command("detect")
@click.option("--model", required=True, help="deploy prototxt (input blob + DetectionOutput)")
@click.option("--weights", required=True, help="trained .caffemodel")
@click.option("--labelmap", default=None, help="LabelMap prototxt for class names")
@click.option("--threshold", default=0.5, show_default=True, help="keep detections with at least this score")
@click.option("--gpu", default=None, help="CUDA device id (default: CPU)")
@click.option("--mean", default=None, help="mean values B,G,R subtracted from the pixels (overrides the model's)")
@click.option("--scale", type=float, default=None, help="pixel scale after the mean (overrides the model's)")
@click.option("--resize", default=None, help="WxH the image is warped to (overrides the model's)")
@click.option("--out", "out_dir", required=True, help="directory for the drawn images and detections.jsonl")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16"]),
              help="inference precision (bf16 needs a CPU with native bfloat16 or a GPU)")
@click.argument("inputs", nargs=-1, required=True)
@net_checks(data=False)
def detect_command(model, weights, labelmap, threshold, gpu, mean, scale, resize, out_dir, precision, inputs, checks):
    """Run a detection net on IMAGES_OR_DIRS; draw the boxes and write detections.jsonl."""
    mean_values = parse_floats(mean, "--mean") if mean else None
    size = tuple(int(v) for v in parse_floats(resize, "--resize", 2)) if resize else None

    def progress(images):
        with click.progressbar(images, label="detect", file=sys.stderr, show_pos=True) as bar:
            yield from bar

    images, records, skipped = run_detect(model, weights, inputs, out_dir, labelmap=labelmap, threshold=threshold,
                                          device=device_for(gpu), mean=mean_values, scale=scale, resize=size,
                                          progress=progress, log=click.echo, precision=precision,
                                          **checks)
    click.echo(f"detect: {len(images) - len(skipped)} image(s), {len(records)} detection(s) with score >= "
               f"{threshold}; drawn images and detections.jsonl in {os.path.abspath(out_dir)}")
    if skipped:
        raise ProtonetError(f"detect: {len(skipped)} of {len(images)} images could not be read and were skipped: "
                            + "; ".join(skipped))
