"""`protonet gen` against the forks: the prototxts and job scripts that the ORIGINAL NetSpec
scripts wrote under Caffe (tests/fixtures/reference/<family>/<example>/), the originals run
unchanged through `protonet gen`, and protonet's own examples (examples/<family>/).

Messages are compared parsed, after putting placeholders for the two things that differ
between machines: Caffe's root (the reference ran in /opt/caffe) and $HOME (/home/user).
"""
import os
import pathlib
import shlex

import pytest
from click.testing import CliRunner
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf import text_format

from protonet import caffe_pb2
from protonet.cli import cli

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "reference"
REF_ROOT, REF_HOME = "/opt/caffe", "/home/user"

SCRIPTS = {
    "refinedet": sorted(p.stem for p in (FIXTURES / "originals" / "refinedet").glob("*.py")),
    "ssd": sorted(p.stem for p in (FIXTURES / "originals" / "ssd").glob("*.py")),
}
REFERENCES = [(family, p.name) for family in ("refinedet", "ssd")
              for p in sorted((FIXTURES / family).iterdir()) if p.is_dir()]
NET_FILES = ("train", "test", "deploy")


def _replace_strings(message, replacements):
    """Put placeholders for machine-specific path prefixes in every string field, recursively."""
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            for sub in values:
                _replace_strings(sub, replacements)
        elif field.type == FieldDescriptor.TYPE_STRING:
            fixed = []
            for text in values:
                for prefix, placeholder in replacements:
                    if text == prefix or text.startswith(prefix + "/"):
                        text = placeholder + text[len(prefix):]
                fixed.append(text)
            if field.is_repeated:
                del value[:]
                value.extend(fixed)
            else:
                setattr(message, field.name, fixed[0])
    return message


def _read(path, cls, replacements):
    message = cls()
    text_format.Merge(pathlib.Path(path).read_text(), message)
    return _replace_strings(message, replacements)


def _job_command(path):
    """(root, tool words, remaining words) of a job script `cd ROOT` + one command line."""
    lines = pathlib.Path(path).read_text().replace("\\\n", " ").splitlines()
    assert lines[0].startswith("cd "), lines
    words = shlex.split(lines[1])
    return lines[0][3:].strip(), words[:2], words[2:]


class Output:
    """Where one generated (or reference) example's files are; parsed messages are cached."""

    def __init__(self, root, home, save_dir, job_file):
        self.root, self.home = str(root), str(home)
        self.save_dir, self.job_file = pathlib.Path(save_dir), pathlib.Path(job_file)
        self.replacements = [(self.root, "<ROOT>"), (self.home, "<HOME>")]
        self._messages = {}

    def message(self, name):
        if name not in self._messages:
            cls = caffe_pb2.SolverParameter if name == "solver" else caffe_pb2.NetParameter
            self._messages[name] = _read(self.save_dir / f"{name}.prototxt", cls, self.replacements)
        return self._messages[name]

    def text(self, name):
        """The file's text with placeholders for root and $HOME (for a quick exact comparison)."""
        text = (self.save_dir / f"{name}.prototxt").read_text()
        for prefix, placeholder in self.replacements:
            text = text.replace(prefix, placeholder)
        return text.rstrip("\n")


def _reference(family, example):
    if (family, example) not in _references:
        ref = FIXTURES / family / example
        (job_file,) = ref.glob("*.sh")
        _references[family, example] = Output(REF_ROOT, REF_HOME, ref, job_file)
    return _references[family, example]


_cache = {}
_references = {}


@pytest.fixture(scope="module")
def generate(tmp_path_factory):
    """generate(kind, family, script) -> Output: runs `protonet gen` once per script, with
    kind "original" (the fork's script, unchanged) or "example" (protonet's version)."""

    def run(kind, family, script):
        key = (kind, family, script)
        if key not in _cache:
            base = tmp_path_factory.mktemp(f"{kind}-{family}-{script}")
            root, home = base / "root", base / "home"
            root.mkdir()
            home.mkdir()
            path = (FIXTURES / "originals" / family if kind == "original" else REPO / "examples" / family) / f"{script}.py"
            saved_home = os.environ.get("HOME")
            os.environ["HOME"] = str(home)
            try:
                result = CliRunner().invoke(cli, ["gen", str(path), "--root", str(root)])
            finally:
                os.environ["HOME"] = saved_home
            assert result.exit_code == 0, (result.output, result.exception)
            (solver,) = root.glob("models/**/solver.prototxt")
            (job_file,) = root.glob("jobs/**/*.sh")
            _cache[key] = Output(root, home, solver.parent, job_file)
        return _cache[key]

    return run


def _assert_same_messages(ours, theirs):
    for name in NET_FILES + ("solver",):
        if ours.text(name) == theirs.text(name):
            continue  # the same text is the same message; parsing (slow in Python) only to explain a difference
        a, b = ours.message(name), theirs.message(name)
        if name != "solver":
            assert [layer.name for layer in a.layer] == [layer.name for layer in b.layer], name
            for la, lb in zip(a.layer, b.layer):
                assert la == lb, f"{name}: layer {la.name} differs:\n{la}\nvs\n{lb}"
        assert a == b, f"{name}.prototxt differs"


def _assert_same_job(ours, theirs):
    root, tool, args = _job_command(ours.job_file)
    their_root, their_tool, their_args = _job_command(theirs.job_file)
    assert root == ours.root and their_root == theirs.root
    assert tool == ["protonet", "train"]
    assert their_tool in (["./build/tools/caffe", "train"], ["protonet", "train"])
    assert args == their_args
    assert ours.job_file.name == theirs.job_file.name
    assert os.access(ours.job_file, os.X_OK)


@pytest.mark.parametrize("family,example", REFERENCES)
def test_example_matches_reference(generate, family, example):
    ours = generate("example", family, example)
    reference = _reference(family, example)
    _assert_same_messages(ours, reference)
    _assert_same_job(ours, reference)


@pytest.mark.parametrize("family,example", REFERENCES)
def test_unchanged_original_matches_reference(generate, family, example):
    original = generate("original", family, example)
    reference = _reference(family, example)
    # The example's output equals the reference (test above); the original's text equal to the
    # example's then settles it without parsing the large files again.
    example_output = generate("example", family, example)
    if any(original.text(name) != example_output.text(name) for name in NET_FILES + ("solver",)):
        _assert_same_messages(original, reference)
    _assert_same_job(original, reference)


@pytest.mark.parametrize("family,script", [(f, s) for f in SCRIPTS for s in SCRIPTS[f]])
def test_example_matches_original(generate, family, script):
    """Every example, reference or not, writes what the fork's own script writes."""
    ours = generate("example", family, script)
    original = generate("original", family, script)
    assert ours.save_dir.relative_to(ours.root) == original.save_dir.relative_to(original.root)
    assert ours.job_file.relative_to(ours.root) == original.job_file.relative_to(original.root)
    _assert_same_messages(ours, original)
    _assert_same_job(ours, original)


def test_every_fork_example_has_a_protonet_version():
    for family, scripts in SCRIPTS.items():
        for script in scripts:
            assert (REPO / "examples" / family / f"{script}.py").is_file(), (family, script)
    assert len(SCRIPTS["refinedet"]) == 12 and len(SCRIPTS["ssd"]) == 4


def test_comparison_parses_when_texts_differ(tmp_path):
    """The checker itself: a file formatted differently but holding the same messages passes,
    one changed value fails."""
    reference = _reference("refinedet", "VGG16_VOC2007_320")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in NET_FILES + ("solver",):
        # Python's formatter writes floats as `104.0` where Caffe wrote `104`.
        (copy / f"{name}.prototxt").write_text(text_format.MessageToString(reference.message(name)))
    same = Output("/elsewhere", "/home/other", copy, reference.job_file)
    assert same.text("train") != reference.text("train")
    _assert_same_messages(same, reference)

    changed = reference.message("test")
    changed = type(changed).FromString(changed.SerializeToString())
    changed.layer[1].convolution_param.num_output += 1
    (copy / "test.prototxt").write_text(text_format.MessageToString(changed))
    with pytest.raises(AssertionError, match="conv1_1"):
        _assert_same_messages(Output("/elsewhere", "/home/other", copy, reference.job_file), reference)
