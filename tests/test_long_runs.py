"""Long runs show how they go: after Caffe's display lines a line with images/s, the data-wait share
and the time left; test passes report their progress; --tensorboard writes the log's numbers as
scalars; the log still parses as Caffe's parse_log.py reads it."""
import builtins
import re

import pytest

from protonet.cli import main
from protonet.solver.progress import duration, track
from protonet.tools.log import parse_log
from solver_util import messages

# the patterns of Caffe's tools/extra/parse_log.py
CAFFE_PATTERNS = [re.compile(r"Iteration (\d+)"), re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)"),
                  re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)"),
                  re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")]

NET = """name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.01 } data_param { source: "db" batch_size: 2 backend: LMDB } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.01 } data_param { source: "db" batch_size: 1 backend: LMDB } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "ip" bottom: "label" top: "accuracy" include { phase: TEST } }
"""
SOLVER = """net: "net.prototxt"
test_iter: 5
test_interval: 3
base_lr: 0.01
lr_policy: "step"
gamma: 0.5
stepsize: 2
display: 2
max_iter: 6
snapshot_prefix: "tiny"
random_seed: 1
solver_mode: CPU
"""


@pytest.fixture
def tiny(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lines = "".join(f"Images/{i}.jpg {i}\n" for i in range(1, 6))
    (tmp_path / "list.txt").write_text(lines)
    assert (main(["convert-imageset", "--resize_height=8", "--resize_width=8",
                  f"{fixtures}/data/lmdb/Dataset/", "list.txt", "db"]) or 0) == 0
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    return tmp_path


def train(args, capsys):
    capsys.readouterr()
    assert (main(["train", "--solver", "solver.prototxt", "--workers", "0", *args]) or 0) == 0
    return capsys.readouterr().err


def test_speed_line_after_caffes_display_lines(tiny, capsys):
    err = train(["--log", "train.log"], capsys)
    msgs = messages(err)
    speed = [m for m in msgs if m.startswith("Speed: ")]
    # displays at 0, 2, 4 (and after the last); a line for each interval that the first display ends
    assert len(speed) == 2
    pattern = (r"Speed: [\d.e+]+ iter/s, [\d.e+]+ images/s, data wait \d+%, ETA \d+:\d\d to max_iter 6 "
               r"\(iterations (\d) to (\d)\)")
    assert [re.fullmatch(pattern, m).groups() for m in speed] == [("0", "2"), ("3", "4")]
    # each comes after its display: "Iteration N, lr = ..." then the speed line
    for line in speed:
        before = msgs[msgs.index(line) - 1]
        assert re.fullmatch(r"Iteration \d, lr = [\d.e-]+", before)
    # the lines protonet adds carry none of Caffe's parse_log.py patterns: the tables are Caffe's
    added = [m for m in msgs if m.startswith(("Speed: ", "Test net #"))]
    assert added and not [m for m in added for p in CAFFE_PATTERNS if p.search(m)]
    train_rows, test_rows = parse_log(tiny / "train.log")
    assert [r["NumIters"] for r in train_rows] == [0, 2, 4] and [r["NumIters"] for r in test_rows] == [0, 3, 6]


def test_test_pass_progress_lines_and_bar(tiny, capsys):
    msgs = messages(train([], capsys))
    # test_iter 5: a line per batch (every tenth of the pass, at least one batch)
    progress = [m for m in msgs if m.startswith("Test net #0: batch ")]
    assert [m.split(",")[0] for m in progress] == [f"Test net #0: batch {k}/5" for k in range(1, 6)] * 3  # at 0, 3, 6
    lines = []
    for _ in track(range(30), 30, "Test net #0", lines.append):
        pass
    assert [line.split(",")[0] for line in lines] == [f"Test net #0: batch {k}/30" for k in (3, 6, 9, 12, 15, 18,
                                                                                            21, 24, 27, 30)]

    class Terminal:
        text = ""

        def write(self, s):
            Terminal.text += s

        def flush(self):
            pass

    assert list(track(range(3), 3, "Test", lines.append, interactive=True, stream=Terminal())) == [0, 1, 2]
    assert Terminal.text.count("\r") == 3 and "3/3" in Terminal.text and Terminal.text.endswith("\n")
    assert duration(3725) == "1:02:05" and duration(65) == "1:05"


def test_protonet_test_shows_progress_of_a_detection_pass(fixtures, monkeypatch, capsys):
    monkeypatch.chdir(fixtures)
    assert (main(["test", "--model", "eval/map_test.prototxt", "--weights", "solver/init.caffemodel",
                  "--iterations", "1"]) or 0) == 0
    msgs = messages(capsys.readouterr().err)
    progress = [m for m in msgs if m.startswith("Test: batch ")]
    assert len(progress) == 1 and progress[0].startswith("Test: batch 1/1, ")
    assert msgs.index(progress[0]) < msgs.index(next(m for m in msgs if m.startswith("detection_eval = ")))


def test_tensorboard_scalars(tiny, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(["--tensorboard", "tb"], capsys)
    events = EventAccumulator(str(tiny / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/smoothed_loss", "train/lr", "test/accuracy", "test/loss",
            "speed/images_per_s", "speed/data_wait"} <= tags
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("train/lr")] == [(0, 0.01), (2, 0.005), (4, 0.0025)]
    assert [e.step for e in events.Scalars("test/accuracy")] == [0, 3, 6]
    assert all(e.value > 0 for e in events.Scalars("speed/images_per_s"))


def test_tensorboard_missing_is_one_line(tiny, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--solver", "solver.prototxt", "--tensorboard", "tb"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and last == ("protonet: error: --tensorboard needs the tensorboard package: "
                                            "pip install tensorboard (or protonet[tensorboard])")
