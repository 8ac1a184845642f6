"""protonet.resources: the examples, the quickstart's script, data scripts and label maps that the
package carries (links to the top-level examples/ and scripts/ in a checkout, copies in a wheel)."""
import pathlib

import pytest

from protonet import resources
from protonet.errors import ProtonetError

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_every_example_of_the_repository_is_bundled_under_one_short_name():
    in_repo = sorted(p.relative_to(REPO / "examples").with_suffix("").as_posix()
                     for p in (REPO / "examples").glob("*/*.py"))
    bundled = resources.examples()
    assert sorted(bundled) == in_repo and "ssd/ssd_pascal" in bundled
    for name, path in bundled.items():
        assert path.read_bytes() == (REPO / "examples" / f"{name}.py").read_bytes()
        short = name.split("/")[1]
        # every spelling a user may type names the same file
        for spelling in (short, f"{short}.py", name, f"{name}.py", f"examples/{name}.py"):
            assert resources.find_example(spelling) == path, spelling
    assert resources.QUICKSTART_SCRIPT == bundled["quickstart/ssd_shapes"]


def test_data_scripts_and_label_maps_are_bundled():
    scripts = resources.data_scripts()
    for dataset, labelmap in (("VOC0712", "labelmap_voc.prototxt"), ("coco", "labelmap_coco.prototxt")):
        for name in ("create_list.sh", "create_data.sh", labelmap):
            assert scripts[f"{dataset}/{name}"].read_bytes() == (REPO / "scripts" / dataset / name).read_bytes()


def test_script_path_prefers_a_file_and_names_the_bundled_examples_otherwise(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ssd_pascal").write_text("# a user's own script of that name\n")
    assert resources.script_path("ssd_pascal") == pathlib.Path("ssd_pascal")
    assert resources.script_path("VGG16_VOC2007_320") == resources.examples()["refinedet/VGG16_VOC2007_320"]
    with pytest.raises(ProtonetError, match=r"ssd_pascl: no such script.*bundled: .*ssd_pascal"):
        resources.script_path("ssd_pascl")


def test_copy_to_writes_a_caffe_root_like_tree_and_keeps_existing_files(tmp_path):
    (tmp_path / "examples" / "ssd").mkdir(parents=True)
    (tmp_path / "examples" / "ssd" / "ssd_pascal.py").write_text("mine\n")
    written = resources.copy_to(tmp_path)
    assert (tmp_path / "examples" / "ssd" / "ssd_pascal.py").read_text() == "mine\n"
    assert tmp_path / "examples" / "ssd" / "ssd_pascal.py" not in written
    assert (tmp_path / "scripts" / "VOC0712" / "create_data.sh") in written
    assert len(written) == len(resources.examples()) + len(resources.data_scripts()) - 1


def _protonet(capsys, *args):
    from protonet.cli import main

    try:
        status = main([str(a) for a in args])
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status or 0, out, err


def _tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix != ".sh"}  # job scripts hold their root's absolute path


def test_gen_takes_a_bundled_example_by_name_with_the_same_result_as_its_path(tmp_path, capsys, monkeypatch):
    by_name, by_path = tmp_path / "by_name", tmp_path / "by_path"
    by_name.mkdir(), by_path.mkdir()
    monkeypatch.chdir(by_name)
    status, _, err = _protonet(capsys, "gen", "ssd_pascal")
    assert status == 0, err
    assert "wrote models/VGGNet/VOC0712/SSD_300x300/train.prototxt" in err
    status, _, err = _protonet(capsys, "gen", REPO / "examples/ssd/ssd_pascal.py", "--root", by_path)
    assert status == 0, err
    # 4 prototxts in models/ and their copies in jobs/, with the script's own copy
    assert _tree(by_name) == _tree(by_path) and len(_tree(by_name)) == 9
    assert "jobs/VGGNet/VOC0712/SSD_300x300/ssd_pascal.py" in _tree(by_name)
    status, _, err = _protonet(capsys, "gen", "no_such_example")
    assert status == 2 and "no_such_example: no such script" in err and "ssd_pascal" in err


def test_examples_lists_and_copies_what_is_bundled(tmp_path, capsys):
    status, out, _ = _protonet(capsys, "examples")
    assert status == 0
    assert all(name.split("/")[1] in out for name in resources.examples())
    assert "VOC0712/labelmap_voc.prototxt" in out
    status, _, err = _protonet(capsys, "examples", "--copy", tmp_path / "root")
    assert status == 0 and (tmp_path / "root/scripts/coco/create_data.sh").is_file()
    assert (tmp_path / "root/examples/refinedet/VGG16_VOC2007_320.py").is_file()


def test_version_from_protonet_and_from_python_dash_m(capsys):
    import subprocess
    import sys

    import protonet

    status, out, _ = _protonet(capsys, "--version")
    assert status == 0 and out == f"protonet, version {protonet.__version__}\n"
    run = subprocess.run([sys.executable, "-m", "protonet", "--version"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout == out
