"""`protonet gen` against the forks: protonet's own examples (examples/<family>/) write the
prototxts and job scripts that the ORIGINAL NetSpec scripts wrote under Caffe
(tests/fixtures/reference/<family>/<example>/). The original scripts themselves (third-party
code, not in this repository) run unchanged through `protonet gen` and are compared too when
PROTONET_FORK_SOURCES names checkouts of the forks (tests/fork_sources.py); without it those
tests skip. A Caffe-style script of our own (tests/fixtures/reference/caffe_style_script.py) runs in every
run.

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
from protonet.cli import cli, main

from fork_sources import fork_file

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "reference"
REF_ROOT, REF_HOME = "/opt/caffe", "/home/user"

# protonet's examples, one per fork script of the same name (examples/<family>/<name>.py in the
# fork: all of RefineDet's; of the SSD fork's, the four training scripts that define the nets).
SCRIPTS = {family: sorted(p.stem for p in (REPO / "examples" / family).glob("*.py"))
           for family in ("refinedet", "ssd")}
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
            if kind == "original":
                path = fork_file(family, f"examples/{family}/{script}.py")
            else:
                path = REPO / "examples" / family / f"{script}.py"
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
    fork_examples = fork_file("refinedet", "examples/refinedet/VGG16_VOC2007_320.py").parent
    assert sorted(p.stem for p in fork_examples.glob("*.py")) == SCRIPTS["refinedet"]
    for script in SCRIPTS["ssd"]:
        fork_file("ssd", f"examples/ssd/{script}.py")
    assert len(SCRIPTS["refinedet"]) == 12
    assert SCRIPTS["ssd"] == ["ssd_coco", "ssd_pascal", "ssd_pascal_resnet", "ssd_pascal_zf"]


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


# --- a Caffe user's own script (ours: tests/fixtures/reference/caffe_style_script.py) -----------

CAFFE_STYLE_SCRIPT = FIXTURES / "caffe_style_script.py"
CAFFE_STYLE_DIR = "models/VGGNet/shapes/SSD_96x96"
CAFFE_STYLE_JOB = "jobs/VGGNet/shapes/SSD_96x96/VGG_shapes_SSD_96x96.sh"


def _caffe_style_expected():
    """The nets and solver the script describes, built through protonet's API: name -> message."""
    from protonet import NetSpec, layers as L, params as P
    from protonet.spec.model_libs import ssd as libs
    from protonet.spec.net_spec import make_message

    name, classes, side = "VGG_shapes_SSD_96x96", 4, 96
    test_phase = dict(phase=caffe_pb2.TEST)

    def head(net):
        libs.VGGNetBody(net, from_layer="data", fully_conv=True, reduced=True, dilated=True, dropout=False)
        libs.ConvBNLayer(net, "fc7", "extra_1", False, True, 128, 1, 0, 1)
        libs.ConvBNLayer(net, "extra_1", "extra_2", False, True, 256, 3, 1, 2)
        return libs.CreateMultiBoxHead(
            net, data_layer="data", from_layers=["conv4_3", "fc7", "extra_2"], num_classes=classes,
            min_sizes=[14.4, 33.6, 57.6], max_sizes=[33.6, 57.6, 86.4], aspect_ratios=[[2], [2, 3], [2]],
            steps=[8, 16, 32], normalizations=[20, -1, -1], use_batchnorm=False,
            prior_variance=[0.1, 0.1, 0.2, 0.2], flip=True, clip=False, kernel_size=3, pad=1)

    def detect(net, loc, conf, priors):
        net.conf_reshape = L.Reshape(conf, shape=dict(dim=[0, -1, classes]))
        net.conf_softmax = L.Softmax(net.conf_reshape, axis=2)
        net.conf_flatten = L.Flatten(net.conf_softmax, axis=1)
        net.detection_out = L.DetectionOutput(
            loc, net.conf_flatten, priors, include=test_phase,
            detection_output_param=dict(num_classes=classes, background_label_id=0,
                                        nms_param=dict(nms_threshold=0.45, top_k=100), keep_top_k=50,
                                        confidence_threshold=0.05, code_type=P.PriorBox.CENTER_SIZE,
                                        share_location=True))

    def data(net, source, batch, train, interp, **extra):
        transform = dict(mean_value=[104, 117, 123],
                         resize_param=dict(prob=1, resize_mode=P.Resize.WARP, height=side, width=side,
                                           interp_mode=interp))
        if train:
            transform.update(mirror=True, emit_constraint=dict(emit_type=caffe_pb2.EmitConstraint.CENTER))
        net.data, net.label = libs.CreateAnnotatedDataLayer(
            source, batch_size=batch, train=train, output_label=True,
            label_map_file="data/shapes/labelmap_shapes.prototxt", transform_param=transform, **extra)

    crops = [dict(sampler=dict(min_scale=0.5, max_scale=1.0, min_aspect_ratio=0.75, max_aspect_ratio=1.5),
                  sample_constraint=dict(min_jaccard_overlap=overlap), max_trials=25, max_sample=1)
             for overlap in (0.3, 0.7)]
    train = NetSpec()
    data(train, "examples/shapes/shapes_trainval_lmdb", 8, True, [P.Resize.LINEAR, P.Resize.NEAREST],
         batch_sampler=[dict(sampler={}, max_trials=1, max_sample=1)] + crops)
    train.mbox_loss = L.MultiBoxLoss(
        *head(train), train.label, include=dict(phase=caffe_pb2.TRAIN), propagate_down=[True, True, False, False],
        loss_param=dict(normalization=P.Loss.VALID),
        multibox_loss_param=dict(loc_loss_type=P.MultiBoxLoss.SMOOTH_L1, conf_loss_type=P.MultiBoxLoss.SOFTMAX,
                                 loc_weight=1, num_classes=classes, share_location=True,
                                 match_type=P.MultiBoxLoss.PER_PREDICTION, overlap_threshold=0.5,
                                 use_prior_for_matching=True, background_label_id=0,
                                 mining_type=P.MultiBoxLoss.MAX_NEGATIVE, neg_pos_ratio=3, neg_overlap=0.5,
                                 code_type=P.PriorBox.CENTER_SIZE))
    test = NetSpec()
    data(test, "examples/shapes/shapes_test_lmdb", 4, False, [P.Resize.LINEAR])
    detect(test, *head(test))
    test.detection_eval = L.DetectionEvaluate(
        test.detection_out, test.label, include=test_phase,
        detection_evaluate_param=dict(num_classes=classes, background_label_id=0, overlap_threshold=0.5,
                                      evaluate_difficult_gt=False,
                                      name_size_file="data/shapes/test_name_size.txt"))
    deploy = NetSpec()
    deploy.data = L.Input(shape=dict(dim=[1, 3, side, side]))
    detect(deploy, *head(deploy))

    messages = {}
    for kind, net in (("train", train), ("test", test), ("deploy", deploy)):
        messages[kind] = net.to_proto()
        messages[kind].name = f"{name}_{kind}"
    messages["solver"] = make_message(
        caffe_pb2.SolverParameter, train_net=f"{CAFFE_STYLE_DIR}/train.prototxt",
        test_net=[f"{CAFFE_STYLE_DIR}/test.prototxt"], test_iter=[50], test_interval=1000, base_lr=0.001,
        display=20, max_iter=8000, lr_policy="multistep", gamma=0.1, momentum=0.9, weight_decay=0.0005,
        snapshot=2000, snapshot_prefix=f"{CAFFE_STYLE_DIR}/{name}", solver_mode=P.Solver.GPU, device_id=0,
        test_initialization=False, average_loss=20, stepvalue=[4000, 6000], iter_size=2, type="SGD",
        eval_type="detection", ap_version="11point")
    return messages


def _gen_script(capsys, script, root):
    """`protonet gen SCRIPT --root ROOT` as the command line runs it: (exit status, stderr)."""
    try:
        status = main(["gen", str(script), "--root", str(root)])
    except SystemExit as exc:
        status = exc.code
    return status or 0, capsys.readouterr().err


def test_caffe_style_script_runs_unchanged(tmp_path, capsys):
    """A script written for pycaffe (`import caffe`, model_libs' helpers, caffe_pb2.SolverParameter(**...)
    with float iter_size, a job calling ./build/tools/caffe) writes under `protonet gen` exactly the
    nets protonet's API builds, and a job that trains with protonet."""
    status, output = _gen_script(capsys, CAFFE_STYLE_SCRIPT, tmp_path)
    assert status == 0, output
    assert f"job not started: {CAFFE_STYLE_JOB}" in output
    written = Output(tmp_path, "/nonexistent-home", tmp_path / CAFFE_STYLE_DIR, tmp_path / CAFFE_STYLE_JOB)
    expected = _caffe_style_expected()
    for name in NET_FILES:
        ours, theirs = written.message(name), expected[name]
        assert [layer.name for layer in ours.layer] == [layer.name for layer in theirs.layer], name
        for a, b in zip(ours.layer, theirs.layer):
            assert a == b, f"{name}: layer {a.name} differs:\n{a}\nvs\n{b}"
        assert ours == theirs, name
    assert written.message("solver") == expected["solver"]

    # Concrete facts, independent of the builder above.
    solver = written.message("solver")
    assert solver.iter_size == 2 and list(solver.test_iter) == [50]
    train, deploy = written.message("train"), written.message("deploy")
    assert [train.layer[0].type, train.layer[-1].type] == ["AnnotatedData", "MultiBoxLoss"]
    assert list(train.layer[-1].bottom) == ["mbox_loc", "mbox_conf", "mbox_priorbox", "label"]
    assert len(train.layer[0].annotated_data_param.batch_sampler) == 3
    assert [layer.type for layer in deploy.layer[-4:]] == ["Reshape", "Softmax", "Flatten", "DetectionOutput"]
    assert list(deploy.layer[0].input_param.shape[0].dim) == [1, 3, 96, 96]
    root, tool, args = _job_command(written.job_file)
    assert root == str(tmp_path) and tool == ["protonet", "train"]
    assert args[:2] == [f"--solver={CAFFE_STYLE_DIR}/solver.prototxt",
                        "--weights=models/VGGNet/VGG_ILSVRC_16_layers_fc_reduced.caffemodel"]
    assert os.access(written.job_file, os.X_OK)

    # The deploy net is a net protonet builds: priors on 12x12 (4 per cell), 6x6 (6) and 3x3 (4) maps.
    from protonet.net import Net
    net = Net(tmp_path / CAFFE_STYLE_DIR / "deploy.prototxt", phase="TEST")
    priors = 12 * 12 * 4 + 6 * 6 * 6 + 3 * 3 * 4
    assert net.blob_shapes["mbox_priorbox"] == (1, 2, priors * 4)
    assert net.blob_shapes["conf_flatten"] == (1, priors * 4)


def test_caffe_style_script_with_a_fractional_int_field_fails_naming_it(tmp_path, capsys):
    """accum_batch_size 12 over batch_size 8: iter_size 1.5 is an error at the script's line."""
    text = CAFFE_STYLE_SCRIPT.read_text()
    assert "\naccum_batch_size = 16\n" in text
    script = tmp_path / "script.py"
    script.write_text(text.replace("\naccum_batch_size = 16\n", "\naccum_batch_size = 12\n"))
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "SolverParameter(**" in row)
    status, output = _gen_script(capsys, script, tmp_path)
    assert status == 2
    assert output.strip() == f"protonet: error: {script}:{line}: SolverParameter.iter_size: 1.5 is not an integer"
