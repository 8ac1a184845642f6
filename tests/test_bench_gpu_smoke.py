"""bench/bench_gpu.py's CPU smoke mode: the GPU benchmark script builds and steps both nets in
every precision it knows (batch 1, one step) so that it runs when a GPU machine is at hand."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_gpu_smoke():
    from conftest import shared_path

    shared_path("data", "voc-images")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--smoke"], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for model in ("ssd300", "refinedet320"):
        for config in ("fp32", "bf16"):
            line = next((l for l in out.splitlines() if l.split()[:2] == [model, config]), None)
            assert line is not None and "failed" not in line, out
            assert float(line.split()[2]) > 0
    assert "torchvision" in out


def test_bench_gpu_without_a_device_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0 and "GPU not measured" in proc.stdout
