import math

import numpy as np
import pytest

from hpcm_tune.config import (
    FLAT_KEYS,
    SCALE_WEIGHTS_SUM_TOLERANCE,
    ConfigError,
    OptimizerConfig,
    RunConfig,
    check_scale_weights,
    check_value,
    flat_defaults,
)
from hpcm_tune.schedules import OFFICIAL_LR_STEPS

# The flat keys docs/architecture.md promises (the original design's names kept).
DOCUMENTED_KEYS = {
    "preset", "objective", "weighting", "decomposition", "distortion", "lmbda", "w_lr", "gamma_s1", "gamma_s2",
    "gamma_s3", "scale_weights", "min_loss", "update_mode", "gamma_strategy", "clip_max_norm", "lr", "lr_schedule",
    "batch_size", "patch_size", "epochs", "steps_per_epoch", "eval_interval", "codec_interval", "seed", "device",
    "amp", "compile", "data", "num_workers", "study", "label",
}


def test_every_documented_flat_key_is_accepted():
    assert set(FLAT_KEYS) >= DOCUMENTED_KEYS
    assert set(RunConfig.from_dict({}).to_dict()) == set(FLAT_KEYS)


def test_defaults_are_the_published_ones():
    c = RunConfig.from_dict({})
    assert c.optimizer.lr == 1e-4 and c.optimizer.clip_max_norm == 1.0 and c.optimizer.lr_schedule == "step"
    assert c.weighting.w_lr == 0.025
    assert c.weighting.gammas == (0.008, 0.006, 0.004)
    assert c.weighting.scale_weights == (0.3, 0.4, 0.3)
    assert c.weighting.min_loss == -1.0 and c.weighting.update_mode == "same_batch"
    assert c.schedule.gamma_strategy == "fixed"
    assert c.objective.name == "hierarchical" and c.objective.decomposition == "measured"
    assert c.model.preset == "tiny" and c.data.data == "samples" and c.run.device == "auto"


@pytest.mark.parametrize("objective, weighting", [("standard", "standard"), ("balanced", "famo"),
                                                  ("hierarchical", "hierarchical")])
def test_weighting_follows_the_objective_unless_given(objective, weighting):
    assert RunConfig.from_dict({"objective": objective}).weighting.name == weighting
    assert RunConfig.from_dict({"objective": objective, "weighting": "standard"}).weighting.name == "standard"


def test_flat_round_trip_and_nested_form_agree():
    flat = {"lr": 3e-4, "scale_weights": [0.2, 0.3, 0.5], "gamma_s1": 0.01, "epochs": 7, "preset": "tiny",
            "steps_per_epoch": 3, "study": "gamma", "label": "a"}
    c = RunConfig.from_dict(flat)
    assert RunConfig.from_dict(c.to_dict()) == c
    nested = {"optimizer": {"lr": 3e-4}, "weighting": {"scale_weights": (0.2, 0.3, 0.5), "gamma_s1": 0.01},
              "run": {"epochs": 7, "steps_per_epoch": 3}, "model": {"preset": "tiny"},
              "meta": {"study": "gamma", "label": "a"}}
    assert RunConfig.from_dict(nested) == c
    assert RunConfig.from_dict(c.to_nested()) == c
    assert c.to_dict()["scale_weights"] == [0.2, 0.3, 0.5]


def test_config_is_frozen():
    c = RunConfig.from_dict({})
    with pytest.raises(AttributeError):
        c.optimizer.lr = 1.0  # type: ignore[misc]


def test_numpy_and_yaml_string_values_from_searchers_are_accepted():
    c = RunConfig.from_dict({"lr": "1e-4", "w_lr": np.float64(0.05), "batch_size": np.int64(4),
                             "amp": np.bool_(False)})
    assert c.optimizer.lr == 1e-4 and isinstance(c.weighting.w_lr, float) and c.data.batch_size == 4
    assert type(c.data.batch_size) is int and c.run.amp is False


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("lr", -1.0, "> 0"),
        ("lr", "fast", "finite number"),
        ("lmbda", 0, "> 0"),
        ("w_lr", float("nan"), "finite number"),
        ("gamma_s2", -0.1, ">= 0"),
        ("scale_weights", [0.5, 0.5], "three numbers"),
        ("scale_weights", [0.5, 0.5, 0], "> 0"),
        ("gamma", -1, ">= 0 or null"),
        ("batch_size", 0, ">= 1"),
        ("batch_size", 2.5, "integer"),
        ("patch_size", 100, "multiple of 16"),
        ("epochs", True, "integer"),
        ("device", "gpu", "auto, cpu, cuda"),
        ("amp", "yes", "true or false"),
        ("lr_schedule", "exp", "step"),
        ("objective", "fancy", "hierarchical"),
        ("decomposition", "guess", "measured"),
        ("distortion", "l1", "ms-ssim"),
        ("codec_interval", -1, ">= 0"),
        ("data", "", "non-empty"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(key, value, allowed):
    with pytest.raises(ValueError) as info:
        RunConfig.from_dict({key: value})
    message = str(info.value)
    assert message.startswith(f"{key}: got {value!r}") and allowed in message


def test_unknown_keys_are_rejected_listing_valid_ones():
    with pytest.raises(ValueError, match=r"learning_rate: unknown key .*allowed: .*clip_max_norm"):
        RunConfig.from_dict({"learning_rate": 1e-4})
    with pytest.raises(ValueError, match=r"optimizer.learning_rate: unknown key; allowed in section 'optimizer'"):
        RunConfig.from_dict({"optimizer": {"learning_rate": 1e-4}})


def test_a_key_given_both_flat_and_nested_is_rejected():
    with pytest.raises(ValueError, match="given twice"):
        RunConfig.from_dict({"lr": 1e-4, "optimizer": {"lr": 2e-4}})


def test_with_updates_validates():
    c = RunConfig.from_dict({}).with_updates(epochs=3)
    assert c.run.epochs == 3
    with pytest.raises(ValueError, match="epochs"):
        c.with_updates(epochs=0)


def test_flat_defaults_match_a_default_config():
    defaults = flat_defaults()
    built = RunConfig.from_dict({}).to_dict()
    assert defaults.pop("weighting") is None
    built.pop("weighting")
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()} == built


def test_official_step_schedule_at_3001_epochs_is_exact():
    opt = OptimizerConfig()
    for milestone, factor in OFFICIAL_LR_STEPS:
        assert opt.lr_at(milestone - 1, 3001) > opt.lr * factor
        assert opt.lr_at(milestone, 3001) == pytest.approx(opt.lr * factor)
    assert opt.lr_at(0, 3001) == 1e-4 and opt.lr_at(3000, 3001) == pytest.approx(1e-6)


def test_step_schedule_scales_to_short_runs_and_never_rises():
    opt = OptimizerConfig()
    lrs = [opt.lr_at(e, 100) for e in range(100)]
    assert lrs[0] == 1e-4 and lrs[91] == 1e-4 and lrs[92] == pytest.approx(3e-5)  # 2750/3001*100 = 91.6
    assert lrs[-1] == pytest.approx(1e-6)
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_cosine_schedule_decays_from_lr_to_one_percent():
    opt = OptimizerConfig(lr_schedule="cosine")
    assert opt.lr_at(0, 10) == pytest.approx(1e-4)
    assert opt.lr_at(5, 10) == pytest.approx(1e-4 * (0.01 + 0.99 * 0.5))
    assert opt.lr_at(10, 10) == pytest.approx(1e-6)
    assert all(math.isfinite(opt.lr_at(e, 10)) for e in range(20))


def test_importing_the_config_loads_neither_torch_nor_ray():
    import subprocess
    import sys

    code = ("import sys, hpcm_tune.config; heavy = sorted(m for m in ('torch', 'ray') if m in sys.modules); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_failing_registry_import_is_an_error_never_any_name(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "hpcm_tune.optim", None)  # importing it now raises ImportError
    with pytest.raises(ImportError):
        OptimizerConfig(name="anything")


def test_check_value_is_the_rule_of_the_keys_section():
    assert check_value("lr", "1e-4") == 1e-4 and check_value("scale_weights", [0.2, 0.3, 0.5]) == (0.2, 0.3, 0.5)
    for key, value, allowed in (("gamma_s1", -0.1, "a finite number >= 0"), ("patch_size", 50, "a multiple of 16"),
                                ("update_mode", "every_batch", "same_batch, next_batch"),
                                ("gamma_strategy", "wavy", "fixed, linear")):
        with pytest.raises(ConfigError, match=f"^{key}: got") as info:
            check_value(key, value)
        assert info.value.key == key and info.value.value == value and allowed in info.value.allowed
        with pytest.raises(ValueError, match=f"^{key}: got"):  # the whole config: the same rule, the same words
            RunConfig.from_dict({key: value})
    with pytest.raises(ValueError, match="lamda: unknown key"):
        check_value("lamda", 0.1)


@pytest.mark.parametrize("weights", [[2, 4, 4], [0.5, 0.5, 0.5], [0.3, 0.3, 0.3], [0.5, 0.5, 0.0], [0.5, 0.5],
                                     "0.3 0.4 0.3", [0.3, float("nan"), 0.7]])
def test_scale_weights_have_one_rule(weights):
    with pytest.raises(ConfigError, match=r"allowed: three numbers > 0 \(s1, s2, s3\) summing to 1"):
        check_scale_weights(weights)
    with pytest.raises(ValueError, match="^scale_weights: got"):
        RunConfig.from_dict({"scale_weights": weights})


def test_scale_weights_within_the_tolerance_are_kept_as_given():
    for weights in ([0.33, 0.33, 0.34], [0.333334, 0.333333, 0.333334], (0.2, 0.3, 0.5)):
        assert RunConfig.from_dict({"scale_weights": weights}).weighting.scale_weights == tuple(weights)
    assert SCALE_WEIGHTS_SUM_TOLERANCE == 1e-3
