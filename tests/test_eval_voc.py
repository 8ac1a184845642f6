"""VOC AP from DetectionEvaluate rows: Caffe's printed mAP/per-class AP, and the float32 loops."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protonet.errors import ProtonetError
from protonet.eval.voc import DetectionAccumulator, average_precision
from protonet.solver.logger import format_float


def golden_results(fixtures):
    out = {}
    lines = (fixtures / "eval/map_results.txt").read_text().splitlines()[1:]
    for line in lines:
        version, m_ap, per_class = line.split(",")
        out[version] = (m_ap, dict(item.split(":") for item in per_class.split()))
    return out


@pytest.mark.parametrize("version", ["11point", "MaxIntegral"])
def test_rows_give_caffe_printed_map(fixtures, version):
    rows = np.load(fixtures / "eval/detectionevaluate_difficult0.npz")["eval"]
    acc = DetectionAccumulator()
    acc.add(rows)
    m_ap, aps = acc.evaluate(version)
    want_map, want_aps = golden_results(fixtures)[version]
    assert format_float(m_ap) == want_map
    assert {str(k): format_float(v) for k, v in aps.items()} == want_aps


def test_rows_split_over_batches_accumulate_like_one_batch(fixtures):
    rows = np.load(fixtures / "eval/detectionevaluate_difficult1.npz")["eval"].reshape(-1, 5)
    whole = DetectionAccumulator()
    whole.add(rows)
    parts = DetectionAccumulator()
    # positives rows first, then detections in two batches; a second positives row for label 1
    parts.add(rows[:20])
    parts.add(np.concatenate([[[-1, 1, 0, -1, -1]], rows[20:]]))
    for version in ("11point", "MaxIntegral", "Integral"):
        assert parts.evaluate(version) == whole.evaluate(version)


def test_ignored_difficult_matches_do_not_count(fixtures):
    rows = np.load(fixtures / "eval/detectionevaluate_difficult0.npz")["eval"].reshape(-1, 5)
    assert ((rows[:, 3] == 0) & (rows[:, 4] == 0) & (rows[:, 0] >= 0)).sum() == 1
    acc = DetectionAccumulator()
    acc.add(rows)
    assert len(acc.tp[2]) == sum(1 for r in rows if r[0] >= 0 and r[1] == 2) - 1


def caffe_ap_loop(scores, tp, fp, num_pos, version):
    """Caffe's ComputeAP, step by step in float32 (the specification the vector code must meet)."""
    f = np.float32
    pairs_tp = sorted(zip(scores, tp), key=lambda p: -p[0])  # Python's sort is stable
    pairs_fp = sorted(zip(scores, fp), key=lambda p: -p[0])
    tpc, fpc, prec, rec = [], [], [], []
    for (_, t), (_, u) in zip(pairs_tp, pairs_fp):
        tpc.append((tpc[-1] if tpc else 0) + t)
        fpc.append((fpc[-1] if fpc else 0) + u)
    for a, b in zip(tpc, fpc):
        prec.append(f(a) / f(a + b))
        rec.append(f(a) / f(num_pos))
    num = len(prec)
    ap = f(0)
    if version == "11point":
        max_precs = [f(0)] * 11
        start = num - 1
        for j in range(10, -1, -1):
            for i in range(start, -1, -1):
                if float(rec[i]) < j / 10.0:
                    start = i
                    if j > 0:
                        max_precs[j - 1] = max_precs[j]
                    break
                if max_precs[j] < prec[i]:
                    max_precs[j] = prec[i]
        for j in range(10, -1, -1):
            ap = f(ap + f(max_precs[j] / f(11)))
    elif version == "MaxIntegral":
        cur_rec, cur_prec = rec[-1], prec[-1]
        for i in range(num - 2, -1, -1):
            cur_prec = max(prec[i], cur_prec)
            if abs(f(cur_rec - rec[i])) > f(1e-6):
                ap = f(ap + f(cur_prec * abs(f(cur_rec - rec[i]))))
            cur_rec = rec[i]
        ap = f(ap + f(cur_rec * cur_prec))
    else:
        prev = f(0)
        for i in range(num):
            if abs(f(rec[i] - prev)) > f(1e-6):
                ap = f(ap + f(prec[i] * abs(f(rec[i] - prev))))
            prev = rec[i]
    return ap


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.booleans()), min_size=1, max_size=40),
       st.integers(0, 10), st.sampled_from(["11point", "MaxIntegral", "Integral"]))
def test_vector_ap_equals_caffe_loop_bitwise(dets, extra_pos, version):
    scores = np.array([s / 20.0 for s, _ in dets], dtype=np.float32)  # many ties
    tp = np.array([int(t) for _, t in dets])
    fp = 1 - tp
    num_pos = int(tp.sum()) + extra_pos
    if num_pos == 0:
        return
    ap, _, _ = average_precision(scores, tp, fp, num_pos, version)
    assert ap == caffe_ap_loop(scores.tolist(), tp.tolist(), fp.tolist(), num_pos, version)


def test_edge_cases():
    assert average_precision([], [], [], 3, "11point")[0] == 0
    assert average_precision([0.5], [1], [0], 0, "Integral")[0] == 0
    assert average_precision([0.9, 0.8], [1, 1], [0, 0], 2, "MaxIntegral")[0] == 1
    assert average_precision([0.9, 0.8], [1, 1], [0, 0], 2, "11point")[0] == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ProtonetError, match="ap_version"):
        average_precision([0.9], [1], [0], 1, "VOC")
    with pytest.raises(ProtonetError, match="complementary"):
        average_precision([0.9], [1], [1], 1, "Integral")
    acc = DetectionAccumulator()
    assert np.isnan(acc.evaluate()[0])
    acc.add(np.array([[-1, 1, 2, -1, -1], [-1, 2, 1, -1, -1], [0, 1, 0.9, 1, 0]]))
    m_ap, aps = acc.evaluate("Integral")
    assert aps == {1: pytest.approx(0.5)} and m_ap == pytest.approx(0.25) and acc.missing == [2]
