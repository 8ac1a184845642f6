"""The caffe-tool commands: train/test/time/device-query flags, errors as one line, mAP from `test`."""
import pytest
import torch

from protonet.cli import main
from solver_util import messages, one_thread  # noqa: F401


def run_cli(argv, capsys):
    code = 0
    try:
        main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_test_command_prints_map_of_detection_net(fixtures, monkeypatch, capsys):
    monkeypatch.chdir(fixtures)
    code, _, err = run_cli(["test", "--model", "eval/map_test.prototxt", "--weights", "solver/init.caffemodel",
                            "--iterations", "1", "--ap_version", "MaxIntegral", "--show_per_class_result"], capsys)
    assert code in (0, None)
    msgs = messages(err)
    assert "detection_eval = 0.564062" in msgs
    assert ["class1: 0.586342", "class2: 0.486797", "class3: 0.619048"] == [m for m in msgs if m.startswith("class")]


def test_test_command_means_of_outputs(fixtures, monkeypatch, capsys):
    monkeypatch.chdir(fixtures)
    code, _, err = run_cli(["test", "--model", "solver/train.prototxt", "--weights", "solver/init.caffemodel",
                            "--iterations", "2"], capsys)
    msgs = messages(err)
    batches = [m for m in msgs if m.startswith("Batch ")]
    assert [m.split(",")[0] for m in batches] == ["Batch 0", "Batch 1"]
    b = [float(m.split("= ")[1]) for m in batches]
    final = [m for m in msgs if m.startswith("loss = ")]
    assert len(final) == 1 and float(final[0].split()[2]) == pytest.approx(sum(b) / 2, rel=1e-5)
    assert final[0].endswith(" loss)") and any(m.startswith("Loss: ") for m in msgs)


def test_time_command(fixtures, monkeypatch, capsys):
    monkeypatch.chdir(fixtures)
    code, _, err = run_cli(["time", "--model", "solver/train.prototxt", "--iterations", "2"], capsys)
    msgs = messages(err)
    assert any(m.startswith("Average Forward pass: ") for m in msgs)
    assert sum(1 for m in msgs if "\tforward: " in m) == 10  # every layer


@pytest.mark.parametrize("argv,expect", [
    (["train", "--solver", "solver/adam/solver.prototxt", "--weights", "a", "--snapshot", "b"], "not both"),
    (["train", "--solver", "missing.prototxt"], "missing.prototxt"),
    (["train", "--solver", "solver/adam/solver.prototxt", "--gpu", "x"], "--gpu"),
    (["test", "--model", "solver/train.prototxt", "--weights", "nope.caffemodel", "--iterations", "1"], "nope.caffemodel"),
])
def test_user_errors_are_one_line(fixtures, monkeypatch, capsys, argv, expect):
    monkeypatch.chdir(fixtures)
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("protonet: error: ") and expect in last


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_device_query_without_gpu(capsys):
    code, _, err = run_cli(["device-query"], capsys)
    assert code == 2 and "no CUDA device" in err


def test_caffe_and_dashed_flag_spellings(fixtures, monkeypatch, capsys, tmp_path):
    from protonet.commands.caffe import train_command

    names = {opt for p in train_command.params for opt in p.opts}
    for flag in ("--sigint_effect", "--sigint-effect", "--sighup_effect", "--channels_last", "--channels-last",
                 "--weights", "--snapshot", "--gpu", "--iterations", "--amp"):
        assert flag in names


PYTHON_LAYER_NET = """
name: "py"
input: "data"
input_shape { dim: 2 dim: 3 }
layer { name: "double" type: "Python" bottom: "data" top: "doubled"
        python_param { module: "doubling_layer" layer: "Doubling" } }
layer { name: "loss" type: "Reduction" bottom: "doubled" top: "total" }
"""

DOUBLING_MODULE = """
class Doubling:
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data
"""


def test_python_layers_need_the_flag(tmp_path, monkeypatch, capsys):
    (tmp_path / "doubling_layer.py").write_text(DOUBLING_MODULE)
    (tmp_path / "net.prototxt").write_text(PYTHON_LAYER_NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    from protonet.layers.base import NetContext
    from protonet.net.net import Net

    code, _, err = run_cli(["time", "--model", "net.prototxt", "--iterations", "1", "--phase", "TEST"], capsys)
    assert code == 2 and "--allow-python-layers" in err and "Traceback" not in err
    code, _, err = run_cli(["time", "--model", "net.prototxt", "--iterations", "1", "--phase", "TEST",
                            "--allow-python-layers"], capsys)
    assert code in (0, None), err
    net = Net("net.prototxt", phase="TEST", ctx=NetContext(phase=1, allow_python_layers=True))
    out = net.forward(data=torch.ones(2, 3))
    assert torch.equal(out["doubled"], torch.full((2, 3), 2.0))
