"""HDF5Data row/file order (Caffe's HDF5DataLayer schedule) and HDF5Output."""
import h5py
import numpy as np
import pytest

from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.io.prototxt import parse_prototxt
from protonet.layers.base import NetContext, layer_class


def build(text, ctx):
    lp = parse_prototxt(text, caffe_pb2.LayerParameter())
    return layer_class(lp.type, lp.name)(lp, [], ctx)


def write_files(tmp_path, sizes):
    names, start = [], 0
    for i, n in enumerate(sizes):
        path = tmp_path / f"part{i}.h5"
        with h5py.File(path, "w") as f:
            f["data"] = np.arange(start, start + n, dtype=np.float64)[:, None].repeat(2, 1)
            f["label"] = np.arange(start, start + n, dtype=np.float64)
        names.append(path.name)
        start += n
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n")


def test_rows_cross_file_boundaries_and_wrap(tmp_path):
    write_files(tmp_path, [3, 2])
    layer = build('name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param { source: "list.txt" '
                  'batch_size: 4 }', NetContext(phase=caffe_pb2.TRAIN, root_dir=str(tmp_path)))
    assert layer.top_shapes == [(4, 2), (4,)]
    seen = []
    for _ in range(3):
        data, label = layer()
        assert data.dtype.is_floating_point and data.shape == (4, 2)
        np.testing.assert_array_equal(data[:, 0].numpy(), label.numpy())
        seen += label.numpy().astype(int).tolist()
    assert seen == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


def test_shuffle_visits_every_row_each_pass(tmp_path):
    write_files(tmp_path, [5])
    layer = build('name: "d" type: "HDF5Data" top: "label" hdf5_data_param { source: "list.txt" batch_size: 5 '
                  'shuffle: true }', NetContext(phase=caffe_pb2.TRAIN, root_dir=str(tmp_path), seed=3))
    for _ in range(3):
        assert sorted(layer().numpy().astype(int).tolist()) == [0, 1, 2, 3, 4]


def test_errors_name_the_layer(tmp_path):
    ctx = NetContext(root_dir=str(tmp_path))
    with pytest.raises(ProtonetError, match="layer d .*missing.txt"):
        build('name: "d" type: "HDF5Data" top: "data" hdf5_data_param { source: "missing.txt" batch_size: 1 }', ctx)
    write_files(tmp_path, [2])
    with pytest.raises(ProtonetError, match="no dataset 'other'"):
        build('name: "d" type: "HDF5Data" top: "other" hdf5_data_param { source: "list.txt" batch_size: 1 }', ctx)


def test_hdf5_output_writes_data_and_label(tmp_path):
    import torch

    lp = parse_prototxt('name: "o" type: "HDF5Output" bottom: "a" bottom: "b" hdf5_output_param { '
                        'file_name: "out.h5" }', caffe_pb2.LayerParameter())
    layer = layer_class("HDF5Output")(lp, [(2, 3), (2,)], NetContext(root_dir=str(tmp_path)))
    a, b = torch.rand(2, 3), torch.tensor([1.0, 2.0])
    assert layer(a, b) == ()
    with h5py.File(tmp_path / "out.h5", "r") as f:
        np.testing.assert_array_equal(f["data"][()], a.numpy())
        np.testing.assert_array_equal(f["label"][()], b.numpy())


def test_data_parallel_ranks_interleave_rows(tmp_path):
    write_files(tmp_path, [3, 2])
    text = 'name: "d" type: "HDF5Data" top: "label" hdf5_data_param { source: "list.txt" batch_size: 3 }'
    seen = []
    for rank in range(2):
        layer = build(text, NetContext(phase=caffe_pb2.TRAIN, root_dir=str(tmp_path), rank=rank, world_size=2))
        seen.append(layer().numpy().astype(int).tolist() + layer().numpy().astype(int).tolist())
    assert seen == [[0, 2, 4, 1, 3, 0], [1, 3, 0, 2, 4, 1]]
    test_net = build(text, NetContext(phase=caffe_pb2.TEST, root_dir=str(tmp_path), rank=1, world_size=2))
    assert test_net().numpy().astype(int).tolist() == [0, 1, 2]
