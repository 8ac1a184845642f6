"""The test name/size file (`NAME HEIGHT WIDTH` per line) that DetectionOutput, DetectionEvaluate
and the evaluators use to put normalised boxes back into pixels."""
import os

from protonet.errors import ProtonetError


def read_name_size(path, where=None):
    """[(name, height, width)] in file order. A malformed line is an error naming it (Caffe stops
    reading there silently, which would drop the images after it)."""
    prefix = f"{where}: " if where else ""
    if not os.path.exists(path):
        raise ProtonetError(f"{prefix}{path}: no such name_size_file")
    rows = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                raise ProtonetError(f"{prefix}{path}:{lineno}: expected 'NAME HEIGHT WIDTH', got {line.strip()!r}")
            try:
                rows.append((parts[0], int(parts[1]), int(parts[2])))
            except ValueError:
                raise ProtonetError(f"{prefix}{path}:{lineno}: height and width must be integers") from None
    return rows
