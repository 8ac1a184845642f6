"""`caffe.proto`: holds `caffe_pb2`."""
