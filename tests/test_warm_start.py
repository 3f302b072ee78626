"""Warm start (init_from), the weighting warm-up, the optimizer key and the collapse diagnostics of the engine
(train/lambda_eff, eval/y_share, eval/flat_psnr, eval/collapsed)."""

import math
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from hpcm_tune import metrics as M
from hpcm_tune.checkpoint import STATE_FILE, CheckpointError, architecture_fingerprint, read_state, save_checkpoint
from hpcm_tune.config import RunConfig
from hpcm_tune.engine import Engine, flat_colour_psnr
from hpcm_tune.optim import CautiousAdam
from hpcm_tune.testing import TinyCompressionModel, make_image_folder, run_engine


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data"), n_train=4, n_test=2, size=(64, 96))


def _config(folder, **overrides):
    base = dict(data=str(folder), batch_size=2, patch_size=64, epochs=2, steps_per_epoch=2, num_workers=0,
                codec_interval=0, lr=1e-3, lr_schedule="constant", objective="balanced")
    return RunConfig.from_dict({**base, **overrides})


def _fake(preset):
    # Two "presets" of different architecture, so a preset mismatch is also a fingerprint mismatch.
    return TinyCompressionModel(channels={"tiny": 6, "small": 9}[preset])


def _wide(preset):
    return TinyCompressionModel(channels=9)  # the same preset name, another architecture


_run = run_engine


def _states_equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def parent(folder, tmp_path_factory):
    """A FAMO parent trained 2 epochs (checkpoints epoch_000001 and epoch_000002; its logits have moved)."""
    workdir = tmp_path_factory.mktemp("parent")
    engine = Engine(_config(folder), workdir=workdir, model_factory=_fake)
    _run(engine)
    assert not torch.equal(engine.weighting.logits(), torch.zeros(2))
    return engine


def _trial_dir(parent, root):
    """A sweep trial directory as Ray Tune leaves it: checkpoint_NNNNNN/ folders holding state.pt + meta.json."""
    trial = root / "hpcm_trial_00000_parent_lmbda0.0067"
    trial.mkdir(parents=True)
    (trial / "result.json").write_text("{}\n")
    for index, epoch_dir in enumerate(sorted((parent.workdir / "checkpoints").iterdir())):
        shutil.copytree(epoch_dir, trial / f"checkpoint_{index:06d}")
    return trial


def _x():
    return torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))


# --- warm start loads exactly the parent's weights, nothing else ----------------------------------------------


@pytest.mark.parametrize("layout", ["run_dir", "checkpoint_root", "checkpoint_dir", "trial_dir"])
def test_warm_start_loads_exactly_the_parents_newest_weights(folder, parent, tmp_path, layout):
    source = {"run_dir": parent.workdir, "checkpoint_root": parent.workdir / "checkpoints",
              "checkpoint_dir": parent.workdir / "checkpoints" / "epoch_000002",
              "trial_dir": None}[layout] or _trial_dir(parent, tmp_path)
    child = Engine(_config(folder, init_from=str(source)), workdir=tmp_path / "child", model_factory=_fake)
    assert not _states_equal(child.model.state_dict(), parent.model.state_dict())  # a fresh init before
    used = child.warm_start()
    assert used.name == ("checkpoint_000001" if layout == "trial_dir" else "epoch_000002")
    assert _states_equal(child.model.state_dict(), parent.model.state_dict())
    x = _x()
    with torch.no_grad():
        mine, theirs = child.model.eval()(x), parent.model.eval()(x)
    parent.model.train()
    assert torch.equal(mine["x_hat"], theirs["x_hat"])
    assert all(torch.equal(mine["likelihoods"][k], theirs["likelihoods"][k]) for k in M.LIKELIHOOD_KEYS)
    # Only the weights: the optimizer, the weighting and the counters start fresh.
    assert child.optimizer.state_dict()["state"] == {}
    assert torch.equal(child.weighting.logits(), torch.zeros(2))
    assert child.weighting.weights() == {"distortion": 0.5, "bpp": 0.5}
    assert (child.epoch, child.step) == (0, 0)


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_with_a_warning(folder, parent, tmp_path):
    trial = _trial_dir(parent, tmp_path)
    (trial / "checkpoint_000001" / STATE_FILE).write_bytes(b"\0" * 64)
    child = Engine(_config(folder, init_from=str(trial)), workdir=tmp_path / "child", model_factory=_fake)
    with pytest.warns(UserWarning, match=r"(?s)checkpoint_000001 is unreadable.*falling back to .*checkpoint_000000"):
        used = child.warm_start()
    assert used.name == "checkpoint_000000"
    older = read_state(parent.workdir / "checkpoints" / "epoch_000001")["model"]
    assert _states_equal(child.model.state_dict(), older)
    assert not _states_equal(older, parent.model.state_dict())


def test_run_warm_starts_once_and_trains_from_the_parent(folder, parent, tmp_path):
    child = Engine(_config(folder, init_from=str(parent.workdir), epochs=1), workdir=tmp_path,
                   model_factory=_fake)
    calls = []
    real = child.warm_start
    child.warm_start = lambda: calls.append(1) or real()
    start = {}
    real_step = child.train_step

    def first_step(x):
        if not start:
            start.update({k: v.clone() for k, v in child.model.state_dict().items()})
        return real_step(x)

    child.train_step = first_step
    _run(child)
    assert calls == [1]
    assert _states_equal(start, parent.model.state_dict())  # the first step saw the parent's weights
    assert child.warm_started_from == parent.workdir / "checkpoints" / "epoch_000002"


def test_warm_start_of_the_real_tiny_preset_after_the_codec_built_its_tables(folder, tmp_path):
    """A parent whose codec ran (update() filled the CDF tables and the scale table) warm-starts a fresh model."""
    config = _config(folder, objective="standard", epochs=1, steps_per_epoch=1, codec_interval=1)
    parent = Engine(config, workdir=tmp_path / "parent")
    parent.run()
    child = Engine(_config(folder, objective="standard", init_from=str(tmp_path / "parent")),
                   workdir=tmp_path / "child")
    child.warm_start()
    x = _x()
    with torch.no_grad():
        assert torch.equal(child.model.eval()(x)["x_hat"], parent.model.eval()(x)["x_hat"])
    assert _states_equal(child.model.state_dict(), parent.model.state_dict())


# --- errors before training -------------------------------------------------------------------------------


def _assert_fails_before_training(engine, match):
    with pytest.raises(CheckpointError, match=match):
        engine.run()
    assert engine.step == 0 and not (engine.workdir / "checkpoints").exists()


def test_init_from_missing_or_without_a_checkpoint_fails_before_training(folder, tmp_path):
    missing = Engine(_config(folder, init_from=str(tmp_path / "nowhere")), workdir=tmp_path / "a",
                     model_factory=_fake)
    _assert_fails_before_training(missing, "no such file or directory")
    (tmp_path / "empty").mkdir()
    empty = Engine(_config(folder, init_from=str(tmp_path / "empty")), workdir=tmp_path / "b", model_factory=_fake)
    _assert_fails_before_training(empty, "no checkpoint there")


def test_a_checkpoint_of_another_preset_fails_naming_both_presets_and_architectures(folder, tmp_path):
    other = Engine(_config(folder, preset="small"), workdir=tmp_path / "small", model_factory=_fake)
    other.save()
    child = Engine(_config(folder, init_from=str(tmp_path / "small")), workdir=tmp_path / "child",
                   model_factory=_fake)
    theirs, mine = other.architecture, child.architecture
    assert theirs != mine
    _assert_fails_before_training(
        child, rf"preset 'small' \(architecture {theirs}\); this run is preset 'tiny' \(architecture {mine}\)")


def test_a_checkpoint_of_the_same_preset_but_another_architecture_fails(folder, tmp_path):
    wide = Engine(_config(folder), workdir=tmp_path / "wide", model_factory=_wide)
    wide.save()
    child = Engine(_config(folder, init_from=str(tmp_path / "wide")), workdir=tmp_path / "child",
                   model_factory=_fake)
    assert wide.architecture == architecture_fingerprint(_wide("tiny").state_dict()) != child.architecture
    _assert_fails_before_training(child, rf"architecture {wide.architecture}\); .*architecture {child.architecture}")


def test_a_checkpoint_without_model_weights_fails(folder, parent, tmp_path):
    state = parent.state_dict()
    del state["model"]
    save_checkpoint(state, tmp_path / "nomodel", 1)
    child = Engine(_config(folder, init_from=str(tmp_path / "nomodel")), workdir=tmp_path / "child",
                   model_factory=_fake)
    _assert_fails_before_training(child, "no 'model' entry")


# --- a resumed run never reads init_from again ------------------------------------------------------------


@pytest.mark.parametrize("warmup", [0, 1])
def test_a_resumed_child_never_reads_init_from_and_equals_an_uninterrupted_one(folder, parent, tmp_path, warmup):
    source = tmp_path / "parent"
    shutil.copytree(parent.workdir, source)
    config = _config(folder, init_from=str(source), epochs=3, weighting_warmup_epochs=warmup)
    full_engine = Engine(config, workdir=tmp_path / "full", model_factory=_fake)
    full = _run(full_engine)
    head = _run(Engine(config, workdir=tmp_path / "cut", model_factory=_fake), stop_after=1)
    source.rename(tmp_path / "parent-moved")  # init_from is gone: a restored run must not need it
    resumed = Engine(config, workdir=tmp_path / "cut", model_factory=_fake)
    resumed.restore(tmp_path / "cut" / "checkpoints")
    tail = _run(resumed)
    assert resumed.warm_started_from is None
    assert head + tail == full
    assert _states_equal(resumed.model.state_dict(), full_engine.model.state_dict())
    assert torch.equal(resumed.weighting.logits(), full_engine.weighting.logits())


# --- the weighting warm-up --------------------------------------------------------------------------------


def _logits_per_epoch(engine):
    logits = []
    engine.run(lambda metrics, d: logits.append(engine.weighting.logits()))
    return logits


@pytest.mark.parametrize("objective", ["balanced", "hierarchical"])
def test_weighting_warm_up_keeps_the_logits_at_zero_then_lets_them_move(folder, tmp_path, objective):
    engine = Engine(_config(folder, objective=objective, weighting_warmup_epochs=1), workdir=tmp_path,
                    model_factory=_fake)
    prior = engine.weighting.weights()
    reports = []
    logits = []
    engine.run(lambda metrics, d: (reports.append(metrics), logits.append(engine.weighting.logits())))
    assert torch.equal(logits[0], torch.zeros_like(logits[0]))
    assert all(reports[0][M.weight_name(t)] == prior[t] for t in prior)
    assert not torch.equal(logits[1], logits[0])
    assert any(reports[1][M.weight_name(t)] != prior[t] for t in prior)


def test_the_warm_up_trains_the_plain_rd_loss(folder, tmp_path):
    """A balanced run in its warm-up takes exactly the steps of the standard objective from the same seed."""
    models = {}
    for name, options in (("warm", dict(weighting_warmup_epochs=1)), ("standard", dict(objective="standard")),
                          ("famo", {})):
        engine = Engine(_config(folder, epochs=1, **options), workdir=tmp_path / name, model_factory=_fake)
        engine.run()  # each run right after its construction: the seed sets the global RNG then
        models[name] = engine.model.state_dict()
    assert _states_equal(models["warm"], models["standard"])
    assert not _states_equal(models["famo"], models["standard"])


def test_scale_contributions_are_reported_during_the_warm_up(folder, tmp_path):
    engine = Engine(_config(folder, objective="hierarchical", weighting_warmup_epochs=1), workdir=tmp_path,
                    model_factory=_fake)
    first, second = _run(engine)
    assert set(first) == set(second)
    assert sum(first[M.SCALE_CONTRIB[s]] for s in M.SCALES) == pytest.approx(1.0)


# --- train/lambda_eff -------------------------------------------------------------------------------------


def test_lambda_eff_is_lambda_for_the_standard_objective(folder, tmp_path):
    reports = _run(Engine(_config(folder, objective="standard", lmbda=0.013), workdir=tmp_path, model_factory=_fake))
    assert [r[M.TRAIN_LAMBDA_EFF] for r in reports] == pytest.approx([0.013, 0.013], rel=1e-5)


def test_lambda_eff_is_lambda_in_the_warm_up_then_famos_by_hand(folder, tmp_path):
    lmbda = 0.0067
    first, second = _run(Engine(_config(folder, lmbda=lmbda, weighting_warmup_epochs=1), workdir=tmp_path,
                                model_factory=_fake))
    assert first[M.TRAIN_LAMBDA_EFF] == lmbda
    # Two tasks, min loss -1: lambda (z_D / z_R) (1 + R) / (1 + lambda D) at the epoch's mean losses.
    z_d, z_r = second[M.weight_name("distortion")], second[M.weight_name("bpp")]
    lambda_d, rate = second[M.train_task_name("distortion")], second[M.train_task_name("bpp")]
    assert second[M.TRAIN_LAMBDA_EFF] == pytest.approx(lmbda * (z_d / z_r) * (1 + rate) / (1 + lambda_d), rel=1e-4)
    assert second[M.TRAIN_LAMBDA_EFF] < lmbda / 2  # lambda * D >> 1 from scratch: lambda_eff << lambda


def test_lambda_eff_of_the_hierarchical_objective_by_hand(folder, tmp_path):
    lmbda = 0.013
    (report,) = _run(Engine(_config(folder, objective="hierarchical", lmbda=lmbda, epochs=1), workdir=tmp_path,
                            model_factory=_fake))
    losses = {t: report[M.TRAIN_TASKS[t]] for t in M.TASKS}
    a = {t: report[M.WEIGHTS[t]] / (losses[t] + 1) for t in M.TASKS}
    distortion = [t for t in M.TASKS if t.endswith("_distortion")]
    rate = [t for t in M.TASKS if t.endswith("_bpp")]
    lambda_d = report[M.TRAIN_LOSS] - report[M.TRAIN_BPP]
    expected = lmbda * (sum(a[t] * losses[t] for t in distortion) / lambda_d) / (
        sum(a[t] * losses[t] for t in rate) / report[M.TRAIN_BPP])
    assert report[M.TRAIN_LAMBDA_EFF] == pytest.approx(expected, rel=1e-4)


# --- the collapse diagnostics -----------------------------------------------------------------------------


class _Fake(nn.Module):
    """TinyCompressionModel whose output is rewritten by ``edit(x, out)`` (a constructed codec)."""

    pad_multiple = 4

    def __init__(self, edit):
        super().__init__()
        self.inner, self.edit = TinyCompressionModel(), edit

    def forward(self, x):
        return self.edit(x, self.inner(x))


def _no_y_bits(x, out):
    out["likelihoods"] = {k: torch.ones_like(v) if k != "z" else v for k, v in out["likelihoods"].items()}
    return out


def _mean_colour(x, out):
    out["x_hat"] = x.mean(dim=(-2, -1), keepdim=True).expand_as(x)
    return out


def _good(x, out):
    out["x_hat"] = (x * 32).round() / 32  # about 41 dB: far above any flat-colour reference
    return out


def _evaluate(folder, tmp_path, edit):
    engine = Engine(_config(folder, objective="standard"), workdir=tmp_path, model_factory=lambda p: _Fake(edit))
    return engine.evaluate()


def test_a_code_whose_y_carries_no_bits_is_collapsed(folder, tmp_path):
    result = _evaluate(folder, tmp_path, lambda x, out: _good(x, _no_y_bits(x, out)))
    assert result[M.EVAL_BPP] > 0 and result[M.EVAL_Y_SHARE] < 0.05
    assert result[M.EVAL_PSNR] > result[M.EVAL_FLAT_PSNR] + 10  # flagged by y's share alone
    assert result[M.EVAL_COLLAPSED] == 1.0


def test_a_mean_colour_reconstruction_is_collapsed(folder, tmp_path):
    result = _evaluate(folder, tmp_path, _mean_colour)
    assert result[M.EVAL_Y_SHARE] > 0.05  # y carries bits, but the picture says nothing beyond its colour
    assert result[M.EVAL_PSNR] == pytest.approx(result[M.EVAL_FLAT_PSNR], abs=1e-3)
    assert result[M.EVAL_COLLAPSED] == 1.0


def test_a_working_code_is_not_collapsed(folder, tmp_path):
    result = _evaluate(folder, tmp_path, _good)
    assert result[M.EVAL_Y_SHARE] > 0.05 and result[M.EVAL_PSNR] > result[M.EVAL_FLAT_PSNR] + 10
    assert result[M.EVAL_COLLAPSED] == 0.0
    # y's share is what the reported rates say.
    assert result[M.EVAL_Y_SHARE] == pytest.approx(
        (result[M.EVAL_BPP] - result[M.EVAL_BPP_Z]) / result[M.EVAL_BPP], rel=1e-6)


def test_flat_colour_psnr_against_numpy():
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    a = x.numpy().astype(np.float64)[0]
    mse = ((a - a.mean(axis=(1, 2), keepdims=True)) ** 2).mean()
    assert flat_colour_psnr(x) == pytest.approx(-10 * math.log10(mse), rel=1e-5)
    assert flat_colour_psnr(torch.full((1, 3, 8, 8), 0.25)) == math.inf


def test_eval_flat_psnr_is_the_mean_over_the_test_images(folder, tmp_path):
    from hpcm_tune.data import eval_images

    engine = Engine(_config(folder, objective="standard"), workdir=tmp_path, model_factory=_fake)
    images = [x for _, x in eval_images(engine.test_source)]
    assert len(images) == 2
    expected = sum(flat_colour_psnr(x) for x in images) / 2
    assert engine.evaluate()[M.EVAL_FLAT_PSNR] == pytest.approx(expected, rel=1e-9)


# --- the optimizer key ------------------------------------------------------------------------------------


def test_optimizer_key_chooses_the_engines_optimizer(folder, tmp_path):
    cautious = Engine(_config(folder, optimizer="cautious_adam"), workdir=tmp_path / "c", model_factory=_fake)
    plain = Engine(_config(folder), workdir=tmp_path / "a", model_factory=_fake)
    assert isinstance(cautious.optimizer, CautiousAdam)
    assert type(plain.optimizer) is torch.optim.Adam
    assert cautious.optimizer.param_groups[0]["lr"] == 1e-3


def test_an_unknown_optimizer_fails_listing_the_valid_ones(folder):
    with pytest.raises(ValueError, match=r"optimizer: got 'sgd'; allowed: .*adam.*cautious_adam"):
        RunConfig.from_dict({"data": str(folder), "optimizer": "sgd"})
