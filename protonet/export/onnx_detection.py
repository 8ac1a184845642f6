"""DetectionOutput as standard ONNX operators (opset 17): the algorithm of
protonet.detection_decode written with TopK, NonMaxSuppression, ScatterND, NonZero and GatherND.

NonMaxSuppression orders boxes by score with a heap, so equal scores could come out in any
order; it is therefore given each candidate's rank (K, K-1, ...) as its score, after TopK has
ranked the real scores with ties to the lower prior index, which makes its greedy pass exactly
the fork's. Its IoU test (intersection / (area1 + area2 - intersection) > threshold) is the
fork's JaccardOverlap in float32; an inverted box (xmax < xmin, from a CORNER code with large
offsets), which overlaps nothing in the fork, is given a zero-area box, which NonMaxSuppression
never compares either. Pixel boxes (OpenCV's normalized_bbox: false, sizes counting both end
pixels) go to NonMaxSuppression one pixel larger, whose plain sizes are then the same up to the
rounding of one addition.
"""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from protonet import box
from protonet.detection_decode import DetectionSettings
from protonet.errors import ProtonetError

OPSET = 17


class GraphBuilder:
    """Nodes and constants with unique names under a prefix."""

    def __init__(self, prefix):
        self.prefix = prefix
        self.nodes = []
        self.initializers = []
        self.count = 0

    def name(self, hint):
        self.count += 1
        return f"{self.prefix}/{hint}_{self.count}"

    def const(self, value, dtype=np.float32, hint="const"):
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def ints(self, values, hint="shape"):
        return self.const(np.asarray(values, dtype=np.int64), np.int64, hint)

    def op(self, op_type, inputs, outputs=1, **attrs):
        names = [self.name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self.name(op_type), **attrs))
        return names[0] if outputs == 1 else names

    def column(self, x, i, axis=-1):
        """x[..., i] (the axis kept, size 1)."""
        return self.op("Slice", [x, self.ints([i]), self.ints([i + 1]), self.ints([axis])])


def decode(g, deltas, priors, variances, code_type, variance_in_target, normalized=True):
    """box.decode's arithmetic, op for op; deltas [..., 4] broadcast against priors/variances."""
    d = deltas if variance_in_target else g.op("Mul", [variances, deltas])
    if code_type == box.CORNER:
        return g.op("Add", [priors, d])
    x1, y1, x2, y2 = (g.column(priors, i) for i in range(4))
    pw, ph = g.op("Sub", [x2, x1]), g.op("Sub", [y2, y1])
    if code_type == box.CORNER_SIZE:
        return g.op("Add", [priors, g.op("Mul", [d, g.op("Concat", [pw, ph, pw, ph], axis=-1)])])
    if code_type != box.CENTER_SIZE:
        raise ProtonetError(f"DetectionOutput: unknown code type {code_type}")
    two = g.const(2.0)
    if normalized:
        pcx = g.op("Div", [g.op("Add", [x1, x2]), two])
        pcy = g.op("Div", [g.op("Add", [y1, y2]), two])
    else:  # OpenCV's pixel priors: sizes count both end pixels
        pw, ph = g.op("Add", [pw, g.const(1.0)]), g.op("Add", [ph, g.const(1.0)])
        pcx = g.op("Add", [x1, g.op("Mul", [pw, g.const(0.5)])])
        pcy = g.op("Add", [y1, g.op("Mul", [ph, g.const(0.5)])])
    cx = g.op("Add", [g.op("Mul", [g.column(d, 0), pw]), pcx])
    cy = g.op("Add", [g.op("Mul", [g.column(d, 1), ph]), pcy])
    hw = g.op("Div", [g.op("Mul", [g.op("Exp", [g.column(d, 2)]), pw]), two])
    hh = g.op("Div", [g.op("Mul", [g.op("Exp", [g.column(d, 3)]), ph]), two])
    return g.op("Concat", [g.op("Sub", [cx, hw]), g.op("Sub", [cy, hh]), g.op("Add", [cx, hw]),
                           g.op("Add", [cy, hh])], axis=-1)


def decoded_boxes(g, s, P, loc, prior, arm_loc):
    """[N, P, Lc, 4] boxes (RefineDet: from the priors refined by arm_loc)."""
    pv = g.op("Reshape", [prior, g.ints([2, P, 4])])
    priors = g.op("Gather", [pv, g.ints(0)], axis=0)
    variances = g.op("Gather", [pv, g.ints(1)], axis=0)
    if arm_loc is not None:
        arm = g.op("Reshape", [arm_loc, g.ints([0, P, 4])])
        base = decode(g, arm, priors, variances, s.code_type, s.variance_encoded_in_target)
        base = g.op("Unsqueeze", [base, g.ints([2])])  # [N, P, 1, 4]
    else:
        base = g.op("Unsqueeze", [priors, g.ints([1])])  # [P, 1, 4]
    deltas = g.op("Reshape", [loc, g.ints([0, P, s.loc_classes, 4])])
    boxes = decode(g, deltas, base, g.op("Unsqueeze", [variances, g.ints([1])]), s.code_type,
                   s.variance_encoded_in_target, s.normalized)
    return g.op("Clip", [boxes, g.const(0.0), g.const(1.0)]) if s.clip else boxes


def class_scores(g, s, P, conf, arm_conf):
    """[N, P, C]; RefineDet: priors the ARM finds empty score [1, 0, 0, ...]."""
    scores = g.op("Reshape", [conf, g.ints([0, P, s.num_classes])])
    if arm_conf is None:
        return scores
    objectness = g.column(g.op("Reshape", [arm_conf, g.ints([0, P, 2])]), 1)
    empty = g.op("Less", [objectness, g.const(s.objectness_score)])
    fake = np.zeros(s.num_classes, dtype=np.float32)
    fake[0] = 1
    return g.op("Where", [empty, g.const(fake), scores])


def candidates(g, s, P, scores, boxes):
    """Per (image, class): the K best scores (ties to the lower prior), their prior indices,
    valid (above the threshold) and boxes [N, F, K, 4]."""
    F, K = len(s.foreground), s.width(P)
    classes = g.ints(s.foreground)
    per_class = g.op("Transpose", [g.op("Gather", [scores, classes], axis=2)], perm=[0, 2, 1])
    values, order = g.op("TopK", [per_class, g.ints([K])], outputs=2, axis=-1, largest=1, sorted=1)
    valid = g.op("Greater", [values, g.const(s.confidence_threshold)])
    index = g.op("Unsqueeze", [order, g.ints([3])])  # [N, F, K, 1]
    if s.share_location:
        flat = g.op("Reshape", [boxes, g.ints([0, P, 4])])
        cand = g.op("GatherND", [flat, g.op("Reshape", [index, g.ints([0, F * K, 1])])], batch_dims=1)
        cand = g.op("Reshape", [cand, g.ints([0, F, K, 4])])
    else:
        by_class = g.op("Gather", [g.op("Transpose", [boxes], perm=[0, 2, 1, 3]), classes], axis=1)
        cand = g.op("GatherND", [by_class, index], batch_dims=2)
    return values, order, valid, cand


def nms(g, s, F, K, valid, cand):
    """keep [N, F, K] (bool) from NonMaxSuppression over rank scores."""
    rank_score = g.const(np.arange(K, 0, -1, dtype=np.float32))
    scores = g.op("Where", [valid, rank_score, g.const(0.0)])
    rows_scores = g.op("Reshape", [scores, g.ints([-1, 1, K])])
    # An inverted box overlaps nothing in the fork's JaccardOverlap; NonMaxSuppression would
    # reorder its corners, so it gets a zero-area box, which NonMaxSuppression never compares.
    x1, y1, x2, y2 = (g.column(cand, i) for i in range(4))
    inverted = g.op("Or", [g.op("Less", [x2, x1]), g.op("Less", [y2, y1])])
    if not s.normalized:  # pixel boxes: NonMaxSuppression's plain sizes of boxes one pixel larger
        cand = g.op("Add", [cand, g.const([0.0, 0.0, 1.0, 1.0])])
    cand = g.op("Where", [inverted, g.const([0.0, 0.0, 0.0, 0.0]), cand])
    rows_boxes = g.op("Reshape", [cand, g.ints([-1, K, 4])])
    selected = g.op("NonMaxSuppression", [rows_boxes, rows_scores, g.ints([K]),
                                          g.const([min(s.nms_threshold, 1.0)]), g.const([0.5])])
    where = g.op("Gather", [selected, g.ints([0, 2])], axis=1)  # (row, rank)
    count = g.op("Gather", [g.op("Shape", [selected]), g.ints([0])])
    ones = g.op("Expand", [g.const(1.0), count])
    zeros = g.op("Mul", [rows_scores, g.const(0.0)])  # [R, 1, K] zeros of the dynamic row count
    marked = g.op("ScatterND", [g.op("Reshape", [zeros, g.ints([-1, K])]), where, ones])
    return g.op("Cast", [g.op("Reshape", [marked, g.ints([-1, F, K])])], to=TensorProto.BOOL)


def limit_per_image(g, s, F, K, keep, values):
    """keep_top_k across the classes of an image (ties: lower class, then earlier rank)."""
    flat_keep = g.op("Reshape", [keep, g.ints([0, F * K])])
    if s.keep_top_k < 0:
        return flat_keep
    count = g.op("ReduceSum", [g.op("Cast", [flat_keep], to=TensorProto.INT64), g.ints([1])], keepdims=1)
    k = min(s.keep_top_k, F * K)
    zeros = g.op("Cast", [g.op("Mul", [g.op("Cast", [flat_keep], to=TensorProto.FLOAT), g.const(0.0)])],
                 to=TensorProto.BOOL)
    if k == 0:
        chosen = zeros
    else:
        flat = g.op("Where", [flat_keep, g.op("Reshape", [values, g.ints([0, F * K])]), g.const(-np.inf)])
        _, top = g.op("TopK", [flat, g.ints([k])], outputs=2, axis=1, largest=1, sorted=1)
        ones = g.op("Expand", [g.const(True, np.bool_), g.op("Shape", [top])])
        picked = g.op("ScatterElements", [zeros, top, ones], axis=1)
        chosen = g.op("And", [picked, flat_keep])
    over = g.op("Greater", [count, g.ints(s.keep_top_k)])  # [N, 1]
    return g.op("Or", [g.op("And", [over, chosen]), g.op("And", [g.op("Not", [over]), flat_keep])])


def gather_rows(g, s, F, K, flat_keep, values, order, boxes, out_name):
    """[1, 1, D, 7] rows in (image, class, rank) order; [i, -1, ...] per image when none."""
    any_kept = g.op("ReduceMax", [g.op("Cast", [flat_keep], to=TensorProto.INT64)], keepdims=0)
    nothing = g.op("Equal", [any_kept, g.ints(0)])
    column = g.op("Slice", [flat_keep, g.ints([0]), g.ints([1]), g.ints([1])])  # [N, 1]
    mask = g.op("Concat", [flat_keep, g.op("Expand", [nothing, g.op("Shape", [column])])], axis=1)
    hits = g.op("NonZero", [mask])  # [2, M]
    n = g.op("Gather", [hits, g.ints(0)], axis=0)
    col = g.op("Gather", [hits, g.ints(1)], axis=0)
    real = g.op("Less", [col, g.ints(F * K)])
    col = g.op("Min", [col, g.ints(max(F * K - 1, 0))])
    ci, k = g.op("Div", [col, g.ints(K)]), g.op("Mod", [col, g.ints(K)])
    nck = g.op("Concat", [g.op("Unsqueeze", [t, g.ints([1])]) for t in (n, ci, k)], axis=1)
    j = g.op("GatherND", [order, nck])
    label = g.op("Gather", [g.ints(s.foreground), ci], axis=0)
    score = g.op("GatherND", [values, nck])
    loc_class = g.op("Mul", [label, g.ints(0)]) if s.share_location else label
    njc = g.op("Concat", [g.op("Unsqueeze", [t, g.ints([1])]) for t in (n, j, loc_class)], axis=1)
    coords = g.op("GatherND", [boxes, njc])  # [M, 4]
    as_column = [g.op("Unsqueeze", [g.op("Cast", [t], to=TensorProto.FLOAT), g.ints([1])])
                 for t in (n, label)] + [g.op("Unsqueeze", [score, g.ints([1])])]
    rows = g.op("Concat", as_column + [coords], axis=1)
    placeholder = g.op("Concat", [as_column[0], g.op("Expand", [g.const([[-1.0] * 6]),
                                                                g.op("Concat", [g.op("Shape", [n]), g.ints([6])], axis=0)])],
                       axis=1)
    chosen = g.op("Where", [g.op("Unsqueeze", [real, g.ints([1])]), rows, placeholder])
    g.nodes.append(helper.make_node("Reshape", [chosen, g.ints([1, 1, -1, 7])], [out_name], name=g.name("rows")))
    return out_name


def detection_output_nodes(s: DetectionSettings, num_priors, loc, conf, prior, arm_conf=None, arm_loc=None,
                           out_name="detection_out", prefix="detection_out"):
    """(nodes, initializers) computing DetectionOutput's top `out_name` from the named tensors
    of its bottoms (loc [N, P*Lc*4], conf [N, P*C], prior [1, 2, P*4], arm_conf, arm_loc)."""
    if not s.graph_friendly:
        raise ProtonetError(f"layer {prefix} (DetectionOutput): adaptive NMS (nms_param.eta {s.eta:g} < 1) "
                            "has no ONNX form (NonMaxSuppression keeps its threshold)")
    g = GraphBuilder(prefix)
    P, F, K = num_priors, len(s.foreground), s.width(num_priors)
    if F == 0 or K == 0:  # nothing can be kept: one [i, -1, ...] row per image
        num = g.op("Gather", [g.op("Shape", [loc]), g.ints([0])])
        n = g.op("Range", [g.ints(0), g.op("Squeeze", [num, g.ints([0])]), g.ints(1)])
        n = g.op("Unsqueeze", [g.op("Cast", [n], to=TensorProto.FLOAT), g.ints([1])])
        minus = g.op("Expand", [g.const([[-1.0] * 6]), g.op("Concat", [num, g.ints([6])], axis=0)])
        rows = g.op("Concat", [n, minus], axis=1)
        g.nodes.append(helper.make_node("Reshape", [rows, g.ints([1, 1, -1, 7])], [out_name], name=g.name("rows")))
        return g.nodes, g.initializers
    boxes = decoded_boxes(g, s, P, loc, prior, arm_loc)
    scores = class_scores(g, s, P, conf, arm_conf)
    values, order, valid, cand = candidates(g, s, P, scores, boxes)
    keep = nms(g, s, F, K, valid, cand)
    flat_keep = limit_per_image(g, s, F, K, keep, values)
    gather_rows(g, s, F, K, flat_keep, values, order, boxes, out_name)
    return g.nodes, g.initializers


def detection_output_model(s: DetectionSettings, num_priors, shapes, refinedet=False):
    """A stand-alone ONNX model of DetectionOutput (inputs loc, conf, prior[, arm_conf, arm_loc])."""
    names = ["loc", "conf", "prior"] + (["arm_conf", "arm_loc"] if refinedet else [])
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch"] + list(shapes[i][1:]) if n != "prior"
                                            else list(shapes[i])) for i, n in enumerate(names)]
    nodes, inits = detection_output_nodes(s, num_priors, *names)
    out = helper.make_tensor_value_info("detection_out", TensorProto.FLOAT, [1, 1, "rows", 7])
    graph = helper.make_graph(nodes, "detection_output", inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model
