"""The TensorFlow-style padding rules of other forks, for Convolution and Pooling: the TF converters'
(Synopsys Caffe's) asymmetric pad_l/pad_r/pad_t/pad_b and pad_type 1 (SAME), and chuanqi305/ssd's
tf_pad. Each gives (top, bottom, left, right); an `after` below zero crops rows no window reaches."""
import math

from protonet import caffe_pb2
from protonet.errors import ProtonetError


def tf_pads(layer, p, n_spatial=2):
    """TF converters' (Synopsys Caffe's) asymmetric padding (top, bottom, left, right) when any of
    pad_t/pad_b/pad_l/pad_r is non-zero (then they replace pad, as there), else None."""
    pads = (p.pad_t, p.pad_b, p.pad_l, p.pad_r)
    if not any(pads):
        return None
    if n_spatial != 2:
        raise ProtonetError(f"layer {layer.name} ({layer.param.type}): pad_l/pad_r/pad_t/pad_b are for "
                            f"2-D layers only")
    return tuple(int(v) for v in pads)


def _cdiv(a, b):
    """C++'s integer division (truncates toward zero)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def synopsys_same_pads(size, kernel, stride, extent):
    """Synopsys Caffe's pad_type 1 (TensorFlow SAME) on one axis: output ceil(size / stride), the
    padding before half of TensorFlow's total (from the undilated kernel, rounded down), the
    padding after what the last window needs (rows past the image read zero)."""
    out = math.ceil(size / stride)
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    before = total // 2
    return before, (out - 1) * stride + extent - size - before


def chuanqi305_tf_pads(layer, size, kernel, stride, extent, pad, same):
    """chuanqi305/ssd's tf_pad on one axis (base_conv_layer.cpp Reshape, im2col_cpu_tf): the output
    size follows `pad` as in Caffe; SAME then recomputes the total padding (out - 1) * stride +
    kernel - size, top = int(total / 2.0), bottom = total - top, and reads from -bottom (from 0
    when top is 0); VALID reads from 0. Returns (before, after) for that output."""
    out = (size + 2 * pad - extent) // stride + 1
    if not same:
        if pad:
            raise ProtonetError(f"layer {layer.name} ({layer.param.type}): tf_pad VALID with pad {pad}: the "
                                f"fork's output size and its unpadded im2col disagree")
        return 0, (out - 1) * stride + extent - size
    total = (out - 1) * stride + kernel - size
    top = int(total / 2.0)
    bottom = total - top
    if _cdiv(size + 2 * bottom - extent, stride) + 1 != out:
        raise ProtonetError(f"layer {layer.name} ({layer.param.type}): tf_pad SAME: the fork's im2col lays out "
                            f"a different output size than pad {pad} gives (size {size}, kernel {kernel}, stride "
                            f"{stride})")
    before = 0 if top == 0 else bottom
    return before, (out - 1) * stride + extent - size - before


def conv_tf_padding(layer, p, shape, has_pad_hw):
    """(top, bottom, left, right) of a 2-D convolution with Synopsys' pad_type 1 or chuanqi305's
    tf_pad (layer: a _ConvBase with kernel, stride, dilation and Caffe's pad set)."""
    where = f"layer {layer.name} ({layer.param.type})"
    if len(shape) != 4 or layer.transposed:
        raise ProtonetError(f"{where}: pad_type and tf_pad are for 2-D convolution only")
    if layer.asym_pad is not None or (p.pad_type and p.HasField("tf_pad")):
        raise ProtonetError(f"{where}: give one of pad_type, tf_pad and pad_l/pad_r/pad_t/pad_b")
    extents = [d * (k - 1) + 1 for d, k in zip(layer.dilation, layer.kernel)]
    pads = []
    for i in range(2):
        size, k, s = shape[2 + i], layer.kernel[i], layer.stride[i]
        if p.pad_type:
            if p.pad_type != 1:
                raise ProtonetError(f"{where}: unknown pad_type {p.pad_type} (0: Caffe's pad, 1: SAME)")
            if len(p.pad) or has_pad_hw:
                raise ProtonetError(f"{where}: give either pad or pad_type, not both")
            pads += synopsys_same_pads(size, k, s, extents[i])
        else:
            same = p.tf_pad == caffe_pb2.ConvolutionParameter.SAME
            pads += chuanqi305_tf_pads(layer, size, k, s, extents[i], layer.pad[i], same)
    return tuple(pads)


def pooling_tf_same(layer, p):
    """Whether a Pooling layer has Synopsys' pad_type 1 (TensorFlow's SAME; 0 is Caffe's pad)."""
    if p.pad_type not in (0, 1):
        raise ProtonetError(f"layer {layer.name} (Pooling): unknown pad_type {p.pad_type} (0: Caffe's pad, 1: SAME)")
    if p.pad_type == 1 and (p.HasField("pad") or p.HasField("pad_h") or p.HasField("pad_w")
                            or layer.asym_pad is not None or p.global_pooling):
        raise ProtonetError(f"layer {layer.name} (Pooling): pad_type takes no pad, pad_h/pad_w, pad_l/pad_r/pad_t/"
                            f"pad_b or global_pooling")
    return p.pad_type == 1


def same_pooling_pads(kernel, stride, H, W):
    """Synopsys' SAME pooling pads (top, bottom, left, right): TensorFlow's total, the odd pixel
    after (an AVE window's area counts them, as there)."""
    pads = []
    for size, k, s in ((H, kernel[0], stride[0]), (W, kernel[1], stride[1])):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return tuple(pads)
