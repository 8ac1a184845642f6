"""`protonet`: the command line, with the `caffe` tool's commands and the fork's scripts.

Subcommands live next to the code they drive and are loaded lazily, so `protonet --help`
stays fast and one broken module does not take the others down.
"""
import importlib
import sys

import click

from protonet.errors import ProtonetError

# command name -> "module:attribute" of a click.Command
COMMANDS = {
    "gen": "protonet.spec.gen:gen_command",
    "inspect": "protonet.io.commands:inspect_command",
    "upgrade": "protonet.io.commands:upgrade_command",
    "train": "protonet.solver.commands:train_command",
    "test": "protonet.solver.commands:test_command",
    "time": "protonet.solver.commands:time_command",
    "device-query": "protonet.solver.commands:device_query_command",
    "parse-log": "protonet.tools.log:parse_log_command",
    "plot-log": "protonet.tools.log:plot_log_command",
    "create-annoset": "protonet.tools.create_annoset:create_annoset_command",
    "create-list": "protonet.tools.create_list:create_list_command",
    "make-shapes": "protonet.tools.shapes:make_shapes_command",
    "detect": "protonet.tools.detect:detect_command",
    "eval": "protonet.eval.commands:eval_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("protonet"):
                return _not_available(name)
            raise
        return getattr(module, attr)


def _not_available(name):
    @click.command(name, help="(not available yet)", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cmd(args):
        raise ProtonetError(f"'{name}' is not available yet in this version of protonet")

    return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """protonet: Caffe's SSD/RefineDet nets, files and tools, on PyTorch."""


def main(argv=None):
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
