"""The test name/size file (`NAME HEIGHT WIDTH` per line) that DetectionOutput, DetectionEvaluate
and the evaluators use to put normalised boxes back into pixels."""
import os

from protonet.errors import ProtonetError
from protonet.io.prototxt import read_utf8_lines

_INT_MAX = 2**31 - 1  # Caffe reads the sizes into an int


def read_name_size(path, where=None):
    """[(name, height, width)] in file order. A malformed line is an error naming it (Caffe stops
    reading there silently, which would drop the images after it)."""
    prefix = f"{where}: " if where else ""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ProtonetError(f"{prefix}{path}: no such name_size_file")
    try:
        lines = read_utf8_lines(path)
    except ProtonetError as exc:
        raise ProtonetError(f"{prefix}{exc}") from None
    rows = []
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise ProtonetError(f"{prefix}{path}:{lineno}: expected 'NAME HEIGHT WIDTH', got {line.strip()!r}")
        try:
            height, width = int(parts[1]), int(parts[2])
        except ValueError:
            raise ProtonetError(f"{prefix}{path}:{lineno}: height and width must be integers") from None
        if not (0 < height <= _INT_MAX and 0 < width <= _INT_MAX):
            raise ProtonetError(f"{prefix}{path}:{lineno}: height and width must be positive integers "
                                f"below 2^31, got {height} {width}")
        rows.append((parts[0], height, width))
    return rows
