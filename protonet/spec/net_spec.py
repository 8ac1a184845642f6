"""Writing nets in Python: pycaffe's NetSpec, `layers` (L), `params` (P) and `to_proto`.

The rules are Caffe's own, so a script gives the prototxt it gave under pycaffe:

* `net.name = L.Type(...)` or `net['name'] = ...` names the top (and the layer that makes it);
  tops nobody named get Caffe's automatic names, `<Type><count>`, counted per type in the
  order `to_proto` meets them.
* `ntop=N` gives N tops (`ntop=0` gives the layer itself, e.g. Silence); `in_place=True` makes
  the tops the bottoms.
* Keyword arguments go to the layer's own `<type>_param` when it has such a field, otherwise to
  `LayerParameter` (`name`, `include`, `param`, `loss_weight`, `propagate_down`, ...); keys that
  end in `param` always go to `LayerParameter`. `Deconvolution` uses `convolution_param`.
* Lists fill repeated fields (a single value fills a one-element list), dicts fill messages.

One deliberate leniency: an integral float given to an integer field (`iter_size = 32 / 32`
under Python 3 division) is taken as the integer; a non-integral one is an error naming the
field.
"""
from collections import Counter, OrderedDict

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from protonet import caffe_pb2
from protonet.errors import ProtonetError

_INT_TYPES = {
    FieldDescriptor.CPPTYPE_INT32,
    FieldDescriptor.CPPTYPE_INT64,
    FieldDescriptor.CPPTYPE_UINT32,
    FieldDescriptor.CPPTYPE_UINT64,
}


def _layer_type_params():
    """Layer type name -> its `<x>_param` field of LayerParameter, derived as pycaffe does:
    from the message type of each `*_param` field (`PoolingParameter` -> `Pooling`)."""
    table = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith("_param") and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith("Parameter"):
                # the first field of a message type names it (relu_param, not the ports' relu6_param)
                table.setdefault(type_name[: -len("Parameter")], field.name)
    # Deconvolution and the ports' depthwise convolutions are configured by a ConvolutionParameter;
    # the ports' ReLU6 by relu6_param (a ReLUParameter).
    for type_name in ("Deconvolution", "DepthwiseConvolution", "ConvolutionDepthwise"):
        table[type_name] = table["Convolution"]
    table["ReLU6"] = "relu6_param"
    table["Normalize"] = "norm_param"  # the SSD fork's, not OpenCV's earlier normalize_bbox_param
    return table


_TYPE_PARAM_FIELD = _layer_type_params()


def _is_repeated(field):
    return field.is_repeated


def _scalar(field, value, where):
    """A Python value for one scalar field: integral floats become ints for integer fields."""
    if field.cpp_type in _INT_TYPES and isinstance(value, float):
        if not value.is_integer():
            raise ProtonetError(f"{where}: {value!r} is not an integer")
        return int(value)
    if field.cpp_type in _INT_TYPES and hasattr(value, "dtype") and hasattr(value, "item"):
        return _scalar(field, value.item(), where)
    return value


def assign_field(message, name, value, where=""):
    """Assign a Python value to field `name` of `message` the way pycaffe's assign_proto does:
    lists to repeated fields (a lone value is a one-element list), dicts to messages (a list of
    dicts adds one message each), anything else directly. `where` names the place for errors."""
    path = f"{where}.{name}" if where else name
    field = message.DESCRIPTOR.fields_by_name.get(name)
    if field is None:
        raise ProtonetError(f"{where or message.DESCRIPTOR.name}: {message.DESCRIPTOR.name} has no field '{name}'")
    is_message = field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE
    try:
        if _is_repeated(field):
            items = list(value) if isinstance(value, (list, tuple)) else [value]
            container = getattr(message, name)
            for i, item in enumerate(items):
                item_path = f"{path}[{i}]"
                if is_message:
                    if isinstance(item, Message):
                        container.add().CopyFrom(item)
                    elif isinstance(item, dict):
                        sub = container.add()
                        for key, val in item.items():
                            assign_field(sub, key, val, item_path)
                    else:
                        raise ProtonetError(f"{item_path}: expected a dict for message {field.message_type.name}, "
                                            f"got {type(item).__name__}")
                else:
                    container.append(_scalar(field, item, item_path))
        elif is_message:
            if isinstance(value, Message):
                getattr(message, name).CopyFrom(value)
            elif isinstance(value, dict):
                sub = getattr(message, name)
                for key, val in value.items():
                    assign_field(sub, key, val, path)
            else:
                raise ProtonetError(f"{path}: expected a dict for message {field.message_type.name}, "
                                    f"got {type(value).__name__}")
        else:
            setattr(message, name, _scalar(field, value, path))
    except (TypeError, ValueError) as exc:
        raise ProtonetError(f"{path}: cannot take {value!r}: {exc}") from None


def make_message(cls, **fields):
    """`cls(**fields)` with NetSpec's assignment rules (integral floats accepted for int fields),
    e.g. `make_message(caffe_pb2.SolverParameter, **solver_param)`."""
    message = cls()
    for name, value in fields.items():
        assign_field(message, name, value, cls.DESCRIPTOR.name)
    return message


class Top:
    """One output blob of a layer (`fn`), the `n`-th of its tops."""

    __slots__ = ("fn", "n")

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self) -> caffe_pb2.NetParameter:
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _update(self, params):
        self.fn._update(params)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)

    def __repr__(self):
        return f"<Top {self.n} of {self.fn.type_name}>"


class Function:
    """One layer: its type, its bottoms (Tops of other layers) and its parameters."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for i, inp in enumerate(inputs):
            if not isinstance(inp, Top):
                raise ProtonetError(f"L.{type_name}: bottom {i} is a {type(inp).__name__}, not a layer output (Top)")
        self.inputs = tuple(inputs)
        self.params = dict(params)
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = top.fn.type_name + str(autonames[top.fn.type_name])
        return names[top]

    def _name(self, names, autonames):
        # A layer is named after its first top; a layer without tops gets its own automatic name.
        if self not in names:
            if self.ntop > 0:
                names[self] = self._top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = self.type_name + str(autonames[self.type_name])
        return names[self]

    def _update(self, params):
        self.params.update(params)

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for inp in self.inputs:
            inp._to_proto(layers, names, autonames)
            bottoms.append(layers[inp.fn].top[inp.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        elif self.type_name != "Silence":
            for top in self.tops:
                layer.top.append(self._top_name(top, names, autonames))
        layer.name = self._name(names, autonames)

        where = f"layer '{layer.name}' ({self.type_name})"
        type_field = _TYPE_PARAM_FIELD.get(self.type_name)
        layer_fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
        type_fields = layer_fields[type_field].message_type.fields_by_name if type_field else {}
        for key, value in self.params.items():
            if key.endswith("param"):
                assign_field(layer, key, value, where)
            elif key in type_fields:
                assign_field(getattr(layer, type_field), key, value, f"{where} {type_field}")
            elif key in layer_fields:
                assign_field(layer, key, value, where)
            else:
                owner = f"{type_field} or LayerParameter" if type_field else "LayerParameter"
                raise ProtonetError(f"{where}: unknown parameter '{key}' (not a field of {owner})")
        layers[self] = layer


class NetSpec:
    """Named tops, as pycaffe's NetSpec.

    Assign tops as attributes or items (`n.conv1 = L.Convolution(n.data, ...)`); `to_proto`
    gives every layer needed to compute them, in the order they were assigned (dependencies
    first), each top named by its attribute.
    """

    def __init__(self) -> None:
        super().__setattr__("tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named '{name}'") from None

    def __setitem__(self, key, value):
        self.tops[key] = value

    def __getitem__(self, key):
        try:
            return self.tops[key]
        except KeyError:
            raise KeyError(f"NetSpec has no top named '{key}'") from None

    def __delitem__(self, name):
        del self.tops[name]

    def __contains__(self, name):
        return name in self.tops

    def keys(self) -> list[str]:
        """The top names in assignment order, as a list (scripts index it: `net.keys()[-1]`)."""
        return list(self.tops)

    def vals(self) -> list[Top]:
        """The tops in assignment order."""
        return list(self.tops.values())

    def update(self, name: str, params: dict) -> None:
        """Add or change parameters of the layer that makes top `name`."""
        self.tops[name]._update(params)

    def to_proto(self) -> caffe_pb2.NetParameter:
        """The NetParameter of every layer the named tops need (unnamed tops get pycaffe's names)."""
        names = {top: name for name, top in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


def to_proto(*tops: Top) -> caffe_pb2.NetParameter:
    """A NetParameter with every layer needed to compute `tops`; all names automatic."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


class _Layers:
    """`L.Convolution(bottom, num_output=64, ...)`: a layer of any type, by attribute name.
    Returns its Top, a tuple of Tops for ntop > 1, or the layer itself for ntop=0."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer_fn(*bottoms, **params):
            fn = Function(type_name, bottoms, params)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops

        layer_fn.__name__ = type_name
        return layer_fn


class _EnumValues:
    """`P.Pooling.MAX`: the enum values of `PoolingParameter`."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, value_name):
        if value_name.startswith("__"):
            raise AttributeError(value_name)
        cls = getattr(caffe_pb2, self._name + "Parameter", None)
        if cls is None:
            raise AttributeError(f"P.{self._name}: caffe_pb2 has no message {self._name}Parameter")
        try:
            return getattr(cls, value_name)
        except AttributeError:
            raise AttributeError(f"P.{self._name}.{value_name}: {self._name}Parameter has no value "
                                 f"'{value_name}'") from None


class _Params:
    """`P.<Name>.<VALUE>`: enum values of `<Name>Parameter` (P.Pooling.MAX, P.Resize.WARP, ...)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _EnumValues(name)


layers = _Layers()
params = _Params()
