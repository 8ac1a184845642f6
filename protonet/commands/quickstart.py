"""`protonet quickstart`: the demo (`make demo`): a shapes dataset, an SSD written by a NetSpec
script, trained, tested and run on images, on a laptop CPU."""
import click

from protonet.tools.quickstart import print_summary, run


@click.command("quickstart")
@click.option("--root", default="work/quickstart", show_default=True,
              help="where data/, models/, jobs/ and results/ are written")
@click.option("--train", default=800, show_default=True, help="trainval images to make")
@click.option("--test", default=200, show_default=True, help="test images to make")
@click.option("--max-iter", type=int, default=None, help="shorten or lengthen the solver's schedule")
@click.option("--base-lr", type=float, default=None, help="override the solver's base_lr")
@click.option("--gpu", default=None, help="GPU id for train/test/detect (default: CPU)")
def quickstart_command(root, train, test, max_iter, base_lr, gpu):
    """Make a dataset, write an SSD from a NetSpec script, train, test and detect, on CPU."""
    print_summary(run(root, train, test, max_iter=max_iter, gpu=gpu, base_lr=base_lr), log=click.echo)
