"""`protonet create-annoset`: images and labels -> LMDB of AnnotatedDatum (Caffe's convert_annoset).

The records are those the fork's tools/convert_annoset writes: key "%08d_<image path>" (the
line number in the list file), an AnnotatedDatum whose datum holds the image (the file's own
bytes when --encoded and no resize, else the image re-encoded, or raw CHW bytes without
--encoded) and, for detection, one AnnotationGroup per label in order of first appearance,
instance ids counting from 0 in each group, boxes normalized by the image size (no -1 offset).

Label sources (--label-type):
  xml   Pascal VOC XML, one file per image (list lines "image.jpg label.xml");
  json  the fork's per-image JSON ({"image": {...}, "annotation": [...]}), or a COCO instances
        file read with pycocotools: list lines "images/x.jpg annotations/instances_val.json",
        the image found by file name; category ids map through the label map by their number
        ("1", "2", ... as in the fork's labelmap_coco.prototxt) or else by category name;
  txt   the fork's text format: "label xmin ymin xmax ymax" per line, pixel coordinates;
  csv   LISTFILE itself is a CSV of "path,x1,y1,x2,y2,class" rows (pixel coordinates, class
        names through the label map); an image with no boxes has a row "path,,,,,".
For classification, list lines are "image.jpg LABEL".

Deviations from convert_annoset: with --encoded but no --encode-type, an image whose extension
matches its format is stored as is (Caffe passes ".jpg" with its dot to the check and so
re-encodes every image); an unreadable image is skipped with a warning naming its list line
(as Caffe) and the command fails at the end if any was skipped; a label file that is missing
is reported with its list line (Caffe is silent) and the image is stored without boxes, as
Caffe does. The database is written under a temporary name and renamed when complete.
"""
import csv
import io
import logging
import os
import random
import xml.etree.ElementTree as ET

import cv2
import numpy as np

from protonet import caffe_pb2
from protonet.data.records import read_image_file
from protonet.errors import ProtonetError
from protonet.io.json_files import check_box, load_coco
from protonet.io.json_files import read_json as read_json_file
from protonet.io.prototxt import read_bytes, read_utf8_lines
from protonet.io.labelmap import map_name_to_label, read_labelmap
from protonet.tools.lmdb_writer import NewLmdb

log = logging.getLogger("protonet.create_annoset")
F32 = np.float32


class LineError(ProtonetError):
    pass


# ---- images -------------------------------------------------------------------------------------

def _ext(path):
    return os.path.splitext(path)[1].lower().lstrip(".")


def _same_format(path, encoding):
    ext = _ext(path)
    enc = encoding.lower().lstrip(".")
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def read_image(path, resize_height, resize_width, min_dim, max_dim, is_color):
    """Caffe's ReadImageToCVMat: imread, then min_dim/max_dim scaling or a fixed resize."""
    img = read_image_file(path, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        return None, False
    if min_dim > 0 or max_dim > 0:
        rows, cols = img.shape[:2]
        scale = F32(1)
        if min_dim > 0 and min(rows, cols) < min_dim:
            scale = F32(min_dim) / F32(min(rows, cols))
        if max_dim > 0 and int(scale * F32(max(rows, cols))) > max_dim:
            scale = F32(max_dim) / F32(max(rows, cols))
        if scale != 1:
            return cv2.resize(img, (0, 0), fx=float(scale), fy=float(scale)), True
        return img, False
    if resize_height > 0 and resize_width > 0:
        return cv2.resize(img, (resize_width, resize_height)), True
    return img, False


def image_to_datum(path, label, opts, datum):
    """Fill `datum` like Caffe's ReadImageToDatum; False when the image cannot be read."""
    img, resized = read_image(path, opts["resize_height"], opts["resize_width"], opts["min_dim"],
                              opts["max_dim"], not opts["gray"])
    if img is None:
        return None
    datum.Clear()
    channels = 1 if img.ndim == 2 else img.shape[2]
    datum.channels, datum.height, datum.width = channels, img.shape[0], img.shape[1]
    datum.label = label
    encoding = opts["encode_type"] or (_ext(path) if opts["encoded"] else "")
    if encoding:
        datum.encoded = True
        if (channels == 3) == (not opts["gray"]) and not resized and _same_format(path, encoding):
            with open(path, "rb") as f:
                datum.data = f.read()
        else:
            ok, buf = cv2.imencode("." + encoding.lstrip("."), img)
            if not ok:
                raise ProtonetError(f"cannot encode {path} as {encoding}")
            datum.data = buf.tobytes()
    else:
        hwc = img if img.ndim == 3 else img[:, :, None]
        datum.data = np.ascontiguousarray(hwc.transpose(2, 0, 1)).tobytes()
        datum.encoded = False  # Caffe's CVMatToDatum sets it: the record carries `encoded: false`
    return img


def original_size(path):
    """(height, width) of the image file as OpenCV decodes it (Caffe's GetImageSize)."""
    img = read_image_file(path)
    if img is None:
        raise ProtonetError(f"{path}: cannot read image")
    return img.shape[:2]


# ---- annotations --------------------------------------------------------------------------------

class Groups:
    """Builds AnnotationGroups in Caffe's order: groups by first appearance of their label."""

    def __init__(self, anno_datum):
        self.ad = anno_datum
        self.by_label = {}

    def add(self, label, box, difficult):
        group = self.by_label.get(label)
        if group is None:
            group = self.ad.annotation_group.add(group_label=label)
            self.by_label[label] = group
        anno = group.annotation.add(instance_id=len(group.annotation))
        anno.bbox.xmin, anno.bbox.ymin, anno.bbox.xmax, anno.bbox.ymax = (float(v) for v in box)
        anno.bbox.difficult = bool(difficult)
        return anno


_F32_MAX = float(np.finfo(np.float32).max)


def _normalize(xmin, ymin, xmax, ymax, width, height, where):
    if not all(abs(float(v)) <= _F32_MAX for v in (xmin, ymin, xmax, ymax)):  # NaN fails too
        raise ProtonetError(f"{where}: box coordinates {[float(v) for v in (xmin, ymin, xmax, ymax)]} "
                            "are not finite float32 numbers")
    if xmin > width or xmax > width or ymin > height or ymax > height or min(xmin, ymin, xmax,
                                                                           ymax) < 0:
        log.warning("%s: bounding box exceeds image boundary.", where)
    if xmin > xmax or ymin > ymax:
        log.warning("%s: bounding box irregular.", where)
    w, h = F32(width), F32(height)
    return (F32(xmin) / w, F32(ymin) / h, F32(xmax) / w, F32(ymax) / h)


def _label_of(name, name_to_label, where):
    if name not in name_to_label:
        raise ProtonetError(f"{where}: unknown name {name!r} (not in the label map)")
    return name_to_label[name]


def _size_or(img_hw, height, width, where):
    if height is None or width is None:
        height, width = img_hw
    if height != img_hw[0]:
        log.warning("%s: inconsistent image height.", where)
    if width != img_hw[1]:
        log.warning("%s: inconsistent image width.", where)
    if not (_positive_int(width) and _positive_int(height)):
        raise ProtonetError(f"{where}: no valid image width/height ({width!r}, {height!r})")
    return height, width


def _positive_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 < value < 2**31


def read_xml(path, img_hw, name_to_label, anno_datum):
    """Pascal VOC XML (the fork's ReadXMLToAnnotatedDatum)."""
    try:
        root = ET.fromstring(read_bytes(path))
    except (ET.ParseError, ValueError, LookupError, RecursionError) as exc:
        raise ProtonetError(f"{path}: not valid XML ({exc})") from None
    if root.tag != "annotation":
        raise ProtonetError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    try:
        height = int(root.findtext("size/height"))
        width = int(root.findtext("size/width"))
    except (TypeError, ValueError):
        height = width = None
    height, width = _size_or(img_hw, height, width, path)
    groups = Groups(anno_datum)
    for obj in root.iter("object"):
        anno, difficult = None, False
        for child in obj:
            if child.tag == "name":
                label = _label_of((child.text or "").strip(), name_to_label, path)
                anno = groups.add(label, (0, 0, 0, 0), False)
            elif child.tag == "difficult":
                difficult = (child.text or "").strip() == "1"
            elif child.tag == "bndbox":
                if anno is None:
                    raise ProtonetError(f"{path}: <bndbox> before <name> in an <object>")
                try:
                    coords = [float(child.findtext(k) or 0) for k in ("xmin", "ymin", "xmax",
                                                                      "ymax")]
                except ValueError:
                    raise ProtonetError(f"{path}: bndbox coordinates are not numbers") from None
                box = _normalize(*coords, width, height, path)
                anno.bbox.xmin, anno.bbox.ymin, anno.bbox.xmax, anno.bbox.ymax = map(float, box)
                anno.bbox.difficult = difficult


_COCO = {}


def _coco(path):
    if path not in _COCO:
        coco = load_coco(path)
        by_name = {}
        for img in coco.dataset["images"]:
            if "file_name" in img:
                by_name.setdefault(os.path.basename(img["file_name"]), img)
        _COCO.clear()
        _COCO[path] = (coco, by_name)
    return _COCO[path]


def _coco_category(coco, cat_id, name_to_label, where):
    if str(cat_id) in name_to_label:
        return name_to_label[str(cat_id)]
    name = coco.cats.get(cat_id, {}).get("name")
    if name in name_to_label:
        return name_to_label[name]
    raise ProtonetError(f"{where}: category {cat_id} ({name}) is not in the label map")


def _per_image_json(path):
    """(image size dict, annotations) of the fork's per-image JSON, its structure checked."""
    doc = read_json_file(path)
    image = doc.get("image", {}) if isinstance(doc, dict) else None
    anns = doc.get("annotation", []) if isinstance(doc, dict) else None
    if not isinstance(image, dict) or not isinstance(anns, list):
        raise ProtonetError(f"{path}: expected an object with 'image' (an object) and 'annotation' (a list)")
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or "category_id" not in ann or "bbox" not in ann:
            raise ProtonetError(f"{path}: annotation[{i}] needs 'category_id' and 'bbox'")
        check_box(ann["bbox"], f"{path}: annotation[{i}]")
    return image, anns


def read_json(path, image_path, img_hw, name_to_label, anno_datum):
    """The fork's per-image JSON, or a COCO instances file (looked up by image file name)."""
    head = read_bytes(path)[:4096]
    if b'"images"' in head or b'"info"' in head or b'"licenses"' in head:
        coco, by_name = _coco(path)
        info = by_name.get(os.path.basename(image_path))
        if info is None:
            raise ProtonetError(f"{path}: no image named {os.path.basename(image_path)}")
        height, width = _size_or(img_hw, info.get("height"), info.get("width"), path)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[info["id"]], iscrowd=None))
    else:
        image, anns = _per_image_json(path)
        height, width = _size_or(img_hw, image.get("height"), image.get("width"), path)
        coco = None
    groups = Groups(anno_datum)
    for ann in anns:
        if coco is not None:
            label = _coco_category(coco, ann["category_id"], name_to_label, path)
        else:
            label = _label_of(str(ann["category_id"]), name_to_label, path)
        bbox = check_box(ann["bbox"], path)
        box = _normalize(bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3], width, height,
                         path)
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):
            raise ProtonetError(f"{path}: iscrowd must be 0 or 1, got {crowd!r:.40}")
        groups.add(label, box, bool(crowd))


def read_txt(path, img_hw, anno_datum):
    """The fork's text labels: "label xmin ymin xmax ymax" per line, pixels."""
    height, width = img_hw
    groups = Groups(anno_datum)
    tokens = " ".join(read_utf8_lines(path)).split()
    for i in range(0, len(tokens) - len(tokens) % 5, 5):
        try:
            label = int(tokens[i])
            coords = [float(t) for t in tokens[i + 1:i + 5]]
        except ValueError:
            break  # Caffe's stream extraction stops at the first malformed entry
        if not -2**31 <= label < 2**31:
            break  # nor does an int hold it
        groups.add(label, _normalize(*coords, width, height, path), False)


# ---- list files -------------------------------------------------------------------------------

def _read_csv_list(list_file):
    """[(lineno, image path, [(lineno, [x1, y1, x2, y2, class])])] of a detection CSV."""
    text = "\n".join(read_utf8_lines(list_file))
    entries, order = [], {}
    reader = csv.reader(io.StringIO(text))
    try:
        for row in reader:
            lineno = reader.line_num
            if not row or not "".join(row).strip():
                continue
            if len(row) != 6:
                raise LineError(f"{list_file}:{lineno}: expected path,x1,y1,x2,y2,class, "
                                f"got {len(row)} fields")
            path = row[0].strip()
            if path not in order:
                order[path] = len(entries)
                entries.append((lineno, path, []))
            if any(v.strip() for v in row[1:]):
                entries[order[path]][2].append((lineno, row[1:]))
    except csv.Error as exc:
        raise LineError(f"{list_file}:{reader.line_num}: not a CSV row ({exc})") from None
    return entries


def read_list(list_file, anno_type, label_type):
    """[(lineno, image path, label or label path or csv rows)]."""
    if label_type == "csv" and anno_type == "detection":
        return _read_csv_list(list_file)
    entries = []
    for lineno, line in enumerate(read_utf8_lines(list_file), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise LineError(f"{list_file}:{lineno}: expected 'IMAGE {'LABEL' if anno_type == 'classification' else 'LABELFILE'}', got {line.strip()!r}")
        if anno_type == "classification":
            try:
                label = int(parts[1])
            except ValueError:
                raise LineError(f"{list_file}:{lineno}: label {parts[1]!r} is not an integer") from None
            if not -2**31 <= label < 2**31:
                raise LineError(f"{list_file}:{lineno}: label {label} does not fit in a 32-bit int")
            entries.append((lineno, parts[0], label))
        else:
            entries.append((lineno, parts[0], parts[1]))
    return entries


def read_csv_rows(rows, list_file, img_hw, name_to_label, anno_datum):
    height, width = img_hw
    groups = Groups(anno_datum)
    for lineno, (x1, y1, x2, y2, name) in rows:
        where = f"{list_file}:{lineno}"
        try:
            coords = [float(v) for v in (x1, y1, x2, y2)]
        except ValueError:
            raise LineError(f"{where}: box coordinates are not numbers") from None
        label = _label_of(name.strip(), name_to_label, where)
        groups.add(label, _normalize(*coords, width, height, where), False)


# ---- the command --------------------------------------------------------------------------------

def create_annoset(root, list_file, out_db, anno_type="classification", label_type="xml",
                   label_map_file="", check_label=False, min_dim=0, max_dim=0, resize_width=0,
                   resize_height=0, check_size=False, encode_type="", encoded=False, gray=False,
                   shuffle=False, seed=None, backend="lmdb", redo=False, progress=None):
    """Write the database; returns (records written, list lines skipped). `progress` wraps the
    iteration over the list's entries (a progress bar), if given."""
    if backend != "lmdb":
        raise ProtonetError(f"backend {backend!r} is not supported, only lmdb")
    if anno_type not in ("classification", "detection"):
        raise ProtonetError(f"unknown --anno-type {anno_type!r}")
    if label_type not in ("xml", "json", "txt", "csv", "coco"):
        raise ProtonetError(f"unknown --label-type {label_type!r}")
    label_type = "json" if label_type == "coco" else label_type
    if not os.path.isdir(root):
        raise ProtonetError(f"{root}: root directory does not exist")
    if not os.path.isfile(list_file):
        raise ProtonetError(f"{list_file}: list file does not exist")
    name_to_label = {}
    if anno_type == "detection" and label_type != "txt":
        if not label_map_file:
            raise ProtonetError("--label-map-file is needed for detection")
        if not os.path.isfile(label_map_file):
            raise ProtonetError(f"{label_map_file}: label map file does not exist")
        name_to_label = map_name_to_label(read_labelmap(label_map_file), strict=check_label,
                                          source=label_map_file)
    db = NewLmdb(out_db, redo, log=log)
    entries = read_list(list_file, anno_type, label_type)
    if shuffle:
        log.info("Shuffling data")
        random.Random(seed).shuffle(entries)
    log.info("A total of %d images.", len(entries))
    opts = dict(resize_height=max(0, resize_height), resize_width=max(0, resize_width),
                min_dim=max(0, min_dim), max_dim=max(0, max_dim), gray=gray,
                encode_type=encode_type, encoded=encoded or bool(encode_type))
    skipped, data_size = [], None
    with db:
        for line_id, (lineno, image, label) in enumerate(progress(entries) if progress else entries):
            where = f"{list_file}:{lineno}"
            anno_datum = caffe_pb2.AnnotatedDatum()
            image_path = os.path.join(root, image)
            img = image_to_datum(image_path, label if anno_type == "classification" else -1,
                                 opts, anno_datum.datum)
            if img is None:
                log.warning("%s: cannot read image %s; skipped", where, image_path)
                skipped.append(f"{where}: {image_path}")
                continue
            if anno_type == "detection":
                anno_datum.type = caffe_pb2.AnnotatedDatum.BBOX
                try:
                    _read_labels(label, label_type, root, image_path, list_file, name_to_label,
                                 anno_datum, where, skipped)
                except LineError:
                    raise
                except ProtonetError as exc:
                    raise ProtonetError(f"{where}: {exc}") from None
            if check_size:
                size = len(anno_datum.datum.data)
                if data_size is None:
                    data_size = size
                elif size != data_size:
                    raise ProtonetError(f"{where}: data size {size} differs from {data_size}")
            db.put(f"{line_id:08d}_{image}", anno_datum.SerializeToString())
    return db.count, skipped


def _read_labels(label, label_type, root, image_path, list_file, name_to_label, anno_datum,
                 where, skipped):
    img_hw = original_size(image_path)
    if label_type == "csv":
        read_csv_rows(label, list_file, img_hw, name_to_label, anno_datum)
        return
    label_path = os.path.join(root, label)
    if not os.path.isfile(label_path):
        log.warning("%s: label file %s does not exist; image stored without boxes", where,
                    label_path)
        return
    if label_type == "xml":
        read_xml(label_path, img_hw, name_to_label, anno_datum)
    elif label_type == "json":
        read_json(label_path, image_path, img_hw, name_to_label, anno_datum)
    else:
        read_txt(label_path, img_hw, anno_datum)


def link_into(example_dir, out_db):
    """A symlink to OUTDB in EXAMPLEDIR, as the fork's scripts/create_annoset.py makes."""
    os.makedirs(example_dir, exist_ok=True)
    link = os.path.join(example_dir, os.path.basename(os.path.normpath(out_db)))
    if os.path.islink(link) or os.path.exists(link):
        os.unlink(link)
    os.symlink(os.path.abspath(out_db), link)
