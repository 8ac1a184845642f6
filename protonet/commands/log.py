"""`protonet parse-log` and `protonet plot-log`: Caffe's tools/extra log tables and a plot of them."""
import os

import click

from protonet.commands.options import CaffeCommand
from protonet.errors import ProtonetError
from protonet.tools.log import parse_log, write_tables
from protonet.tools.plot import plot_png, plot_series


@click.command("parse-log", cls=CaffeCommand)
@click.argument("logfile_path")
@click.argument("output_dir")
@click.option("--delimiter", default=",", help="Column delimiter of the CSV files.")
@click.option("--verbose", is_flag=True, help="Print the names of the files written.")
def parse_log_command(logfile_path, output_dir, delimiter, verbose):
    """Parse a Caffe/protonet training log into LOG.train and LOG.test CSV tables."""
    train, test = parse_log(logfile_path)
    for name in write_tables(logfile_path, output_dir, train, test, delimiter):
        if verbose:
            click.echo(f"Wrote {name}")


@click.command("plot-log", cls=CaffeCommand)
@click.argument("logfile_path")
@click.argument("png_path")
@click.option("--title", default="", help="Title over the plots.")
def plot_log_command(logfile_path, png_path, title):
    """Plot train loss, learning rate and test outputs (mAP) of a training log into a PNG."""
    if not png_path.lower().endswith(".png"):
        raise ProtonetError(f"{png_path}: the plot is written as PNG; give a .png file name")
    train, test = parse_log(logfile_path)
    if not train and not test:
        raise ProtonetError(f"{logfile_path}: no 'Train net output' or 'Test net output' lines to plot")
    plot_png(plot_series(train, test), png_path, title or os.path.basename(logfile_path))
