"""Searchers: Tune param spaces (grid, configurations, simplex) and Optuna told 'pruned' (no Ray runtime)."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState
from ray.tune.search.variant_generator import generate_variants

from hpcm_tune import metrics
from hpcm_tune.experiment import INTERNAL_PREFIX
from hpcm_tune.sweep import space as sp
from hpcm_tune.sweep.searchers import SEARCHERS, PrunedOptunaSearch, build_searcher


def variants(ps, seed=0):
    import numpy as np

    return [cfg for _, cfg in generate_variants(ps, random_state=np.random.RandomState(seed))]


def test_grid_searcher_runs_every_configuration_lambda_and_seed():
    s = sp.load_space(sp.resolve_space_path("ablation_scale_weights")).with_overrides(repeats=2)
    alg, ps, n = build_searcher(s)
    rows = variants(ps)
    assert len(rows) * n == 4 * 4 * 2
    seen = {(r["label"], r["lmbda"], r["seed"]) for r in rows}
    assert len(seen) == 32
    for r in rows:
        assert r["scale_weights"] == s.configurations[r["label"]]["scale_weights"]
        assert r["study"] == "ablation_scale_weights"


def test_random_searcher_simplex_and_choice():
    data = {"study": "t", "samples": 5, "searcher": "random", "scheduler": "fifo",
            "fixed": {"preset": "tiny", "lmbda": 0.01, "epochs": 3},
            "params": {"scale_weights": {"type": "simplex", "dim": 3, "min": 0.1},
                       "w_lr": {"type": "choice", "values": [0.01, 0.05]},
                       "gamma_s1": {"type": "loguniform", "low": 0.001, "high": 0.02}}}
    alg, ps, n = build_searcher(sp.parse_space(data, "t.yaml"))
    rows = [r for _ in range(n) for r in variants(ps, seed=_)]
    for r in rows:
        assert abs(sum(r["scale_weights"]) - 1) < 1e-5 and min(r["scale_weights"]) >= 0.1 - 1e-6
        assert r["w_lr"] in (0.01, 0.05) and 0.001 <= r["gamma_s1"] <= 0.02
        assert r["label"] == "t" and r["seed"] == 0
    assert len({tuple(r["scale_weights"]) for r in rows}) > 1
    # grid searcher enumerates choices
    data2 = {**data, "searcher": "grid", "params": {"w_lr": {"type": "choice", "values": [0.01, 0.05]}}}
    _, ps2, _ = build_searcher(sp.parse_space(data2, "t.yaml"))
    assert sorted(r["w_lr"] for r in variants(ps2)) == [0.01, 0.05]


def optuna_search(max_epochs=6):
    import optuna

    s = sp.load_space(sp.resolve_space_path("default")).with_overrides(epochs=max_epochs)
    alg, ps, n = build_searcher(s)
    assert isinstance(alg, PrunedOptunaSearch) and n == s.samples
    assert ps["study"] == "default" and "gamma_s1" not in ps  # sampled by Optuna, not in the Tune space
    alg._ot_study.sampler = optuna.samplers.RandomSampler(seed=0)
    return alg


def test_optuna_configs_are_flat_with_simplex_weights():
    alg = optuna_search()
    cfg = alg.suggest("t1")
    assert {"gamma_s1", "gamma_s2", "gamma_s3", "scale_weights"} <= set(cfg)
    assert abs(sum(cfg["scale_weights"]) - 1) < 1e-5
    assert all(k.startswith(INTERNAL_PREFIX) for k in cfg if k.startswith("_simplex"))


def test_early_stopped_trial_is_pruned_with_its_last_value():
    alg = optuna_search(max_epochs=6)
    for tid in ("stopped", "finished", "crashed"):
        alg.suggest(tid)
    alg.on_trial_result("stopped", {metrics.EVAL_LOSS: 0.9, metrics.EPOCH: 1, "training_iteration": 1})
    # The result at which ASHA said stop never reaches on_trial_result; it arrives only with completion.
    alg.on_trial_complete("stopped", result={metrics.EVAL_LOSS: 0.8, metrics.EPOCH: 2, "training_iteration": 2})
    alg.on_trial_complete("finished", result={metrics.EVAL_LOSS: 0.5, metrics.EPOCH: 6, "training_iteration": 6})
    alg.on_trial_complete("crashed", result={metrics.EVAL_LOSS: 0.7, metrics.EPOCH: 3}, error=True)
    trials = {t.number: t for t in alg._ot_study.get_trials(deepcopy=False)}
    stopped, finished, crashed = trials[0], trials[1], trials[2]
    # Optuna keeps the last intermediate value of a pruned trial; TPE ranks pruned trials by the step reached.
    assert stopped.state == TrialState.PRUNED and stopped.value == 0.8
    assert stopped.intermediate_values == {1: 0.9, 2: 0.8}
    assert finished.state == TrialState.COMPLETE and finished.value == 0.5
    assert crashed.state == TrialState.FAIL
    assert alg.pruned == ["stopped"]


def test_unknown_searcher_names_the_valid_ones():
    with pytest.raises(ValueError, match="valid: grid, optuna, random"):
        SEARCHERS.get("bohb")


def test_optuna_state_survives_save_and_restore(tmp_path):
    """What Tune does with the searcher at each experiment snapshot and on --resume."""
    alg = optuna_search(max_epochs=6)
    alg.suggest("a")
    alg.on_trial_complete("a", result={metrics.EVAL_LOSS: 0.8, metrics.EPOCH: 2, "training_iteration": 2})
    alg.suggest("b")
    alg.save(str(tmp_path / "searcher.pkl"))
    fresh = optuna_search(max_epochs=6)
    fresh.restore(str(tmp_path / "searcher.pkl"))
    assert fresh.pruned == ["a"]
    assert [t.state for t in fresh._ot_study.get_trials(deepcopy=False)] == [TrialState.PRUNED, TrialState.RUNNING]
    fresh.on_trial_complete("b", result={metrics.EVAL_LOSS: 0.4, metrics.EPOCH: 6, "training_iteration": 6})
    assert fresh._ot_study.best_value == 0.4


@pytest.mark.parametrize("searcher", ["random", "grid"])
def test_variant_searchers_enforce_max_concurrent(searcher):
    # Ray ignores TuneConfig.max_concurrent_trials for an explicit BasicVariantGenerator: the generator holds it.
    space = sp.parse_space({"study": "c", "searcher": searcher, "scheduler": "fifo", "max_concurrent": 3,
                            "fixed": {"epochs": 1}, "params": {"w_lr": {"type": "choice", "values": [0.01, 0.02]}}},
                           source="c.yaml")
    generator, _, _ = build_searcher(space)
    assert generator.max_concurrent == 3


def test_optuna_asks_each_domain_for_its_own_distributions():
    import optuna

    data = {"study": "t", "samples": 8, "scheduler": "fifo", "fixed": {"preset": "tiny", "lmbda": 0.01, "epochs": 3},
            "params": {"scale_weights": {"type": "simplex", "dim": 3, "min": 0.1},
                       "w_lr": {"type": "choice", "values": [0.01, 0.05]},
                       "gamma_s1": {"type": "loguniform", "low": 0.001, "high": 0.02},
                       "gamma_s2": {"type": "quniform", "low": 0.001, "high": 0.02, "q": 0.001},
                       "batch_size": {"type": "randint", "low": 2, "high": 5}}}
    space = sp.parse_space(data, "t.yaml")
    alg, _, _ = build_searcher(space)
    alg._ot_study.sampler = optuna.samplers.RandomSampler(seed=1)
    rows = [alg.suggest(f"t{i}") for i in range(8)]
    for r in rows:
        assert r["w_lr"] in (0.01, 0.05) and 0.001 <= r["gamma_s1"] <= 0.02
        assert abs(r["gamma_s2"] / 0.001 - round(r["gamma_s2"] / 0.001)) < 1e-9
        assert isinstance(r["batch_size"], int) and 2 <= r["batch_size"] <= 4  # high excluded, as in Ray
        raw = space.params["scale_weights"].raw_keys("scale_weights")
        assert r["scale_weights"] == space.params["scale_weights"].from_uniforms([r[k] for k in raw])
    dists = alg._ot_study.trials[0].distributions
    assert dists["gamma_s1"].log and dists["gamma_s2"].step == 0.001 and dists["batch_size"].high == 4
    assert "scale_weights" not in dists  # derived: its raw draws are the parameters
