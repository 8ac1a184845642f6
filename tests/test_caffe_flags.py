"""Caffe's gflags spellings (-flag value, -flag=value, --flag=value, underscores, -noflag) are taken
by the commands that mirror Caffe's tools, beside click's; --help shows click's and says so."""
import json

import pytest
from click.testing import CliRunner

from protonet.cli import cli, main
from protonet.commands.caffe import train_command
from protonet.commands.options import gflags_to_click
from protonet.errors import ProtonetError
from solver_util import messages
from test_create_annoset import dump


def test_spellings_become_clicks():
    args = ["-solver", "s.prototxt", "-weights=a.caffemodel,b.caffemodel", "--iterations=5", "--sigint_effect",
            "none", "-channels_last", "--nochannels_last", "--allow_python_layers=true", "-amp=bf16",
            "--stage", "-not-a-flag", "-h", "--", "-solver"]
    assert gflags_to_click(train_command, args) == [
        "--solver", "s.prototxt", "--weights=a.caffemodel,b.caffemodel", "--iterations=5", "--sigint-effect",
        "none", "--channels-last", "--allow-python-layers", "--amp=bf16", "--stage", "-not-a-flag", "-h",
        "--", "-solver"]
    # unknown names pass unchanged, for click to report
    assert gflags_to_click(train_command, ["-nosuch", "x", "--sovler=s"]) == ["-nosuch", "x", "--sovler=s"]
    with pytest.raises(ProtonetError, match="takes true or false"):
        gflags_to_click(train_command, ["--channels_last=maybe"])


@pytest.mark.parametrize("spelling", [
    ["-model", "eval/map_test.prototxt", "-weights", "solver/init.caffemodel", "-iterations", "1",
     "-ap_version", "MaxIntegral", "-show_per_class_result"],
    ["-model=eval/map_test.prototxt", "-weights=solver/init.caffemodel", "-iterations=1",
     "--ap_version=MaxIntegral", "--show_per_class_result=true"],
    ["--model=eval/map_test.prototxt", "--weights=solver/init.caffemodel", "--iterations=1",
     "--ap-version", "MaxIntegral", "--show-per-class-result"],
])
def test_caffe_test_with_each_spelling(fixtures, monkeypatch, capsys, spelling):
    monkeypatch.chdir(fixtures)
    try:
        main(["test", *spelling])
    except SystemExit as exc:
        assert exc.code in (0, None)
    msgs = messages(capsys.readouterr().err)
    assert "detection_eval = 0.564062" in msgs and "class1: 0.586342" in msgs


def test_device_query_as_caffe_spells_it(capsys):
    with pytest.raises(SystemExit):
        main(["device_query", "-gpu", "all"])
    err = capsys.readouterr().err
    assert "Querying GPUs all" in err


def test_create_annoset_with_convert_annoset_flags(fixtures, tmp_path, monkeypatch):
    src = fixtures / "data/lmdb"
    monkeypatch.chdir(src)
    out = tmp_path / "db"
    # convert_annoset's gflags (underscores, --flag=value, booleans as --flag=true/false)
    args = ["create-annoset", "--anno_type=detection", "--label_type=xml", "--label_map_file=labelmap.prototxt",
            "--check_label=true", "--encode_type=jpg", "--encoded", "--gray=false", "-shuffle=false",
            "Dataset/", "list.txt", str(out)]
    assert (main(args) or 0) == 0
    assert dump(out) == json.loads((src / "lmdb_contents.json").read_text())["annoset_encoded_lmdb"]


@pytest.mark.parametrize("command", ["train", "test", "time", "device-query", "create-annoset", "parse-log",
                                     "plot-log", "convert-imageset", "compute-image-mean", "extract-features",
                                     "draw-net"])
def test_help_shows_click_spellings_and_says_caffes_work(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Caffe's flag spellings work too" in result.output
    options = [line.split()[0] for line in result.output.splitlines() if line.startswith("  --")]
    assert options and not [o for o in options if "_" in o.rstrip(",")]
