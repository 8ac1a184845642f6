"""`protonet parse-log` and `protonet plot-log`: Caffe's training-log tools.

parse-log writes the two CSV tables of Caffe's tools/extra/parse_log.py (LOG.train and LOG.test:
NumIters, Seconds, LearningRate, then one column per net output) by the same rules: the iteration
of a line is the last `Iteration N` seen, seconds count from the `Solving` line, the learning rate
is the last `lr = X` seen, a row is complete when it has as many columns as the first row.
One deviation: a table with a single row (one test pass) keeps it; Caffe's script loses it.
Both glog date shapes are read: `I1122 03:53:12.386420` (year from the file's time, as Caffe's
extract_seconds.py does) and newer glog's `I20261122 03:53:12.386420`.

plot-log draws train loss, learning rate and the test outputs (mAP) against iterations into one
PNG, with matplotlib when it is installed and with OpenCV's drawing otherwise.
"""
import csv
import datetime
import math
import os
import re
from collections import OrderedDict

import cv2
import numpy as np

from protonet.errors import ProtonetError

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
        with open(name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0].keys()), dialect=csv.excel, delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
        written.append(name)
    return written


# ---------------------------------------------------------------------- plotting

def plot_series(train, test):
    """The series to plot: [(title, [(label, xs, ys)])]."""
    panels = []
    loss_keys = [k for k in (train[0].keys() if train else []) if k not in ("NumIters", "Seconds", "LearningRate")]
    panels.append(("train loss", [(k, [r["NumIters"] for r in train], [r.get(k, math.nan) for r in train])
                                  for k in loss_keys]))
    panels.append(("learning rate", [("lr", [r["NumIters"] for r in train], [r["LearningRate"] for r in train])]))
    test_keys = [k for k in (test[0].keys() if test else []) if k not in ("NumIters", "Seconds", "LearningRate")]
    panels.append(("test outputs (mAP)", [(k, [r["NumIters"] for r in test], [r.get(k, math.nan) for r in test])
                                          for k in test_keys]))
    return panels


def plot_png(panels, path, title=""):
    try:
        import matplotlib  # noqa: F401  (an optional extra: OpenCV draws the plot without it)
    except ImportError:
        return _plot_opencv(panels, path, title)
    return _plot_matplotlib(panels, path, title)


def _plot_matplotlib(panels, path, title):
    import matplotlib  # optional extra, see plot_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3 * len(panels)), sharex=True)
    for ax, (name, series) in zip(np.atleast_1d(axes), panels):
        for label, xs, ys in series:
            ax.plot(xs, ys, label=label)
        ax.set_title(name)
        if series:
            ax.legend(loc="best")
    np.atleast_1d(axes)[-1].set_xlabel("iterations")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


_COLORS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140)]


def _plot_opencv(panels, path, title):
    width, panel_h, margin = 900, 260, 70
    img = np.full((panel_h * len(panels) + 40, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    if title:
        cv2.putText(img, title, (margin, 25), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    for p, (name, series) in enumerate(panels):
        top = 40 + p * panel_h
        x0, x1, y0, y1 = margin, width - 20, top + 25, top + panel_h - 35
        cv2.rectangle(img, (x0, y0), (x1, y1), (0, 0, 0), 1)
        cv2.putText(img, name, (x0, top + 18), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        pts = [(np.asarray(xs, float), np.asarray(ys, float)) for _, xs, ys in series]
        allx = np.concatenate([x for x, _ in pts]) if pts else np.zeros(0)
        ally = np.concatenate([y for _, y in pts]) if pts else np.zeros(0)
        ok = np.isfinite(ally)
        if not ok.any():
            cv2.putText(img, "no data", (x0 + 10, (y0 + y1) // 2), font, 0.5, (120, 120, 120), 1, cv2.LINE_AA)
            continue
        xmin, xmax = float(allx.min()), float(allx.max())
        ymin, ymax = float(ally[ok].min()), float(ally[ok].max())
        if xmax == xmin:
            xmax = xmin + 1
        if ymax == ymin:
            ymax = ymin + (abs(ymin) or 1) * 0.1
        for value, yy in ((ymax, y0), (ymin, y1)):
            cv2.putText(img, f"{value:.3g}", (5, yy + 4), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for value, xx in ((xmin, x0), (xmax, x1 - 40)):
            cv2.putText(img, f"{value:g}", (xx, y1 + 15), font, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for k, ((label, _, _), (xs, ys)) in enumerate(zip(series, pts)):
            color = _COLORS[k % len(_COLORS)]
            good = np.isfinite(ys)
            px = x0 + (xs[good] - xmin) / (xmax - xmin) * (x1 - x0)
            py = y1 - (ys[good] - ymin) / (ymax - ymin) * (y1 - y0)
            poly = np.stack([px, py], 1).round().astype(np.int32)
            if len(poly) == 1:
                cv2.circle(img, tuple(int(v) for v in poly[0]), 3, color, -1)
            else:
                cv2.polylines(img, [poly], False, color, 2, cv2.LINE_AA)
            cv2.putText(img, label, (x1 - 200, y0 + 18 + 16 * k), font, 0.45, color, 1, cv2.LINE_AA)
    if not cv2.imwrite(os.fspath(path), img):
        raise ProtonetError(f"{path}: cannot write the PNG")
