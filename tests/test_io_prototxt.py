"""Text files: round trips on the reference prototxts, upgrading readers, errors naming FILE:LINE:COL."""
import pytest
from google.protobuf import text_format

from protonet import caffe_pb2
from protonet.errors import ProtonetError, PrototxtError
from protonet.io import (
    parse_prototxt,
    read_net_prototxt,
    read_prototxt,
    read_solver_prototxt,
    write_prototxt,
)

NETS = ["ssd_pascal_train.prototxt", "MobileNetSSD_deploy.prototxt", "refinedet_vgg16_320_test.prototxt",
        "tiny_ssd_deploy.prototxt"]


@pytest.mark.parametrize("name", NETS)
def test_net_text_round_trip_is_identity(fixtures, tmp_path, name):
    path = fixtures / "io" / name
    first = read_prototxt(path, caffe_pb2.NetParameter)
    assert len(first.layer) > 5
    again = parse_prototxt(text_format.MessageToString(first), caffe_pb2.NetParameter())
    assert again == first
    write_prototxt(first, tmp_path / "out.prototxt")
    third = read_prototxt(tmp_path / "out.prototxt", caffe_pb2.NetParameter)
    assert third == first
    # and the text itself is stable from the second pass on
    assert text_format.MessageToString(third) == text_format.MessageToString(first)


def test_solver_text_round_trip_is_identity(fixtures, tmp_path):
    solver = read_solver_prototxt(fixtures / "io" / "ssd_pascal_solver.prototxt")
    assert solver.type == "SGD" and solver.lr_policy == "multistep"
    assert list(solver.stepvalue) == [80000, 100000, 120000]
    write_prototxt(solver, tmp_path / "solver.prototxt")
    assert read_solver_prototxt(tmp_path / "solver.prototxt") == solver


def test_read_net_prototxt_leaves_current_files_alone(fixtures):
    path = fixtures / "io" / "ssd_pascal_train.prototxt"
    assert read_net_prototxt(path) == read_prototxt(path, caffe_pb2.NetParameter)


def test_read_net_prototxt_keeps_input_fields(fixtures):
    net = read_net_prototxt(fixtures / "io" / "MobileNetSSD_deploy.prototxt")
    assert list(net.input) == ["data"]
    assert list(net.input_shape[0].dim) == [1, 3, 300, 300]
    assert net.layer[0].type == "Convolution"


def test_read_net_prototxt_can_make_caffes_input_layer(tmp_path):
    path = tmp_path / "deploy.prototxt"
    path.write_text('name: "n"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 9\n'
                    'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    kept = read_net_prototxt(path)
    assert list(kept.input_dim) == [1, 3, 8, 9] and len(kept.layer) == 1
    net = read_net_prototxt(path, input_fields_to_layer=True)
    assert len(net.input) == 0 and len(net.input_dim) == 0
    assert [(l.name, l.type, list(l.top)) for l in net.layer] == [("input", "Input", ["data"]), ("r", "ReLU", ["r"])]
    assert list(net.layer[0].input_param.shape[0].dim) == [1, 3, 8, 9]


def test_solver_type_enum_is_upgraded(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('net: "train.prototxt"\nbase_lr: 0.01\nsolver_type: ADAM\n')
    solver = read_solver_prototxt(path)
    assert solver.type == "Adam" and not solver.HasField("solver_type")
    for enum_name, type_name in [("SGD", "SGD"), ("NESTEROV", "Nesterov"), ("ADAGRAD", "AdaGrad"),
                                 ("RMSPROP", "RMSProp"), ("ADADELTA", "AdaDelta")]:
        path.write_text(f"solver_type: {enum_name}\n")
        assert read_solver_prototxt(path).type == type_name


def test_solver_type_and_type_together_is_an_error(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text('type: "SGD"\nsolver_type: NESTEROV\n')
    with pytest.raises(ProtonetError, match="solver_type"):
        read_solver_prototxt(path)


@pytest.mark.parametrize("text, where, what", [
    ('layer {\n  name: "a"\n  foo: 1\n}\n', "3:3", 'Message type "caffe.LayerParameter" has no field named "foo"'),
    ('layer {\n  name: "a"\n', "2:9", 'Expected "}"'),
    ('layer {\n  name: "a"\n  type: 3\n}\n', "3:9", "Expected string"),
    ('layer {\n  pooling_param { pool: MOX }\n}\n', "2:25", "has no value named MOX"),
])
def test_parse_errors_name_file_line_col(tmp_path, text, where, what):
    path = tmp_path / "bad.prototxt"
    path.write_text(text)
    with pytest.raises(PrototxtError) as info:
        read_net_prototxt(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{where}: ")
    assert what in message
    assert "\n" not in message


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ProtonetError, match="nowhere.prototxt: no such file"):
        read_net_prototxt(tmp_path / "nowhere.prototxt")


def test_binary_file_as_text_is_an_error(fixtures):
    with pytest.raises(PrototxtError, match="tiny_ssd.caffemodel:1:1: not a text file"):
        read_net_prototxt(fixtures / "io" / "tiny_ssd.caffemodel")


@pytest.mark.parametrize("name", ["ssd_pascal_train.prototxt", "refinedet_vgg16_320_test.prototxt",
                                  "ssd_pascal_solver.prototxt"])
def test_written_text_is_the_text_the_caffe_scripts_wrote(fixtures, tmp_path, name):
    from protonet.io import format_prototxt

    path = fixtures / "io" / name
    cls = caffe_pb2.SolverParameter if "solver" in name else caffe_pb2.NetParameter
    message = read_prototxt(path, cls)
    assert format_prototxt(message).rstrip("\n") == path.read_text().rstrip("\n")
    write_prototxt(message, tmp_path / "out.prototxt")
    assert (tmp_path / "out.prototxt").read_text() == format_prototxt(message)


def test_comments_in_another_encoding_parse_as_in_caffe(tmp_path):
    path = tmp_path / "gbk.prototxt"
    path.write_bytes('name: "n"  # 网络\nlayer { name: "a" type: "ReLU" }  # 激活\n'.encode("gbk"))
    assert read_net_prototxt(path).layer[0].name == "a"
    path.write_bytes('name: "网络"\n'.encode("gbk"))
    with pytest.raises(PrototxtError, match=r"gbk.prototxt:1:7: a string value that is not UTF-8"):
        read_net_prototxt(path)
