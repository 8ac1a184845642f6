"""`protonet examples`: what protonet carries for its users (protonet.resources): the NetSpec
examples that `protonet gen NAME` runs, and the data scripts and label maps; `--copy` puts them in
a folder to read or change."""
import os

import click

from protonet import resources


@click.command("examples")
@click.option("--copy", "destination", type=click.Path(file_okay=False), default=None,
              help="Copy examples/ and scripts/ into this folder (existing files are kept).")
def examples_command(destination):
    """List the bundled NetSpec examples (run one with `protonet gen NAME`) and the data scripts and
    label maps (scripts/VOC0712, scripts/coco), with where they are installed."""
    if destination:
        written = resources.copy_to(destination)
        for path in written:
            click.echo(f"protonet examples: wrote {os.path.relpath(path)}", err=True)
        click.echo(f"protonet examples: {len(written)} files copied into {destination}", err=True)
        return
    click.echo(f"NetSpec examples (protonet gen NAME), in {resources.EXAMPLES}:")
    for name in resources.examples():
        click.echo(f"  {name.split('/')[1]:<28} {name}.py")
    click.echo(f"Data scripts and label maps, in {resources.SCRIPTS}:")
    for name in resources.data_scripts():
        click.echo(f"  {name}")
