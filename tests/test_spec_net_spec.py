"""NetSpec, layers (L), params (P), to_proto: pycaffe's semantics, checked against the RefineDet
fork's own python/caffe/net_spec.py run as the oracle (not in this repository: those tests need
PROTONET_FORK_SOURCES, tests/fork_sources.py, and skip without it), plus protonet's additions
(integral floats for int fields, errors that name the layer and field)."""
import functools
import types

import pytest

import protonet
from protonet import caffe_pb2
from protonet.errors import ProtonetError
from protonet.spec import net_spec

from fork_sources import fork_file


@functools.lru_cache(maxsize=None)
def _load_oracle(path):
    """pycaffe's net_spec.py on protonet's schema (its `six` and relative proto import replaced)."""
    source = path.read_text()
    source = source.replace("from .proto import caffe_pb2", "").replace("import six", "")
    module = types.ModuleType("pycaffe_net_spec")
    module.caffe_pb2 = caffe_pb2
    module.six = types.SimpleNamespace(iteritems=lambda d: iter(d.items()))
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def _both(program):
    """program(NetSpec, L, P, to_proto) -> NetParameter, run with pycaffe's and with ours."""
    pycaffe = _load_oracle(fork_file("refinedet", "python/caffe/net_spec.py"))
    theirs = program(pycaffe.NetSpec, pycaffe.layers, pycaffe.params, pycaffe.to_proto)
    ours = program(net_spec.NetSpec, net_spec.layers, net_spec.params, net_spec.to_proto)
    return ours, theirs


def _assert_same(program):
    ours, theirs = _both(program)
    assert str(ours) == str(theirs)
    assert ours == theirs


def test_names_auto_names_and_order():
    def program(NetSpec, L, P, to_proto):
        n = NetSpec()
        n.data, n.label = L.Data(ntop=2, source="db", batch_size=4)
        a = L.Convolution(n.data, num_output=4, kernel_size=3)      # unnamed: Convolution1
        b = L.ReLU(a, in_place=True)                                 # unnamed in place: layer ReLU1, blob Convolution1
        n.conv2 = L.Convolution(b, num_output=4, kernel_size=1)
        n.relu2 = L.ReLU(n.conv2, in_place=True)
        two = L.Slice(n.relu2, ntop=2, slice_point=[2])
        n.first = two[0]                                             # the other top gets an automatic name
        c = L.Convolution(two[1], num_output=2, kernel_size=1)
        n.sum = L.Eltwise(n.first, c)
        n.alias = n.sum                                              # two names for one top: the later wins
        n.loss = L.SoftmaxWithLoss(n.sum, n.label)
        return n.to_proto()

    _assert_same(program)


def test_to_proto_of_tops_names_everything_automatically():
    def program(NetSpec, L, P, to_proto):
        data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
        conv = L.Convolution(data, num_output=2, kernel_size=3)
        pool = L.Pooling(L.ReLU(conv, in_place=True), pool=P.Pooling.MAX, kernel_size=2, stride=2)
        return to_proto(pool, L.Pooling(conv, pool=P.Pooling.AVE, global_pooling=True))

    _assert_same(program)


def test_silence_and_layers_without_tops():
    def program(NetSpec, L, P, to_proto):
        n = NetSpec()
        n.data, n.label = L.Data(ntop=2, source="db", batch_size=1)
        n.silence = L.Silence(n.label)                 # the RefineDet fork writes no top for Silence
        n.conv = L.Convolution(n.data, num_output=1, kernel_size=1)
        L.Silence(n.conv, ntop=0)                      # not reachable from a named top: not emitted
        n.shown = L.Eltwise(n.conv, n.conv)
        return n.to_proto()

    _assert_same(program)


def test_parameters_go_where_pycaffe_puts_them():
    def program(NetSpec, L, P, to_proto):
        n = NetSpec()
        n.data, n.label = L.AnnotatedData(
            name="data", ntop=2, include=dict(phase=caffe_pb2.Phase.Value("TRAIN")),
            transform_param=dict(mirror=True, mean_value=[104, 117, 123],
                                 resize_param=dict(prob=1, resize_mode=P.Resize.WARP, height=8, width=8,
                                                   interp_mode=[P.Resize.LINEAR, P.Resize.AREA]),
                                 emit_constraint=dict(emit_type=caffe_pb2.EmitConstraint.CENTER)),
            data_param=dict(source="db", batch_size=2, backend=P.Data.LMDB),
            annotated_data_param=dict(label_map_file="", batch_sampler=[{"sampler": {}, "max_trials": 1},
                                                                         {"sampler": {"min_scale": 0.3},
                                                                          "sample_constraint": {"min_jaccard_overlap": 0.5}}]))
        n.conv = L.Convolution(n.data, num_output=8, kernel_size=3, pad=1, dilation=1,
                               param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)],
                               weight_filler=dict(type="xavier"), bias_filler=dict(type="constant", value=0))
        n.up = L.Deconvolution(n.conv, num_output=8, kernel_size=2, stride=2, bias_term=False,
                               param=[dict(lr_mult=1)])
        n.norm = L.Normalize(n.up, scale_filler=dict(type="constant", value=20), across_spatial=False,
                             channel_shared=False)
        n.prior = L.PriorBox(n.norm, n.data, min_size=[30.0], max_size=60, aspect_ratio=[2, 3], flip=True,
                             clip=False, variance=[0.1, 0.1, 0.2, 0.2], step=8, offset=0.5)
        n.loss = L.MultiBoxLoss(n.norm, n.norm, n.prior, n.label,
                                multibox_loss_param=dict(loc_loss_type=P.MultiBoxLoss.SMOOTH_L1,
                                                         mining_type=P.MultiBoxLoss.MAX_NEGATIVE,
                                                         code_type=P.PriorBox.CENTER_SIZE, num_classes=21),
                                loss_param=dict(normalization=P.Loss.VALID), loss_weight=1,
                                propagate_down=[True, True, False, False],
                                include=dict(phase=caffe_pb2.Phase.Value("TRAIN")))
        n.update("conv", {"dilation": 2, "stride": 1})
        return n.to_proto()

    _assert_same(program)


def _naming_program(NetSpec, L, P, to_proto):
    n = NetSpec()
    n.data, n.label = L.Data(ntop=2, source="db", batch_size=4)
    a = L.Convolution(n.data, num_output=4, kernel_size=3)
    n.conv2 = L.Convolution(L.ReLU(a, in_place=True), num_output=4, kernel_size=1)
    two = L.Slice(n.conv2, ntop=2, slice_point=[2])
    n.first = two[0]
    n.sum = L.Eltwise(n.first, L.Convolution(two[1], num_output=2, kernel_size=1))
    n.silence = L.Silence(n.label)
    return n.to_proto()


# What pycaffe (the RefineDet fork's net_spec.py) writes for _naming_program: a layer takes its first
# top's name; unnamed tops are <Type><count>; in-place layers write their bottom; Silence has no top.
NAMING_EXPECTED = [
    ("data", "Data", [], ["data", "label"]),
    ("Convolution1", "Convolution", ["data"], ["Convolution1"]),
    ("ReLU1", "ReLU", ["Convolution1"], ["Convolution1"]),
    ("conv2", "Convolution", ["Convolution1"], ["conv2"]),
    ("first", "Slice", ["conv2"], ["first", "Slice1"]),
    ("Convolution2", "Convolution", ["Slice1"], ["Convolution2"]),
    ("sum", "Eltwise", ["first", "Convolution2"], ["sum"]),
    ("silence", "Silence", ["label"], []),
]


def test_naming_without_the_oracle():
    proto = _naming_program(net_spec.NetSpec, net_spec.layers, net_spec.params, net_spec.to_proto)
    assert [(l.name, l.type, list(l.bottom), list(l.top)) for l in proto.layer] == NAMING_EXPECTED


def test_naming_expectation_is_pycaffes():
    pycaffe = _load_oracle(fork_file("refinedet", "python/caffe/net_spec.py"))
    proto = _naming_program(pycaffe.NetSpec, pycaffe.layers, pycaffe.params, pycaffe.to_proto)
    assert [(l.name, l.type, list(l.bottom), list(l.top)) for l in proto.layer] == NAMING_EXPECTED


def test_netspec_access():
    n = protonet.NetSpec()
    n.data = protonet.layers.Input(shape=dict(dim=[1, 3, 4, 4]))
    n["conv"] = protonet.layers.Convolution(n.data, num_output=1, kernel_size=1)
    assert n.keys() == ["data", "conv"] and n.keys()[-1] == "conv"
    assert n.vals() == [n.data, n["conv"]]
    assert "conv" in n and "nope" not in n
    with pytest.raises(AttributeError):
        n.nope
    with pytest.raises(KeyError):
        n["nope"]
    del n["conv"]
    assert n.keys() == ["data"]
    assert protonet.params.Pooling.MAX == caffe_pb2.PoolingParameter.MAX
    assert protonet.params.Solver.GPU == caffe_pb2.SolverParameter.GPU
    with pytest.raises(AttributeError, match="Pooling"):
        protonet.params.Pooling.MAXIMUM


def test_integral_floats_fill_int_fields():
    L = net_spec.layers
    n = net_spec.NetSpec()
    n.data = L.Input(shape=dict(dim=[1.0, 3, 8.0, 8]))
    n.conv = L.Convolution(n.data, num_output=32 / 2, kernel_size=3.0, pad=[1.0])
    proto = n.to_proto()
    assert list(proto.layer[0].input_param.shape[0].dim) == [1, 3, 8, 8]
    assert proto.layer[1].convolution_param.num_output == 16
    assert list(proto.layer[1].convolution_param.kernel_size) == [3]


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_output=2.5), r"layer 'conv' \(Convolution\).*num_output: 2.5 is not an integer"),
    (dict(num_output=2, pad=[1, 0.5]), r"layer 'conv' \(Convolution\).*pad\[1\]: 0.5 is not an integer"),
    (dict(num_output=2, nonsense=1), r"layer 'conv' \(Convolution\): unknown parameter 'nonsense'"),
    (dict(num_output=2, weight_filler=dict(kind="xavier")), r"weight_filler: FillerParameter has no field 'kind'"),
    (dict(num_output="two"), r"num_output: cannot take 'two'"),
])
def test_bad_values_name_the_layer_and_field(kwargs, message):
    n = net_spec.NetSpec()
    n.data = net_spec.layers.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.conv = net_spec.layers.Convolution(n.data, **kwargs)
    with pytest.raises(ProtonetError, match=message):
        n.to_proto()


def test_bottom_must_be_a_top():
    with pytest.raises(ProtonetError, match="bottom 0"):
        net_spec.layers.ReLU("data")


def test_make_message_and_compat_solver_parameter():
    solver = net_spec.make_message(caffe_pb2.SolverParameter, iter_size=32 / 32, test_iter=4952 / 8,
                                   stepvalue=[8e4, 1e5], base_lr=0.001, type="SGD")
    assert solver.iter_size == 1 and list(solver.test_iter) == [619] and list(solver.stepvalue) == [80000, 100000]
    with pytest.raises(ProtonetError, match="SolverParameter.iter_size: 1.5 is not an integer"):
        net_spec.make_message(caffe_pb2.SolverParameter, iter_size=1.5)

    from protonet.compat.caffe.proto import caffe_pb2 as compat_pb2

    solver = compat_pb2.SolverParameter(train_net="t.prototxt", iter_size=1.0, test_iter=[625.0],
                                        solver_mode=compat_pb2.SolverParameter.GPU)
    assert isinstance(solver, caffe_pb2.SolverParameter)
    assert isinstance(solver, compat_pb2.SolverParameter)
    assert solver.iter_size == 1 and solver.solver_mode == caffe_pb2.SolverParameter.GPU
    shape = compat_pb2.BlobShape(dim=[1, 3, 300.0, 300])
    assert list(shape.dim) == [1, 3, 300, 300]
    assert compat_pb2.Phase.Value("TEST") == compat_pb2.TEST == 1
    with pytest.raises(ProtonetError, match="iter_size"):
        compat_pb2.SolverParameter(iter_size=0.5)


def test_from_protonet_import_layers_works_after_the_layer_package_is_loaded():
    """protonet/layers/ is also the package of layer implementations: once it is imported,
    `from protonet import layers as L` still gives the NetSpec DSL."""
    import protonet.layers  # noqa: F401  (the implementations: registers every type)
    from protonet import NetSpec, layers as L, params as P

    n = NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.pool = L.Pooling(n.data, pool=P.Pooling.MAX, kernel_size=2)
    assert [layer.type for layer in n.to_proto().layer] == ["Input", "Pooling"]


def test_the_layers_attribute_is_the_dsl_and_the_implementations_come_through_imports():
    """The design chosen for the name clash (see protonet/__init__.py): the attribute
    `protonet.layers` is always pycaffe's `L`; the torch package is reached by importing from it."""
    import sys

    import protonet.layers  # noqa: F401  (binds nothing over the DSL)
    import protonet.spec
    from protonet.layers import LAYERS
    from protonet.layers.priorbox import PriorBoxLayer

    assert protonet.layers is protonet.spec.layers is net_spec.layers
    assert protonet.params is protonet.spec.params is net_spec.params
    package = sys.modules["protonet.layers"]
    assert package is not protonet.layers and package.LAYERS is LAYERS
    assert LAYERS["PriorBox"] is PriorBoxLayer
    # The package does not double as the DSL any more: no Caffe type names on it.
    assert not hasattr(package, "Convolution") and not hasattr(package, "__getattr__")
    # Other attributes of protonet are set as usual.
    protonet._test_attribute = 1
    assert protonet._test_attribute == 1
    del protonet._test_attribute
