"""plot-log: loss, lr and mAP against iterations with axes and legends, by matplotlib when it is
installed, by OpenCV otherwise."""
import builtins
import importlib.util

import cv2
import numpy as np
import pytest

from protonet.cli import main
from protonet.tools import plot

LOG = ["I1201 10:00:00.000000 1 solver.py:1] Solving demo"]
for _it in range(0, 301, 50):
    LOG += [f"I1201 10:00:{_it // 10:02d}.000000 1 solver.py:2] Iteration {_it}, loss = {3 - _it / 150:.4f}",
            f"I1201 10:00:{_it // 10:02d}.000000 1 solver.py:2]     Train net output #0: mbox_loss = "
            f"{3 - _it / 150:.4f} (* 1 = {3 - _it / 150:.4f} loss)",
            f"I1201 10:00:{_it // 10:02d}.000000 1 solver.py:2] Iteration {_it}, lr = {0.01 if _it < 200 else 0.001}"]
    if _it and _it % 100 == 0:
        LOG += [f"I1201 10:00:{_it // 10:02d}.000000 1 solver.py:3] Iteration {_it}, Testing net (#0)",
                f"I1201 10:00:{_it // 10:02d}.000000 1 solver.py:3]     Test net output #0: detection_eval = "
                f"{_it / 400:.3f}"]


def test_nice_ticks():
    assert plot.nice_ticks(0, 3000) == [0, 1000, 2000, 3000]
    assert plot.nice_ticks(0, 2500) == [0, 500, 1000, 1500, 2000, 2500]
    assert plot.nice_ticks(0.0001, 0.001) == pytest.approx([0.0002, 0.0004, 0.0006, 0.0008, 0.001])
    assert plot.nice_ticks(5, 5) == [5, 6, 7, 8, 9, 10]


def _hide_matplotlib(monkeypatch):
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("no matplotlib here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)


def test_opencv_plot_has_three_panels_axes_and_legends(tmp_path, monkeypatch):
    (tmp_path / "train.log").write_text("\n".join(LOG) + "\n")
    _hide_matplotlib(monkeypatch)
    assert (main(["plot-log", str(tmp_path / "train.log"), str(tmp_path / "plot.png")]) or 0) == 0
    img = cv2.imread(str(tmp_path / "plot.png"))
    assert img.shape == (3 * plot.PANEL + 36, plot.WIDTH, 3)
    blue = np.all(img == plot._COLOURS[0], axis=2)
    for p in range(3):
        top = 36 + p * plot.PANEL
        y_axis = img[top + plot.TOP:top + plot.PANEL - plot.BOTTOM, plot.LEFT]
        assert (y_axis == 0).all(axis=1).mean() > 0.9  # the axes' frame
        assert blue[top:top + plot.PANEL].sum() > 100  # a series is drawn in each panel (and its legend)
        tick_labels = img[top + plot.PANEL - plot.BOTTOM + 8:top + plot.PANEL - plot.BOTTOM + 22]
        assert (tick_labels < 128).any()  # x tick labels under the axis
        assert (img[top + plot.TOP:top + plot.PANEL - plot.BOTTOM, 30:plot.LEFT - 8] < 128).any()  # y tick labels


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed")
def test_matplotlib_plot(tmp_path):
    (tmp_path / "train.log").write_text("\n".join(LOG) + "\n")
    assert (main(["plot-log", str(tmp_path / "train.log"), str(tmp_path / "plot.png"), "--title", "demo"]) or 0) == 0
    img = cv2.imread(str(tmp_path / "plot.png"))
    assert img is not None and img.shape[1] != plot.WIDTH and (img < 255).any()
