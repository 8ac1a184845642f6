"""Out of protonet: a Caffe detector as ONNX or TorchScript, DetectionOutput included."""
