"""`protonet gen SCRIPT`: run a NetSpec script (protonet's or Caffe's own, or a bundled example by
name) from Caffe's root and, with --run, start the job script it wrote."""
import os
import subprocess
import sys

import click

from protonet.compat.run import run_script
from protonet.errors import ProtonetError
from protonet.resources import script_path


def _start_jobs(session, echo):
    commands = session.pending_jobs()
    if not commands:
        raise ProtonetError("--run: the script wrote no job script to start")
    if session.missing:
        raise ProtonetError("--run: not starting the job, missing: " + ", ".join(session.missing))
    env = dict(os.environ)
    # The job script calls `protonet`: make it this installation's.
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    for command in commands:
        echo(f"protonet gen: starting {command}")
        status = subprocess.call(command, shell=True, cwd=session.root, env=env)
        if status != 0:
            raise ProtonetError(f"job {command} exited with status {status}")


@click.command("gen")
@click.argument("script")
@click.option("--root", type=click.Path(file_okay=False), default=None,
              help="Caffe's root: the script runs from here and its relative paths start here "
                   "(default: the current directory).")
@click.option("--run", is_flag=True, help="Start the job script once the files are written.")
@click.option("--flavor", type=click.Choice(["ssd", "refinedet"]), default=None,
              help="model_libs of the SSD fork or of RefineDet (default: refinedet when the script "
                   "calls CreateRefineDetHead, ssd otherwise).")
def gen_command(script, root, run, flavor):
    """Run a NetSpec SCRIPT (a protonet example or an unchanged Caffe script) from Caffe's root:
    it writes train/test/deploy/solver prototxts and the job script. Missing data or weights are
    warnings; --run starts the job.

    SCRIPT is a file, or the name of an example bundled with protonet (`ssd_pascal`,
    `VGG16_VOC2007_320`, `refinedet/VGG16_COCO_512`, ...; `protonet examples` lists them)."""

    def echo(line):
        click.echo(line, err=True)

    # The script's own prints go where they went under Caffe; ours go to stderr.
    session = run_script(script_path(script), root=root, flavor=flavor, echo=echo)
    root = session.root
    for path in session.missing:
        echo(f"protonet gen: warning: {path} does not exist (under {root}); "
             f"the job needs it before it can run")
    for path in session.written:
        echo(f"protonet gen: wrote {os.path.relpath(path, root)}")
    if run:
        _start_jobs(session, echo)
    else:
        pending = session.launches or [os.path.relpath(p, root) for p in session.job_scripts]
        for command in pending:
            echo(f"protonet gen: job not started: {command} (use --run, or run it from {root})")
