"""Channel layers of other forks: ShuffleChannel (ShuffleNet) and Axpy (SENet)."""
from protonet.errors import ProtonetError, ShapeError
from protonet.layers.base import Layer, register


@register("ShuffleChannel")
class ShuffleChannelLayer(Layer):
    """ShuffleNet's channel shuffle (farmingyard/ShuffleNet shuffle_channel_layer.cpp): the C
    channels as a group x (C / group) matrix, transposed: top channel j * group + i is bottom channel
    i * (C / group) + j. The gradient is the inverse permutation."""

    dialect = "layer ports"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(1)
        shape = self.bottom_shapes[0]
        self.group = param.shuffle_channel_param.group
        if self.group < 1:
            raise ProtonetError(f"layer {self.name} (ShuffleChannel): group must be > 0, got {self.group}")
        if len(shape) < 2 or shape[1] % self.group:
            raise ShapeError(f"layer {self.name} (ShuffleChannel): group {self.group} must divide the channels "
                             f"of bottom {list(shape)}")
        self.top_shapes = [shape]

    def forward(self, x):
        n, c = x.shape[:2]
        rest = tuple(x.shape[2:])
        return x.reshape((n, self.group, c // self.group) + rest).transpose(1, 2).reshape(x.shape)


@register("Axpy")
class AxpyLayer(Layer):
    """SENet's Axpy (hujie-frank/SENet axpy_layer.cpp): top = a * x + y with bottoms a (N x C, or
    N x C x 1 x 1), x and y of one shape (N x C x ...); a scales each channel of x. Gradients:
    da = sum over each channel's positions of top_diff * x, dx = a * top_diff, dy = top_diff."""

    dialect = "layer ports"

    def __init__(self, param, bottom_shapes, ctx):
        super().__init__(param, bottom_shapes, ctx)
        self.check_bottoms(3)
        a, x, y = self.bottom_shapes
        if len(x) < 2 or a[:2] != x[:2] or any(d != 1 for d in a[2:]) or (len(a) == 4 and len(a) != len(x)):
            raise ShapeError(f"layer {self.name} (Axpy): the scale bottom {list(a)} must be N x C (x 1 x 1) "
                             f"of x {list(x)}")
        if x != y:
            raise ShapeError(f"layer {self.name} (Axpy): x {list(x)} and y {list(y)} must have one shape")
        self.top_shapes = [x]

    def forward(self, a, x, y):
        return a.reshape(tuple(a.shape[:2]) + (1,) * (x.dim() - 2)) * x + y
