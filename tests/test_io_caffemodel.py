""".caffemodel: Caffe's own file reads, writes are identical on reading back (and byte-identical to
Caffe's), written files load in OpenCV and compute what a torch reference computes."""
import os

import numpy as np
import pytest
import torch

from protonet import caffe_pb2
from protonet.io import (
    array_to_blob,
    blob_to_array,
    caffemodel_arrays,
    read_binary_proto,
    read_caffemodel,
    write_caffemodel,
    write_prototxt,
)


def _golden_params(fixtures):
    ref = np.load(fixtures / "io" / "tiny_ssd_params.npz")
    out = {}
    for key in ref.files:
        layer, index = key.rsplit("/", 1)
        out.setdefault(layer, {})[int(index)] = ref[key]
    return {layer: [blobs[i] for i in sorted(blobs)] for layer, blobs in out.items()}


def test_golden_caffemodel_from_caffe_reads_with_its_blobs(fixtures):
    net = read_caffemodel(fixtures / "io" / "tiny_ssd.caffemodel")
    arrays = caffemodel_arrays(net)
    golden = _golden_params(fixtures)
    assert list(arrays) == list(golden)  # same layers with blobs, in Caffe's order
    for layer, blobs in golden.items():
        assert len(arrays[layer]) == len(blobs)
        for got, want in zip(arrays[layer], blobs):
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
    assert [b.shape for b in arrays["conv2_bn"]] == [(16,), (16,), (1,)]


def test_write_then_read_gives_identical_blobs(fixtures, tmp_path):
    net = read_caffemodel(fixtures / "io" / "tiny_ssd.caffemodel")
    write_caffemodel(net, tmp_path / "copy.caffemodel")
    again = read_caffemodel(tmp_path / "copy.caffemodel")
    assert again == net
    for layer, blobs in caffemodel_arrays(net).items():
        for got, want in zip(caffemodel_arrays(again)[layer], blobs):
            np.testing.assert_array_equal(got, want)


def test_streamed_write_is_byte_identical_to_caffes_file(fixtures, tmp_path):
    src = fixtures / "io" / "tiny_ssd.caffemodel"
    raw = read_binary_proto(src, caffe_pb2.NetParameter)  # not upgraded: exactly what Caffe wrote
    arrays = caffemodel_arrays(raw)
    bare = caffe_pb2.NetParameter()
    bare.CopyFrom(raw)
    for layer in bare.layer:
        del layer.blobs[:]
    write_caffemodel(bare, tmp_path / "streamed.caffemodel",
                     blobs={k: [torch.from_numpy(a) for a in v] for k, v in arrays.items()})
    assert (tmp_path / "streamed.caffemodel").read_bytes() == src.read_bytes()


def test_random_blobs_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(3)
    shapes = {"conv": [(7, 3, 3, 3), (7,)], "ip": [(10, 63)], "scalar": [(1,)], "empty": [(0,)]}
    arrays = {k: [rng.standard_normal(s).astype(np.float32) for s in v] for k, v in shapes.items()}
    arrays["conv"][0][0, 0, 0, 0] = np.float32(np.nextafter(np.float32(1), np.float32(2)))
    arrays["ip"][0][0, 0] = -0.0
    net = caffe_pb2.NetParameter(name="r")
    for name in shapes:
        net.layer.add(name=name, type="Convolution", bottom=["x"], top=[name])
    write_caffemodel(net, tmp_path / "s.caffemodel", blobs=arrays)
    full = caffe_pb2.NetParameter()
    full.CopyFrom(net)
    for layer in full.layer:
        for arr in arrays[layer.name]:
            array_to_blob(arr, blob=layer.blobs.add())
    write_caffemodel(full, tmp_path / "m.caffemodel")
    assert (tmp_path / "s.caffemodel").read_bytes() == (tmp_path / "m.caffemodel").read_bytes()
    back = caffemodel_arrays(read_caffemodel(tmp_path / "s.caffemodel"))
    for name in ("conv", "ip", "scalar"):
        for got, want in zip(back[name], arrays[name]):
            assert got.shape == want.shape
            assert got.tobytes() == want.tobytes()  # bit-exact, -0.0 included


def test_legacy_4d_blob_shape_wins_as_in_caffe():
    blob = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3)
    blob.data.extend(range(6))
    assert blob_to_array(blob).shape == (1, 1, 2, 3)
    blob.shape.dim.extend([6])  # Caffe's Blob::FromProto prefers the legacy fields
    assert blob_to_array(blob).shape == (1, 1, 2, 3)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "w.caffemodel"
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="a", type="Convolution")
    net.layer.add(name="b", type="Convolution")
    write_caffemodel(net, path, blobs={"a": [np.ones((2, 2), np.float32)]})
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_caffemodel(net, path, blobs={"a": [np.zeros((2, 2), np.float32)], "b": [np.array(["x"])]})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.caffemodel"]


SMALL_NET = """
name: "small"
input: "data"
input_shape { dim: 2 dim: 3 dim: 12 dim: 12 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1" inner_product_param { num_output: 5 } }
layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }
"""


def test_written_caffemodel_loads_in_opencv_and_computes_the_reference(tmp_path):
    cv2 = pytest.importorskip("cv2")
    from protonet.io import parse_prototxt

    rng = np.random.default_rng(11)
    net = parse_prototxt(SMALL_NET, caffe_pb2.NetParameter())
    # pool1 is 6x6: Caffe (and OpenCV) round the pooled size up, (12 - 3) / 2 -> 5 + 1
    weights = {
        "conv1": [rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3,
                  rng.standard_normal(4).astype(np.float32) * 0.1],
        "ip1": [rng.standard_normal((5, 4 * 6 * 6)).astype(np.float32) * 0.1,
                rng.standard_normal(5).astype(np.float32) * 0.1],
    }
    write_prototxt(net, tmp_path / "small.prototxt")
    model = caffe_pb2.NetParameter()
    model.CopyFrom(net)
    write_caffemodel(model, tmp_path / "small.caffemodel", blobs=weights)

    x = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    cv_net = cv2.dnn.readNetFromCaffe(str(tmp_path / "small.prototxt"), str(tmp_path / "small.caffemodel"))
    cv_net.setInput(x)
    got = cv_net.forward("prob")

    t = torch.from_numpy(x)
    y = torch.nn.functional.conv2d(t, torch.from_numpy(weights["conv1"][0]), torch.from_numpy(weights["conv1"][1]),
                                   padding=1)
    y = torch.nn.functional.max_pool2d(torch.relu(y), 3, 2, ceil_mode=True)
    assert y.shape == (2, 4, 6, 6)
    y = torch.nn.functional.linear(y.flatten(1), torch.from_numpy(weights["ip1"][0]),
                                   torch.from_numpy(weights["ip1"][1]))
    want = torch.softmax(y, dim=1).numpy()
    assert got.shape == want.shape == (2, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    # an unset blob would have loaded as zeros: the outputs must depend on the weights
    assert np.ptp(got) > 0.05


@pytest.mark.slow
def test_vgg16_sized_write_and_read(tmp_path):
    """VGG16's 138M floats: streamed write and both readers give the values back (prints MB/s; -s)."""
    import time

    from protonet.io import read_caffemodel_arrays

    vgg = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256), (256, 512),
           (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    shapes = {f"conv{i}": [(cout, cin, 3, 3), (cout,)] for i, (cin, cout) in enumerate(vgg)}
    shapes.update(fc6=[(4096, 25088), (4096,)], fc7=[(4096, 4096), (4096,)], fc8=[(1000, 4096), (1000,)])
    blobs = {k: [torch.randn(s) for s in v] for k, v in shapes.items()}
    megabytes = sum(t.numel() for v in blobs.values() for t in v) * 4 / 1e6
    net = caffe_pb2.NetParameter(name="vgg16")
    for name in shapes:
        net.layer.add(name=name, type="Convolution" if name.startswith("conv") else "InnerProduct")
    path = tmp_path / "vgg16.caffemodel"
    start = time.perf_counter()
    write_caffemodel(net, path, blobs=blobs)
    written = time.perf_counter()
    direct = read_caffemodel_arrays(path)
    read = time.perf_counter()
    print(f"\nVGG16 {megabytes:.0f} MB: write {megabytes / (written - start):.0f} MB/s, "
          f"read_caffemodel_arrays {megabytes / (read - written):.0f} MB/s")
    assert os.path.getsize(path) > megabytes * 1e6
    for name, tensors in blobs.items():
        for got, want in zip(direct[name], tensors):
            np.testing.assert_array_equal(got, want.numpy())
    del direct
    back = caffemodel_arrays(read_caffemodel(path))
    for name, tensors in blobs.items():
        for got, want in zip(back[name], tensors):
            np.testing.assert_array_equal(got, want.numpy())


def test_legacy_blobs_fit_shapes_counted_from_the_end_as_in_caffe():
    from protonet.io import blob_fits_shape

    weight = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3)
    weight.data.extend(range(6))
    assert blob_fits_shape(weight, (2, 3)) and blob_fits_shape(weight, (1, 2, 3))
    assert not blob_fits_shape(weight, (3, 2)) and not blob_fits_shape(weight, (1, 1, 1, 2, 3))
    np.testing.assert_array_equal(blob_to_array(weight, shape=(2, 3)), np.arange(6, dtype=np.float32).reshape(2, 3))
    with pytest.raises(ValueError, match=r"stored shape \[1, 1, 2, 3\] does not fit \[6\]"):
        blob_to_array(weight, shape=(6,))
    current = array_to_blob(np.zeros((2, 3), np.float32))
    assert blob_fits_shape(current, (2, 3)) and not blob_fits_shape(current, (1, 1, 2, 3))


def _assert_same_arrays(got, want):
    assert list(got) == list(want)
    for name in want:
        assert len(got[name]) == len(want[name])
        for a, b in zip(got[name], want[name]):
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_direct_array_reader_matches_the_message_reader(fixtures, tmp_path):
    from protonet.io import read_caffemodel_arrays

    path = fixtures / "io" / "tiny_ssd.caffemodel"
    arrays = read_caffemodel_arrays(path)
    _assert_same_arrays(arrays, caffemodel_arrays(read_caffemodel(path)))
    assert arrays["conv1"][0].flags.writeable and arrays["conv1"][0].flags.aligned
    # legacy 4-D dims, double data, an empty blob and a blob split over two packed chunks
    net = caffe_pb2.NetParameter()
    layer = net.layer.add(name="legacy")
    legacy = layer.blobs.add(num=1, channels=1, height=2, width=3)
    legacy.data.extend([1, 2, 3, 4, 5, 6])
    double = layer.blobs.add()
    double.shape.dim.extend([2])
    double.double_data.extend([0.1, 1e300])
    layer.blobs.add().shape.dim.extend([0])
    net.layer.add(name="no_blobs")
    split = net.layer.add(name="split")
    write_caffemodel(net, tmp_path / "odd.caffemodel")
    first = np.arange(5, dtype=np.float32).tobytes()  # no shape: the blob is 1-D
    two_chunks = b"\x2a\x14" + first + b"\x2a\x04" + np.float32(7).tobytes()
    split.blobs.add().ParseFromString(two_chunks)
    write_caffemodel(net, tmp_path / "odd.caffemodel")
    got = read_caffemodel_arrays(tmp_path / "odd.caffemodel")
    _assert_same_arrays(got, caffemodel_arrays(read_caffemodel(tmp_path / "odd.caffemodel")))
    assert got["legacy"][0].shape == (1, 1, 2, 3) and got["legacy"][1].dtype == np.float64
    assert got["split"][0].tolist() == [0, 1, 2, 3, 4, 7] and "no_blobs" not in got


def test_readers_refuse_files_of_another_kind(fixtures):
    from protonet.errors import ProtonetError
    from protonet.io import read_caffemodel_arrays, read_solverstate

    with pytest.raises(ProtonetError, match="tiny_ssd_deploy.prototxt: not a binary NetParameter file "
                                            r"\(it looks like a text prototxt\)"):
        read_caffemodel(fixtures / "io" / "tiny_ssd_deploy.prototxt")
    with pytest.raises(ProtonetError, match="adam_iter_5.solverstate: not a binary NetParameter file"):
        read_caffemodel(fixtures / "io" / "adam_iter_5.solverstate")
    with pytest.raises(ProtonetError, match="tiny_ssd.caffemodel: not a binary SolverState file"):
        read_solverstate(fixtures / "io" / "tiny_ssd.caffemodel")
    with pytest.raises(ProtonetError, match="tiny_ssd_deploy.prototxt: not a valid binary caffemodel"):
        read_caffemodel_arrays(fixtures / "io" / "tiny_ssd_deploy.prototxt")


def test_fields_of_another_fork_are_kept_as_unknown(fixtures, tmp_path):
    extra = b"\xc0\x3e\x05"  # field 1000, varint 5: not in our schema
    (tmp_path / "fork.caffemodel").write_bytes((fixtures / "io" / "tiny_ssd.caffemodel").read_bytes() + extra)
    net = read_caffemodel(tmp_path / "fork.caffemodel")
    assert len(net.layer) == 39
