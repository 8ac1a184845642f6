"""LMDB databases of Datum / AnnotatedDatum records, as Caffe's convert_annoset writes them.

`LmdbReader` opens a database read-only and without locking, so any number of processes can
read it at once; each process opens its own environment lazily (an LMDB handle must not cross
a fork). `decode_record` turns one record into a `Sample`: the image as an HxWxC array in
OpenCV's BGR order, and the boxes as flat float32 arrays in the record's group order.
"""
import logging
import os
from dataclasses import dataclass, field

import cv2
import lmdb
import numpy as np

from protonet import caffe_pb2
from protonet.data.image_header import implausible_size
from protonet.errors import ProtonetError

log = logging.getLogger("protonet.data")


class CorruptRecord(ProtonetError):
    """A record that does not parse or whose image does not decode; names the key."""


class BadBoxes(CorruptRecord):
    """A record whose boxes are not finite or lie far outside their image; names the key and box."""


# Normalized box coordinates: a box may stick out of its image (VOC and COCO boxes do, by a pixel or
# so) but not by more than the image's own size; beyond that, or not finite, it is bad data.
BOX_RANGE = (-1.0, 2.0)
_INT_MAX = 2**31 - 1


@dataclass
class Sample:
    """One decoded record: image (H, W, C) uint8 BGR (float32 for float_data datums) and boxes.

    Box arrays are aligned, in the record's order (group by group, annotation by annotation):
    boxes float32 [N, 4] normalized (xmin, ymin, xmax, ymax); labels = group_label; instance
    ids; difficult flags.
    """

    key: str
    image: np.ndarray
    label: int = 0
    annotated: bool = False      # AnnotatedDatum with a type (Caffe's has_anno_type)
    encoded: bool = True
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    instance_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # An expanded image not yet drawn: (height, width, y, x, fill) = `image` placed at (y, x)
    # on a canvas of that size filled with `fill` (per channel, or a whole HxWxC array).
    canvas: tuple = None
    # A per-pixel map not yet applied to `image` (a distortion): pixels() applies it to just
    # the pixels it returns.
    pending: object = None

    @property
    def size(self):
        """(height, width) of the image, canvas included."""
        return self.canvas[:2] if self.canvas is not None else self.image.shape[:2]

    def with_boxes(self, image, boxes, keep, canvas=None, pending=None):
        """A copy with a new image and the boxes `boxes[keep]` (other fields follow keep)."""
        return Sample(self.key, image, self.label, self.annotated, self.encoded,
                      np.ascontiguousarray(boxes[keep], dtype=np.float32), self.labels[keep],
                      self.instance_ids[keep], self.difficult[keep], canvas, pending)

    def _image_part(self, y0, x0, height, width):
        part = self.image[y0:y0 + height, x0:x0 + width]
        return part if self.pending is None else self.pending(part)

    def pixels(self, y0=0, x0=0, height=None, width=None):
        """The image pixels of a region (the whole image by default), drawing the canvas."""
        full_h, full_w = self.size
        height = full_h - y0 if height is None else height
        width = full_w - x0 if width is None else width
        if self.canvas is None:
            return self._image_part(y0, x0, height, width)
        _, _, oy, ox, fill = self.canvas
        img = self.image
        top, left = max(y0, oy), max(x0, ox)
        bottom = min(y0 + height, oy + img.shape[0])
        right = min(x0 + width, ox + img.shape[1])
        if np.ndim(fill) != 3 and bottom > top and right > left and img.dtype == np.uint8:
            # the image part plus constant borders, in one OpenCV call
            part = self._image_part(top - oy, left - ox, bottom - top, right - left)
            value = [float(v) for v in np.broadcast_to(fill, (img.shape[2],))]
            out = cv2.copyMakeBorder(part, top - y0, y0 + height - bottom, left - x0,
                                     x0 + width - right, cv2.BORDER_CONSTANT, value=value)
            return out[:, :, None] if out.ndim == 2 else out
        out = np.empty((height, width, img.shape[2]), dtype=img.dtype)
        if np.ndim(fill) == 3:
            out[:] = fill[y0:y0 + height, x0:x0 + width]
        else:
            out.reshape(height, -1)[:] = np.tile(np.asarray(fill, img.dtype), width)
        if bottom > top and right > left:
            out[top - y0:bottom - y0, left - x0:right - x0] = self._image_part(
                top - oy, left - ox, bottom - top, right - left)
        return out


def imdecode(data, color_mode, what):
    """Decode image bytes like Caffe: color_mode None = native (-1), True = color, False = gray."""
    flag = cv2.IMREAD_UNCHANGED if color_mode is None else (
        cv2.IMREAD_COLOR if color_mode else cv2.IMREAD_GRAYSCALE)
    implausible = implausible_size(data)
    if implausible:
        raise CorruptRecord(f"{what}: image data does not decode ({implausible})")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flag) if len(data) else None
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise CorruptRecord(f"{what}: image data does not decode")
    if img.ndim == 2:
        img = img[:, :, None]
    return img


def read_image_file(path, flag=cv2.IMREAD_COLOR):
    """cv2.imread (as cv2.imdecode of the file's bytes), with None for anything it cannot read (a
    directory, a missing file, an image over OpenCV's pixel limit or whose header claims more pixels
    than the file holds) instead of an exception."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except (OSError, ValueError):
        return None
    if not data or implausible_size(data):  # a header claiming more pixels than the file can hold
        return None
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error:
        return None
    return None if img is None or img.size == 0 else img


def datum_image(datum, key, color_mode=None):
    """The image of a Datum as HxWxC: decoded when encoded, else from its CHW bytes/floats."""
    if datum.encoded:
        return imdecode(datum.data, color_mode, f"record {key}")
    c, h, w = datum.channels, datum.height, datum.width
    if min(c, h, w) <= 0 or c * h * w > _INT_MAX:
        raise CorruptRecord(f"record {key}: raw datum of {c}x{h}x{w} (channels x height x width) is not an image")
    if datum.data:
        if len(datum.data) != c * h * w:
            raise CorruptRecord(f"record {key}: data holds {len(datum.data)} bytes, "
                                f"expected {c}x{h}x{w}")
        chw = np.frombuffer(datum.data, np.uint8).reshape(c, h, w)
    elif len(datum.float_data):
        if len(datum.float_data) != c * h * w:
            raise CorruptRecord(f"record {key}: float_data holds {len(datum.float_data)} values, "
                                f"expected {c}x{h}x{w}")
        chw = np.asarray(datum.float_data, np.float32).reshape(c, h, w)
    else:
        raise CorruptRecord(f"record {key}: datum has no data")
    img = np.ascontiguousarray(chw.transpose(1, 2, 0))
    if color_mode is not None and img.dtype == np.uint8:
        if color_mode and img.shape[2] == 1:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        elif not color_mode and img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)[:, :, None]
    return img


def annotations_of(anno_datum):
    """Flat box arrays (boxes, labels, instance ids, difficult) of an AnnotatedDatum."""
    rows = [(g.group_label, a.instance_id, a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax,
             a.bbox.difficult) for g in anno_datum.annotation_group for a in g.annotation]
    if not rows:
        return (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64),
                np.zeros(0, bool))
    arr = np.array(rows, dtype=np.float64)
    return (arr[:, 2:6].astype(np.float32), arr[:, 0].astype(np.int64),
            arr[:, 1].astype(np.int64), arr[:, 6].astype(bool))


def check_boxes(sample):
    """BadBoxes naming the record and the first box whose coordinates are not finite or outside BOX_RANGE."""
    boxes = sample.boxes
    if not len(boxes):
        return
    low, high = BOX_RANGE
    with np.errstate(invalid="ignore"):
        bad = ~np.all(np.isfinite(boxes) & (boxes >= low) & (boxes <= high), axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        coords = ", ".join(f"{v:g}" for v in boxes[i])
        raise BadBoxes(f"record {sample.key}: box {i} (label {int(sample.labels[i])}) has coordinates "
                       f"[{coords}]; normalized coordinates must be finite and within [{low:g}, {high:g}]")


def decode_record(key, value, annotated, color_mode=None):
    """Parse and decode one LMDB value. `annotated`: AnnotatedDatum (else Datum)."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    try:
        if annotated:
            msg = caffe_pb2.AnnotatedDatum.FromString(value)
            datum = msg.datum
        else:
            msg = datum = caffe_pb2.Datum.FromString(value)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise CorruptRecord(f"record {key}: does not parse as "
                            f"{'AnnotatedDatum' if annotated else 'Datum'} ({exc})") from None
    sample = Sample(key, None, label=datum.label, encoded=datum.encoded)
    if annotated:
        sample.annotated = msg.HasField("type")
        sample.boxes, sample.labels, sample.instance_ids, sample.difficult = annotations_of(msg)
        check_boxes(sample)
    sample.image = datum_image(datum, key, color_mode)
    return sample


_ENVS = {}


def close_lmdb_handles():
    """Close this process's LMDB handles (before forking workers: a child must open its own,
    and py-lmdb refuses a second handle on a path it believes open)."""
    for token in [t for t in _ENVS if t[1] == os.getpid()]:
        _ENVS.pop(token).close()


class LmdbReader:
    """Read-only access to an LMDB: keys in Caffe's (sorted) order, values by index."""

    def __init__(self, path):
        self.path = str(path)
        if not os.path.isdir(self.path) and not os.path.isfile(self.path):
            raise ProtonetError(f"{self.path}: no such LMDB database")
        try:
            env = self._env()
        except lmdb.Error as exc:
            raise ProtonetError(f"{self.path}: cannot open LMDB ({exc})") from None
        with env.begin() as txn:
            self.keys = list(txn.cursor().iternext(keys=True, values=False))
        if not self.keys:
            raise ProtonetError(f"{self.path}: LMDB database is empty")

    def _env(self):
        """This process's handle on the database (LMDB allows one per process and path)."""
        token = (os.path.realpath(self.path), os.getpid())
        env = _ENVS.get(token)
        if env is None:
            env = lmdb.open(self.path, readonly=True, lock=False, readahead=False,
                            meminit=False, max_readers=512, subdir=os.path.isdir(self.path))
            _ENVS[token] = env
        return env

    def __len__(self):
        return len(self.keys)

    def get(self, index):
        """(key, value bytes) of record `index` in key order."""
        key = self.keys[index]
        with self._env().begin(buffers=False) as txn:
            value = txn.get(key)
        return key, value


def skip_or_raise(exc, strict):
    """A corrupt record is skipped with a warning naming it, or with `strict` (--strict-data) an error."""
    if strict:
        raise ProtonetError(f"{exc} (--strict-data)") from None
    log.warning("skipping %s record: %s", "bad" if isinstance(exc, BadBoxes) else "corrupt", exc)


def first_good_record(reader, annotated, color_mode=None, strict=False):
    """The first record that decodes (Caffe peeks at it to shape the tops)."""
    for i in range(len(reader)):
        key, value = reader.get(i)
        try:
            return decode_record(key, value, annotated, color_mode)
        except CorruptRecord as exc:
            skip_or_raise(exc, strict)
    raise ProtonetError(f"{reader.path}: no record decodes")
