"""Run a NetSpec script the way Caffe users ran theirs, from Caffe's root.

The script runs with the current directory set to `--root` (Caffe's root; default: here),
so its relative paths (`models/...`, `jobs/...`, `data/...`, `examples/...`) land where they
did under Caffe. Caffe's own scripts run unchanged: `import caffe`, `from caffe import layers
as L, params as P`, `from caffe.proto import caffe_pb2` and `from caffe.model_libs import *`
resolve to protonet (RefineDet's model_libs when the script calls CreateRefineDetHead, the SSD
fork's otherwise; `--flavor` decides), and Python 2's `xrange` is there.

What gen changes about running a script:
* Jobs are not started by the script. A script that launches a file it wrote (`run_soon = True`:
  `subprocess.call(job_file, shell=True)`) has that launch held back; `--run` starts it (and the
  job scripts protonet's examples write) once the script has finished. Other commands run.
* A job script that the script writes with Caffe's `./build/tools/caffe train ...` is rewritten
  to `protonet train ...` (same flags), so the job trains with protonet.
* Missing data or weights (a `check_if_exist` that fails, or protonet's examples'
  `jobs.check_inputs`) are warnings: the prototxts are still written, so nets can be generated
  on a machine without the data. `--run` refuses to start a job while inputs are missing.
"""
import builtins
import os
import re
import shlex
import subprocess
import sys
import traceback

from protonet.compat import caffe_modules
from protonet.errors import ProtonetError
from protonet.io.atomic import atomic_write
from protonet.spec import jobs
from protonet.spec.session import GenSession

_CAFFE_TOOL = re.compile(r"^(\s*)(?:\S*/)?build/tools/caffe(?:\.bin)?(?=\s)", re.MULTILINE)
_CALLS_REFINEDET_HEAD = re.compile(r"\bCreateRefineDetHead\s*\(")


def detect_flavor(source):
    """The model_libs flavour a script needs: RefineDet's when it calls CreateRefineDetHead."""
    return "refinedet" if _CALLS_REFINEDET_HEAD.search(source) else "ssd"


class _HeldLaunches:
    """Stands in for subprocess.call & co. while a script runs: a command that starts a file the
    script wrote (its job script) is noted in the session instead of run; any other command runs
    as usual."""

    def __init__(self, session):
        self._session = session
        self.real = {"call": subprocess.call, "check_call": subprocess.check_call, "run": subprocess.run,
                     "Popen": subprocess.Popen, "system": os.system}

    def _is_job(self, command):
        if isinstance(command, (str, bytes, os.PathLike)):
            try:
                words = shlex.split(os.fsdecode(command))
            except ValueError:
                words = os.fsdecode(command).split()
        else:
            words = [os.fsdecode(word) for word in command]
        return bool(words) and self._session.wrote(words[0])

    def _hold(self, command):
        if not self._is_job(command):
            return False
        self._session.note_launch(os.fsdecode(command) if isinstance(command, (str, bytes, os.PathLike))
                                  else " ".join(map(os.fsdecode, command)))
        return True

    @staticmethod
    def _command(args, kwargs):
        return args[0] if args else kwargs.get("args")

    def call(self, *args, **kwargs):
        return 0 if self._hold(self._command(args, kwargs)) else self.real["call"](*args, **kwargs)

    def check_call(self, *args, **kwargs):
        return 0 if self._hold(self._command(args, kwargs)) else self.real["check_call"](*args, **kwargs)

    def run(self, *args, **kwargs):
        command = self._command(args, kwargs)
        if self._hold(command):
            return subprocess.CompletedProcess(command, 0, b"", b"")
        return self.real["run"](*args, **kwargs)

    def popen(self, *args, **kwargs):
        if self._hold(self._command(args, kwargs)):
            return self.real["Popen"](["true"])  # a process with nothing to do: wait()/communicate() work
        return self.real["Popen"](*args, **kwargs)

    def system(self, command):
        return 0 if self._hold(command) else self.real["system"](command)

    def install(self):
        subprocess.call, subprocess.check_call, subprocess.run = self.call, self.check_call, self.run
        subprocess.Popen, os.system = self.popen, self.system

    def uninstall(self):
        subprocess.call, subprocess.check_call = self.real["call"], self.real["check_call"]
        subprocess.run, subprocess.Popen, os.system = self.real["run"], self.real["Popen"], self.real["system"]


class _WriteRecorder:
    """`open` for the script: the builtin one, noting in the session every path opened for writing."""

    def __init__(self, session):
        self._session = session

    def __call__(self, file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(flag in mode for flag in "wax+"):
            self._session.note_written(file)
        return builtins.open(file, mode, *args, **kwargs)


def _script_error(script, exc):
    """One line naming the script line where an exception left the script's own code."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.abspath(f.filename) == script]
    where = f"{script}:{frames[-1].lineno}" if frames else script
    message = str(exc) if isinstance(exc, ProtonetError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, KeyError) and exc.args:
        message = f"KeyError: {exc.args[0]}"
    return ProtonetError(f"{where}: {message}")


def _rewrite_caffe_jobs(paths, echo):
    """Job scripts that call Caffe's tool call `protonet` instead (same subcommand and flags)."""
    rewritten = []
    for path in paths:
        if not path.endswith(".sh") or not os.path.isfile(path):
            continue
        with open(path) as fh:
            text = fh.read()
        new_text = _CAFFE_TOOL.sub(r"\1protonet", text)
        if new_text != text:
            mode = os.stat(path).st_mode
            atomic_write(path, new_text)
            os.chmod(path, mode)
            rewritten.append(path)
            echo(f"protonet gen: {path}: calls `protonet` in place of Caffe's build/tools/caffe")
    return rewritten


def _compile(script, flavor):
    """(code, flavour) of the script at absolute path `script`; a syntax error names its line."""
    with builtins.open(script, encoding="utf-8") as fh:
        source = fh.read()
    try:
        code = compile(source, script, "exec")
    except SyntaxError as exc:
        hint = " (a Python 2 print statement? protonet runs scripts as Python 3)" if "print" in (exc.text or "") else ""
        raise ProtonetError(f"{script}:{exc.lineno}:{exc.offset or 0}: {exc.msg}{hint}") from None
    return code, flavor or detect_flavor(source)


def _execute(code, session):
    """Run the compiled script as __main__ from session.root, noting into `session`."""
    script = session.script
    held = _HeldLaunches(session)
    namespace = {"__name__": "__main__", "__file__": script, "__builtins__": builtins,
                 "open": _WriteRecorder(session), "xrange": range}
    saved_cwd, saved_path, saved_argv = os.getcwd(), list(sys.path), list(sys.argv)
    try:
        with caffe_modules(session.flavor, session), jobs.recording(session):
            os.chdir(session.root)
            sys.argv = [script]
            sys.path.insert(0, os.path.dirname(script))
            held.install()
            try:
                exec(code, namespace)
            except SystemExit as exc:
                if exc.code not in (None, 0):
                    raise ProtonetError(f"{script}: exited with status {exc.code}") from None
            except Exception as exc:  # the user's script: report where it failed, in one line
                raise _script_error(script, exc) from exc
    finally:
        held.uninstall()
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        sys.argv[:] = saved_argv


def run_script(script, root=None, flavor=None, echo=None):
    """Run a NetSpec script from `root` (default: the current directory).

    Returns its GenSession: flavor, root, written (absolute paths the script wrote), launches
    (commands held back), job_scripts (written through protonet.spec.jobs), missing (input paths
    that do not exist)."""
    echo = echo or (lambda line: print(line, file=sys.stderr))
    script = os.path.abspath(script)
    root = os.path.abspath(root or os.getcwd())
    if not os.path.isfile(script):
        raise ProtonetError(f"{script}: no such script")
    if not os.path.isdir(root):
        raise ProtonetError(f"{root}: root is not a directory")
    code, flavor = _compile(script, flavor)
    session = GenSession(script=script, root=root, flavor=flavor)
    _execute(code, session)
    _rewrite_caffe_jobs(session.written, echo)
    return session
