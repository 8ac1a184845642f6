"""GenSession: one object holds what a script run by `protonet gen` wrote, lacks and tried to
launch, filled by the script's `open`, `caffe.model_libs.check_if_exist` and protonet.spec.jobs."""
import sys
import textwrap

from protonet.compat import caffe_modules
from protonet.spec import jobs
from protonet.compat.run import run_script
from protonet.spec.session import GenSession

MIXED_SCRIPT = """
    import os
    import subprocess
    from caffe.model_libs import check_if_exist
    from protonet.spec import jobs

    check_if_exist('data/lmdb')
    jobs.check_inputs('data/lmdb', 'weights.caffemodel')
    with open('notes.txt', 'w') as f:
        f.write('x')
    jobs.write_solver('solver.prototxt', base_lr=0.1)
    jobs.write_job_script('job.sh', os.getcwd(), 'solver.prototxt', log_file='job.log')
    subprocess.call('./job.sh', shell=True)
"""


def _run(tmp_path, name):
    script = tmp_path / name
    script.write_text(textwrap.dedent(MIXED_SCRIPT))
    return run_script(script, root=tmp_path, echo=lambda line: None)


def test_one_session_collects_writes_missing_inputs_and_held_jobs(tmp_path):
    session = _run(tmp_path, "a.py")
    assert isinstance(session, GenSession) and session.flavor == "ssd"
    assert session.missing == ["data/lmdb", "weights.caffemodel"]  # each once, in the order met
    assert session.written == [str(tmp_path / name) for name in ("notes.txt", "solver.prototxt", "job.sh")]
    assert session.job_scripts == [str(tmp_path / "job.sh")]
    assert session.launches == ["./job.sh"] and not (tmp_path / "job.log").exists()
    assert session.pending_jobs() == ["./job.sh"]  # the job script is not started twice


def test_sessions_do_not_leak_into_each_other_or_outside(tmp_path, capsys):
    first, second = _run(tmp_path, "a.py"), _run(tmp_path, "b.py")
    assert first.missing == second.missing and first.written == second.written
    assert "caffe.model_libs" not in sys.modules  # put back as it was (no pycaffe here)
    # Outside a gen run, jobs notes nothing and says what is missing itself.
    assert jobs.check_inputs(str(tmp_path / "absent")) is False
    assert "absent does not exist yet" in capsys.readouterr().err
    assert first.missing == second.missing == ["data/lmdb", "weights.caffemodel"]


def test_caffe_modules_note_missing_paths_in_the_session_given(tmp_path):
    session = GenSession()
    with caffe_modules("refinedet", session):
        from caffe.model_libs import CreateRefineDetHead, check_if_exist  # noqa: F401  (RefineDet's helpers)

        assert check_if_exist(str(tmp_path)) and not check_if_exist(str(tmp_path / "nope"))
    assert session.missing == [str(tmp_path / "nope")]
    with caffe_modules("ssd"):  # without a session: nothing is kept
        from caffe import model_libs

        assert not hasattr(model_libs, "CreateRefineDetHead")
        assert model_libs.check_if_exist(str(tmp_path / "nope")) is False
    assert session.missing == [str(tmp_path / "nope")]
