"""What the commands share: Caffe's flag spellings, the glog-shaped log around a command."""
import contextlib

import click

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
