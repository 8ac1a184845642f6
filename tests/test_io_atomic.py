"""protonet.io.atomic: a file appears complete under its name or not at all; errors are one line."""
import errno
import os

import pytest

from protonet.io import atomic
from protonet.io.atomic import WriteError, atomic_open, atomic_path, atomic_write, remove_stale


def listing(directory):
    return sorted(os.listdir(directory))


def test_an_error_inside_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write(target, b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as fh:
            fh.write(b"half of the new")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and listing(tmp_path) == ["out.bin"]
    with atomic_open(target, "w", newline="") as fh:
        fh.write("new\n")
    assert target.read_text() == "new\n" and listing(tmp_path) == ["out.bin"]
    assert (os.stat(target).st_mode & 0o777) == 0o666 & ~atomic._UMASK


def test_a_directory_replaces_a_directory(tmp_path):
    final = tmp_path / "db"
    for content in (b"first", b"second"):
        with atomic_path(final) as tmp:
            os.mkdir(tmp)
            with open(os.path.join(tmp, "data.mdb"), "wb") as fh:
                fh.write(content)
    assert (final / "data.mdb").read_bytes() == b"second" and listing(tmp_path) == ["db"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_write_errors_are_one_line_naming_the_path(tmp_path, monkeypatch, code):
    real_open = open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()
            return False

        def write(self, data):
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic, "open", lambda fd, mode, **kw: Full(real_open(fd, mode, **kw)), raising=False)
    with pytest.raises(WriteError) as info:
        atomic_write(tmp_path / "x.caffemodel", b"data", needed=3_000_000)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'x.caffemodel'}: cannot write: ")
    assert os.strerror(code) in message
    if code in (errno.ENOSPC, errno.EDQUOT):
        assert "needs 3.0 MB" in message and f"free in {tmp_path}" in message
    else:
        assert "needs" not in message
    assert listing(tmp_path) == []


def test_remove_stale_takes_only_the_temporaries_of_the_names_given(tmp_path):
    names = [".tmp-s_iter_4.caffemodel.0123abcd", ".tmp-s_iter_4.solverstate.h5.89abcdef",
             ".tmp-s_iter_4.caffemodel.nothex00", ".tmp-other_iter_4.caffemodel.0123abcd",
             "s_iter_2.caffemodel", ".tmp-s_iter_x.caffemodel.0123abcd"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    os.mkdir(tmp_path / ".tmp-train_lmdb.0011aabb")
    removed = remove_stale(tmp_path, r"s_iter_\d+\.(?:caffemodel|solverstate)(?:\.h5)?")
    assert sorted(os.path.basename(r) for r in removed) == sorted(names[:2])
    assert remove_stale(tmp_path, "train_lmdb") == [str(tmp_path / ".tmp-train_lmdb.0011aabb")]
    assert listing(tmp_path) == sorted(names[2:])
