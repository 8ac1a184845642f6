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

from protonet.data.records import read_image_file
from protonet.errors import ProtonetError
from protonet.io.json_files import check_coco, read_json
from protonet.io.prototxt import atomic_write, read_utf8_lines


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


def write_name_size(root, list_file, out_file, name_id_file=None, progress=None):
    """get_image_size: "name height width" (or "id height width" with a name -> id file).
    `progress` wraps the iteration over the listed images (a progress bar), if given."""
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
    for lineno, image, _ in (progress(pairs) if progress else pairs):
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
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, "".join(lines).encode())


def voc_lines(root, year_dir, subset):
    ids_file = os.path.join(root, year_dir, "ImageSets", "Main", f"{subset}.txt")
    if not os.path.isfile(ids_file):
        raise ProtonetError(f"{ids_file}: no such image set file")
    ids = [line.strip() for line in read_utf8_lines(ids_file) if line.strip()]
    return [f"{year_dir}/JPEGImages/{i}.jpg {year_dir}/Annotations/{i}.xml\n" for i in ids]


def write_voc_lists(root, outdir, trainval_sets=("VOC2007", "VOC2012"), test_sets=("VOC2007",), seed=None,
                    progress=None):
    """ROOT is a VOCdevkit folder: OUTDIR/trainval.txt (shuffled), OUTDIR/test.txt and
    OUTDIR/test_name_size.txt, as the fork's data/VOC0712/create_list.sh. Returns the three counts."""
    trainval = [line for y in trainval_sets for line in voc_lines(root, y, "trainval")]
    random.Random(seed).shuffle(trainval)
    _write(os.path.join(outdir, "trainval.txt"), trainval)
    test = [line for y in test_sets for line in voc_lines(root, y, "test")]
    _write(os.path.join(outdir, "test.txt"), test)
    sizes = write_name_size(root, os.path.join(outdir, "test.txt"), os.path.join(outdir, "test_name_size.txt"),
                            progress=progress)
    return len(trainval), len(test), sizes


def write_coco_list(root, outfile, instances, images_dir=None, name_size=None, shuffle=False, seed=None):
    """Lines 'IMAGE INSTANCES_JSON' for every image of a COCO instances file (and, with `name_size`,
    'image_id height width' lines there). Returns the number of images."""
    path = os.path.join(root, instances)
    if not os.path.isfile(path):
        raise ProtonetError(f"{path}: no such COCO instances file")
    doc = check_coco(read_json(path), path)
    if images_dir is None:
        stem = os.path.splitext(os.path.basename(instances))[0]
        images_dir = os.path.join("images", stem.split("_", 1)[-1])
    images = sorted(doc.get("images", []), key=lambda im: im["id"])
    for im in images:
        for field in ("file_name",) + (("height", "width") if name_size else ()):
            if field not in im:
                raise ProtonetError(f"{path}: image {im['id']} has no '{field}'")
    lines = [f"{images_dir}/{im['file_name']} {instances}\n" for im in images]
    if shuffle:
        random.Random(seed).shuffle(lines)
    _write(outfile, lines)
    if name_size:
        _write(name_size, [f"{im['id']} {im['height']} {im['width']}\n" for im in images])
    return len(lines)
