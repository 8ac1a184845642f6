"""The wheel, as a user gets it: built from this tree, installed offline into a fresh venv (no
index: the local wheel, with the dependencies already installed here made visible to the venv),
then run from an empty directory: `protonet --version`, `protonet gen ssd_pascal` (a bundled
example by name) and, in the slow variant, a 20-iteration `protonet quickstart`."""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest

import protonet

REPO = pathlib.Path(__file__).resolve().parents[1]
# What a build needs; protonet/resources links into examples/ and scripts/.
BUILD_INPUTS = ("protonet", "examples", "scripts", "proto", "setup.cfg", "pyproject.toml", "README.md",
                "MANIFEST.in")


def _run(args, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_NO_INPUT"] = "1"
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{args}: status {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _dependencies_dir(base):
    """This interpreter's installed packages minus protonet itself, as links in one folder (what
    --system-site-packages gives a venv, without this tree's editable protonet)."""
    deps = base / "deps"
    deps.mkdir()
    sites = [sysconfig.get_paths()[key] for key in ("purelib", "platlib")]
    sites += [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]
    for site in map(pathlib.Path, dict.fromkeys(sites)):  # the first of a name wins, as on sys.path
        for entry in site.iterdir():
            name = entry.name.lower()
            if name.startswith(("protonet", "__editable__", "_protonet")) or entry.suffix == ".pth":
                continue
            if not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    return deps


def _venv_python(venv):
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv's bin folder, an empty working directory) with the wheel of this tree installed."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", base / "dist", source], cwd=base)
    (wheel,) = (base / "dist").glob("protonet-*.whl")

    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=base)
    python = _venv_python(venv)
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=base).stdout.strip()
    (pathlib.Path(site) / "protonet_test_dependencies.pth").write_text(f"{_dependencies_dir(base)}\n")
    # Offline: the dependencies must be satisfied by what is installed (torch's range included).
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-index", wheel], cwd=base)
    work = base / "work"
    work.mkdir()
    return python.parent, work


def test_wheel_installs_offline_and_carries_version_and_examples(installed):
    bin_dir, work = installed
    where = _run([bin_dir / "python", "-c", "import protonet; print(protonet.__file__)"], cwd=work).stdout
    assert str(bin_dir.parent) in where  # the wheel's protonet, not this tree's

    version = _run([bin_dir / "protonet", "--version"], cwd=work).stdout
    assert version.strip() == f"protonet, version {protonet.__version__}"
    assert _run([bin_dir / "python", "-m", "protonet", "--version"], cwd=work).stdout == version

    run = _run([bin_dir / "protonet", "gen", "ssd_pascal"], cwd=work)
    model_dir = work / "models/VGGNet/VOC0712/SSD_300x300"
    assert sorted(p.name for p in model_dir.iterdir()) == ["deploy.prototxt", "solver.prototxt", "test.prototxt",
                                                           "train.prototxt"]
    assert (work / "jobs/VGGNet/VOC0712/SSD_300x300/VGG_VOC0712_SSD_300x300.sh").is_file()
    assert "warning: data/VOC0712/labelmap_voc.prototxt does not exist" in run.stderr


@pytest.mark.slow
def test_quickstart_runs_from_the_wheel_in_an_empty_directory(installed):
    bin_dir, work = installed
    root = work / "quickstart"
    root.mkdir()
    out = _run([bin_dir / "protonet", "quickstart", "--root", ".", "--train", "32", "--test", "8",
                "--max-iter", "20"], cwd=root, timeout=1200).stdout
    assert re.search(r"quickstart: test mAP = [0-9.]+", out), out[-3000:]
    assert (root / "models/quickstart/ssd_shapes_128x128/shapes_ssd_shapes_128x128_iter_20.caffemodel").is_file()
