"""The schema: caffe_pb2 is generated from proto/caffe.proto and not stale."""
import ast
import pathlib
import subprocess
import sys

import pytest

from protonet import caffe_pb2

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _serialized_descriptor(py_source):
    """The descriptor bytes that generated code hands to AddSerializedFile."""
    for node in ast.walk(ast.parse(py_source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return node.args[0].value
    raise AssertionError("no AddSerializedFile call in generated code")


def test_caffe_pb2_matches_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(ROOT / "proto"),
                    f"--python_out={tmp_path}", str(ROOT / "proto" / "caffe.proto")], check=True)
    fresh = _serialized_descriptor((tmp_path / "caffe_pb2.py").read_text())
    committed = _serialized_descriptor((ROOT / "protonet" / "caffe_pb2.py").read_text())
    assert fresh == committed, "protonet/caffe_pb2.py is stale: run `make proto`"


def test_ssd_messages_present():
    for name in ["AnnotatedDatum", "AnnotationGroup", "Annotation", "NormalizedBBox", "LabelMap", "Sampler",
                 "SampleConstraint", "BatchSampler", "EmitConstraint", "ResizeParameter", "DistortionParameter",
                 "ExpansionParameter", "NoiseParameter", "SaltPepperParameter", "AnnotatedDataParameter",
                 "PriorBoxParameter", "NormalizeParameter", "PermuteParameter", "MultiBoxLossParameter",
                 "DetectionOutputParameter", "DetectionEvaluateParameter", "NonMaximumSuppressionParameter",
                 "SaveOutputParameter", "VideoDataParameter", "V1LayerParameter", "V0LayerParameter"]:
        assert name in caffe_pb2.DESCRIPTOR.message_types_by_name, name
    assert caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name["prior_box_param"].number == 203
