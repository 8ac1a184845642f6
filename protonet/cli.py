"""`protonet`: the command line, with the `caffe` tool's commands and the fork's scripts.

Every command lives in protonet.commands (one module per group of commands); this entry point
only names them and imports a command's module when that command runs, so `protonet --help`
stays fast. Errors a user can fix are one line and exit status 2.
"""
import importlib
import os
import sys

import click

from protonet import __version__
from protonet.errors import ProtonetError

# command name -> ("module:attribute" of its click.Command, the line `protonet --help` shows)
COMMANDS = {
    "create-annoset": ("protonet.commands.data:create_annoset_command",
                       "Images + labels -> LMDB of AnnotatedDatum (convert_annoset)."),
    "compute-image-mean": ("protonet.commands.data:compute_image_mean_command",
                           "Mean image of a database (compute_image_mean)."),
    "convert-imageset": ("protonet.commands.data:convert_imageset_command",
                         "Images + labels -> LMDB of Datum (convert_imageset)."),
    "create-list": ("protonet.commands.data:create_list_command",
                    "List files for create-annoset; name/size files."),
    "detect": ("protonet.commands.detect:detect_command",
               "Run a detection net on images; drawn boxes, JSON lines."),
    "device-query": ("protonet.commands.caffe:device_query_command",
                     "Show the CUDA devices (caffe device_query)."),
    "draw-net": ("protonet.commands.nets:draw_net_command",
                 "Draw a net's layer graph (draw_net.py)."),
    "eval": ("protonet.commands.evaluate:eval_command",
             "VOC AP per class and mAP, or COCO's summary, of a test net."),
    "examples": ("protonet.commands.examples:examples_command",
                 "The bundled NetSpec examples and data scripts; --copy."),
    "export": ("protonet.commands.export:export_command",
               "A net as ONNX or TorchScript, DetectionOutput included."),
    "extract-features": ("protonet.commands.nets:extract_features_command",
                         "Save blobs of a net per image (extract_features)."),
    "gen": ("protonet.commands.gen:gen_command",
            "Run a NetSpec script or bundled example: prototxts, job."),
    "import-weights": ("protonet.commands.export:import_weights_command",
                       "A .caffemodel from a PyTorch state_dict and a mapping file."),
    "inspect": ("protonet.commands.files:inspect_command",
                "Print what a Caffe file holds (net, caffemodel, ...)."),
    "make-shapes": ("protonet.commands.data:make_shapes_command",
                    "Write a small shapes detection dataset (VOC layout)."),
    "parse-log": ("protonet.commands.log:parse_log_command",
                  "Training log -> LOG.train, LOG.test tables (parse_log.py)."),
    "plot-log": ("protonet.commands.log:plot_log_command",
                 "Plot loss, learning rate and mAP of a training log."),
    "quickstart": ("protonet.commands.quickstart:quickstart_command",
                   "The demo: dataset, net, train, test, detect (CPU)."),
    "test": ("protonet.commands.caffe:test_command",
             "Score a model (caffe test); detection nets: mAP."),
    "time": ("protonet.commands.caffe:time_command",
             "Time a model's forward and backward (caffe time)."),
    "train": ("protonet.commands.caffe:train_command",
              "Train or finetune a model (caffe train)."),
    "upgrade": ("protonet.commands.files:upgrade_command",
                "Upgrade an old net, caffemodel or solver."),
}


class LazyGroup(click.Group):
    """Imports a command's module only when that command runs; --help lists the table above."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        name = name.replace("_", "-")  # Caffe's spelling: `caffe device_query`
        if name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module_name), attr)

    def format_commands(self, ctx, formatter):
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="protonet")
def cli():
    """protonet: Caffe's SSD/RefineDet nets, files and tools, on PyTorch."""


def main(argv=None):
    # OpenMP threads that wait sleep instead of spinning (set before torch loads its OpenMP). On a
    # machine shared with other work a spinning thread takes the core from the thread it waits for:
    # the SSD300 deploy forward on 2 threads at load 7 ran 2.5x (MobileNet-SSD 8x) slower with the
    # default. OMP_WAIT_POLICY=ACTIVE in the environment keeps spinning.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        cli.main(args=argv, prog_name="protonet", standalone_mode=False)
    except ProtonetError as exc:
        click.echo(f"protonet: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("protonet: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except FileNotFoundError as exc:
        click.echo(f"protonet: error: {exc.filename or exc}: no such file", err=True)
        sys.exit(2)
    except SystemExit:
        raise
    return 0


if __name__ == "__main__":
    main()
