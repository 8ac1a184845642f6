"""JSON files from outside: the fork's per-image annotations and COCO instances files.

Whatever the bytes hold, reading gives the document or a ProtonetError naming the file and what is
wrong; a COCO file is checked field by field before pycocotools indexes it (pycocotools itself
answers a missing key or a wrong type with a KeyError or an assert).
"""
import contextlib
import io
import json
import math
import numbers
import os

from protonet.errors import ProtonetError
from protonet.io.prototxt import read_bytes


def read_json(path):
    """The document of a JSON file (UTF-8, as JSON requires)."""
    path = os.fspath(path)
    data = read_bytes(path)
    try:
        return json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ProtonetError(f"{path}: not UTF-8 text (JSON must be)") from None
    except RecursionError:
        raise ProtonetError(f"{path}: nested too deeply to be an annotation file") from None
    except ValueError as exc:
        raise ProtonetError(f"{path}: not valid JSON ({exc})") from None


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_box(values, where):
    """[x, y, width, height] (or any 4 numbers): a list of 4 finite numbers, as floats."""
    if not isinstance(values, (list, tuple)) or len(values) != 4 or not all(_is_number(v) for v in values):
        raise ProtonetError(f"{where}: bbox must be 4 finite numbers, got {values!r:.80}")
    return [float(v) for v in values]


def _check_list(doc, key, path, need, optional=()):
    """doc[key] is a list of objects with the fields `need` and, where present, `optional`:
    (field, check, description of a good value) each."""
    items = doc.get(key, [])
    if not isinstance(items, list):
        raise ProtonetError(f"{path}: '{key}' must be a list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ProtonetError(f"{path}: {key}[{i}] must be an object")
        for field, ok, what in list(need) + [f for f in optional if f[0] in item]:
            if field not in item:
                raise ProtonetError(f"{path}: {key}[{i}] has no '{field}'")
            if not ok(item[field]):
                raise ProtonetError(f"{path}: {key}[{i}].{field} must be {what}, got {item[field]!r:.80}")
    return items


def check_coco(doc, path, for_eval=False):
    """A COCO instances document, checked: images (id; file_name, height, width where given),
    categories (id, name), annotations (id, image_id, category_id, bbox of 4 finite numbers, an image id that exists;
    for COCOeval also the area)."""
    if not isinstance(doc, dict):
        raise ProtonetError(f"{path}: a COCO instances file holds a JSON object")
    positive = (lambda v: _is_int(v) and v > 0, "a positive integer")
    images = _check_list(doc, "images", path, [("id", _is_int, "an integer")],
                         [("file_name", lambda v: isinstance(v, str), "a string"),
                          ("height",) + positive, ("width",) + positive])
    _check_list(doc, "categories", path, [("id", _is_int, "an integer"),
                                          ("name", lambda v: isinstance(v, str), "a string")])
    need = [("id", _is_int, "an integer"), ("image_id", _is_int, "an integer"),
            ("category_id", _is_int, "an integer"), ("bbox", lambda v: True, "")]
    if for_eval:
        need.append(("area", _is_number, "a finite number"))
    annotations = _check_list(doc, "annotations", path, need)
    image_ids = {img["id"] for img in images}
    for i, ann in enumerate(annotations):
        check_box(ann["bbox"], f"{path}: annotations[{i}]")
        if ann["image_id"] not in image_ids:
            raise ProtonetError(f"{path}: annotations[{i}] names image {ann['image_id']}, which is not in 'images'")
        if "iscrowd" in ann and not _is_int(ann["iscrowd"]):
            raise ProtonetError(f"{path}: annotations[{i}].iscrowd must be 0 or 1")
    return doc


def looks_like_coco(doc):
    return isinstance(doc, dict) and any(key in doc for key in ("images", "info", "licenses"))


def load_coco(path, for_eval=False):
    """pycocotools' COCO over a checked instances file (its printing kept off stdout)."""
    from pycocotools.coco import COCO  # pycocotools (imports matplotlib): only for COCO files

    doc = check_coco(read_json(path), os.fspath(path), for_eval)
    doc.setdefault("annotations", [])
    doc.setdefault("categories", [])
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = doc
        coco.createIndex()
    return coco
