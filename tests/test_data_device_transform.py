"""The data transform finished on the device (protonet/data/device_transform.py), run here on CPU
tensors, against the CPU path with the same draws: exact without the float steps, close per image
and equal in distribution with them."""
import numpy as np
import pytest
import torch

from protonet import caffe_pb2
from protonet.data.device_transform import deferred_sample, device_batch
from protonet.data.records import Sample
from protonet.data.transform import AnnotatedPipeline, Transformer
from protonet.errors import ProtonetError
from protonet.io.prototxt import parse_prototxt

SAMPLERS = ["sampler { } max_trials: 1 max_sample: 1"] + [
    "sampler { min_scale: 0.3 max_scale: 1.0 min_aspect_ratio: 0.5 max_aspect_ratio: 2.0 } "
    f"sample_constraint {{ min_jaccard_overlap: {j} }} max_trials: 50 max_sample: 1" for j in (0.1, 0.3, 0.5)]


def transform_param(interp, distort):
    return parse_prototxt(f"""
        mirror: true mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.5
        resize_param {{ prob: 1 resize_mode: WARP height: 64 width: 80 interp_mode: {interp} }}
        emit_constraint {{ emit_type: CENTER }}
        distort_param {{ {distort} }}
        expand_param {{ prob: 0.5 max_expand_ratio: 3.0 }}""", caffe_pb2.TransformationParameter(), "t")


def image(seed):
    rng = np.random.default_rng(seed)
    h, w = 90 + seed % 7 * 9, 120 - seed % 5 * 8
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / (7 + k)) * 60 + np.cos(yy / (5 + k)) * 50 + 110 + 20 * k for k in range(3)], -1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def sample(seed):
    return Sample(f"img{seed}", image(seed), annotated=True,
                  boxes=np.array([[0.1, 0.2, 0.5, 0.7], [0.45, 0.3, 0.9, 0.95]], np.float32),
                  labels=np.array([1, 2]), instance_ids=np.zeros(2, np.int64), difficult=np.zeros(2, bool))


def both_paths(tp, seeds):
    pipeline = AnnotatedPipeline(Transformer(tp, caffe_pb2.TRAIN),
                                 [parse_prototxt(s, caffe_pb2.BatchSampler(), "s") for s in SAMPLERS])
    cpu, items = [], []
    for seed in seeds:
        chw, out = pipeline(sample(seed), np.random.default_rng(seed))
        item, dev_out = deferred_sample(pipeline, sample(seed), np.random.default_rng(seed))
        cpu.append(chw)
        items.append(item)
        assert np.array_equal(out.boxes, dev_out.boxes) and np.array_equal(out.labels, dev_out.labels)
    dev = device_batch(items, 64, 80, [104, 117, 123], 0.5, torch.device("cpu")).numpy()
    return np.stack(cpu), dev, items


def test_exact_without_float_steps():
    """Tables (brightness, contrast), channel order, NEAREST resize, mirror, mean and scale: bit for bit."""
    tp = transform_param("NEAREST", "brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 "
                                    "contrast_lower: 0.5 contrast_upper: 1.5 random_order_prob: 0.5")
    cpu, dev, items = both_paths(tp, range(40))
    assert any(i.plan for i in items) and any(i.mirror for i in items)
    assert any(i.rect != (0, 0) + i.pixels.shape[:2] for i in items)   # expanded canvases too
    assert np.array_equal(cpu, dev)


def test_same_draws_close_and_same_distribution():
    """Saturation/hue in float HSV and LINEAR resize: within a few levels per image, and the
    statistics of many draws agree."""
    tp = transform_param("LINEAR", "brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 "
                                   "contrast_lower: 0.5 contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18 "
                                   "saturation_prob: 0.5 saturation_lower: 0.5 saturation_upper: 1.5")
    cpu, dev, items = both_paths(tp, range(120))
    assert any(op[0] == "hsv" for i in items for op in i.plan)
    per_image = np.abs(cpu - dev).reshape(len(cpu), -1).mean(axis=1) / 0.5   # in 8-bit levels
    assert np.median(per_image) < 0.6 and per_image.max() < 3.0, per_image.max()
    for axis in [(0, 2, 3)]:
        assert np.abs(cpu.mean(axis=axis) - dev.mean(axis=axis)).max() < 0.25
        assert np.abs(cpu.std(axis=axis) - dev.std(axis=axis)).max() < 0.25
    hist_cpu = np.histogram(cpu, bins=32, range=(-130, 80))[0] / cpu.size
    hist_dev = np.histogram(dev, bins=32, range=(-130, 80))[0] / dev.size
    assert np.abs(hist_cpu - hist_dev).sum() < 0.05


def test_layer_option_and_refusals(tmp_path):
    from protonet.data.device_transform import check_supported

    tp = transform_param("LINEAR", "brightness_prob: 0.5 brightness_delta: 32")
    check_supported(tp, "here")
    tp.crop_size = 32
    with pytest.raises(ProtonetError, match="no crop_size"):
        check_supported(tp, "here")
    tp.ClearField("crop_size")
    tp.resize_param.resize_mode = caffe_pb2.ResizeParameter.FIT_SMALL_SIZE
    with pytest.raises(ProtonetError, match="WARP"):
        check_supported(tp, "here")


def test_annotated_data_layer_on_device_option(fixtures):
    """The AnnotatedData layer with the option gives batches of the CPU path's shape and boxes."""
    import dataclasses

    from protonet.layers.base import NetContext
    from protonet.net import Net

    text = (fixtures / "data" / "annotated_data_identity_sampler.prototxt").read_text()
    param = parse_prototxt(text, caffe_pb2.NetParameter(), "net")
    layer = next(l for l in param.layer if l.type == "AnnotatedData")
    if not layer.transform_param.HasField("resize_param"):
        pytest.skip("fixture has no resize_param")
    root = str(fixtures / "data")
    ctx = NetContext(phase=caffe_pb2.TRAIN, seed=3, data_workers=0, root_dir=root)
    cpu = Net(param, phase="TRAIN", ctx=ctx)
    dev = Net(param, phase="TRAIN", ctx=dataclasses.replace(ctx, data_on_device=True))
    a, b = cpu(), dev()
    top = layer.top[0]
    assert a[top].shape == b[top].shape
    assert torch.equal(a[layer.top[1]], b[layer.top[1]])
    assert float((a[top] - b[top]).abs().mean()) < 2.0


def test_device_feeder_keeps_the_order_and_counts_what_it_sent_ahead():
    from protonet.data.loader import DeviceFeeder

    batches = iter([(torch.full((1,), float(i)), torch.full((1,), -float(i))) for i in range(5)])
    feeder = DeviceFeeder(batches)
    cpu = torch.device("cpu")
    got = [float(feeder.next(cpu)[0]) for _ in range(3)]
    assert got == [0.0, 1.0, 2.0]
    assert feeder.reset() == 0                # nothing is sent ahead on the CPU
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        data, label = feeder.next(cuda)
        assert data.device.type == "cuda" and float(data) == 3.0 and float(label) == -3.0
        assert feeder.reset() == 1            # batch 4 was already on its way
