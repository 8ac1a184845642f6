"""What the commands share: Caffe's flag spellings, the glog-shaped log around a command."""
import contextlib
import functools

import click

from protonet.sizes import parse_bytes
from protonet.solver.logger import install_handler, remove_handlers


def caffe_option(name, dest=None, **kwargs):
    """An option under Caffe's underscore name and its dashed twin (--sigint_effect, --sigint-effect)."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    return click.option(*names, dest or name, **kwargs)


def stage_list(stage):
    """Caffe's --stage 'a,b' -> ('a', 'b')."""
    return tuple(s for s in (stage or "").split(",") if s)


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
