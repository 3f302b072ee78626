import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hpcm_tune import metrics as M
from hpcm_tune.checkpoint import STATE_FILE, list_checkpoints
from hpcm_tune.config import RunConfig
from hpcm_tune.data import crop_to, eval_images, pad_to_multiple
from hpcm_tune.engine import Engine, NonFiniteTrainingError, ms_ssim_db
from hpcm_tune.testing import TinyCompressionModel, make_image_folder, run_engine


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The test machine is shared: torch's intra-op threads spin against other processes and slow tiny
    # models down 40x. One thread keeps these tests at well under a second per epoch.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), n_train=4, n_test=2, size=(64, 96))


def _config(folder, **overrides):
    base = dict(data=str(folder), batch_size=2, patch_size=64, epochs=3, steps_per_epoch=2, num_workers=0,
                codec_interval=1, lr=1e-3, lr_schedule="constant")
    return RunConfig.from_dict({**base, **overrides})


def _tiny_fake(preset):
    return TinyCompressionModel()


def _checkpoint_written(metrics, checkpoint_dir):
    assert (checkpoint_dir / STATE_FILE).is_file()


def _run(engine, stop_after=None):
    return run_engine(engine, stop_after, check=_checkpoint_written)


def test_metrics_carry_exactly_the_documented_names(folder, tmp_path):
    reports = _run(Engine(_config(folder, epochs=1), workdir=tmp_path))
    (metrics,) = reports
    images = [Path(name).name for name, _ in eval_images(Engine(_config(folder, epochs=1),
                                                                  workdir=tmp_path / "b").test_source)]
    per_image = {M.eval_image_metric(name, q) for name in images for q in M.EVAL_IMAGE_QUANTITIES}
    assert len(per_image) == 2 * len(images) == 4
    # Per image, then averaged: the mean of the per-image values is the reported one.
    for q, key in (("psnr", M.EVAL_PSNR), ("bpp", M.EVAL_BPP)):
        assert sum(metrics[M.eval_image_metric(n, q)] for n in images) / len(images) == pytest.approx(metrics[key])
    expected = {*per_image, M.EPOCH, M.TRAIN_LOSS, M.TRAIN_PSNR, M.TRAIN_BPP, M.TRAIN_SKIPPED_STEPS,
                *M.TRAIN_TASKS.values(), *M.WEIGHTS.values(), *M.SCALE_CONTRIB.values(), *M.GAMMA.values(),
                *M.EVAL_METRICS, M.TRAIN_LAMBDA_EFF, M.EVAL_Y_SHARE, M.EVAL_FLAT_PSNR, M.EVAL_COLLAPSED}
    assert set(metrics) == expected
    assert metrics[M.EPOCH] == 1 and all(math.isfinite(v) for v in metrics.values())
    assert sum(metrics[M.WEIGHTS[t]] for t in M.TASKS) == pytest.approx(1.0)
    assert sum(metrics[M.SCALE_CONTRIB[s]] for s in M.SCALES) == pytest.approx(1.0)
    assert metrics[M.GAMMA["s1"]] == pytest.approx(0.008)
    # Per-scale estimated rates partition the total; the real codec writes a real number of bytes.
    parts = sum(metrics[M.EVAL_BPP_SCALE[s]] for s in M.SCALES) + metrics[M.EVAL_BPP_Z]
    assert parts == pytest.approx(metrics[M.EVAL_BPP], rel=1e-5)
    assert metrics[M.EVAL_ACTUAL_BPP] > 0
    # The five measured task losses sum to the R-D loss (docs/design.md §3).
    assert sum(metrics[M.TRAIN_TASKS[t]] for t in M.TASKS) == pytest.approx(metrics[M.TRAIN_LOSS], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [1, 2])
def test_resumed_run_equals_an_uninterrupted_one_bit_for_bit(folder, tmp_path, stop_after):
    config = _config(folder, epochs=3, codec_interval=2)
    full_engine = Engine(config, workdir=tmp_path / "full")
    full = _run(full_engine)
    first = Engine(config, workdir=tmp_path / "cut")
    head = _run(first, stop_after=stop_after)
    assert len(head) == stop_after
    resumed = Engine(config, workdir=tmp_path / "cut")
    resumed.restore(tmp_path / "cut" / "checkpoints")
    tail = _run(resumed)
    assert [m[M.EPOCH] for m in tail] == list(range(stop_after + 1, 4))
    assert head + tail == full  # every metric of every epoch, exactly
    for a, b in zip(full_engine.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert full_engine.weighting.state_dict()["logits"].equal(resumed.weighting.state_dict()["logits"])


@pytest.mark.parametrize("options", [
    dict(objective="balanced", update_mode="next_batch"),
    dict(objective="standard", lr_schedule="step"),
    dict(gamma_strategy="adaptive"),
    dict(gamma_strategy="hierarchical", clip_max_norm=0.0),
])
def test_resume_is_exact_for_every_weighting_and_schedule(folder, tmp_path, options):
    config = _config(folder, epochs=3, codec_interval=0, **options)
    full = _run(Engine(config, workdir=tmp_path / "full", model_factory=_tiny_fake))
    head = _run(Engine(config, workdir=tmp_path / "cut", model_factory=_tiny_fake), stop_after=1)
    resumed = Engine(config, workdir=tmp_path / "cut", model_factory=_tiny_fake)
    resumed.restore(tmp_path / "cut" / "checkpoints")
    assert head + _run(resumed) == full


def test_a_corrupt_latest_checkpoint_resumes_from_the_previous(folder, tmp_path):
    config = _config(folder, epochs=3, codec_interval=0)
    full = _run(Engine(config, workdir=tmp_path / "full", model_factory=_tiny_fake))
    _run(Engine(config, workdir=tmp_path / "cut", model_factory=_tiny_fake), stop_after=2)
    latest = list_checkpoints(tmp_path / "cut" / "checkpoints")[-1]
    (latest / STATE_FILE).write_bytes(b"\0" * 100)
    resumed = Engine(config, workdir=tmp_path / "cut", model_factory=_tiny_fake)
    with pytest.warns(UserWarning, match="falling back"):
        used = resumed.restore(tmp_path / "cut" / "checkpoints")
    assert used.name == "epoch_000001"
    assert _run(resumed) == full[1:]


def test_same_seed_same_run_other_seed_other_run(folder, tmp_path):
    a = _run(Engine(_config(folder, epochs=1, codec_interval=0), workdir=tmp_path / "a", model_factory=_tiny_fake))
    b = _run(Engine(_config(folder, epochs=1, codec_interval=0), workdir=tmp_path / "b", model_factory=_tiny_fake))
    c = _run(Engine(_config(folder, epochs=1, codec_interval=0, seed=1), workdir=tmp_path / "c",
                    model_factory=_tiny_fake))
    assert a == b and a != c


class _Recorder:
    """Wraps a weighting: records what reevaluate() returns and whether the caller asked for it."""

    def __init__(self, inner, call_reevaluate):
        self.inner, self.call_reevaluate, self.seen = inner, call_reevaluate, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def update(self, task_losses, reevaluate):
        again = reevaluate() if self.call_reevaluate else None
        self.seen.append((dict(task_losses), again))


def test_reevaluate_replays_the_same_noise_and_leaves_the_rng_stream_alone(folder, tmp_path):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    states = []
    for call in (True, False):
        engine = Engine(_config(folder, codec_interval=0), workdir=tmp_path / str(call))
        engine.weighting = _Recorder(engine.weighting, call)
        for group in engine.optimizer.param_groups:
            group["lr"] = 0.0  # parameters unchanged: the re-evaluation must reproduce the losses exactly
        torch.manual_seed(5)
        engine.train_step(x)
        states.append(torch.get_rng_state())
        if call:
            before, after = engine.weighting.seen[0]
            assert set(after) == set(M.TASKS)
            assert all(torch.equal(before[t], after[t]) for t in M.TASKS)
    assert torch.equal(states[0], states[1])


def test_reevaluate_measures_the_step(folder, tmp_path):
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    engine = Engine(_config(folder, codec_interval=0, lr=1e-2), workdir=tmp_path)
    engine.weighting = _Recorder(engine.weighting, True)
    engine.train_step(x)
    before, after = engine.weighting.seen[0]
    assert any(not torch.equal(before[t], after[t]) for t in M.TASKS)


def test_gradients_are_clipped_once_per_step_with_the_configured_norm(folder, tmp_path, monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *args, **kwargs):
        calls.append(max_norm)
        return real(parameters, max_norm, *args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    engine = Engine(_config(folder, epochs=1, codec_interval=0, clip_max_norm=0.5), workdir=tmp_path,
                    model_factory=_tiny_fake)
    engine.run()
    assert calls == [0.5, 0.5] and engine.step == 2


class _Poisoned(nn.Module):
    """TinyCompressionModel whose reconstruction is NaN on the forward passes listed in ``bad``."""

    pad_multiple = 4

    def __init__(self, bad):
        super().__init__()
        self.inner, self.bad, self.calls = TinyCompressionModel(), bad, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.bad(self.calls):
                out["x_hat"] = out["x_hat"] * float("nan")
        return out


def test_non_finite_steps_are_skipped_and_counted(folder, tmp_path):
    engine = Engine(_config(folder, epochs=2, codec_interval=0, objective="standard"), workdir=tmp_path,
                    model_factory=lambda p: _Poisoned(lambda call: call == 2))
    reports = _run(engine)
    assert engine.step == 3 and reports[-1][M.TRAIN_SKIPPED_STEPS] == 1
    assert all(math.isfinite(v) for r in reports for v in r.values())


def test_a_run_that_keeps_producing_nan_stops_with_a_clear_error(folder, tmp_path):
    engine = Engine(_config(folder, epochs=5, steps_per_epoch=2, codec_interval=0, max_nonfinite=3),
                    workdir=tmp_path, model_factory=lambda p: _Poisoned(lambda call: call >= 2))
    with pytest.raises(NonFiniteTrainingError, match="3 consecutive steps with a non-finite loss"):
        engine.run()


def test_schedules_are_applied_per_epoch(folder, tmp_path):
    config = _config(folder, epochs=4, codec_interval=0, gamma_strategy="linear", lr_schedule="cosine",
                     eval_interval=3)
    engine = Engine(config, workdir=tmp_path, model_factory=_tiny_fake)
    lrs, evals = [], []
    real_evaluate = engine.evaluate

    def counting_evaluate(codec=False):
        evals.append(engine.epoch)
        return real_evaluate(codec)

    engine.evaluate = counting_evaluate
    reports = []
    engine.run(lambda m, d: (reports.append(m), lrs.append(engine.optimizer.param_groups[0]["lr"])))
    for index, m in enumerate(reports):
        assert m[M.GAMMA["s1"]] == pytest.approx(0.008 * (1 - 0.5 * index / 4))
        assert lrs[index] == pytest.approx(config.optimizer.lr_at(index, 4))
    assert evals == [1, 3, 4]  # epoch 1, every eval_interval, and the last
    assert reports[1][M.EVAL_LOSS] == reports[0][M.EVAL_LOSS]  # repeated between evaluations
    assert reports[2][M.EVAL_LOSS] != reports[1][M.EVAL_LOSS]


def test_codec_runs_every_codec_interval_evaluations(folder, tmp_path):
    engine = Engine(_config(folder, epochs=3, codec_interval=2), workdir=tmp_path)
    codec_calls = []
    real = engine.actual_bpp
    engine.actual_bpp = lambda images: (codec_calls.append(engine.epoch), real(images))[1]
    reports = _run(engine)
    assert codec_calls == [1, 3]
    assert reports[1][M.EVAL_ACTUAL_BPP] == reports[0][M.EVAL_ACTUAL_BPP]


def test_evaluation_uses_whole_odd_sized_images(tmp_path):
    folder = make_image_folder(tmp_path / "odd", n_train=2, n_test=1, size=(50, 70))
    engine = Engine(_config(folder, epochs=1, patch_size=48, codec_interval=1), workdir=tmp_path / "run")
    metrics = engine.evaluate(codec=True)
    assert all(math.isfinite(v) for v in metrics.values())
    # The whole 50x70 image is coded (padded to the model's multiple); rates are per pixel of the image itself.
    (_, x), = list(eval_images(engine.test_source))
    assert x.shape[-2:] == (50, 70)
    padded, pad = pad_to_multiple(x, engine.pad_multiple)
    with torch.no_grad():
        out = engine.model.eval()(padded)
    bits = sum(float(-torch.log2(v).sum()) for v in out["likelihoods"].values())
    assert metrics[M.EVAL_BPP] == pytest.approx(bits / (50 * 70), rel=1e-4)
    mse = float((crop_to(out["x_hat"], pad).clamp(0, 1) - x).pow(2).mean())
    assert metrics[M.EVAL_PSNR] == pytest.approx(-10 * math.log10(mse), rel=1e-5)


def test_ms_ssim_db_definition():
    assert ms_ssim_db(0.9) == pytest.approx(10.0)
    assert ms_ssim_db(0.99) == pytest.approx(20.0)


def test_missing_data_fails_before_building_a_model(tmp_path):
    built = []
    with pytest.raises(ValueError, match="neither 'samples' nor an existing folder"):
        Engine(_config(tmp_path / "nowhere"), model_factory=lambda p: built.append(p) or TinyCompressionModel())
    assert not built


def test_engine_never_imports_ray():
    code = ("import sys, hpcm_tune.engine, hpcm_tune.train, hpcm_tune.config, hpcm_tune.data, "
            "hpcm_tune.checkpoint, hpcm_tune.objectives, hpcm_tune.weighting, hpcm_tune.schedules, hpcm_tune.models;"
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')); print(bad); "
            "sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_and_channels_last_on_cuda(folder, tmp_path):
    engine = Engine(_config(folder, epochs=2, device="cuda", amp=True, channels_last=True), workdir=tmp_path)
    reports = _run(engine)
    assert engine.amp and engine.channels_last and next(engine.model.parameters()).is_cuda
    assert all(math.isfinite(v) for r in reports for v in r.values())
    resumed = Engine(_config(folder, epochs=2, device="cuda", amp=True, channels_last=True), workdir=tmp_path)
    resumed.restore(tmp_path / "checkpoints")
    assert resumed.epoch == 2 and _run(resumed) == []
