"""`protonet plot-log`: train loss, learning rate and test outputs (mAP) against iterations, one panel
each, in one PNG with axes, tick labels and legends; drawn with matplotlib when it is installed (an
optional extra), else with OpenCV."""
import io
import math
import os

import cv2
import numpy as np

from protonet.io.atomic import atomic_write, atomic_write_image

_NOT_OUTPUTS = ("NumIters", "Seconds", "LearningRate")


def plot_series(train, test):
    """The panels to plot: [(title, y-axis label, [(legend label, xs, ys)])]."""
    def outputs(rows):
        keys = [k for k in (rows[0].keys() if rows else []) if k not in _NOT_OUTPUTS]
        return [(k, [r["NumIters"] for r in rows], [r.get(k, math.nan) for r in rows]) for k in keys]

    return [("train loss", "loss", outputs(train)),
            ("learning rate", "lr", [("lr", [r["NumIters"] for r in train], [r["LearningRate"] for r in train])]),
            ("test outputs (mAP)", "test output", outputs(test))]


def plot_png(panels, path, title=""):
    try:
        import matplotlib  # noqa: F401  (an optional extra: OpenCV draws the plot without it)
    except ImportError:
        return plot_opencv(panels, path, title)
    return plot_matplotlib(panels, path, title)


def plot_matplotlib(panels, path, title):
    import matplotlib  # optional extra, see plot_png

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3 * len(panels)), sharex=True)
    for ax, (name, ylabel, series) in zip(np.atleast_1d(axes), panels):
        for label, xs, ys in series:
            ax.plot(xs, ys, label=label)
        ax.set_title(name)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if series:
            ax.legend(loc="best")
    np.atleast_1d(axes)[-1].set_xlabel("iterations")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=os.path.splitext(os.fspath(path))[1].lstrip(".") or "png")
    plt.close(fig)
    atomic_write(path, buffer.getvalue(), sync=False)


# ---- OpenCV ------------------------------------------------------------------------------------

_COLOURS = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148), (75, 86, 140)]
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BLACK, _GREY, _LIGHT = (0, 0, 0), (110, 110, 110), (225, 225, 225)
WIDTH, PANEL, LEFT, RIGHT, TOP, BOTTOM = 900, 290, 90, 20, 34, 52


def nice_ticks(low, high, count=5):
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if not high > low:
        high = low + (abs(low) or 1.0)
    raw = (high - low) / count
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + k * step for k in range(int(math.floor((high - first) / step + 1e-9)) + 1)]


def _text(img, text, org, scale=0.45, colour=_BLACK):
    cv2.putText(img, text, org, _FONT, scale, colour, 1, cv2.LINE_AA)


def _vertical_text(img, text, centre):
    """Text turned a quarter left, centred at (x, y): a y-axis label."""
    (w, h), base = cv2.getTextSize(text, _FONT, 0.5, 1)
    patch = np.full((h + base + 4, w + 4, 3), 255, np.uint8)
    _text(patch, text, (2, h + 2), 0.5)
    patch = cv2.rotate(patch, cv2.ROTATE_90_COUNTERCLOCKWISE)
    y0, x0 = centre[1] - patch.shape[0] // 2, centre[0] - patch.shape[1] // 2
    img[y0:y0 + patch.shape[0], x0:x0 + patch.shape[1]] = patch


def _legend(img, series, box, ink):
    """The legend in the corner of the plot `box` (x0, y0, x1, y1) that hides the least of the lines
    (`ink`: a mask of the pixels they cover)."""
    labels = [label for label, _, _ in series]
    width = max(cv2.getTextSize(label, _FONT, 0.45, 1)[0][0] for label in labels) + 44
    height = 8 + 18 * len(labels)
    x0, y0, x1, y1 = box
    corners = [(x1 - width - 8, y0 + 8), (x1 - width - 8, y1 - height - 8), (x0 + 8, y0 + 8),
               (x0 + 8, y1 - height - 8)]

    left, top = min(corners, key=lambda c: int(ink[c[1]:c[1] + height + 1, c[0]:c[0] + width + 1].sum()))
    cv2.rectangle(img, (left, top), (left + width, top + height), (255, 255, 255), -1)
    cv2.rectangle(img, (left, top), (left + width, top + height), _GREY, 1)
    for k, label in enumerate(labels):
        y = top + 16 + 18 * k
        cv2.line(img, (left + 6, y - 4), (left + 30, y - 4), _COLOURS[k % len(_COLOURS)], 2, cv2.LINE_AA)
        _text(img, label, (left + 36, y))


def _panel(img, top, name, ylabel, series, x_range):
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, top + TOP, top + PANEL - BOTTOM
    _text(img, name, ((x0 + x1) // 2 - cv2.getTextSize(name, _FONT, 0.55, 1)[0][0] // 2, top + 22), 0.55)
    _vertical_text(img, ylabel, (18, (y0 + y1) // 2))
    _text(img, "iterations", ((x0 + x1) // 2 - 35, y1 + 40))
    data = [(np.asarray(xs, float), np.asarray(ys, float)) for _, xs, ys in series]
    values = np.concatenate([y[np.isfinite(y)] for _, y in data]) if data else np.zeros(0)
    xmin, xmax = x_range
    ymin, ymax = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    y_ticks = nice_ticks(ymin, ymax)
    ymin, ymax = min(ymin, y_ticks[0]), max(ymax, y_ticks[-1])
    px = lambda x: int(round(x0 + (x - xmin) / (xmax - xmin) * (x1 - x0)))  # noqa: E731
    py = lambda y: int(round(y1 - (y - ymin) / (ymax - ymin) * (y1 - y0)))  # noqa: E731
    for y in y_ticks:
        cv2.line(img, (x0, py(y)), (x1, py(y)), _LIGHT, 1)
        label = f"{y:.4g}"
        _text(img, label, (x0 - 8 - cv2.getTextSize(label, _FONT, 0.4, 1)[0][0], py(y) + 4), 0.4)
    for x in nice_ticks(xmin, xmax):
        if xmin <= x <= xmax:
            cv2.line(img, (px(x), y1), (px(x), y1 + 5), _BLACK, 1)
            label = f"{x:g}"
            _text(img, label, (px(x) - cv2.getTextSize(label, _FONT, 0.4, 1)[0][0] // 2, y1 + 20), 0.4)
    cv2.rectangle(img, (x0, y0), (x1, y1), _BLACK, 1)
    if not values.size:
        _text(img, "no data", (x0 + 10, (y0 + y1) // 2), 0.5, _GREY)
        return
    ink = np.zeros(img.shape[:2], np.uint8)
    for k, (xs, ys) in enumerate(data):
        good = np.isfinite(ys)
        points = np.array([(px(x), py(y)) for x, y in zip(xs[good], ys[good])], np.int32).reshape(-1, 2)
        colour = _COLOURS[k % len(_COLOURS)]
        for canvas, paint in ((img, colour), (ink, 1)):
            if len(points) == 1:
                cv2.circle(canvas, tuple(int(v) for v in points[0]), 3, paint, -1)
            elif len(points):
                cv2.polylines(canvas, [points], False, paint, 2, cv2.LINE_AA if canvas is img else cv2.LINE_8)
    _legend(img, series, (x0, y0, x1, y1), ink)


def plot_opencv(panels, path, title):
    xs = [x for _, _, series in panels for _, sx, _ in series for x in sx]
    x_range = (float(min(xs)), float(max(xs))) if xs else (0.0, 1.0)
    if x_range[1] == x_range[0]:
        x_range = (x_range[0], x_range[0] + 1)
    img = np.full((PANEL * len(panels) + 36, WIDTH, 3), 255, np.uint8)
    if title:
        _text(img, title, (WIDTH // 2 - cv2.getTextSize(title, _FONT, 0.6, 1)[0][0] // 2, 24), 0.6)
    for p, (name, ylabel, series) in enumerate(panels):
        _panel(img, 36 + p * PANEL, name, ylabel, series, x_range)
    atomic_write_image(path, img)
