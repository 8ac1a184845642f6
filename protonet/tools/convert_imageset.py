"""Images and integer labels -> an LMDB of Datum, as Caffe's tools/convert_imageset writes it
(`protonet convert-imageset ROOT LISTFILE DB`): the classification databases a Data layer reads.

Records are the fork's: key "%08d_<listed path>" (the line number in the list, counting from 0),
a Datum with channels, height, width, label, encoded and data: the file's own bytes when it is
stored encoded in its own format without a resize, the image re-encoded as --encode-type, or raw
CHW bytes. A list line is split at its last blank into path and label (C's atoi, as Caffe).

Deviations: the image path is ROOT joined to the listed path (Caffe concatenates the two strings:
its usage asks for ROOT/); an unreadable image is skipped with a warning naming its list line, as
Caffe skips it, and the command fails at the end if any was; --check-size compares the images'
channels x height x width (Caffe compares the encoded byte count to it and aborts on encoded
records); --shuffle takes --seed. The database is written under a temporary name and renamed.
"""
import logging
import os
import random
import re

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.prototxt import read_bytes
from protonet.tools.create_annoset import image_to_datum
from protonet.tools.lmdb_writer import NewLmdb

log = logging.getLogger("protonet.convert_imageset")


def _atoi(text):
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else 0


def read_image_list(list_file):
    """[(lineno, path, label)] for every line (blank lines too: they keep their line number)."""
    if not os.path.isfile(list_file):
        raise ProtonetError(f"{list_file}: list file does not exist")
    data = read_bytes(list_file)
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as exc:
        lineno = data[:exc.start].count(b"\n") + 1
        raise ProtonetError(f"{list_file}:{lineno}: not UTF-8 text") from None
    if lines and lines[-1] == "":
        lines.pop()  # the newline ending the last line does not start another
    entries = []
    for lineno, line in enumerate(lines, 1):
        path, blank, label = line.rpartition(" ")
        if not blank:
            path, label = line, line
        value = _atoi(label)
        if not -2**31 <= value < 2**31:
            raise ProtonetError(f"{list_file}:{lineno}: label {value} does not fit in a 32-bit int")
        if line.strip() and not re.fullmatch(r"\s*[+-]?\d+\s*", label):
            log.warning("%s:%d: label %r is not an integer: %d, as Caffe's atoi reads it", list_file, lineno,
                        label, value)
        entries.append((lineno, path, value))
    return entries


def convert_imageset(root, list_file, out_db, resize_height=0, resize_width=0, gray=False, shuffle=False,
                     seed=None, encoded=False, encode_type="", check_size=False, backend="lmdb", redo=False,
                     progress=None):
    """Write the database; returns (records written, list lines skipped). `progress` wraps the
    iteration over the list (a progress bar), if given."""
    if backend != "lmdb":
        raise ProtonetError(f"backend {backend!r} is not supported, only lmdb")
    if not os.path.isdir(root):
        raise ProtonetError(f"{root}: root directory does not exist")
    entries = read_image_list(list_file)
    db = NewLmdb(out_db, redo, log=log)
    if shuffle:
        log.info("Shuffling data")
        random.Random(seed).shuffle(entries)
    log.info("A total of %d images.", len(entries))
    if encode_type and not encoded:
        log.info("encode_type specified, assuming encoded=true.")
    opts = dict(resize_height=max(0, resize_height), resize_width=max(0, resize_width), min_dim=0, max_dim=0,
                gray=gray, encode_type=encode_type, encoded=encoded)
    skipped, size = [], None
    with db:
        for line_id, (lineno, path, label) in enumerate(progress(entries) if progress else entries):
            if not path.strip():
                continue  # a blank line: Caffe fails to read "ROOT" and goes on
            datum = caffe_pb2.Datum()
            image_path = os.path.join(root, path)
            if image_to_datum(image_path, label, opts, datum) is None:
                log.warning("%s:%d: cannot read image %s; skipped", list_file, lineno, image_path)
                skipped.append(f"{list_file}:{lineno}: {image_path}")
                continue
            if check_size:
                shape = (datum.channels, datum.height, datum.width)
                if size is None:
                    size = shape
                elif shape != size:
                    raise ProtonetError(f"{list_file}:{lineno}: image {shape[0]}x{shape[1]}x{shape[2]} differs "
                                        f"from the first, {size[0]}x{size[1]}x{size[2]} (--check-size)")
            db.put(f"{line_id:08d}_{path}", datum.SerializeToString())
    return db.count, skipped
