"""Old net and solver definitions brought to the current schema, with the rules of Caffe's upgrade_proto.

Net files go through these steps, each only when needed, in Caffe's order:
  V0 -> V1      `layers { layer { type: "conv" ... } }`: padding layers folded into the conv/pool they
                feed, the flat V0 fields moved into the per-type parameter messages.
  data fields   scale/mean_file/crop_size/mirror of V1 Data/ImageData/WindowData layers move into
                transform_param.
  V1 -> V2      `layers { type: CONVOLUTION blobs_lr: 1 weight_decay: 1 }` becomes
                `layer { type: "Convolution" param { lr_mult: 1 decay_mult: 1 } }`.
  input fields  (only with input_fields_to_layer=True) `input`/`input_dim`/`input_shape` become an
                Input layer. Off by default: protonet's Net reads the fields directly and deploy files
                keep their familiar form.
  BatchNorm     the old three `param {}` of BatchNorm are dropped (the layer fixes them itself).
Solver files: the `solver_type` enum becomes the `type` string.

Caffe stops the program on an inconsistent file; protonet raises ProtonetError naming the file and
layer. Where Caffe only logs "Unknown parameter ... for layer type" and goes on, the upgrade goes on
too and returns the problem lines (also logged as warnings).
"""
import logging

from protonet import caffe_pb2
from protonet.errors import ProtonetError

log = logging.getLogger(__name__)

V1 = caffe_pb2.V1LayerParameter

# V0's lower-case type names -> V1 enum names
_V0_TYPES = {
    "accuracy": "ACCURACY",
    "bnll": "BNLL",
    "concat": "CONCAT",
    "conv": "CONVOLUTION",
    "data": "DATA",
    "dropout": "DROPOUT",
    "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN",
    "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL",
    "images": "IMAGE_DATA",
    "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT",
    "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING",
    "relu": "RELU",
    "sigmoid": "SIGMOID",
    "softmax": "SOFTMAX",
    "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT",
    "tanh": "TANH",
    "window_data": "WINDOW_DATA",
}

# V1 enum names -> current type strings
V1_TYPE_NAMES = {
    "NONE": "",
    "ABSVAL": "AbsVal",
    "ACCURACY": "Accuracy",
    "ARGMAX": "ArgMax",
    "BNLL": "BNLL",
    "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution",
    "DATA": "Data",
    "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise",
    "EXP": "Exp",
    "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN",
    "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN",
    "POOLING": "Pooling",
    "POWER": "Power",
    "RELU": "ReLU",
    "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence",
    "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split",
    "SLICE": "Slice",
    "TANH": "TanH",
    "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

# V0 flat field -> {V0 type: (V1 parameter message, its field)}; any other type is a problem.
_V0_FIELDS = {
    "num_output": {"conv": ("convolution_param", "num_output"),
                   "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"),
                 "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"), "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"), "hdf5_data": ("hdf5_data_param", "source"),
               "images": ("image_data_param", "source"), "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source")},
    "batchsize": {"data": ("data_param", "batch_size"), "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"),
                  "window_data": ("window_data_param", "batch_size")},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}
# V0 fields that go to transform_param whatever the layer type
_V0_TRANSFORM_FIELDS = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size", "mirror": "mirror"}

# V1 data layer types -> the parameter message that used to hold the transformation fields
_V1_DATA_PARAMS = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param", V1.WINDOW_DATA: "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")

_SOLVER_TYPE_NAMES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                      "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def _assign(message, field, value):
    """Set a scalar, append to a repeated field, or copy a message, as the field's kind asks."""
    fd = message.DESCRIPTOR.fields_by_name[field]
    if fd.is_repeated:
        getattr(message, field).append(value)
    elif fd.message_type is not None:
        getattr(message, field).CopyFrom(value)
    else:
        setattr(message, field, value)


# ---------------------------------------------------------------------------------------------- V0


def needs_v0_upgrade(net):
    return any(layer.HasField("layer") for layer in net.layers)


def _fold_padding_layers(net, source):
    """A copy of the V0 net without its "padding" layers; their pad goes to the conv/pool they feed."""
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    del out.layers[:]
    producer = {name: -1 for name in net.input}  # blob -> index (in `net`) of the layer that last wrote it
    for i, conn in enumerate(net.layers):
        v0 = conn.layer
        if v0.type != "padding":
            out.layers.add().CopyFrom(conn)
        for j, blob in enumerate(conn.bottom):
            if blob not in producer:
                raise ProtonetError(f"{source}: layer '{v0.name}': unknown bottom blob '{blob}'")
            src_index = producer[blob]
            if src_index < 0 or net.layers[src_index].layer.type != "padding":
                continue
            pad_conn = net.layers[src_index]
            if v0.type not in ("conv", "pool"):
                raise ProtonetError(f"{source}: layer '{v0.name}': a padding layer feeds a layer of type "
                                    f"'{v0.type}'; only conv and pool layers can take one")
            if len(conn.bottom) != 1:
                raise ProtonetError(f"{source}: layer '{v0.name}': a conv/pool layer fed by a padding layer "
                                    f"must have one bottom, it has {len(conn.bottom)}")
            if len(pad_conn.bottom) != 1 or len(pad_conn.top) != 1:
                raise ProtonetError(f"{source}: padding layer '{pad_conn.layer.name}' must have one bottom "
                                    f"and one top")
            folded = out.layers[-1]
            folded.layer.pad = pad_conn.layer.pad
            folded.bottom[j] = pad_conn.bottom[0]
        for blob in conn.top:
            producer[blob] = i
    return out


def _upgrade_v0_layer(conn, problems, source):
    """A V1LayerParameter from a V1 connection holding a V0 layer."""
    out = V1()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        return out
    v0 = conn.layer
    kind = v0.type
    if v0.HasField("name"):
        out.name = v0.name
    if v0.HasField("type"):
        if kind not in _V0_TYPES:
            raise ProtonetError(f"{source}: layer '{v0.name}': unknown V0 layer type '{kind}'")
        out.type = V1.LayerType.Value(_V0_TYPES[kind])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for fd, value in v0.ListFields():
        name = fd.name
        if name in _V0_TRANSFORM_FIELDS:
            setattr(out.transform_param, _V0_TRANSFORM_FIELDS[name], value)
            continue
        targets = _V0_FIELDS.get(name)
        if targets is None:
            continue  # name, type, blobs, blobs_lr, weight_decay above; new_num/new_channels are dropped
        if kind not in targets:
            problems.append(f"{source}: layer '{v0.name}': unknown parameter {name} for layer type {kind}")
            continue
        param_name, field = targets[kind]
        param = getattr(out, param_name)
        if field is None:
            param.CopyFrom(value)
        elif name == "pool":
            pool_name = caffe_pb2.V0LayerParameter.PoolMethod.Name(value)
            param.pool = caffe_pb2.PoolingParameter.PoolMethod.Value(pool_name)
        else:
            _assign(param, field, value)
    return out


def upgrade_v0_net(net, source="<net>"):
    """Rewrite a V0 net in place as a V1 net (`layers` with enum types). Returns the problem lines."""
    problems = []
    padded = _fold_padding_layers(net, source)
    # Caffe keeps only these fields of a V0 net.
    net.Clear()
    if padded.HasField("name"):
        net.name = padded.name
    net.layers.extend(_upgrade_v0_layer(conn, problems, source) for conn in padded.layers)
    net.input.extend(padded.input)
    net.input_dim.extend(padded.input_dim)
    if padded.HasField("force_backward"):
        net.force_backward = padded.force_backward
    return problems


# ------------------------------------------------------------------------------------ data fields


def needs_data_upgrade(net):
    for layer in net.layers:
        param_name = _V1_DATA_PARAMS.get(layer.type)
        if param_name and any(getattr(layer, param_name).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def upgrade_data_transformation(net):
    """Move scale/mean_file/crop_size/mirror of V1 data layers into their transform_param."""
    for layer in net.layers:
        param_name = _V1_DATA_PARAMS.get(layer.type)
        if param_name is None:
            continue
        param = getattr(layer, param_name)
        for field in _TRANSFORM_FIELDS:
            if param.HasField(field):
                setattr(layer.transform_param, field, getattr(param, field))
                param.ClearField(field)


# ------------------------------------------------------------------------------------------ V1


def needs_v1_upgrade(net):
    return len(net.layers) > 0


# the *_param messages that V1 and current layers share, by name
_V1_PARAM_MESSAGES = tuple(
    fd.name for fd in V1.DESCRIPTOR.fields
    if fd.message_type is not None and fd.name.endswith("_param")
    and fd.name in caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
)


def _v1_type_name(layer, source):
    try:
        enum_name = V1.LayerType.Name(layer.type)
    except ValueError:
        raise ProtonetError(f"{source}: layer '{layer.name}': unknown V1 layer type {layer.type}") from None
    return V1_TYPE_NAMES[enum_name]


def upgrade_v1_layer(v1, source="<net>", problems=None):
    """A LayerParameter from a V1LayerParameter (type enum -> string, blobs_lr/weight_decay/param names/
    blob_share_mode -> ParamSpec)."""
    layer = caffe_pb2.LayerParameter()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = _v1_type_name(v1, source)
    layer.blobs.extend(v1.blobs)

    def param_spec(i):
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        param_spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        param_spec(i).share_mode = caffe_pb2.ParamSpec.DimCheckMode.Value(V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        param_spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        param_spec(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for name in _V1_PARAM_MESSAGES:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    if v1.HasField("layer") and problems is not None:
        problems.append(f"{source}: layer '{v1.name}': has a V0 layer inside a V1 layer; ignored")
    return layer


def upgrade_v1_net(net, source="<net>"):
    """Rewrite `layers` (V1) as `layer` (current) in place. Returns the problem lines."""
    if len(net.layer):
        raise ProtonetError(
            f"{source}: the net has both 'layer' and 'layers' fields; refusing to upgrade an inconsistent "
            f"file: write every layer in the current form `layer {{ type: \"Convolution\" ... }}`")
    problems = []
    layers = [upgrade_v1_layer(v1, source, problems) for v1 in net.layers]
    net.ClearField("layers")
    net.layer.extend(layers)
    return problems


# -------------------------------------------------------------------------------- input fields


def needs_input_upgrade(net):
    return len(net.input) > 0


def upgrade_net_input(net, source="<net>"):
    """Turn `input` with `input_shape` or `input_dim` into a leading Input layer; drop bare `input`s
    (a legacy caffemodel's). Shapes must be given for every input (Caffe aborts reading past them)."""
    n = len(net.input)
    if len(net.input_shape) and len(net.input_shape) != n:
        raise ProtonetError(f"{source}: {n} inputs but {len(net.input_shape)} input_shape; give one per input")
    if not len(net.input_shape) and len(net.input_dim) and len(net.input_dim) != 4 * n:
        raise ProtonetError(f"{source}: {n} inputs but {len(net.input_dim)} input_dim values; give 4 per input")
    if len(net.input_shape) or len(net.input_dim):
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if len(net.input_shape):
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        others = list(net.layer)
        net.ClearField("layer")
        net.layer.append(layer)
        net.layer.extend(others)
    for field in ("input", "input_shape", "input_dim"):
        net.ClearField(field)


# ---------------------------------------------------------------------------------- BatchNorm


def needs_batchnorm_upgrade(net):
    return any(layer.type == "BatchNorm" and len(layer.param) == 3 for layer in net.layer)


def upgrade_batchnorm(net):
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            layer.ClearField("param")


# ---------------------------------------------------------------------------------------- net


def upgrade_net(net: caffe_pb2.NetParameter, source: str = "<net>", input_fields_to_layer: bool = False) -> list:
    """Upgrade a NetParameter in place as Caffe's UpgradeNetAsNeeded does (see the module doc).

    Returns the list of problems (parameters that had no place in the new form); they are also logged.
    """
    problems = []
    if needs_v0_upgrade(net):
        log.info("Attempting to upgrade input file specified using deprecated V0LayerParameter: %s", source)
        problems += upgrade_v0_net(net, source)
    if needs_data_upgrade(net):
        log.info("Attempting to upgrade input file specified using deprecated transformation parameters: %s",
                 source)
        upgrade_data_transformation(net)
    if needs_v1_upgrade(net):
        log.info("Attempting to upgrade input file specified using deprecated V1LayerParameter: %s", source)
        problems += upgrade_v1_net(net, source)
    if input_fields_to_layer and needs_input_upgrade(net):
        log.info("Attempting to upgrade input file specified using deprecated input fields: %s", source)
        upgrade_net_input(net, source)
    if needs_batchnorm_upgrade(net):
        log.info("Attempting to upgrade batch norm layers using deprecated params: %s", source)
        upgrade_batchnorm(net)
    for line in problems:
        log.warning("%s", line)
    return problems


# ------------------------------------------------------------------------------------- solver


def upgrade_solver(solver: caffe_pb2.SolverParameter, source: str = "<solver>") -> bool:
    """Turn the old `solver_type` enum into the `type` string, in place (Caffe's UpgradeSolverAsNeeded)."""
    if not solver.HasField("solver_type"):
        return False
    if solver.HasField("type"):
        raise ProtonetError(f"{source}: both the old 'solver_type' (enum) and 'type' (string) are given; "
                            f"keep only 'type'")
    enum_name = caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)
    log.info("Attempting to upgrade input file specified using deprecated 'solver_type' field (enum): %s",
             source)
    solver.type = _SOLVER_TYPE_NAMES[enum_name]
    solver.ClearField("solver_type")
    return True
