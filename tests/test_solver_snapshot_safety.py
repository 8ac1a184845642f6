"""Snapshots that cannot fail halfway: a pair or nothing, full disks as one line and exit 2,
stale temporaries removed, --resume picking the newest complete pair."""
import errno
import os
import shutil
import subprocess
import sys

import pytest

from protonet import caffe_pb2
from protonet.cli import main
from protonet.solver import snapshot
from protonet.errors import ProtonetError
from protonet.io import atomic
from protonet.io.atomic import WriteError
from protonet.solver.snapshot import Snapshots
from solver_util import captured_log, make_solver, messages, one_thread  # noqa: F401

SOLVER = "solver/sgd_multistep/solver.prototxt"


def write_solver(fixtures, path, prefix, **fields):
    """The sgd_multistep solver with its net path absolute and `fields` replaced."""
    lines = []
    for line in (fixtures / SOLVER).read_text().splitlines():
        key = line.split(":")[0].strip()
        if key in fields or key == "snapshot_prefix":
            continue
        if key == "net":
            line = f'net: "{fixtures / "solver/train.prototxt"}"'
        lines.append(line)
    lines.append(f'snapshot_prefix: "{prefix}"')
    lines += [f"{k}: {v}" for k, v in fields.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class FailingOpen:
    """atomic_open's open(), failing the `fail_at`-th file (1-based) with `code` on its first write."""

    def __init__(self, fail_at, code):
        self.fail_at, self.code, self.calls = fail_at, code, 0
        self.real_open = open

    def __call__(self, fd, mode, **kwargs):
        self.calls += 1
        fh = self.real_open(fd, mode, **kwargs)
        if self.calls != self.fail_at:
            return fh
        code = self.code

        class Failing:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                fh.close()
                return False

            def write(self, data):
                fh.write(data[: len(data) // 2])  # half of it, as a disk that fills up
                raise OSError(code, os.strerror(code))

        return Failing()


@pytest.mark.parametrize("fail_at,code", [(3, errno.ENOSPC), (4, errno.ENOSPC), (4, errno.EDQUOT),
                                          (3, errno.EROFS), (4, errno.EACCES)])
def test_a_failed_snapshot_keeps_the_previous_pair_and_no_partial_file(fixtures, tmp_path, monkeypatch, capsys,
                                                                       fail_at, code):
    # files 1, 2: the pair at iteration 2; 3: the model at 4, 4: the state at 4
    monkeypatch.chdir(fixtures)
    solver_file = write_solver(fixtures, tmp_path / "solver.prototxt", tmp_path / "snaps" / "s",
                               snapshot=2, max_iter=6, display=0)
    failing = FailingOpen(fail_at, code)
    monkeypatch.setattr(atomic, "open", failing, raising=False)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--solver", str(solver_file), "--weights", "solver/init.caffemodel"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("protonet: error:")]
    failed = "s_iter_4.caffemodel" if fail_at == 3 else "s_iter_4.solverstate"
    assert len(errors) == 1 and errors[0].startswith(f"protonet: error: {tmp_path / 'snaps' / failed}: cannot write: ")
    assert "Traceback" not in err and os.strerror(code) in errors[0]
    if code in (errno.ENOSPC, errno.EDQUOT):
        assert " free in " in errors[0] and "(needs " in errors[0]
    assert sorted(os.listdir(tmp_path / "snaps")) == ["s_iter_2.caffemodel", "s_iter_2.solverstate"]
    assert Snapshots(make_solver(solver_file).param).newest_pair() == (
        str(tmp_path / "snaps" / "s_iter_2.caffemodel"), str(tmp_path / "snaps" / "s_iter_2.solverstate"))


TMPFS_SCRIPT = r"""
set -e
mount -t tmpfs -o size=64k tmpfs "$1" || exit 97
# room for the first pair (two pages) and the next model (one page), not for the next state
"$2" -c "open('$1/filler', 'wb').write(b'x' * (64 * 1024 - 3 * 4096))"
set +e
"$2" -m protonet train --solver "$3" --weights solver/init.caffemodel 2>"$4"
echo "rc=$?"
ls -a "$1"
"""


def test_enospc_on_a_small_tmpfs(fixtures, tmp_path):
    unshare = shutil.which("unshare")
    if unshare is None or not sys.platform.startswith("linux"):
        pytest.skip("needs Linux's unshare to mount a private tmpfs")
    mount_point = tmp_path / "mnt"
    mount_point.mkdir()
    solver_file = write_solver(fixtures, tmp_path / "solver.prototxt", mount_point / "s",
                               snapshot=2, max_iter=6, display=0)
    script = tmp_path / "enospc.sh"
    script.write_text(TMPFS_SCRIPT)
    err_file = tmp_path / "err.txt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", str(script), str(mount_point),
                           sys.executable, str(solver_file), str(err_file)],
                          cwd=fixtures, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or "rc=" not in proc.stdout:
        pytest.skip(f"cannot mount a private tmpfs here (unshare/mount: {proc.stderr.strip()[-200:]})")
    out = proc.stdout.split()
    assert "rc=2" in out
    assert sorted(n for n in out[out.index("rc=2") + 1:] if n not in (".", "..")) == [
        "filler", "s_iter_2.caffemodel", "s_iter_2.solverstate"]
    err = err_file.read_text()
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"protonet: error: {mount_point}/s_iter_4.")
    assert "No space left on device (needs " in last and f"free in {mount_point})" in last
    assert "Traceback" not in err


def test_stale_temporaries_of_this_prefix_are_removed_at_start(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(fixtures)
    stale = [".tmp-s_iter_5.caffemodel.0a1b2c3d", ".tmp-s_iter_5.solverstate.ffff0000"]
    kept = [".tmp-other_iter_5.caffemodel.0a1b2c3d", "s_iter_5.caffemodel"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"\0" * 100)
    with captured_log() as stream:
        make_solver(SOLVER, prefix=tmp_path / "s")
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert any(m.startswith("Removed 2 unfinished snapshot file(s) of an interrupted run")
               for m in messages(stream.getvalue()))


def test_newest_complete_pair_and_incomplete_pairs(fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(fixtures)
    with captured_log():
        make_solver(SOLVER, prefix=tmp_path / "s", weights="solver/init.caffemodel", snapshot=2, max_iter=6,
                    display=0).solve()
    snaps = Snapshots(make_solver(SOLVER, prefix=tmp_path / "s").param)
    assert snaps.newest_pair() == (str(tmp_path / "s_iter_6.caffemodel"), str(tmp_path / "s_iter_6.solverstate"))
    os.unlink(tmp_path / "s_iter_6.solverstate")  # killed between the two files of the pair
    (tmp_path / "s_iter_4.caffemodel").rename(tmp_path / "moved.caffemodel")
    assert snaps.newest_pair() == (str(tmp_path / "s_iter_2.caffemodel"), str(tmp_path / "s_iter_2.solverstate"))
    with pytest.raises(ProtonetError, match=r"s_iter_4.solverstate: incomplete snapshot pair: its model '.*"
                                            r"s_iter_4.caffemodel' does not exist"):
        Snapshots.read(tmp_path / "s_iter_4.solverstate")
    with pytest.raises(ProtonetError, match="is a model, not a solver state"):
        Snapshots.read(tmp_path / "s_iter_6.caffemodel")


def test_train_resume_picks_the_newest_complete_pair(fixtures, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(fixtures)
    solver_file = write_solver(fixtures, tmp_path / "solver.prototxt", tmp_path / "s", snapshot=2, max_iter=6,
                               display=0)
    full = write_solver(fixtures, tmp_path / "full.prototxt", tmp_path / "f", snapshot=2, max_iter=6, display=0)
    assert (main(["train", "--solver", str(full), "--weights", "solver/init.caffemodel"]) or 0) == 0
    # no pair yet: --resume starts afresh (from --weights)
    assert (main(["train", "--solver", str(solver_file), "--resume", "--weights", "solver/init.caffemodel",
                  "--iterations", "4"]) or 0) == 0
    assert "--resume: no complete snapshot pair" in capsys.readouterr().err
    os.unlink(tmp_path / "s_iter_4.solverstate")
    assert (main(["train", "--solver", str(solver_file), "--resume", "--weights", "solver/init.caffemodel"])
            or 0) == 0
    err = capsys.readouterr().err
    assert f"--resume: the newest complete snapshot pair is {tmp_path / 's_iter_2.caffemodel'}" in err
    assert "Finetuning from" not in err  # the weights are only for a start afresh
    assert (tmp_path / "s_iter_6.caffemodel").read_bytes() == (tmp_path / "f_iter_6.caffemodel").read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--solver", str(solver_file), "--resume", "--snapshot", str(tmp_path / "s_iter_2.solverstate")])
    assert exc.value.code == 2
    os.unlink(tmp_path / "s_iter_2.caffemodel")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--solver", str(solver_file), "--snapshot", str(tmp_path / "s_iter_2.solverstate")])
    assert exc.value.code == 2
    assert "incomplete snapshot pair" in capsys.readouterr().err


def test_hdf5_pair_failure_leaves_no_partial_file(fixtures, tmp_path, monkeypatch):
    pytest.importorskip("h5py")
    monkeypatch.chdir(fixtures)
    solver = make_solver(SOLVER, prefix=tmp_path / "h", weights="solver/init.caffemodel", snapshot=0,
                         max_iter=2, display=0, snapshot_format=caffe_pb2.SolverParameter.HDF5)
    with captured_log():
        solver.solve()
    assert sorted(os.listdir(tmp_path)) == ["h_iter_2.caffemodel.h5", "h_iter_2.solverstate.h5"]
    def failing_state(path, *args):  # the disk fills up while the state is written
        with atomic.atomic_path(path) as tmp:
            open(tmp, "wb").close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(snapshot, "write_state_h5", failing_state)
    solver.progress.iter = 4
    with pytest.raises(WriteError, match=r"h_iter_4.solverstate.h5: cannot write: No space left on device \(needs"):
        with captured_log():
            solver.snapshot()
    assert sorted(os.listdir(tmp_path)) == ["h_iter_2.caffemodel.h5", "h_iter_2.solverstate.h5"]
