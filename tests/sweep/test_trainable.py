"""The trainable adapter's pieces that need no Ray runtime, and the FakeEngine it is tested with."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import fake_engine
import pytest
import torch
from fake_engine import FakeEngine

from hpcm_tune import metrics
from hpcm_tune.sweep import cli
from hpcm_tune.sweep import trainable as tr

ROOT = Path(__file__).resolve().parents[2]


def test_non_finite_watched_metric_raises_with_epoch():
    tr.check_finite({metrics.EVAL_LOSS: 1.0, metrics.EVAL_PSNR: math.nan, metrics.EPOCH: 3}, (metrics.EVAL_LOSS,))
    with pytest.raises(tr.NonFiniteMetricError, match="epoch 3: non-finite .*eval/loss"):
        tr.check_finite({metrics.EVAL_LOSS: math.inf, metrics.EPOCH: 3}, (metrics.EVAL_LOSS,))


def test_engines_registry_and_unknown_name():
    assert tr.resolve_engine(fake_engine.NAME) is FakeEngine  # registered by the test support, not production
    assert tr.resolve_engine(tr.ENGINES.get(fake_engine.NAME)) is FakeEngine  # by path, as a Ray worker gets it
    assert callable(tr.resolve_engine("hpcm"))
    with pytest.raises(ValueError, match="unknown engine 'tpu'; valid: fake, hpcm"):
        tr.make_trainable("tpu")
    assert tr.make_trainable(fake_engine.NAME).__name__ == "hpcm_trial"


def test_production_registers_only_the_real_engine():
    """A fresh interpreter (no test support imported) has one engine, and tune.py offers no choice of it."""
    code = "import json; from hpcm_tune.sweep import trainable; print(json.dumps(list(trainable.ENGINES)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == ["hpcm"]
    helped = subprocess.run([sys.executable, "tune.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "--space" in helped.stdout, helped.stderr[-2000:]
    assert "--engine" not in helped.stdout and "fake" not in helped.stdout
    with pytest.raises(SystemExit) as info:
        cli.main(["--engine", "fake", "--dry-run"])
    assert info.value.code == 2


def test_memory_fraction_only_when_sharing_a_gpu():
    assert tr.set_cuda_memory_fraction(0.0) is None
    assert tr.set_cuda_memory_fraction(1.0) is None
    if not torch.cuda.is_available():
        assert tr.set_cuda_memory_fraction(0.5) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_memory_fraction_caps_allocations_on_gpu():
    assert tr.set_cuda_memory_fraction(0.25) == 0.25
    total = torch.cuda.get_device_properties(0).total_memory
    with pytest.raises(torch.cuda.OutOfMemoryError):
        torch.empty(int(total * 0.5), dtype=torch.uint8, device="cuda")
    tr.set_cuda_memory_fraction(0.999)


def test_fake_engine_resume_equals_uninterrupted(tmp_path):
    cfg = {"lmbda": 0.01, "epochs": 5, "gamma_s1": 0.003}
    full: list[dict] = []
    FakeEngine(cfg).run(lambda m, d: full.append(dict(m)))
    first: list[tuple[dict, str]] = []

    def stop_after_two(m, d):
        first.append((dict(m), str(d)))
        if m[metrics.EPOCH] == 2:
            import shutil

            shutil.copytree(d, tmp_path / "ckpt")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        FakeEngine(cfg).run(stop_after_two)
    resumed = FakeEngine(cfg)
    resumed.restore(tmp_path / "ckpt")
    rest: list[dict] = []
    resumed.run(lambda m, d: rest.append(dict(m)))
    assert [m for m, _ in first] + rest == full
    with pytest.raises(ValueError, match="lmbda"):
        FakeEngine({**cfg, "lmbda": 0.02}).restore(tmp_path / "ckpt")


def test_fake_engine_ranks_configs_like_a_search_needs():
    def final(**kw):
        out: list[dict] = []
        FakeEngine({"lmbda": 0.01, "epochs": 4, **kw}).run(lambda m, d: out.append(m))
        return out[-1][metrics.EVAL_LOSS]

    assert final(gamma_s1=0.005, gamma_s2=0.005, gamma_s3=0.005) < final(gamma_s1=0.05, gamma_s2=0.005,
                                                                         gamma_s3=0.005)


def test_quiet_exit_in_finalisers_drops_only_an_exit_raised_in_a_finaliser(monkeypatch):
    from types import SimpleNamespace

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(type(u.exc_value).__name__))
    tr.quiet_exit_in_finalisers()
    tr.quiet_exit_in_finalisers()  # idempotent: a reused worker runs many trials
    sys.unraisablehook(SimpleNamespace(exc_value=SystemExit(1), object=None))  # Ray's SIGTERM handler
    sys.unraisablehook(SimpleNamespace(exc_value=ValueError("a real bug"), object=None))
    assert seen == ["ValueError"]
