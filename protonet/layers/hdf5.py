"""HDF5Data and HDF5Output (h5py), with Caffe's order of files and rows."""
import os

import h5py
import numpy as np
import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError, ShapeError
from protonet.io.prototxt import read_utf8_lines
from protonet.layers.base import Layer, register
from protonet.sizes import reserve_blob


def resolve_path(ctx, path):
    """A relative path resolves against ctx.root_dir when set, else the working directory (as Caffe)."""
    if ctx.root_dir and not os.path.isabs(path):
        return os.path.join(ctx.root_dir, path)
    return path


@register("HDF5Data")
class HDF5DataLayer(Layer):
    """Reads the datasets named by the tops from the .h5 files listed in `source`, `batch_size` rows
    per forward. Rows are taken in order (or a shuffled order) through a file, then the next file;
    after the last file it starts again from the first. With shuffle, the file order is shuffled at
    setup and at each wrap, and the row order whenever a file is (re)entered — Caffe's schedule, with
    numpy's RNG (seeded from ctx.seed) in place of std::random_shuffle. With ctx.world_size > 1 a
    TRAIN net reads every world_size-th row, starting at its rank."""

    is_data = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(0)
        p = param.hdf5_data_param
        if param.HasField("transform_param"):
            raise ProtonetError(f"layer {self.name} (HDF5Data): does not transform data (remove transform_param)")
        if not p.batch_size:
            raise ProtonetError(f"layer {self.name} (HDF5Data): batch_size must be > 0")
        if not len(param.top):
            raise ShapeError(f"layer {self.name} (HDF5Data): needs at least one top")
        self.batch_size = p.batch_size
        self.shuffle = p.shuffle
        self.rng = np.random.RandomState(ctx.seed if ctx.seed is not None else None)
        source = resolve_path(ctx, p.source)
        try:
            names = " ".join(read_utf8_lines(source)).split()
        except ProtonetError as exc:
            raise ProtonetError(f"layer {self.name} (HDF5Data): source file: {exc}") from None
        if not names:
            raise ProtonetError(f"layer {self.name} (HDF5Data): {source} lists no HDF5 files")
        self.files = [resolve_path(ctx, n) for n in names]
        self.file_order = np.arange(len(self.files))
        if self.shuffle:
            self.rng.shuffle(self.file_order)
        self.current_file = 0
        self._load(self.files[self.file_order[0]])
        self.current_row = 0
        # data-parallel training (TRAIN only): rank r keeps the rows whose stream position % world_size == r
        self.rank, self.world_size = (ctx.rank, ctx.world_size) if ctx.phase == caffe_pb2.TRAIN else (0, 1)
        self.offset = 0
        self.top_shapes = [(self.batch_size,) + a.shape[1:] for a in self.arrays]

    def _load(self, path):
        arrays = []
        try:
            with h5py.File(path, "r") as f:
                for top in self.param.top:
                    if top not in f or not isinstance(f[top], h5py.Dataset):
                        raise ProtonetError(f"layer {self.name} (HDF5Data): {path} has no dataset '{top}'")
                    # its size is checked (and reserved while the net is built) before it is read
                    reserve_blob(f[top].shape, f"layer {self.name} (HDF5Data): dataset '{top}' in {path}")
                    try:
                        a = np.asarray(f[top], dtype=np.float32)
                    except (ValueError, TypeError) as exc:
                        raise ProtonetError(f"layer {self.name} (HDF5Data): dataset '{top}' in {path} is not "
                                            f"numbers ({exc})") from None
                    if a.ndim < 1:
                        raise ShapeError(f"layer {self.name} (HDF5Data): dataset '{top}' in {path} has no axes")
                    arrays.append(a)
        except OSError as exc:
            raise ProtonetError(f"layer {self.name} (HDF5Data): cannot read HDF5 file {path} ({exc})") from None
        n = arrays[0].shape[0]
        for top, a in zip(self.param.top, arrays):
            if a.shape[0] != n:
                raise ShapeError(f"layer {self.name} (HDF5Data): dataset '{top}' in {path} has {a.shape[0]} rows, "
                                 f"'{self.param.top[0]}' has {n}")
        if hasattr(self, "arrays"):
            for top, a, old in zip(self.param.top, arrays, self.arrays):
                if a.shape[1:] != old.shape[1:]:
                    raise ShapeError(f"layer {self.name} (HDF5Data): dataset '{top}' in {path} has item shape "
                                     f"{list(a.shape[1:])}, earlier files {list(old.shape[1:])}")
        self.arrays = arrays
        self.row_order = np.arange(n)
        if self.shuffle:
            self.rng.shuffle(self.row_order)

    def _wrap_if_done(self):
        """At the end of a file: the next file (or the first again), reshuffling as Caffe does."""
        if self.current_row == self.arrays[0].shape[0]:
            if len(self.files) > 1:
                self.current_file += 1
                if self.current_file == len(self.files):
                    self.current_file = 0
                    if self.shuffle:
                        self.rng.shuffle(self.file_order)
                self._load(self.files[self.file_order[self.current_file]])
            self.current_row = 0
            if self.shuffle:
                self.rng.shuffle(self.row_order)

    def _skip(self):
        # Data parallel (BVLC's HDF5DataLayer::Skip): rank r of n reads the rows whose running
        # offset is r modulo n; a TEST net reads everything.
        return self.world_size > 1 and self.offset % self.world_size != self.rank

    def next_rows(self):
        """The rows of the next batch, following Caffe's Forward loop; a batch may cross files."""
        picks = []
        for _ in range(self.batch_size):
            self._wrap_if_done()
            while self._skip():
                self.current_row += 1
                self.offset += 1
                self._wrap_if_done()
            picks.append([a[self.row_order[self.current_row]] for a in self.arrays])
            self.current_row += 1
            self.offset += 1
        return picks

    def skip_batches(self, n):
        """Read past n batches (a resumed solver continues where the snapshot left the data)."""
        for _ in range(int(n)):
            self.next_rows()

    def forward(self):
        picks = self.next_rows()
        outs = tuple(torch.from_numpy(np.stack([row[j] for row in picks])) for j in range(len(self.arrays)))
        return outs[0] if len(outs) == 1 else outs


@register("HDF5Output")
class HDF5OutputLayer(Layer):
    """Writes bottom 0 as dataset 'data' and bottom 1 as 'label' to `file_name` on every forward
    (the file holds the latest batch)."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(2)
        if not param.hdf5_output_param.file_name:
            raise ProtonetError(f"layer {self.name} (HDF5Output): file_name is required")
        self.path = resolve_path(ctx, param.hdf5_output_param.file_name)
        self.top_shapes = []
        try:
            h5py.File(self.path, "w").close()
        except OSError as exc:
            raise ProtonetError(f"layer {self.name} (HDF5Output): cannot create {self.path} ({exc})") from None

    def forward(self, data, label):
        with h5py.File(self.path, "w") as f:
            f.create_dataset("data", data=data.detach().cpu().numpy())
            f.create_dataset("label", data=label.detach().cpu().numpy())
        return ()
