"""Search-space parsing and validation (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcm_tune import metrics
from hpcm_tune.experiment import INTERNAL_PREFIX
from hpcm_tune.sweep import space as sp

PRESETS = sorted((Path(__file__).resolve().parents[2] / "search_spaces").glob("*.yaml"))


def minimal(**over):
    data = {
        "study": "t",
        "fixed": {"preset": "tiny", "objective": "hierarchical", "lmbda": 0.0067, "epochs": 4},
        "params": {"gamma_s1": {"type": "loguniform", "low": 0.001, "high": 0.02}},
    }
    for k, v in over.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    return data


def test_presets_parse_and_cover_the_studies():
    names = {p.stem for p in PRESETS}
    assert {"default", "ablation_scale_weights", "ablation_gamma", "gamma_strategies", "balanced_grid",
            "objectives"} <= names
    spaces = {p.stem: sp.load_space(p) for p in PRESETS}
    assert len(spaces["ablation_scale_weights"].configurations) == 4
    assert "s2 emphasis" in spaces["ablation_scale_weights"].configurations
    assert set(spaces["ablation_gamma"].configurations) == {"uniform", "increasing", "decreasing", "gamma 0"}
    assert spaces["ablation_gamma"].configurations["gamma 0"] == {"gamma_s1": 0.0, "gamma_s2": 0.0, "gamma_s3": 0.0}
    assert len(spaces["gamma_strategies"].configurations) == 5
    assert len(spaces["balanced_grid"].configurations) == 12
    assert set(spaces["objectives"].configurations) == {"standard (continued)", "standard (cautious adam)", "balanced",
                                                        "hierarchical", "hierarchical (ratio)"}
    # every preset fine-tunes from parents, except the from-scratch control of the objectives study
    assert {n for n, s in spaces.items() if s.parent is None} == {"objectives_scratch"}
    assert spaces["objectives_scratch"].study == "objectives"  # one more row of that study's table
    assert len(spaces["balanced_controls"].lambdas()) == 2  # the controls run at two lambdas
    for name, s in spaces.items():
        if name not in ("default", "balanced_controls"):
            assert len(s.lambdas()) >= 4, name
    d = spaces["default"]
    assert (d.scheduler, d.searcher, d.max_concurrent) == ("asha", "optuna", 2)
    assert isinstance(d.params["scale_weights"], sp.Simplex)
    assert {"gamma_s1", "gamma_s2", "gamma_s3"} <= set(d.params)
    assert d.metric == metrics.DEFAULT_METRIC


def test_trial_configs_carry_study_label_and_seeds():
    s = sp.load_space([p for p in PRESETS if p.stem == "ablation_scale_weights"][0])
    s = s.with_overrides(repeats=2)
    rows = sp.trial_configs(s)
    assert len(rows) == 4 * 4 * 2 == s.total_trials()
    assert {r["label"] for r in rows} == {"equal", "s1 emphasis", "s2 emphasis", "s3 emphasis"}
    assert {r["seed"] for r in rows} == {0, 1}
    assert all(r["study"] == "ablation_scale_weights" for r in rows)
    s3 = [r for r in rows if r["label"] == "s3 emphasis"][0]
    assert s3["scale_weights"] == [0.2, 0.3, 0.5]


@pytest.mark.parametrize("u", [[0.5, 0.5, 0.5], [1e-9, 0.3, 0.99], [1.0, 1.0, 0.01]])
def test_simplex_sums_to_one_and_respects_min(u):
    dom = sp.Simplex(3, 0.1)
    w = dom.from_uniforms(u)
    assert abs(sum(w) - 1.0) < 1e-5
    assert all(x >= 0.1 - 1e-6 for x in w)
    assert dom.raw_keys("scale_weights")[0].startswith(INTERNAL_PREFIX)


def test_json_roundtrip_of_parsed_space():
    s = sp.parse_space(minimal(), "x.yaml")
    j = json.loads(json.dumps(s.to_json()))
    assert j["params"]["gamma_s1"] == {"type": "loguniform", "low": 0.001, "high": 0.02}
    assert j["fixed"]["epochs"] == 4 and j["metric"] == metrics.DEFAULT_METRIC


BAD = [
    ({"bogus": 1}, "bogus"),
    ({"fixed": {"preset": "tiny", "lmbda": 0.01, "epochs": 4, "gamma_s9": 1}}, "fixed.gamma_s9"),
    ({"params": {"gamma_s1": {"type": "choice", "values": []}}}, "params.gamma_s1.values"),
    ({"params": {"gamma_s1": {"type": "uniform", "low": 0.02, "high": 0.001}}}, "params.gamma_s1.low"),
    ({"params": {"gamma_s1": {"type": "uniform", "low": -0.01, "high": 0.01}}}, "gamma_s1"),
    ({"params": {"gamma_s1": {"type": "loguniform", "low": 0.0, "high": 0.01}}}, "params.gamma_s1.low"),
    ({"params": {"gamma_s1": {"type": "uniform", "low": "a", "high": 0.01}}}, "params.gamma_s1.low"),
    ({"params": {"gamma_s1": {"type": "gaussian"}}}, "params.gamma_s1.type"),
    ({"params": {"scale_weights": {"type": "simplex", "dim": 3, "min": 0.4}}}, "params.scale_weights.min"),
    ({"params": {"scale_weights": {"type": "simplex", "dim": 2}}}, "params.scale_weights.dim"),
    ({"params": {"scale_weights": {"type": "choice", "values": [[0.5, 0.5, 0.5]]}}}, "scale_weights"),
    ({"fixed": {"preset": "tiny", "epochs": 4}, "params": {"lmbda": {"type": "grid", "values": [0.01, -0.1]}},
      "searcher": "random"}, "lmbda"),
    ({"fixed": {"preset": "tiny", "epochs": 4}, "params": {"lmbda": {"type": "grid", "values": [0.01, 0.02]}}},
     "params.lmbda.type"),
    ({"params": {"lmbda": {"type": "grid", "values": [0.01, 0.02]}}, "searcher": "random"}, "params.lmbda"),
    ({"fixed": {"preset": "tiny", "lmbda": 0.01}}, "fixed.epochs"),
    ({"metric": "eval/lossy"}, "metric"),
    ({"mode": "up"}, "mode"),
    ({"samples": 0}, "samples"),
    ({"scheduler": {"name": "hyperband"}}, "scheduler"),
    ({"scheduler": {"name": "asha", "grace_period": 99}}, "scheduler.grace_period"),
    ({"scheduler": {"name": "asha", "group_by": ["seed"]}}, "scheduler.group_by"),
    ({"scheduler": {"name": "asha", "brackets": 3}}, "scheduler.brackets"),
    ({"searcher": "bayes"}, "searcher"),
    ({"searcher": "grid"}, "params.gamma_s1.type"),
    ({"resources": {"gpus": 1.5}}, "resources.gpus"),
    ({"resources": {"tpus": 1}}, "resources.tpus"),
    ({"configurations": {"a": {"gamma_s2": 0.1}, "b": {"gamma_s3": 0.1}}, "searcher": "random"}, "configurations"),
    ({"configurations": {"a": {"gamma_s2": 0.1}}}, "configurations"),
    ({"fixed": {"preset": "tiny", "lmbda": 0.01, "epochs": 4, "label": "x"}}, "fixed.label"),
]


@pytest.mark.parametrize(("over", "key"), BAD)
def test_bad_spaces_name_file_key_and_value(over, key):
    with pytest.raises(sp.SpaceError) as info:
        sp.parse_space(minimal(**over), "bad.yaml")
    assert info.value.source == "bad.yaml"
    assert info.value.key == key, str(info.value)
    assert str(info.value).startswith("bad.yaml: ")


def test_optuna_refuses_repeats_and_pbt_refuses_lambda_grid():
    with pytest.raises(sp.SpaceError, match="repeats"):
        sp.parse_space(minimal(repeats=2), "a.yaml")
    data = minimal(searcher="random", scheduler="pbt")
    data["fixed"].pop("lmbda")
    data["params"]["lmbda"] = {"type": "grid", "values": [0.01, 0.02]}
    with pytest.raises(sp.SpaceError, match="one lambda"):
        sp.parse_space(data, "a.yaml")


def test_eval_interval_must_be_one_under_asha():
    data = minimal()
    data["fixed"]["eval_interval"] = 2
    with pytest.raises(sp.SpaceError, match="eval_interval"):
        sp.parse_space(data, "a.yaml")
    data["scheduler"] = "fifo"
    assert sp.parse_space(data, "a.yaml").scheduler == "fifo"


def test_overrides_are_validated():
    s = sp.parse_space(minimal(), "a.yaml")
    t = s.with_overrides(epochs=2, samples=3, scheduler="fifo", max_concurrent=None)
    assert (t.max_epochs, t.samples, t.scheduler, t.max_concurrent) == (2, 3, "fifo", s.max_concurrent)
    with pytest.raises(sp.SpaceError, match="epochs"):
        s.with_overrides(epochs=0)
    with pytest.raises(sp.SpaceError, match="gpus"):
        s.with_overrides(gpus=-1)
    with pytest.raises(sp.SpaceError, match="not an overridable"):
        s.with_overrides(colour="blue")


def test_bad_files(tmp_path):
    with pytest.raises(sp.SpaceError, match="no such file"):
        sp.load_space(tmp_path / "missing.yaml")
    p = tmp_path / "broken.yaml"
    p.write_text("study: [unclosed\n")
    with pytest.raises(sp.SpaceError, match="not valid YAML"):
        sp.load_space(p)
    p.write_text("- a list\n")
    with pytest.raises(sp.SpaceError, match="mapping"):
        sp.load_space(p)
    # A safe loader: python tags are refused, never executed.
    p.write_text("study: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(sp.SpaceError, match="not valid YAML"):
        sp.load_space(p)


def test_resolve_space_path_by_preset_name():
    assert sp.resolve_space_path("default").name == "default.yaml"
    with pytest.raises(sp.SpaceError, match="presets: .*default"):
        sp.resolve_space_path("nope")


def test_internal_test_hooks_allowed_in_fixed_and_stripped():
    data = minimal()
    data["fixed"]["_fake_fail_epoch"] = 2
    s = sp.parse_space(data, "a.yaml")
    assert "_fake_fail_epoch" not in sp.training_config(sp.trial_configs(s)[0])


def test_domain_record_round_trip():
    for spec in ({"type": "grid", "values": [0.1, 0.2]}, {"type": "choice", "values": ["a", "b"]},
                 {"type": "quniform", "low": 0.0, "high": 1.0, "q": 0.25}, {"type": "randint", "low": 1, "high": 4},
                 {"type": "simplex", "dim": 3, "min": 0.1}, {"type": "loguniform", "low": 0.001, "high": 0.1}):
        dom = sp.parse_domain("f", "k", spec)
        assert dom.to_record() == spec
        assert sp.parse_domain("f", "k", dom.to_record()) == dom


def test_domain_mistakes_name_the_file():
    with pytest.raises(sp.SpaceError) as info:
        sp.parse_domain("f.yaml", "lr", {"type": "uniform", "low": 1.0, "high": 0.5})
    assert (info.value.source, info.value.key, info.value.value) == ("f.yaml", "params.lr.low", 1.0)
    assert str(info.value) == "f.yaml: params.lr.low = 1.0: must be below high (0.5)"
    with pytest.raises(sp.SpaceError, match=r"^f.yaml: params.lr.type = 'gauss': allowed: fixed, uniform, "
                                            r"loguniform, quniform, randint, choice, grid, simplex$"):
        sp.parse_domain("f.yaml", "lr", {"type": "gauss"})
    with pytest.raises(sp.SpaceError, match=r"^f.yaml: params.lr = 'step': unknown field for type uniform; "
                                            r"allowed: high, low$"):
        sp.parse_domain("f.yaml", "lr", {"type": "uniform", "low": 0.1, "high": 0.5, "step": 2})


def test_config_keys_and_value_rules_are_the_run_configs():
    from hpcm_tune.config import FLAT_KEYS, ConfigError, check_value

    assert sp.known_config_keys() == set(FLAT_KEYS) | sp.RESERVED_KEYS
    for key, value in (("gamma_s1", -0.01), ("w_lr", 0), ("scale_weights", [0.5, 0.5, 0.5]), ("batch_size", 0),
                       ("update_mode", "sometimes")):
        with pytest.raises(ConfigError) as expected:
            check_value(key, value)
        data = minimal()
        data["fixed"][key] = value
        with pytest.raises(sp.SpaceError) as info:
            sp.parse_space(data, "a.yaml")
        assert (info.value.key, info.value.allowed) == (key, f"allowed: {expected.value.allowed}")


def test_values_the_engine_refuses_fail_before_ray():
    data = minimal()
    data["fixed"]["patch_size"] = 50  # not a multiple of HPCM's stride: RunConfig's rule for the key refuses it
    with pytest.raises(sp.SpaceError, match=r"patch_size = 50: allowed: a multiple of 16"):
        sp.parse_space(data, "a.yaml")
    # Valid bounds (64, 256) but draws in between mostly invalid: the whole trial configs built with RunConfig.
    data = minimal(searcher="random")
    data["params"] = {"patch_size": {"type": "randint", "low": 64, "high": 257}}
    with pytest.raises(sp.SpaceError, match="rejected by RunConfig: patch_size"):
        sp.parse_space(data, "a.yaml")
