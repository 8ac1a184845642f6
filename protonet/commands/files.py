"""`protonet inspect FILE` and `protonet upgrade IN OUT`."""
import sys

import click

from protonet.commands.options import net_checks
from protonet.errors import ProtonetError
from protonet.io.describe import describe, load_any, shape_text, table, upgrade_loaded
from protonet.io.dialects import dialect_report
from protonet.io.prototxt import atomic_write, format_prototxt


def _describe_shapes(net_param, path, phase, max_memory=None):
    """The layers a net builds in `phase`, with the shapes of their tops, as Caffe infers them."""
    from protonet.layers.base import NetContext  # builds torch modules: only for --shapes
    from protonet.net import Net

    net = Net(net_param, phase=phase, ctx=NetContext(max_memory=max_memory), source=path)
    rows = []
    for lparam in net.net_param.layer:
        tops = " ".join(shape_text(net.blob_shapes[t]) for t in lparam.top) or "-"
        flow = f"{', '.join(lparam.bottom) or '-'} -> {', '.join(lparam.top) or '-'}"
        rows.append((lparam.name, lparam.type, tops, flow))
    head = f"{path}: net {net.name or '(unnamed)'} in phase {phase.upper()}, {len(rows)} layers, top shapes:"
    return [head] + [line.rstrip() for line in table(rows)]


@click.command("inspect")
@click.argument("file")
@click.option("--shapes", is_flag=True,
              help="For a net: build it (weights from the fillers) and print the shape of every top.")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"], case_sensitive=False), default="TEST",
              show_default=True, help="The phase whose layers --shapes builds.")
@net_checks(data=False, weights=False)
def inspect_command(file, shapes, phase, checks):
    """Print what FILE holds: layers (name, type, bottoms -> tops) of a net prototxt, layers and blob
    shapes of a .caffemodel, a solver, label map, solverstate or binaryproto blob.

    Nets and caffemodels are shown upgraded to the current form, as Caffe would load them."""
    kind, msg, _ = load_any(file)
    if kind in ("net", "caffemodel", "solver"):
        upgrade_loaded(kind, msg, file)
    if shapes:
        if kind != "net":
            raise ProtonetError(f"{file}: --shapes needs a net prototxt, this is a {kind} file")
        click.echo("\n".join(_describe_shapes(msg, file, phase, **checks)))
        return
    lines = describe(kind, msg, file)
    if kind in ("net", "caffemodel"):
        lines += _dialect_lines(msg)
    click.echo("\n".join(lines))


def _dialect_lines(net_param):
    """Which dialects the net uses and which of its layers protonet cannot run."""
    from protonet.layers import LAYERS  # the layer registry imports torch: only for nets

    type_dialects = {t: getattr(cls, "dialect", "") for t, cls in LAYERS.items()}
    return dialect_report(net_param, type_dialects, set(LAYERS))


@click.command("upgrade")
@click.argument("src", metavar="IN")
@click.argument("dst", metavar="OUT")
@click.option("--input-layer", is_flag=True,
              help="Also turn `input`/`input_dim`/`input_shape` into an Input layer, as Caffe's tool does.")
def upgrade_command(src, dst, input_layer):
    """Write IN, a net prototxt, caffemodel or solver in an old form (V0, V1 `layers`, `solver_type`),
    upgraded to the current form as OUT, in the same form (text stays text, binary stays binary).

    Exit status 1 when some old parameter had no place in the new form (listed on stderr)."""
    kind, msg, form = load_any(src)
    steps, problems = upgrade_loaded(kind, msg, src, input_fields_to_layer=input_layer)
    if form == "text":
        atomic_write(dst, format_prototxt(msg).encode("utf-8"))
    else:
        atomic_write(dst, msg.SerializeToString())
    for step in steps:
        click.echo(f"{src}: upgraded {step}")
    if not steps:
        click.echo(f"{src}: already in the latest format; written unchanged")
    click.echo(f"wrote {'text' if form == 'text' else 'binary'} {kind} {dst}")
    for line in problems:
        click.echo(f"protonet: warning: {line}", err=True)
    if problems:
        sys.exit(1)
