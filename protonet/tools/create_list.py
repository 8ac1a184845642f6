"""`protonet create-list`: the list files create-annoset takes, and DetectionEvaluate's
name/size file, as the fork's data/VOC0712/create_list.sh, data/coco/create_list.py and
tools/get_image_size do.

  protonet create-list voc ROOT OUTDIR        trainval.txt (shuffled), test.txt, test_name_size.txt
  protonet create-list coco ROOT OUTFILE --instances annotations/instances_val2017.json
                                              "images/... annotations/instances_...json" lines
                                              (+ --name-size FILE: "image_id height width")
  protonet create-list name-size ROOT LISTFILE OUTFILE
                                              "name height width" per listed image
"""
import os
import random
import sys

import click

from protonet.data.records import read_image_file
from protonet.errors import ProtonetError
from protonet.io.json_files import check_coco, read_json
from protonet.io.prototxt import read_utf8_lines


def image_size(path):
    """(height, width) as OpenCV decodes the file (the fork's GetImageSize)."""
    img = read_image_file(path)
    if img is None:
        raise ProtonetError(f"{path}: cannot read image")
    return img.shape[:2]


def read_pairs(list_file):
    """The first two fields of each line: (image, label or label file)."""
    if not os.path.isfile(list_file):
        raise ProtonetError(f"{list_file}: no such list file")
    pairs = []
    for lineno, line in enumerate(read_utf8_lines(list_file), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise ProtonetError(f"{list_file}:{lineno}: expected 'IMAGE LABEL', got {line.strip()!r}")
        pairs.append((lineno, parts[0], parts[1]))
    return pairs


def write_name_size(root, list_file, out_file, name_id_file=None):
    """get_image_size: "name height width" (or "id height width" with a name -> id file)."""
    pairs = read_pairs(list_file)
    name_to_id = None
    if name_id_file:
        name_to_id = {}
        for lineno, line in enumerate(read_utf8_lines(name_id_file), 1):
            parts = line.split()
            if len(parts) >= 2:
                if parts[0] in name_to_id:
                    raise ProtonetError(f"{name_id_file}:{lineno}: {parts[0]} given twice")
                try:
                    name_to_id[parts[0]] = int(parts[1])
                except ValueError:
                    raise ProtonetError(f"{name_id_file}:{lineno}: id {parts[1]!r} is not an integer") from None
    lines = []
    with click.progressbar(pairs, label="name-size", file=sys.stderr) as bar:
        for lineno, image, _ in bar:
            path = os.path.join(root, image)
            try:
                h, w = image_size(path)
            except ProtonetError as exc:
                raise ProtonetError(f"{list_file}:{lineno}: {exc}") from None
            name = os.path.splitext(os.path.basename(image))[0]
            if name_to_id is not None:
                if name not in name_to_id:
                    raise ProtonetError(f"{list_file}:{lineno}: {name} not in {name_id_file}")
                name = name_to_id[name]
            lines.append(f"{name} {h} {w}\n")
    _write(out_file, lines)
    return len(lines)


def _write(path, lines):
    from protonet.io.prototxt import atomic_write

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, "".join(lines).encode())


def voc_lines(root, year_dir, subset):
    ids_file = os.path.join(root, year_dir, "ImageSets", "Main", f"{subset}.txt")
    if not os.path.isfile(ids_file):
        raise ProtonetError(f"{ids_file}: no such image set file")
    ids = [line.strip() for line in read_utf8_lines(ids_file) if line.strip()]
    return [f"{year_dir}/JPEGImages/{i}.jpg {year_dir}/Annotations/{i}.xml\n" for i in ids]


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
    trainval = [line for y in trainval_sets for line in voc_lines(root, y, "trainval")]
    random.Random(seed).shuffle(trainval)
    _write(os.path.join(outdir, "trainval.txt"), trainval)
    test = [line for y in test_sets for line in voc_lines(root, y, "test")]
    _write(os.path.join(outdir, "test.txt"), test)
    n = write_name_size(root, os.path.join(outdir, "test.txt"),
                        os.path.join(outdir, "test_name_size.txt"))
    click.echo(f"trainval: {len(trainval)} images, test: {len(test)} images ({n} sizes)", err=True)


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
    path = os.path.join(root, instances)
    if not os.path.isfile(path):
        raise ProtonetError(f"{path}: no such COCO instances file")
    doc = check_coco(read_json(path), path)
    if images_dir is None:
        stem = os.path.splitext(os.path.basename(instances))[0]
        images_dir = os.path.join("images", stem.split("_", 1)[-1])
    images = sorted(doc.get("images", []), key=lambda im: im["id"])
    lines = [f"{images_dir}/{im['file_name']} {instances}\n" for im in images]
    if shuffle:
        random.Random(seed).shuffle(lines)
    _write(outfile, lines)
    if name_size:
        _write(name_size, [f"{im['id']} {im['height']} {im['width']}\n" for im in images])
    click.echo(f"{len(lines)} images", err=True)


@create_list_command.command("name-size")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.argument("listfile", type=click.Path())
@click.argument("outfile", type=click.Path())
@click.option("--name-id-file", default=None, type=click.Path(exists=True),
              help="'name id' lines: write ids instead of names.")
def name_size_command(root, listfile, outfile, name_id_file):
    """'name height width' for each image of LISTFILE (the fork's get_image_size)."""
    n = write_name_size(root, listfile, outfile, name_id_file)
    click.echo(f"{n} images", err=True)
