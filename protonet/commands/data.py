"""Dataset commands: `create-annoset` (Caffe's convert_annoset), `convert-imageset`,
`compute-image-mean`, `create-list`, `make-shapes`."""
import logging

import click

from protonet.commands.options import CaffeCommand, caffe_option, glog_output, progress_bar
from protonet.errors import ProtonetError
from protonet.tools.create_annoset import create_annoset, link_into
from protonet.tools.convert_imageset import convert_imageset
from protonet.tools.create_list import write_coco_list, write_name_size, write_voc_lists
from protonet.tools.image_mean import compute_image_mean
from protonet.tools.shapes import CLASSES, make_shapes


# ---------------------------------------------------------------------- create-annoset

@click.command("create-annoset", cls=CaffeCommand)
@click.argument("root", type=click.Path())
@click.argument("listfile", type=click.Path())
@click.argument("outdb", type=click.Path())
@click.argument("exampledir", type=click.Path(), required=False)
@click.option("--anno-type", default="classification",
              type=click.Choice(["classification", "detection"]), show_default=True)
@click.option("--label-type", default="xml", type=click.Choice(["xml", "json", "txt", "csv",
                                                                 "coco"]), show_default=True,
              help="Label files: VOC xml, per-image or COCO json, txt; or csv (LISTFILE is a "
                   "path,x1,y1,x2,y2,class CSV).")
@click.option("--label-map-file", default="", help="LabelMap prototxt (detection).")
@click.option("--check-label", is_flag=True, help="Fail on duplicated names in the label map.")
@click.option("--min-dim", default=0, type=int, help="Scale up so the short side is >= this.")
@click.option("--max-dim", default=0, type=int, help="Scale down so the long side is <= this.")
@click.option("--resize-width", default=0, type=int)
@click.option("--resize-height", default=0, type=int)
@click.option("--check-size", is_flag=True, help="Check that all datums have the same size.")
@click.option("--encode-type", default="", help="Encode images as jpg, png, ...")
@click.option("--encoded", is_flag=True, help="Store encoded images (format of the file).")
@click.option("--gray", is_flag=True, help="Read images as grayscale.")
@click.option("--shuffle", is_flag=True, help="Shuffle the list before writing.")
@click.option("--seed", default=None, type=int, help="Seed for --shuffle.")
@click.option("--backend", default="lmdb", type=click.Choice(["lmdb", "leveldb"]))
@click.option("--redo", is_flag=True, help="Recreate the database if it exists.")
def create_annoset_command(root, listfile, outdb, exampledir, anno_type, label_type,
                           label_map_file, check_label, min_dim, max_dim, resize_width,
                           resize_height, check_size, encode_type, encoded, gray, shuffle, seed,
                           backend, redo):
    """Convert images and labels listed in LISTFILE (paths relative to ROOT) into an LMDB of
    AnnotatedDatum at OUTDB, as Caffe's convert_annoset. With EXAMPLEDIR, also link OUTDB there
    (as the fork's scripts/create_annoset.py)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    written, skipped = create_annoset(
        root, listfile, outdb, anno_type=anno_type, label_type=label_type,
        label_map_file=label_map_file, check_label=check_label, min_dim=min_dim,
        max_dim=max_dim, resize_width=resize_width, resize_height=resize_height,
        check_size=check_size, encode_type=encode_type, encoded=encoded, gray=gray,
        shuffle=shuffle, seed=seed, backend=backend, redo=redo, progress=progress_bar("create-annoset"))
    if exampledir:
        link_into(exampledir, outdb)
    click.echo(f"wrote {written} records to {outdb}", err=True)
    if skipped:
        raise ProtonetError(f"{len(skipped)} images could not be read: " + "; ".join(skipped[:5])
                            + (" ..." if len(skipped) > 5 else ""))


# ---------------------------------------------------------------------- convert-imageset

@click.command("convert-imageset", cls=CaffeCommand)
@click.argument("root", type=click.Path())
@click.argument("listfile", type=click.Path())
@click.argument("db", type=click.Path())
@caffe_option("gray", is_flag=True, help="Read the images as grayscale.")
@caffe_option("shuffle", is_flag=True, help="Shuffle the list before writing.")
@caffe_option("seed", type=int, default=None, help="Seed for --shuffle.")
@caffe_option("backend", default="lmdb", type=click.Choice(["lmdb", "leveldb"]), show_default=True)
@caffe_option("resize_width", type=int, default=0, help="Width the images are resized to.")
@caffe_option("resize_height", type=int, default=0, help="Height the images are resized to.")
@caffe_option("check_size", is_flag=True, help="Check that all the images have the same size.")
@caffe_option("encoded", is_flag=True, help="Store the images encoded (their file's bytes when possible).")
@caffe_option("encode_type", default="", help="Encode the images as png, jpg, ... (implies --encoded).")
@caffe_option("redo", is_flag=True, help="Recreate the database if it exists.")
def convert_imageset_command(root, listfile, db, gray, shuffle, seed, backend, resize_width, resize_height,
                             check_size, encoded, encode_type, redo):
    """Convert the images listed in LISTFILE ('path label' lines, paths relative to ROOT) into an LMDB
    of Datum at DB, as Caffe's convert_imageset: the database a Data layer reads."""
    with glog_output():
        written, skipped = convert_imageset(root, listfile, db, resize_height, resize_width, gray, shuffle, seed,
                                            encoded, encode_type, check_size, backend, redo,
                                            progress=progress_bar("convert-imageset"))
    click.echo(f"wrote {written} records to {db}", err=True)
    if skipped:
        raise ProtonetError(f"{len(skipped)} images could not be read: " + "; ".join(skipped[:5])
                            + (" ..." if len(skipped) > 5 else ""))


# ---------------------------------------------------------------------- compute-image-mean

@click.command("compute-image-mean", cls=CaffeCommand)
@click.argument("db", type=click.Path())
@click.argument("output", type=click.Path(), required=False)
@caffe_option("backend", default="lmdb", type=click.Choice(["lmdb", "leveldb"]), show_default=True)
def compute_image_mean_command(db, output, backend):
    """The mean image of DB's records (Datum, or AnnotatedDatum) written as a BlobProto to OUTPUT
    (a .binaryproto for transform_param's mean_file), as Caffe's compute_image_mean; the
    per-channel means are logged."""
    if backend != "lmdb":
        raise ProtonetError(f"--backend {backend}: only lmdb is supported")
    with glog_output():
        compute_image_mean(db, output, progress=progress_bar("compute-image-mean"))


# ---------------------------------------------------------------------- create-list

@click.group("create-list")
def create_list_command():
    """List files for create-annoset, and name/size files for evaluation."""


@create_list_command.command("voc")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.argument("outdir", type=click.Path())
@click.option("--trainval", "trainval_sets", multiple=True, default=["VOC2007", "VOC2012"],
              show_default=True, help="VOCdevkit folders whose trainval set is used.")
@click.option("--test", "test_sets", multiple=True, default=["VOC2007"], show_default=True,
              help="VOCdevkit folders whose test set is used.")
@click.option("--seed", type=int, default=None, help="Seed for shuffling trainval.")
def voc_command(root, outdir, trainval_sets, test_sets, seed):
    """ROOT is a VOCdevkit folder: writes OUTDIR/trainval.txt (shuffled), OUTDIR/test.txt and
    OUTDIR/test_name_size.txt, as the fork's data/VOC0712/create_list.sh."""
    trainval, test, sizes = write_voc_lists(root, outdir, trainval_sets, test_sets, seed,
                                            progress=progress_bar("name-size"))
    click.echo(f"trainval: {trainval} images, test: {test} images ({sizes} sizes)", err=True)


@create_list_command.command("coco")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.argument("outfile", type=click.Path())
@click.option("--instances", required=True,
              help="COCO instances JSON, relative to ROOT (e.g. annotations/instances_val2017.json).")
@click.option("--images", "images_dir", default=None,
              help="Image folder relative to ROOT (default: images/<name of the set>).")
@click.option("--name-size", "name_size", default=None, type=click.Path(),
              help="Also write 'image_id height width' lines here.")
@click.option("--shuffle", is_flag=True, help="Shuffle the lines (as the fork does for train).")
@click.option("--seed", type=int, default=None)
def coco_command(root, outfile, instances, images_dir, name_size, shuffle, seed):
    """Lines 'IMAGE INSTANCES_JSON' for every image of a COCO instances file; create-annoset
    --label-type json reads the boxes straight from that file (no per-image split)."""
    count = write_coco_list(root, outfile, instances, images_dir, name_size, shuffle, seed)
    click.echo(f"{count} images", err=True)


@create_list_command.command("name-size")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.argument("listfile", type=click.Path())
@click.argument("outfile", type=click.Path())
@click.option("--name-id-file", default=None, type=click.Path(exists=True),
              help="'name id' lines: write ids instead of names.")
def name_size_command(root, listfile, outfile, name_id_file):
    """'name height width' for each image of LISTFILE (the fork's get_image_size)."""
    count = write_name_size(root, listfile, outfile, name_id_file, progress=progress_bar("name-size"))
    click.echo(f"{count} images", err=True)


# ---------------------------------------------------------------------- make-shapes

@click.command("make-shapes")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--train", "train", default=800, show_default=True, help="number of trainval images")
@click.option("--test", "test", default=200, show_default=True, help="number of test images")
@click.option("--size", default=160, show_default=True, help="image width and height in pixels")
@click.option("--seed", default=0, show_default=True, help="the dataset is a function of the seed")
def make_shapes_command(outdir, train, test, size, seed):
    """Write a small shapes detection dataset (Pascal VOC layout) into OUTDIR."""
    paths = make_shapes(outdir, train=train, test=test, size=size, seed=seed, progress=progress_bar("make-shapes"))
    click.echo(f"Wrote {train} trainval and {test} test images ({paths['objects']} objects, "
               f"{paths['difficult']} difficult) of classes {', '.join(CLASSES)} to {paths['root']}")
    click.echo(f"  list files: {paths['trainval']} {paths['test']}")
    click.echo(f"  label map:  {paths['labelmap']}")
    click.echo(f"  name/size:  {paths['name_size']}")
