"""bench/gpu.py (make bench-gpu) on a machine without CUDA: it says so and exits 0; its packed sweep's search
space is one tune.py accepts (checked here, where the sweep itself cannot run)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_cuda_says_so_and_exits_0():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible here: the check would run")
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA device here" in done.stdout and "skipping the GPU check" in done.stdout
    assert "Train step" not in done.stdout  # nothing was measured


def test_packed_sweep_space_is_valid():
    from hpcm_tune.sweep.space import parse_space, trial_configs

    space = parse_space(load_bench().sweep_space(), "bench/gpu.py")
    assert space.searcher == "random" and space.scheduler == "fifo" and space.max_concurrent == 4
    configs = list(trial_configs(space))
    assert space.total_trials() == 4 and configs
    assert all(c["preset"] == "small" and c["device"] == "cuda" for c in configs)
