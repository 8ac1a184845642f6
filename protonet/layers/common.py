"""Common layers: blob plumbing (Input, Parameter, Concat, Slice, Split, Eltwise, Flatten, Reshape,
Crop, Tile, Silence, Permute), Softmax, Reduction, ArgMax, Accuracy, DummyData."""
import math

import torch

from protonet import caffe_pb2
from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import Layer, register
from protonet.layers.fillers import fill


def canonical_axis(layer, axis, ndim, what="axis"):
    """Caffe's Blob::CanonicalAxisIndex with an error naming the layer."""
    if not -ndim <= axis < ndim:
        raise ShapeError(f"layer {layer.name} ({layer.param.type}): {what} {axis} out of range for a "
                         f"{ndim}-axis blob")
    return axis % ndim


def count(shape, start=0, end=None):
    return math.prod(shape[start:end])


def blob_shape_dims(shape_msg):
    return tuple(int(d) for d in shape_msg.dim)


@register("Input")
class InputLayer(Layer):
    """Net inputs; Net.forward binds the tensors given by name to these tops."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(0)
        shapes = param.input_param.shape
        n_top = len(param.top)
        if len(shapes) not in (1, n_top):
            raise ShapeError(f"layer {self.name} (Input): give one shape for all tops or one per top "
                             f"({n_top} tops, {len(shapes)} shapes)")
        self.top_shapes = [blob_shape_dims(shapes[0] if len(shapes) == 1 else shapes[i]) for i in range(n_top)]

    def forward(self):
        raise ProtonetError(f"layer {self.name} (Input): its blobs are given to Net.forward by name")


@register("Parameter")
class ParameterLayer(Layer):
    """A learnable blob exposed as a top."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(0)
        shape = blob_shape_dims(param.parameter_param.shape)
        self.add_blob(fill(shape, None, f"layer {self.name} (Parameter) blob 0"))
        self.top_shapes = [shape]

    def forward(self):
        return self.blobs[0]


@register("Concat")
class ConcatLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        if not bottom_shapes:
            raise ShapeError(f"layer {self.name} (Concat): needs at least one bottom")
        p = param.concat_param
        first = self.bottom_shapes[0]
        axis = p.concat_dim if p.HasField("concat_dim") else p.axis
        if p.HasField("concat_dim") and p.HasField("axis"):
            raise ProtonetError(f"layer {self.name} (Concat): give either axis or concat_dim, not both")
        self.axis = canonical_axis(self, axis, len(first))
        self.fuse = p.per_fla_fuse and self.axis == 1
        if self.fuse:
            self.top_shapes = [self._fused_shape()]
            return
        total = 0
        for i, s in enumerate(self.bottom_shapes):
            if len(s) != len(first) or any(a != b for j, (a, b) in enumerate(zip(s, first)) if j != self.axis):
                raise ShapeError(f"layer {self.name} (Concat): bottom {i} has shape {list(s)}, which does not "
                                 f"match bottom 0 {list(first)} outside axis {self.axis}")
            total += s[self.axis]
        out = list(first)
        out[self.axis] = total
        self.top_shapes = [tuple(out)]

    def _fused_shape(self):
        """Intel Caffe's per_fla_fuse (its int8 SSD): each bottom permuted to N,H,W,C and flattened,
        then concatenated: N x (sum of C*H*W) x 1 x 1."""
        first = self.bottom_shapes[0]
        for i, s in enumerate(self.bottom_shapes):
            if len(s) != len(first) or s[0] != first[0]:
                raise ShapeError(f"layer {self.name} (Concat): bottom {i} has shape {list(s)}; with "
                                 f"per_fla_fuse every bottom needs bottom 0's {len(first)} axes and num {first[0]}")
        return (first[0], sum(count(s, 1) for s in self.bottom_shapes)) + (1,) * (len(first) - 2)

    def forward(self, *bottoms):
        if self.fuse:
            flat = [b.movedim(1, -1).reshape(b.shape[0], -1) for b in bottoms]
            return torch.cat(flat, dim=1).reshape((bottoms[0].shape[0], -1) + (1,) * (bottoms[0].dim() - 2))
        if len(bottoms) == 1:
            return bottoms[0]
        return torch.cat(bottoms, dim=self.axis)


@register("Slice")
class SliceLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        p = param.slice_param
        shape = self.bottom_shapes[0]
        axis = p.slice_dim if p.HasField("slice_dim") else p.axis
        self.axis = canonical_axis(self, axis, len(shape))
        n_top = len(param.top)
        dim = shape[self.axis]
        points = list(p.slice_point)
        if points:
            if len(points) != n_top - 1:
                raise ShapeError(f"layer {self.name} (Slice): {len(points)} slice points for {n_top} tops")
            edges = [0] + points + [dim]
            if any(b <= a for a, b in zip(edges, edges[1:])):
                raise ShapeError(f"layer {self.name} (Slice): slice points {points} do not split axis size {dim}")
            sizes = [b - a for a, b in zip(edges, edges[1:])]
        else:
            if n_top == 0 or dim % n_top:
                raise ShapeError(f"layer {self.name} (Slice): axis size {dim} does not divide into {n_top} tops")
            sizes = [dim // n_top] * n_top
        self.sizes = sizes
        self.top_shapes = [tuple(shape[:self.axis]) + (s,) + tuple(shape[self.axis + 1:]) for s in sizes]

    def forward(self, x):
        return tuple(torch.split(x, self.sizes, dim=self.axis))


@register("Split")
class SplitLayer(Layer):
    """Every top is the bottom; autograd sums the gradients as Caffe's split does."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        self.top_shapes = [self.bottom_shapes[0]] * len(param.top)

    def forward(self, x):
        return tuple(x for _ in self.top_shapes)


@register("Silence")
class SilenceLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.top_shapes = []

    def forward(self, *bottoms):
        return ()


@register("Eltwise")
class EltwiseLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        p = param.eltwise_param
        if len(bottom_shapes) < 2:
            raise ShapeError(f"layer {self.name} (Eltwise): needs at least 2 bottoms")
        for i, s in enumerate(self.bottom_shapes):
            if s != self.bottom_shapes[0]:
                raise ShapeError(f"layer {self.name} (Eltwise): bottom {i} has shape {list(s)}, bottom 0 has "
                                 f"{list(self.bottom_shapes[0])}")
        self.op = p.operation
        if len(p.coeff) and (self.op != caffe_pb2.EltwiseParameter.SUM):
            raise ProtonetError(f"layer {self.name} (Eltwise): coeff is only for SUM")
        if len(p.coeff) and len(p.coeff) != len(bottom_shapes):
            raise ProtonetError(f"layer {self.name} (Eltwise): give one coeff per bottom "
                                f"({len(bottom_shapes)} bottoms, {len(p.coeff)} coeffs)")
        self.coeff = list(p.coeff) if len(p.coeff) else None
        self.top_shapes = [self.bottom_shapes[0]]

    def forward(self, *xs):
        E = caffe_pb2.EltwiseParameter
        if self.op == E.SUM:
            if self.coeff is None:
                out = xs[0]
                for x in xs[1:]:
                    out = out + x
                return out
            out = xs[0] * self.coeff[0]
            for c, x in zip(self.coeff[1:], xs[1:]):
                out = out + x * c
            return out
        if self.op == E.PROD:
            out = xs[0]
            for x in xs[1:]:
                out = out * x
            return out
        # MAX: the gradient goes to the first bottom holding the maximum, as in Caffe.
        out = xs[0]
        for x in xs[1:]:
            out = torch.where(x > out, x, out)
        return out


@register("Flatten")
class FlattenLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        shape = self.bottom_shapes[0]
        p = param.flatten_param
        self.start = canonical_axis(self, p.axis, len(shape))
        self.end = canonical_axis(self, p.end_axis, len(shape), "end_axis")
        self.top_shapes = [self._out(shape)]

    def _out(self, shape):
        return tuple(shape[:self.start]) + (count(shape, self.start, self.end + 1),) + tuple(shape[self.end + 1:])

    def forward(self, x):
        return x.reshape(self._out(tuple(x.shape)))


@register("Reshape")
class ReshapeLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        p = param.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        if sum(d == -1 for d in self.dims) > 1:
            raise ShapeError(f"layer {self.name} (Reshape): at most one dimension may be -1")
        if any(d < -1 for d in self.dims):
            raise ShapeError(f"layer {self.name} (Reshape): dimension values must be >= -1")
        self.axis = p.axis
        self.num_axes = p.num_axes
        if self.num_axes < -1:
            raise ShapeError(f"layer {self.name} (Reshape): num_axes must be >= -1")
        self.top_shapes = [self._out(self.bottom_shapes[0])]

    def _out(self, shape):
        ndim = len(shape)
        # axis counts from the end when negative, with -1 meaning "after the last axis".
        start = self.axis if self.axis >= 0 else ndim + self.axis + 1
        if not 0 <= start <= ndim:
            raise ShapeError(f"layer {self.name} (Reshape): axis {self.axis} out of range for shape {list(shape)}")
        end = ndim if self.num_axes == -1 else start + self.num_axes
        if end > ndim:
            raise ShapeError(f"layer {self.name} (Reshape): axis + num_axes exceeds the bottom's {ndim} axes")
        middle = []
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= ndim:
                    raise ShapeError(f"layer {self.name} (Reshape): dim {i} copies bottom axis {start + i}, "
                                     f"which does not exist")
                middle.append(shape[start + i])
            else:
                middle.append(d)
        out = list(shape[:start]) + middle + list(shape[end:])
        if -1 in out:
            known = math.prod([d for d in out if d != -1])  # a list: torch.compile traces it
            total = math.prod(shape)
            if known == 0 or total % known:
                raise ShapeError(f"layer {self.name} (Reshape): cannot infer -1 reshaping {list(shape)} "
                                 f"to {out}")
            out[out.index(-1)] = total // known
        if math.prod(out) != math.prod(shape):
            raise ShapeError(f"layer {self.name} (Reshape): output {out} has {math.prod(out)} values, bottom "
                             f"{list(shape)} has {math.prod(shape)}")
        return tuple(out)

    def forward(self, x):
        return x.reshape(self._out(tuple(x.shape)))


@register("Crop")
class CropLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(2)
        a, b = self.bottom_shapes
        if len(a) != len(b):
            raise ShapeError(f"layer {self.name} (Crop): bottoms have {len(a)} and {len(b)} axes")
        p = param.crop_param
        self.axis = canonical_axis(self, p.axis, len(a))
        n = len(a) - self.axis
        offsets = list(p.offset)
        if len(offsets) == 0:
            offsets = [0] * n
        elif len(offsets) == 1:
            offsets = offsets * n
        elif len(offsets) != n:
            raise ShapeError(f"layer {self.name} (Crop): {len(offsets)} offsets for {n} cropped axes")
        self.offsets = offsets
        out = list(a[:self.axis])
        for i, off in enumerate(offsets):
            ax = self.axis + i
            if a[ax] - off < b[ax]:
                raise ShapeError(f"layer {self.name} (Crop): axis {ax} of size {a[ax]} cannot be cropped to "
                                 f"{b[ax]} at offset {off}")
            out.append(b[ax])
        self.top_shapes = [tuple(out)]

    def forward(self, x, ref):
        idx = [slice(None)] * self.axis + [slice(o, o + ref.shape[self.axis + i]) for i, o in enumerate(self.offsets)]
        return x[tuple(idx)]


@register("Tile")
class TileLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        shape = self.bottom_shapes[0]
        p = param.tile_param
        if not p.HasField("tiles") or p.tiles < 1:
            raise ProtonetError(f"layer {self.name} (Tile): tiles must be given and >= 1")
        self.axis = canonical_axis(self, p.axis, len(shape))
        self.tiles = p.tiles
        out = list(shape)
        out[self.axis] *= self.tiles
        self.top_shapes = [tuple(out)]

    def forward(self, x):
        reps = [1] * x.dim()
        reps[self.axis] = self.tiles
        return x.repeat(*reps)


@register("Softmax")
class SoftmaxLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        self.axis = canonical_axis(self, param.softmax_param.axis, len(self.bottom_shapes[0]))
        self.top_shapes = [self.bottom_shapes[0]]

    def forward(self, x):
        return torch.softmax(x, dim=self.axis)


@register("Reduction")
class ReductionLayer(Layer):
    """Reduces all axes from `axis` on; the top has the bottom's leading axes."""

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        p = param.reduction_param
        shape = self.bottom_shapes[0]
        self.axis = canonical_axis(self, p.axis, len(shape)) if len(shape) else 0
        self.op = p.operation
        self.coeff = p.coeff
        self.top_shapes = [tuple(shape[:self.axis])]

    def forward(self, x):
        R = caffe_pb2.ReductionParameter
        flat = x.reshape(tuple(x.shape[:self.axis]) + (-1,))
        if self.op == R.SUM:
            out = flat.sum(-1)
        elif self.op == R.ASUM:
            out = flat.abs().sum(-1)
        elif self.op == R.SUMSQ:
            out = (flat * flat).sum(-1)
        else:
            out = flat.sum(-1) / flat.shape[-1]
        return out * self.coeff if self.coeff != 1 else out


def _topk_desc_last_index_first(x, k, dim):
    """Top-k along `dim`, ties ranked larger index first (std::partial_sort of (value, index) pairs
    with std::greater, as Caffe's ArgMax and Accuracy do)."""
    n = x.shape[dim]
    flipped = x.flip(dim)
    vals, idx = torch.sort(flipped, dim=dim, descending=True, stable=True)
    idx = n - 1 - idx
    return vals.narrow(dim, 0, k), idx.narrow(dim, 0, k)


@register("ArgMax")
class ArgMaxLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        p = param.argmax_param
        shape = self.bottom_shapes[0]
        self.top_k = p.top_k
        self.out_max_val = p.out_max_val
        self.has_axis = p.HasField("axis")
        if self.top_k < 1:
            raise ProtonetError(f"layer {self.name} (ArgMax): top_k must be >= 1")
        if self.has_axis:
            self.axis = canonical_axis(self, p.axis, len(shape))
            if self.top_k > shape[self.axis]:
                raise ShapeError(f"layer {self.name} (ArgMax): top_k {self.top_k} exceeds axis size "
                                 f"{shape[self.axis]}")
            out = list(shape)
            out[self.axis] = self.top_k
        else:
            if self.top_k > count(shape, 1):
                raise ShapeError(f"layer {self.name} (ArgMax): top_k {self.top_k} exceeds {count(shape, 1)} values")
            out = [1] * max(len(shape), 3)
            out[0] = shape[0]
            out[2] = self.top_k
            if self.out_max_val:
                out[1] = 2
        self.top_shapes = [tuple(out)]

    def forward(self, x):
        if self.has_axis:
            vals, idx = _topk_desc_last_index_first(x, self.top_k, self.axis)
            return vals if self.out_max_val else idx.to(x.dtype)
        flat = x.reshape(x.shape[0], -1)
        vals, idx = _topk_desc_last_index_first(flat, self.top_k, 1)
        rows = [idx.to(x.dtype)] + ([vals] if self.out_max_val else [])
        out = torch.stack(rows, dim=1)
        return out.reshape((x.shape[0],) + self.top_shapes[0][1:])


@register("Accuracy")
class AccuracyLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(2)
        p = param.accuracy_param
        shape, label_shape = self.bottom_shapes
        self.axis = canonical_axis(self, p.axis, len(shape))
        self.top_k = p.top_k
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        self.num_labels = shape[self.axis]
        if self.top_k > self.num_labels:
            raise ShapeError(f"layer {self.name} (Accuracy): top_k {self.top_k} exceeds {self.num_labels} labels")
        outer, inner = count(shape, 0, self.axis), count(shape, self.axis + 1)
        if count(label_shape) != outer * inner:
            raise ShapeError(f"layer {self.name} (Accuracy): label has {count(label_shape)} values, expected "
                             f"{outer * inner} (outer {outer} x inner {inner})")
        if len(param.top) not in (1, 2):
            raise ShapeError(f"layer {self.name} (Accuracy): has 1 or 2 tops")
        self.top_shapes = [()] + ([(self.num_labels,)] if len(param.top) == 2 else [])

    def forward(self, x, label):
        x = x.detach()
        shape = x.shape
        outer = count(tuple(shape), 0, self.axis)
        scores = x.reshape(outer, self.num_labels, -1).transpose(1, 2).reshape(-1, self.num_labels)
        lab = label.detach().reshape(-1).to(torch.long)
        valid = torch.ones_like(lab, dtype=torch.bool) if self.ignore_label is None else lab != self.ignore_label
        safe = torch.where(valid, lab, torch.zeros_like(lab))
        if bool(((safe < 0) | (safe >= self.num_labels)).any()):
            raise ProtonetError(f"layer {self.name} (Accuracy): label out of range [0, {self.num_labels})")
        own = scores.gather(1, safe[:, None])
        ids = torch.arange(self.num_labels, device=x.device)[None, :]
        ahead = (scores > own) | ((scores == own) & (ids > safe[:, None]))
        correct = (ahead.sum(1) < self.top_k) & valid
        n_valid = valid.sum()
        acc = correct.sum().to(x.dtype) / n_valid.to(x.dtype)
        if len(self.top_shapes) == 1:
            return acc
        per_class_n = torch.zeros(self.num_labels, dtype=x.dtype, device=x.device).index_add_(
            0, safe[valid], torch.ones_like(safe[valid], dtype=x.dtype))
        per_class_ok = torch.zeros(self.num_labels, dtype=x.dtype, device=x.device).index_add_(
            0, safe[correct], torch.ones_like(safe[correct], dtype=x.dtype))
        per_class = torch.where(per_class_n > 0, per_class_ok / per_class_n.clamp_min(1), torch.zeros_like(per_class_n))
        return acc, per_class


@register("DummyData")
class DummyDataLayer(Layer):
    """Tops filled by fillers; a non-constant filler draws new values every forward."""

    is_data = True

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(0)
        p = param.dummy_data_param
        n_top = len(param.top)
        legacy = len(p.num) or len(p.channels) or len(p.height) or len(p.width)
        if legacy and len(p.shape):
            raise ProtonetError(f"layer {self.name} (DummyData): give shape or num/channels/height/width, not both")
        if legacy:
            fields = [list(p.num), list(p.channels), list(p.height), list(p.width)]
            for f in fields:
                if len(f) not in (1, n_top):
                    raise ShapeError(f"layer {self.name} (DummyData): num/channels/height/width need 1 or "
                                     f"{n_top} values each")
            shapes = [tuple(f[0] if len(f) == 1 else f[i] for f in fields) for i in range(n_top)]
        else:
            if len(p.shape) not in (1, n_top):
                raise ShapeError(f"layer {self.name} (DummyData): {len(p.shape)} shapes for {n_top} tops")
            shapes = [blob_shape_dims(p.shape[0] if len(p.shape) == 1 else p.shape[i]) for i in range(n_top)]
        fillers = list(p.data_filler)
        if len(fillers) not in (0, 1, n_top):
            raise ProtonetError(f"layer {self.name} (DummyData): {len(fillers)} fillers for {n_top} tops")
        if not fillers:
            fillers = [caffe_pb2.FillerParameter(type="constant", value=0)]
        self.fillers = [fillers[0] if len(fillers) == 1 else fillers[i] for i in range(n_top)]
        self.top_shapes = shapes
        self._fixed = [fill(s, f, f"layer {self.name} top {i}") if f.type == "constant" else None
                       for i, (s, f) in enumerate(zip(shapes, self.fillers))]

    def forward(self):
        outs = tuple(t if t is not None else fill(s, f, f"layer {self.name}")
                     for t, s, f in zip(self._fixed, self.top_shapes, self.fillers))
        return outs[0] if len(outs) == 1 else outs


@register("Permute")
class PermuteLayer(Layer):
    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        shape = self.bottom_shapes[0]
        axes = len(shape)
        order = []
        for o in param.permute_param.order:
            if o >= axes:
                raise ShapeError(f"layer {self.name} (Permute): order {o} must be less than the "
                                 f"number of axes {axes}")
            if o in order:
                raise ProtonetError(f"layer {self.name} (Permute): duplicate order {o}")
            order.append(int(o))
        order += [i for i in range(axes) if i not in order]
        self.order = order
        self.top_shapes = [tuple(shape[i] for i in order)]

    def forward(self, x):
        if self.order == list(range(x.dim())):
            return x
        return x.permute(*self.order).contiguous()
