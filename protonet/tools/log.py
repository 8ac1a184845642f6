"""Caffe's training-log tools: the tables of `protonet parse-log`, read by `plot-log` too.

parse-log writes the two CSV tables of Caffe's tools/extra/parse_log.py (LOG.train and LOG.test:
NumIters, Seconds, LearningRate, then one column per net output) by the same rules: the iteration
of a line is the last `Iteration N` seen, seconds count from the `Solving` line, the learning rate
is the last `lr = X` seen, a row is complete when it has as many columns as the first row.
One deviation: a table with a single row (one test pass) keeps it; Caffe's script loses it.
Both glog date shapes are read: `I1122 03:53:12.386420` (year from the file's time, as Caffe's
extract_seconds.py does) and newer glog's `I20261122 03:53:12.386420`.

The plots of `plot-log` are drawn by protonet.tools.plot.
"""
import csv
import datetime
import os
import re
from collections import OrderedDict


from protonet.errors import ProtonetError
from protonet.io.atomic import atomic_open, atomic_write_image

ITERATION = re.compile(r"Iteration (\d+)")
TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
LEARNING_RATE = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")
_STAMP = re.compile(r"^[IWEF](\d{4}|\d{8}) (\d\d):(\d\d):(\d\d)\.(\d+)")


def line_time(line, year):
    """The glog timestamp of a line; ValueError if the line has none."""
    m = _STAMP.match(line.strip())
    if not m:
        raise ValueError("no glog timestamp")
    date = m.group(1)
    if len(date) == 8:
        year, date = int(date[:4]), date[4:]
    return datetime.datetime(year, int(date[:2]), int(date[2:]), int(m.group(2)), int(m.group(3)),
                             int(m.group(4)), int(m.group(5)))


def parse_log(path):
    """(train rows, test rows): lists of OrderedDicts as Caffe's parse_log.py builds them."""
    try:
        with open(path, errors="replace") as fh:
            lines = fh.readlines()
    except OSError as exc:
        raise ProtonetError(f"{path}: cannot read the log ({exc.strerror})") from None
    year = datetime.datetime.fromtimestamp(os.path.getctime(path)).year
    start = None
    for line in lines:
        if "Solving" in line:
            try:
                start = line_time(line, year)
            except ValueError:
                continue
            break
    if start is None:
        raise ProtonetError(f"{path}: no 'Solving' line with a glog timestamp: not a training log")
    iteration = -1
    lr = float("nan")
    train, test = [], []
    train_row = test_row = None
    for line in lines:
        m = ITERATION.search(line)
        if m:
            iteration = float(m.group(1))
        if iteration == -1:
            continue
        try:
            t = line_time(line, year)
        except ValueError:
            continue
        seconds = (t - start).total_seconds()
        m = LEARNING_RATE.search(line)
        if m:
            lr = float(m.group(1))
        train, train_row = _net_output(TRAIN_OUTPUT, train_row, train, line, iteration, seconds, lr)
        test, test_row = _net_output(TEST_OUTPUT, test_row, test, line, iteration, seconds, lr)
    # Caffe's script drops a table's only row (it is appended when the next row starts): keep it
    for rows, row in ((train, train_row), (test, test_row)):
        if row is not None and not rows:
            rows.append(row)
    for rows in (train, test):
        if len(rows) > 1:
            rows[0]["LearningRate"] = rows[1]["LearningRate"]
    return train, test


def _net_output(regex, row, rows, line, iteration, seconds, lr):
    m = regex.search(line)
    if m:
        if not row or row["NumIters"] != iteration:
            if row:
                rows.append(row)
            row = OrderedDict([("NumIters", iteration), ("Seconds", seconds), ("LearningRate", lr)])
        row[m.group(2)] = float(m.group(3))
    if row and len(rows) >= 1 and len(row) == len(rows[0]):
        rows.append(row)
        row = None
    return rows, row


def write_tables(log_path, out_dir, train, test, delimiter=","):
    """LOGNAME.train and LOGNAME.test in out_dir (a table with no rows is not written, as in Caffe)."""
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.basename(log_path)
    written = []
    for suffix, rows in ((".train", train), (".test", test)):
        if not rows:
            continue
        name = os.path.join(out_dir, base + suffix)
        with atomic_open(name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()), dialect=csv.excel, delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
        written.append(name)
    return written
