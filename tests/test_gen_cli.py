"""`protonet gen`: how it runs a script (root, flavour, caffe modules, held-back jobs, --run) and
how it reports a user's mistakes (one line, exit status 2)."""
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from protonet.cli import main

REPO = pathlib.Path(__file__).resolve().parents[1]


def _gen(capsys, *args):
    """Run `protonet gen ARGS`: (exit status, stdout, stderr)."""
    try:
        status = main(["gen", *map(str, args)])
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status or 0, out, err


def _script(tmp_path, text, name="make_net.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


CONV_BN_SCRIPT = """
    import caffe
    from caffe import layers as L, params as P
    from caffe.model_libs import *

    net = caffe.NetSpec()
    net.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    ConvBNLayer(net, 'data', 'conv', True, True, 4, 3, 1, 1)
    {extra}
    with open('out/net.prototxt', 'w') as f:
        print(net.to_proto(), file=f)
"""


def _batch_norm_params(root):
    from protonet import caffe_pb2
    from protonet.io.prototxt import read_prototxt

    net = read_prototxt(root / "out" / "net.prototxt", caffe_pb2.NetParameter)
    (bn,) = [layer for layer in net.layer if layer.type == "BatchNorm"]
    return len(bn.param)


@pytest.mark.parametrize("extra,flag,bn_params", [
    ("", [], 3),                                         # no CreateRefineDetHead: the SSD fork's helpers
    ("", ["--flavor", "refinedet"], 0),
    ("if False: CreateRefineDetHead(net)", [], 0),      # calls CreateRefineDetHead: RefineDet's
    ("if False: CreateRefineDetHead(net)", ["--flavor", "ssd"], 3),
])
def test_flavour_from_script_or_option(tmp_path, capsys, extra, flag, bn_params):
    root = tmp_path / "root"
    (root / "out").mkdir(parents=True)
    script = _script(tmp_path, CONV_BN_SCRIPT.format(extra=extra))
    status, _, err = _gen(capsys, script, "--root", root, *flag)
    assert status == 0, err
    assert _batch_norm_params(root) == bn_params


def test_script_runs_from_root_and_leaves_the_process_as_it_was(tmp_path, capsys):
    root = tmp_path / "root"
    (root / "out").mkdir(parents=True)
    script = _script(tmp_path, CONV_BN_SCRIPT.format(extra="assert os.getcwd() == %r" % str(root)))
    cwd, path = os.getcwd(), list(sys.path)
    had_caffe = "caffe" in sys.modules
    status, _, err = _gen(capsys, script, "--root", root)
    assert status == 0, err
    assert os.getcwd() == cwd and sys.path == path
    assert ("caffe" in sys.modules) == had_caffe
    assert "wrote out/net.prototxt" in err


def test_python2_names_and_integral_floats(tmp_path, capsys):
    script = _script(tmp_path, """
        import caffe
        from caffe.proto import caffe_pb2
        sizes = [i for i in xrange(3)]
        solver = caffe_pb2.SolverParameter(iter_size=32 / 32, test_iter=[4952 / 8], max_iter=len(sizes))
        open('solver.prototxt', 'w').write(str(solver))
    """)
    status, _, err = _gen(capsys, script, "--root", tmp_path)
    assert status == 0, err
    assert (tmp_path / "solver.prototxt").read_text().split() == ["test_iter:", "619", "max_iter:", "3",
                                                                   "iter_size:", "1"]


@pytest.mark.parametrize("text,message", [
    ("x = 1\nprint 'hello'\n", r"make_net.py:2:\d+: .*Python 2 print statement"),
    ("import caffe\nnet = caffe.NetSpec()\n\nnet['nothere']\n", r"make_net.py:4: KeyError: NetSpec has no top named 'nothere'"),
    ("import caffe\nfrom caffe import layers as L\nn = caffe.NetSpec()\nn.d = L.Input(shape=dict(dim=[1.5]))\nn.to_proto()\n",
     r"make_net.py:5: layer 'd' \(Input\).*dim\[0\]: 1.5 is not an integer"),
    ("import sys\nsys.exit(3)\n", r"make_net.py: exited with status 3"),
])
def test_script_errors_are_one_line(tmp_path, capsys, text, message):
    script = _script(tmp_path, text)
    status, _, err = _gen(capsys, script, "--root", tmp_path)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("protonet: error: "), err
    assert __import__("re").search(message, lines[0]), lines[0]


def test_missing_script_and_root(tmp_path, capsys):
    status, _, err = _gen(capsys, tmp_path / "nope.py")
    assert status == 2 and "nope.py: no such script" in err
    script = _script(tmp_path, "pass\n")
    status, _, err = _gen(capsys, script, "--root", tmp_path / "noroot")
    assert status == 2 and "noroot" in err


JOB_SCRIPT = """
    import os, stat, subprocess
    from caffe.model_libs import *
    check_if_exist({data!r})
    make_if_not_exist('jobs')
    job_file = 'jobs/job.sh'
    with open(job_file, 'w') as f:
        f.write('cd {{}}\\n'.format(os.getcwd()))
        f.write('echo ran > ran.txt\\n')
        f.write('./build/tools/caffe train \\\\\\n--solver="s.prototxt" \\\\\\n--gpu 0 2>&1 | tee jobs/job.log\\n')
    os.chmod(job_file, stat.S_IRWXU)
    subprocess.call(job_file, shell=True)
"""


def test_job_is_held_back_and_rewritten_to_protonet(tmp_path, capsys):
    (tmp_path / "present").write_text("")
    script = _script(tmp_path, JOB_SCRIPT.format(data="present"))
    status, _, err = _gen(capsys, script, "--root", tmp_path)
    assert status == 0, err
    assert not (tmp_path / "ran.txt").exists()
    assert "job not started: jobs/job.sh" in err
    job = (tmp_path / "jobs" / "job.sh").read_text()
    assert 'protonet train \\\n--solver="s.prototxt" \\\n--gpu 0 2>&1 | tee jobs/job.log' in job
    assert "build/tools/caffe" not in job
    assert os.access(tmp_path / "jobs" / "job.sh", os.X_OK)


def test_run_starts_the_job(tmp_path, capsys):
    (tmp_path / "present").write_text("")
    # A job whose Caffe command is cheap to run (`caffe gen --help`): the rewrite and --run are the point.
    script = _script(tmp_path, JOB_SCRIPT.format(data="present").replace(
        "./build/tools/caffe train \\\\\\n--solver=\"s.prototxt\" \\\\\\n--gpu 0", "./build/tools/caffe gen --help"))
    status, _, err = _gen(capsys, script, "--root", tmp_path, "--run")
    assert status == 0 and "starting jobs/job.sh" in err
    assert (tmp_path / "ran.txt").read_text() == "ran\n"
    # The job ran this installation's `protonet` (found through PATH) in place of Caffe's tool.
    assert "Usage: protonet gen" in (tmp_path / "jobs" / "job.log").read_text()


def test_run_refuses_while_inputs_are_missing(tmp_path, capsys):
    script = _script(tmp_path, JOB_SCRIPT.format(data="examples/VOC0712/VOC0712_trainval_lmdb"))
    status, _, err = _gen(capsys, script, "--root", tmp_path, "--run")
    assert status == 2
    assert "warning: examples/VOC0712/VOC0712_trainval_lmdb does not exist" in err
    assert "not starting the job, missing: examples/VOC0712/VOC0712_trainval_lmdb" in err
    assert not (tmp_path / "ran.txt").exists()


def test_example_runs_as_a_plain_python_script(tmp_path):
    """The examples need no gen: `python examples/ssd/ssd_pascal.py` from Caffe's root works too."""
    env = dict(os.environ, HOME=str(tmp_path))
    done = subprocess.run([sys.executable, str(REPO / "examples" / "ssd" / "ssd_pascal.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "examples/VOC0712/VOC0712_trainval_lmdb does not exist yet" in done.stderr
    job = tmp_path / "jobs" / "VGGNet" / "VOC0712" / "SSD_300x300" / "VGG_VOC0712_SSD_300x300.sh"
    assert job.read_text().splitlines()[:2] == [f"cd {tmp_path}", "protonet train \\"]
    for name in ("train", "test", "deploy", "solver"):
        assert (tmp_path / "models" / "VGGNet" / "VOC0712" / "SSD_300x300" / f"{name}.prototxt").is_file()
        assert (job.parent / f"{name}.prototxt").is_file()
    assert (job.parent / "ssd_pascal.py").is_file()


def test_example_job_resumes_from_the_latest_snapshot(tmp_path, capsys):
    snapshots = tmp_path / "models" / "VGGNet" / "VOC0712" / "SSD_300x300"
    snapshots.mkdir(parents=True)
    for it in (500, 12000, 3000):
        (snapshots / f"VGG_VOC0712_SSD_300x300_iter_{it}.solverstate").write_text("")
    status, _, err = _gen(capsys, REPO / "examples" / "ssd" / "ssd_pascal.py", "--root", tmp_path)
    assert status == 0, err
    job = (tmp_path / "jobs" / "VGGNet" / "VOC0712" / "SSD_300x300" / "VGG_VOC0712_SSD_300x300.sh").read_text()
    assert '--snapshot="models/VGGNet/VOC0712/SSD_300x300/VGG_VOC0712_SSD_300x300_iter_12000.solverstate"' in job
    assert "--weights" not in job


def test_run_starts_a_job_written_through_protonet_jobs(tmp_path, capsys):
    """protonet's examples write their job with protonet.spec.jobs and never launch it: --run does."""
    script = _script(tmp_path, """
        import os
        import caffe.model_libs as ml
        from protonet.spec import jobs

        assert ml.ConvBNLayer is not None
        jobs.write_job_script('jobs/job.sh', os.getcwd(), 's.prototxt', log_file='jobs/job.log', gpus='0')
        text = open('jobs/job.sh').read()
        assert text.splitlines()[1:] == ['protonet train \\\\', '--solver="s.prototxt" \\\\',
                                         '--gpu 0 2>&1 | tee jobs/job.log'], text
        # A cheap stand-in for the training command, so that the test sees the job run.
        with open('jobs/job.sh', 'w') as f:
            f.write('echo ran >> ran.txt\\n')
    """)
    status, _, err = _gen(capsys, script, "--root", tmp_path)
    assert status == 0, err
    assert "job not started: jobs/job.sh" in err and not (tmp_path / "ran.txt").exists()
    status, _, err = _gen(capsys, script, "--root", tmp_path, "--run")
    assert status == 0, err
    assert (tmp_path / "ran.txt").read_text() == "ran\n"  # started once


def test_other_commands_of_a_script_still_run(tmp_path, capsys):
    script = _script(tmp_path, """
        import subprocess
        out = subprocess.check_output(['echo', 'hello'])
        open('out.txt', 'wb').write(out)
    """)
    status, _, err = _gen(capsys, script, "--root", tmp_path)
    assert status == 0, err
    assert (tmp_path / "out.txt").read_bytes() == b"hello\n"
