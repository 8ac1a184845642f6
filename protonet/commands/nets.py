"""Commands that look into a net: `extract-features` (Caffe's extract_features) and `draw-net`
(Caffe's python/draw_net.py)."""
import click

from protonet.commands.options import CaffeCommand, caffe_option, glog_output, progress_bar
from protonet.devices import device_for
from protonet.errors import ProtonetError
from protonet.tools.draw_net import draw_net
from protonet.tools.features import extract_features


def _caffe_positionals(args):
    """extract_features' own arguments: WEIGHTS MODEL BLOBS OUTS N [DB_TYPE [CPU|GPU [DEVICE_ID]]]."""
    if not 5 <= len(args) <= 8:
        raise ProtonetError("extract-features: give --model, --weights, --blobs, --out and --iterations, or "
                            "Caffe's arguments WEIGHTS MODEL BLOBS OUTS N [lmdb [CPU|GPU [DEVICE_ID]]]")
    weights, model, blobs, outs, iterations = args[:5]
    if len(args) > 5 and args[5] != "lmdb":
        raise ProtonetError(f"extract-features: db_type {args[5]}: only lmdb is supported")
    gpu = (args[7] if len(args) > 7 else "0") if len(args) > 6 and args[6] == "GPU" else None
    try:
        return model, weights, blobs, outs, int(iterations), gpu
    except ValueError:
        raise ProtonetError(f"extract-features: num_mini_batches {iterations!r} is not a number") from None


@click.command("extract-features", cls=CaffeCommand)
@caffe_option("model", default=None, help="The net prototxt (built in the TEST phase, with its data layer).")
@caffe_option("weights", default=None, help="The trained .caffemodel.")
@caffe_option("blobs", default=None, help="Blob names, separated by ','.")
@caffe_option("out", default=None,
              help="One output per blob, separated by ',': an LMDB (Caffe's), a .npy or a .h5; or one .h5 for all.")
@caffe_option("iterations", type=int, default=None, help="The number of batches.")
@caffe_option("gpu", default=None, help="CUDA device id (default: CPU).")
@caffe_option("redo", is_flag=True, help="Replace outputs that exist.")
@click.argument("caffe_args", nargs=-1, metavar="[WEIGHTS MODEL BLOBS OUTS N [lmdb [CPU|GPU [ID]]]]")
def extract_features_command(model, weights, blobs, out, iterations, gpu, redo, caffe_args):
    """Save the values of BLOBS for every image of N batches of a net, as Caffe's extract_features
    (which takes its arguments in the order of the bracket)."""
    if caffe_args:
        model, weights, blobs, out, iterations, gpu = _caffe_positionals(caffe_args)
    missing = [flag for flag, value in (("--model", model), ("--weights", weights), ("--blobs", blobs),
                                        ("--out", out), ("--iterations", iterations)) if value is None]
    if missing:
        raise ProtonetError(f"extract-features: give {', '.join(missing)}")
    with glog_output():
        extract_features(model, weights, blobs.split(","), out.split(","), iterations, device_for(gpu), redo,
                         progress=progress_bar("extract-features"))


@click.command("draw-net", cls=CaffeCommand)
@click.argument("net", type=click.Path())
@click.argument("out", type=click.Path())
@caffe_option("rankdir", default="LR", show_default=True,
              help="Graph direction: LR (left-right), TB (top-bottom), RL or BT.")
@caffe_option("phase", default="ALL", show_default=True, type=click.Choice(["ALL", "TRAIN", "TEST"]),
              help="The layers of this phase, or ALL.")
def draw_net_command(net, out, rankdir, phase):
    """Draw NET's layer graph (types, kernel sizes, blob shapes) into OUT: .png, .svg, .pdf, ... with
    Graphviz's dot, or the graph's text as .dot without it (Caffe's python/draw_net.py)."""
    click.echo(f"Drawing net to {out}")
    why = draw_net(net, out, rankdir, phase)
    if why:
        click.echo(f"draw-net: drawn without blob shapes: the net does not build ({why})", err=True)
