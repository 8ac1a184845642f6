"""`protonet inspect` and `protonet upgrade` through the real command line, errors included."""
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import text_format

from protonet import caffe_pb2
from protonet.io import caffemodel_arrays, read_caffemodel, read_prototxt, write_caffemodel, write_prototxt


def protonet(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "protonet", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def assert_user_error(result, start, *contains):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("protonet: error: " + start), lines[0]
    for text in contains:
        assert text in lines[0]


def test_inspect_net_prototxt(fixtures):
    result = protonet("inspect", fixtures / "io" / "refinedet_vgg16_320_test.prototxt")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "net VOC0712_refinedet_vgg16_320x320_test, 137 layers" in lines[0]
    assert lines[1].split() == ["data", "AnnotatedData", "-", "->", "data,", "label", "[TEST]"]
    detection = next(line for line in lines if line.split()[0] == "detection_out")
    assert detection.split()[1:] == ["DetectionOutput", "odm_loc,", "odm_conf_flatten,", "arm_priorbox,",
                                     "arm_conf_flatten,", "arm_loc", "->", "detection_out", "[TEST]"]


def test_inspect_caffemodel_lists_blob_shapes(fixtures):
    result = protonet("inspect", fixtures / "io" / "tiny_ssd.caffemodel")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    params = np.load(fixtures / "io" / "tiny_ssd_params.npz")
    total = sum(params[k].size for k in params.files)
    assert f"39 layers, 12 with blobs, {total} parameters" in result.stdout.splitlines()[0]
    assert rows["conv1"][1:5] == ["Convolution", "[8,3,3,3]", "[8]", "data_input_0_split_0"]
    assert rows["conv2_bn"][1:5] == ["BatchNorm", "[16]", "[16]", "[1]"]
    assert rows["relu1"][1:3] == ["ReLU", "-"]


def test_inspect_solver_labelmap_solverstate(fixtures):
    solver = protonet("inspect", fixtures / "io" / "ssd_pascal_solver.prototxt")
    assert solver.returncode == 0 and "solver (SGD)" in solver.stdout and 'lr_policy: "multistep"' in solver.stdout
    labels = protonet("inspect", fixtures / "io" / "labelmap.prototxt")
    assert labels.returncode == 0 and "label map, 6 items" in labels.stdout
    assert labels.stdout.splitlines()[3].split() == ["1", "car", "car"]
    state = protonet("inspect", fixtures / "io" / "adam_iter_5.solverstate")
    assert state.returncode == 0
    assert "solverstate, iter 5, current_step 0" in state.stdout and "20 history blobs" in state.stdout


def _v1_text():
    return """name: "v1"
input: "data"
input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
         weight_decay: 1 weight_decay: 0 convolution_param { num_output: 2 kernel_size: 1 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
"""


def test_upgrade_text_stays_text(tmp_path):
    (tmp_path / "old.prototxt").write_text(_v1_text())
    result = protonet("upgrade", tmp_path / "old.prototxt", tmp_path / "new.prototxt")
    assert result.returncode == 0, result.stderr
    assert "upgraded V1 layers -> layer" in result.stdout
    text = (tmp_path / "new.prototxt").read_text()
    net = read_prototxt(tmp_path / "new.prototxt", caffe_pb2.NetParameter)  # a text file
    assert "layers" not in text
    assert [(l.name, l.type) for l in net.layer] == [("conv", "Convolution"), ("relu", "ReLU")]
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(1, 1), (2, 0)]
    assert list(net.input_dim) == [1, 3, 4, 4]  # input_dim kept by default
    result = protonet("upgrade", "--input-layer", tmp_path / "old.prototxt", tmp_path / "caffe.prototxt")
    assert result.returncode == 0, result.stderr
    net = read_prototxt(tmp_path / "caffe.prototxt", caffe_pb2.NetParameter)
    assert net.layer[0].type == "Input" and list(net.layer[0].input_param.shape[0].dim) == [1, 3, 4, 4]
    assert not len(net.input_dim)


def test_upgrade_binary_stays_binary(tmp_path):
    net = text_format.Parse(_v1_text(), caffe_pb2.NetParameter())
    weights = np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1)
    from protonet.io import array_to_blob

    net.layers[0].blobs.add().CopyFrom(array_to_blob(weights))
    net.layers[0].blobs.add().CopyFrom(array_to_blob(np.array([0.5, -1], np.float32)))
    write_caffemodel(net, tmp_path / "old.caffemodel")
    result = protonet("upgrade", tmp_path / "old.caffemodel", tmp_path / "new.caffemodel")
    assert result.returncode == 0, result.stderr
    raw = caffe_pb2.NetParameter()
    raw.ParseFromString((tmp_path / "new.caffemodel").read_bytes())  # binary, already upgraded on disk
    assert len(raw.layers) == 0 and [l.type for l in raw.layer] == ["Convolution", "ReLU"]
    arrays = caffemodel_arrays(read_caffemodel(tmp_path / "new.caffemodel"))
    np.testing.assert_array_equal(arrays["conv"][0], weights)
    np.testing.assert_array_equal(arrays["conv"][1], [0.5, -1])


def test_upgrade_of_current_solver_and_old_solver(tmp_path):
    (tmp_path / "old.prototxt").write_text('net: "train.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\n')
    result = protonet("upgrade", tmp_path / "old.prototxt", tmp_path / "new.prototxt")
    assert result.returncode == 0, result.stderr
    solver = read_prototxt(tmp_path / "new.prototxt", caffe_pb2.SolverParameter)
    assert solver.type == "Nesterov" and not solver.HasField("solver_type")
    again = protonet("upgrade", tmp_path / "new.prototxt", tmp_path / "same.prototxt")
    assert again.returncode == 0 and "already in the latest format" in again.stdout


def test_upgrade_reports_parameters_without_a_place(tmp_path):
    (tmp_path / "v0.prototxt").write_text(
        'layers { layer { name: "r" type: "relu" kernelsize: 3 } bottom: "x" top: "r" }\ninput: "x"\n')
    result = protonet("upgrade", tmp_path / "v0.prototxt", tmp_path / "new.prototxt")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "protonet: warning: " in result.stderr
    assert "unknown parameter kernelsize for layer type relu" in result.stderr
    assert read_prototxt(tmp_path / "new.prototxt", caffe_pb2.NetParameter).layer[0].type == "ReLU"


@pytest.mark.parametrize("text, where, what", [
    ('layer {\n  name: "a"\n  foo: 1\n}\n', ":3:3: ", ['no field named "foo"', "caffe.LayerParameter"]),
    ('name: "n"\nlayer {\n  name: "a"\n  type: "ReLU"\n', ":4:9: ", ['Expected "}"']),
    ('layer { name: "a" convolution_param { num_output: x } }\n', ":1:51: ", ["Couldn't parse integer"]),
])
def test_malformed_net_prototxt_is_one_line_exit_2(tmp_path, text, where, what):
    path = tmp_path / "bad.prototxt"
    path.write_text(text)
    # `upgrade` reads through the same loader; one case checks it too and that nothing is written
    commands = [("inspect", path)] if ":3:3: " not in where else [("upgrade", path, tmp_path / "out.prototxt")]
    for command in commands:
        assert_user_error(protonet(*command), str(path) + where, *what)
    assert not (tmp_path / "out.prototxt").exists()


def test_malformed_solver_is_one_line_exit_2(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "train.prototxt"\nbase_lr: 0.01\nlr_polcy: "fixed"\n')
    assert_user_error(protonet("inspect", path), f"{path}:3:1: ", 'no field named "lr_polcy"',
                      "caffe.SolverParameter")
    path.write_text('net: "train.prototxt"\nbase_lr 0.01\n')
    assert_user_error(protonet("inspect", path), f"{path}:2:9: ", 'Expected ":"')


def test_missing_file_and_wrong_kind(tmp_path, fixtures):
    missing = tmp_path / "none.caffemodel"
    assert_user_error(protonet("inspect", missing), f"{missing}: no such file")
    assert_user_error(protonet("upgrade", missing, tmp_path / "x"), f"{missing}: no such file")
    assert_user_error(protonet("inspect", tmp_path), f"{tmp_path}: is a directory")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\xff\xfe\x00\x01 not a proto")
    assert_user_error(protonet("inspect", junk), f"{junk}: neither a text prototxt nor a binary")
    labelmap = fixtures / "io" / "labelmap.prototxt"
    assert_user_error(protonet("upgrade", labelmap, tmp_path / "x"), f"{labelmap}: a labelmap file has no older")


def test_inspect_shapes_of_a_deploy_net(fixtures):
    result = protonet("inspect", "--shapes", fixtures / "io" / "tiny_ssd_deploy.prototxt")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
    assert rows["input"][1:3] == ["Input", "[1,3,300,300]"]
    assert rows["conv1"][1:3] == ["Convolution", "[1,8,150,150]"]
    assert rows["conv3"][2] == "[1,16,38,38]"
    assert rows["detection_out"][1:3] == ["DetectionOutput", "[1,1,1,7]"]
    labels = fixtures / "io" / "labelmap.prototxt"
    assert_user_error(protonet("inspect", "--shapes", labels), f"{labels}: --shapes needs a net prototxt")
