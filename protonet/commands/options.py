"""What the commands share: Caffe's flag spellings, progress bars, the glog-shaped log."""
import contextlib
import functools
import sys

import click

from protonet.errors import ProtonetError
from protonet.sizes import parse_bytes
from protonet.solver.logger import install_handler, remove_handlers

_TRUE = {"true", "t", "yes", "y", "1"}
_FALSE = {"false", "f", "no", "n", "0"}


def _long_names(option):
    return [o for o in option.opts + option.secondary_opts if o.startswith("--")]


def _click_spelling(option):
    """The name --help shows: the first long name, dashed."""
    names = [o for o in option.opts if o.startswith("--") and "_" not in o] or option.opts
    return names[0]


def _flag_spelling(option, value):
    """The click tokens that set boolean `option` to `value`."""
    if value:
        return [_click_spelling(option)]
    if option.secondary_opts:
        return [option.secondary_opts[0]]
    if option.default is not True:  # off already (click's flag default is False or unset)
        return []
    raise ProtonetError(f"{_click_spelling(option)} cannot be switched off")


def gflags_to_click(command, args):
    """Caffe's gflags spellings of `command`'s options turned into click's: -flag value, -flag=value,
    --flag=value and underscores for dashes; for booleans -flag, -noflag and -flag=true|false.
    Tokens that name no option of the command, values and everything after `--` pass unchanged."""
    options = {}
    for param in command.params:
        if isinstance(param, click.Option):
            for name in _long_names(param):
                options[name[2:].replace("_", "-")] = param
    out, expect_value = [], False
    for i, token in enumerate(args):
        if expect_value:  # the value of the option before, whatever it looks like
            out.append(token)
            expect_value = False
            continue
        if token == "--":
            return out + list(args[i:])
        dashes = len(token) - len(token.lstrip("-"))
        body, eq, value = token[dashes:].partition("=")
        key = body.replace("_", "-")
        option, negated = options.get(key), False
        if option is None and key.startswith("no") and getattr(options.get(key[2:]), "is_flag", False):
            option, negated = options[key[2:]], True
        if dashes not in (1, 2) or len(body) < 2 or option is None:
            out.append(token)
            continue
        if option.is_flag and not option.count:
            if not eq:
                truth = not negated
            elif value.lower() in _TRUE | _FALSE and not negated:
                truth = value.lower() in _TRUE
            else:
                raise ProtonetError(f"{token}: a boolean flag takes true or false")
            out.extend(_flag_spelling(option, truth))
        elif eq:
            out.append(f"{_click_spelling(option)}={value}")
        else:
            out.append(_click_spelling(option))
            expect_value = True
    return out


class CaffeOption(click.Option):
    """An option whose --help line shows only its click spelling (dashes)."""

    def get_help_record(self, ctx):
        opts = self.opts
        self.opts = [o for o in opts if "_" not in o] or opts
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts


class CaffeCommand(click.Command):
    """A command that takes Caffe's gflags spellings of its flags as well as click's."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, gflags_to_click(self, args))

    def format_epilog(self, ctx, formatter):
        example = next((p for p in self.params if isinstance(p, click.Option) and not p.is_flag
                        and p.name not in ("help",)), None)
        formatter.write_paragraph()
        if example is not None:
            name = _click_spelling(example)[2:].replace("-", "_")
            formatter.write_text(f"Caffe's flag spellings work too: -{name} X, -{name}=X, --{name}=X, "
                                 "underscores for dashes, and for switches -flag, -noflag, --flag=false.")
        else:
            formatter.write_text("Caffe's flag spellings work too: -flag, -noflag, --flag=false, underscores "
                                 "for dashes.")
        super().format_epilog(ctx, formatter)


def caffe_option(name, dest=None, **kwargs):
    """An option under its dashed name and Caffe's underscore twin (--sigint-effect, --sigint_effect)."""
    names = [f"--{name.replace('_', '-')}"]
    if "_" in name:
        names.append(f"--{name}")
    return click.option(*names, dest or name, cls=CaffeOption, **kwargs)


def stage_list(stage):
    """Caffe's --stage 'a,b' -> ('a', 'b')."""
    return tuple(s for s in (stage or "").split(",") if s)


def progress_bar(label):
    """progress(iterable): the iterable, with a bar on stderr while it is consumed."""
    def progress(items):
        with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
            yield from bar
    return progress


@contextlib.contextmanager
def glog_output(log_file=None):
    """protonet's log in glog's shape on stderr (and appended to `log_file`) while the block runs."""
    handlers = install_handler(path=log_file)
    try:
        yield
    finally:
        remove_handlers(handlers)


def net_checks(data=True, weights=True):
    """--max-memory, and --strict-data / --strict-weights where the command reads data / weights:
    how strictly a net and what it reads are checked. The command gets `checks`, a dict of the
    keyword arguments the tools take (max_memory in bytes or None, strict_data, strict_weights)."""
    def deco(fn):
        @functools.wraps(fn)
        def run(*args, max_memory=None, strict_data=False, strict_weights=False, **kwargs):
            checks = {"max_memory": parse_bytes(max_memory) if max_memory else None}
            if data:
                checks["strict_data"] = strict_data
            if weights:
                checks["strict_weights"] = strict_weights
            return fn(*args, checks=checks, **kwargs)

        if weights:
            run = caffe_option("strict_weights", is_flag=True, default=False,
                               help="Fail when no layer of the --weights files is a layer of the net "
                                    "(default: a warning naming both).")(run)
        if data:
            run = caffe_option("strict_data", is_flag=True, default=False,
                               help="Fail on a corrupt record or one with NaN/inf/out-of-range boxes "
                                    "(default: a warning naming it, and the record is skipped).")(run)
        return caffe_option("max_memory", default=None, metavar="SIZE",
                            help="Refuse to build a net needing more memory than this (e.g. 64G, 512M; "
                                 "default: this machine's memory).")(run)
    return deco
