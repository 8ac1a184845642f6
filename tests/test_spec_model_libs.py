"""protonet.spec.model_libs against the forks' own python/caffe/model_libs.py, which the tests run
as the oracle: the same helpers, signatures and emitted layers, per flavour. The forks' files are
not in this repository: those tests need PROTONET_FORK_SOURCES (tests/fork_sources.py) and skip
without it."""
import functools
import inspect
import types

import pytest

from protonet.compat import caffe_modules
from protonet.errors import ProtonetError
from protonet.spec import model_libs
from protonet.spec.net_spec import NetSpec, layers as L

from fork_sources import fork_file


@functools.lru_cache(maxsize=None)
def _load_fork(flavor, path):
    """The fork's model_libs.py as a module, on protonet's `caffe`, with the two shims Python 3
    needs: `xrange`, and its `assert len > 0` (a no-op in Python 2, a TypeError in 3) removed."""
    source = path.read_text().replace("assert len > 0", "pass")
    module = types.ModuleType(f"fork_model_libs_{flavor}")
    module.xrange = range
    with caffe_modules(flavor):
        exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def _fork(flavor):
    """The fork's helpers for `flavor` (skips the test without PROTONET_FORK_SOURCES)."""
    return _load_fork(flavor, fork_file(flavor, "python/caffe/model_libs.py"))


def _data_net():
    net = NetSpec()
    net.data = L.Input(shape=dict(dim=[1, 3, 300, 300]))
    return net


def _both(flavor, build):
    """build(helpers, net) with the fork's helpers and with ours: the two NetParameters."""
    theirs, ours = _data_net(), _data_net()
    build(_fork(flavor), theirs)
    build(model_libs.flavor(flavor), ours)
    return theirs.to_proto(), ours.to_proto()


def _assert_same(flavor, build):
    theirs, ours = _both(flavor, build)
    assert [layer.name for layer in ours.layer] == [layer.name for layer in theirs.layer]
    for a, b in zip(ours.layer, theirs.layer):
        assert a == b, f"layer {a.name}:\n{a}\nvs the fork's\n{b}"


@pytest.mark.parametrize("flavor", model_libs.FLAVORS)
def test_same_helpers_and_signatures(flavor):
    fork, ours = _fork(flavor), model_libs.flavor(flavor)
    fork_helpers = {name for name, obj in vars(fork).items()
                    if inspect.isfunction(obj) and obj.__module__ == fork.__name__}
    ours_helpers = {name for name in model_libs.HELPER_NAMES if hasattr(ours, name)}
    assert ours_helpers == fork_helpers
    for name in fork_helpers:
        a, b = inspect.signature(getattr(ours, name)), inspect.signature(getattr(fork, name))
        assert [(p.name, p.kind, p.default) for p in a.parameters.values()] == \
               [(p.name, p.kind, p.default) for p in b.parameters.values()], name


def test_flavours_differ_where_the_forks_do():
    assert not hasattr(model_libs.ssd, "CreateRefineDetHead")
    assert not hasattr(model_libs.ssd, "DeconvBNLayer")
    assert "prefix" in inspect.signature(model_libs.refinedet.CreateMultiBoxHead).parameters
    assert "prefix" not in inspect.signature(model_libs.ssd.CreateMultiBoxHead).parameters
    # The module's own names are RefineDet's, which has every helper.
    assert model_libs.ConvBNLayer is model_libs.refinedet.ConvBNLayer
    with pytest.raises(ProtonetError, match="flavour"):
        model_libs.flavor("bvlc")

    ssd_net, refinedet_net = _data_net(), _data_net()
    model_libs.ssd.ConvBNLayer(ssd_net, "data", "c", True, True, 8, 3, 1, 1)
    model_libs.refinedet.ConvBNLayer(refinedet_net, "data", "c", True, True, 8, 3, 1, 1)
    ssd_bn = [l for l in ssd_net.to_proto().layer if l.type == "BatchNorm"][0]
    refinedet_bn = [l for l in refinedet_net.to_proto().layer if l.type == "BatchNorm"][0]
    assert len(ssd_bn.param) == 3 and ssd_bn.batch_norm_param.eps == pytest.approx(0.001)
    assert len(refinedet_bn.param) == 0 and not refinedet_bn.HasField("batch_norm_param")


CONV_BN_CASES = [
    dict(use_bn=False, use_relu=True, num_output=16, kernel_size=3, pad=1, stride=1),
    dict(use_bn=True, use_relu=True, num_output=16, kernel_size=3, pad=1, stride=2, lr_mult=2),
    dict(use_bn=True, use_relu=False, num_output=8, kernel_size=[1, 7], pad=[0, 3], stride=[1, 1], use_scale=False),
    dict(use_bn=True, use_relu=True, num_output=8, kernel_size=3, pad=2, stride=1, dilation=2,
         conv_prefix="res_", bn_prefix="bn_", bn_postfix="", scale_prefix="sc_", scale_postfix=""),
    dict(use_bn=True, use_relu=True, num_output=8, kernel_size=3, pad=1, stride=1, eps=1e-5,
         moving_average_fraction=0.9),
    dict(use_bn=True, use_relu=True, num_output=8, kernel_size=3, pad=1, stride=1, use_global_stats=True),
    dict(use_bn=True, use_relu=True, num_output=8, kernel_size=3, pad=1, stride=1, use_global_stats=True,
         use_scale=False),
]


@pytest.mark.parametrize("flavor", model_libs.FLAVORS)
@pytest.mark.parametrize("case", range(len(CONV_BN_CASES)))
def test_conv_bn_layer(flavor, case):
    _assert_same(flavor, lambda m, net: m.ConvBNLayer(net, "data", "conv", **CONV_BN_CASES[case]))


@pytest.mark.parametrize("use_bn", [False, True])
def test_deconv_bn_and_eltwise_layers(use_bn):
    def build(m, net):
        m.ConvBNLayer(net, "data", "a", use_bn, True, 8, 3, 1, 2)
        m.DeconvBNLayer(net, "a", "up", use_bn, True, 8, 2, 0, 2, lr_mult=3)
        m.ConvBNLayer(net, "data", "b", use_bn, False, 8, 1, 0, 1)
        m.EltwiseLayer(net, ["up", "b"], "sum")
    _assert_same("refinedet", build)


@pytest.mark.parametrize("flavor", model_libs.FLAVORS)
def test_res_body(flavor):
    def build(m, net):
        m.ResBody(net, "data", "2a", out2a=8, out2b=8, out2c=32, stride=1, use_branch1=True)
        m.ResBody(net, "res2a", "2b", out2a=8, out2b=8, out2c=32, stride=1, use_branch1=False, eps=1e-4)
        m.ResBody(net, "res2b", "3a", out2a=8, out2b=8, out2c=32, stride=2, use_branch1=True, dilation=2)
    _assert_same(flavor, build)


VGG_CASES = [
    dict(),
    dict(fully_conv=True, reduced=True, dilated=True, dropout=False),
    dict(fully_conv=True, reduced=True, dilated=False, dropout=False),
    dict(fully_conv=True, reduced=False, dilated=True),
    dict(fully_conv=True, reduced=False, dilated=False, freeze_layers=["conv1_1", "conv1_2", "nothere"]),
    dict(fully_conv=True, reduced=True, dilate_pool4=True),
    dict(need_fc=False),
]


@pytest.mark.parametrize("case", range(len(VGG_CASES)))
def test_vggnet_body(case):
    _assert_same("ssd", lambda m, net: m.VGGNetBody(net, "data", **VGG_CASES[case]))


ZF_CASES = [
    dict(),
    dict(fully_conv=True, reduced=True, dilated=True, dropout=False),
    dict(fully_conv=True, reduced=False, dilated=True),
    dict(fully_conv=True, reduced=True, dilated=False, need_fc8=True),
    dict(fully_conv=True, reduced=False, dilated=False, freeze_layers=["conv1", "conv2"]),
    dict(need_fc8=True),
]


@pytest.mark.parametrize("case", range(len(ZF_CASES)))
def test_zfnet_body(case):
    _assert_same("refinedet", lambda m, net: m.ZFNetBody(net, "data", **ZF_CASES[case]))


@pytest.mark.parametrize("flavor", model_libs.FLAVORS)
def test_resnet_bodies(flavor):
    _assert_same(flavor, lambda m, net: m.ResNet101Body(net, "data", use_pool5=True, use_dilation_conv5=True))
    _assert_same(flavor, lambda m, net: m.ResNet152Body(net, "data", use_pool5=False, eps=1e-5))


@pytest.mark.parametrize("flavor", model_libs.FLAVORS)
def test_inception_v3_body(flavor):
    _assert_same(flavor, lambda m, net: m.InceptionV3Body(net, "data", output_pred=True))


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(output_label=False, train=False, anno_type=0, label_map_file="labels.prototxt", batch_size=4.0),
    dict(transform_param=dict(mirror=True, mean_value=[1, 2, 3]), batch_sampler=[{}, {"max_trials": 5}]),
])
def test_create_annotated_data_layer(kwargs):
    def build(m, net):
        tops = m.CreateAnnotatedDataLayer("examples/x_lmdb", **kwargs)
        for i, top in enumerate(tops if isinstance(tops, tuple) else (tops,)):
            net["t{}".format(i)] = top
    _assert_same("ssd", build)


def _head_sources(m, net):
    m.ConvBNLayer(net, "data", "s1", False, True, 16, 3, 1, 2)
    m.ConvBNLayer(net, "s1", "s2", False, True, 16, 3, 1, 2)
    m.ConvBNLayer(net, "s2", "s3", False, True, 16, 3, 1, 2)


MULTIBOX_CASES = [
    dict(num_classes=21, from_layers=["s1", "s2", "s3"], min_sizes=[30, 60, 111], max_sizes=[60, 111, 162],
         aspect_ratios=[[2], [2, 3], [2]], steps=[8, 16, 32], normalizations=[20, -1, -1],
         prior_variance=[0.1, 0.1, 0.2, 0.2], kernel_size=3, pad=1, use_batchnorm=False, flip=True, clip=False),
    dict(num_classes=5, from_layers=["s1", "s2"], min_sizes=[[10, 20], 40], max_sizes=[[], []], aspect_ratios=[2, [3]],
         share_location=False, use_objectness=True, img_height=300, img_width=300, flip=False),
    dict(num_classes=3, from_layers=["s2", "s3"], min_sizes=[40, 80], inter_layer_depth=[8, 0], img_height=300,
         img_width=200, use_batchnorm=True, lr_mult=2, offset=0.25, conf_postfix="_c", loc_postfix="_l", eps=1e-3),
]


@pytest.mark.parametrize("flavor", model_libs.FLAVORS)
@pytest.mark.parametrize("case", range(len(MULTIBOX_CASES)))
def test_create_multibox_head(flavor, case):
    def build(m, net):
        _head_sources(m, net)
        outputs = m.CreateMultiBoxHead(net, data_layer="data", **MULTIBOX_CASES[case])
        net.out = L.Concat(*outputs[:2], axis=1)
    _assert_same(flavor, build)


def test_create_multibox_head_prefix():
    def build(m, net):
        _head_sources(m, net)
        m.CreateMultiBoxHead(net, data_layer="data", num_classes=4, from_layers=["s1", "s2"], min_sizes=[20, 40],
                             prefix="mbox")
    _assert_same("refinedet", build)


REFINEDET_CASES = [
    dict(num_classes=21, from_layers=["s1", "s2", "s3"], from_layers2=["s1", "s2", "s3"], min_sizes=[32, 64, 128],
         max_sizes=[[], [], []], steps=[8, 16, 32], aspect_ratios=[[2], [2], [2]], normalizations=[],
         prior_variance=[0.1, 0.1, 0.2, 0.2], kernel_size=3, pad=1, use_batchnorm=False, flip=True, clip=False),
    dict(num_classes=4, from_layers=["s1", "s2"], from_layers2=["s2", "s3"], min_sizes=[32, 64], max_sizes=[48, 96],
         normalizations=[10, -1], inter_layer_depth=[1, 1], share_location=False, img_height=320, img_width=320),
]


@pytest.mark.parametrize("case", range(len(REFINEDET_CASES)))
def test_create_refinedet_head(case):
    def build(m, net):
        _head_sources(m, net)
        outputs = m.CreateRefineDetHead(net, data_layer="data", **REFINEDET_CASES[case])
        assert len(outputs) == 5
    _assert_same("refinedet", build)


def test_head_argument_checks_name_the_problem():
    net = _data_net()
    with pytest.raises(ProtonetError, match="must provide num_classes"):
        model_libs.CreateMultiBoxHead(net, from_layers=["data"], min_sizes=[10])
    with pytest.raises(ProtonetError, match="from_layers and min_sizes"):
        model_libs.CreateRefineDetHead(net, num_classes=2, from_layers=["data"], min_sizes=[10, 20])


def test_unpack_variable():
    for value, expected in ((3, [3, 3]), ([3], [3, 3]), ([1, 7], [1, 7])):
        assert model_libs.UnpackVariable(value, 2) == expected
