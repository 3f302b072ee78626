"""hpcm_tune.domains: each search-space domain parsed from its YAML form, its mistakes refused with the key, the
value and what is allowed, its Ray and Optuna forms, its recorded form read back by the analysis, and a domain
defined here (registered into the table) working end to end without touching any other module."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from ray.tune.search import sample
from ray.tune.search.variant_generator import generate_variants

from hpcm_tune import domains as dm

# (YAML form, the domain it parses to); each form is also the recorded form (to_record).
CASES = [
    ({"type": "fixed", "value": [1, 2]}, dm.Fixed([1, 2])),
    ({"type": "uniform", "low": 0.1, "high": 0.5}, dm.Uniform(0.1, 0.5)),
    ({"type": "loguniform", "low": 0.001, "high": 0.1}, dm.LogUniform(0.001, 0.1)),
    ({"type": "quniform", "low": 0.0, "high": 1.0, "q": 0.25}, dm.QUniform(0.0, 1.0, 0.25)),
    ({"type": "randint", "low": 2, "high": 9}, dm.RandInt(2, 9)),
    ({"type": "choice", "values": [0.01, "a", [1, 2]]}, dm.Choice((0.01, "a", [1, 2]))),
    ({"type": "grid", "values": [0.0018, 0.0035]}, dm.Grid((0.0018, 0.0035))),
    ({"type": "simplex", "dim": 3, "min": 0.1}, dm.Simplex(3, 0.1)),
]
SAMPLED = [(spec, dom) for spec, dom in CASES if dom.sampled]


def variants(param_space: dict, seeds: int = 5) -> list[dict]:
    return [cfg for seed in range(seeds)
            for _, cfg in generate_variants(param_space, random_state=np.random.RandomState(seed))]


@pytest.mark.parametrize(("spec", "dom"), CASES, ids=[c[0]["type"] for c in CASES])
def test_parse_and_record_round_trip(spec, dom):
    assert dm.parse("params.k", spec) == dom
    assert dom.to_record() == spec
    assert dm.parse("params.k", dom.to_record()) == dom
    assert dm.DOMAINS[spec["type"]] is type(dom)


def test_a_bare_value_is_fixed_and_integers_stay_integers():
    assert dm.parse("params.k", 0.5) == dm.Fixed(0.5)
    assert dm.parse("params.k", {"type": "randint", "low": 1, "high": 4}).to_record()["low"] == 1
    assert dm.parse("params.k", {"type": "simplex", "dim": 2}) == dm.Simplex(2, 0.0)


BAD = [
    ({"type": "gauss"}, "params.k.type", "gauss",
     "allowed: fixed, uniform, loguniform, quniform, randint, choice, grid, simplex"),
    ({"type": "uniform", "low": 0.1, "high": 0.5, "q": 1}, "params.k", "q",
     "unknown field for type uniform; allowed: high, low"),
    ({"type": "fixed"}, "params.k", {"type": "fixed"}, "missing 'value'"),
    ({"type": "uniform", "high": 0.5}, "params.k", {"type": "uniform", "high": 0.5}, "missing 'low'"),
    ({"type": "uniform", "low": "a", "high": 0.5}, "params.k.low", "a", "must be a finite number"),
    ({"type": "uniform", "low": True, "high": 0.5}, "params.k.low", True, "must be a finite number"),
    ({"type": "uniform", "low": 0.5, "high": 0.5}, "params.k.low", 0.5, "must be below high (0.5)"),
    ({"type": "loguniform", "low": 0.0, "high": 0.5}, "params.k.low", 0.0, "loguniform needs low > 0"),
    ({"type": "quniform", "low": 0.0, "high": 1.0, "q": 2.0}, "params.k.q", 2.0, "must be in (0, high - low = 1.0]"),
    ({"type": "quniform", "low": 0.1, "high": 1.0, "q": 0.25}, "params.k.low", 0.1,
     "must be a multiple of q = 0.25 (values are rounded to multiples of q, so the bounds must be ones)"),
    ({"type": "randint", "low": 1.5, "high": 4}, "params.k.low", 1.5, "must be an integer"),
    ({"type": "randint", "low": 4, "high": 4}, "params.k.low", 4, "must be below high (4; high is excluded)"),
    ({"type": "choice", "values": []}, "params.k.values", [], "must be a non-empty list"),
    ({"type": "grid", "values": 0.1}, "params.k.values", 0.1, "must be a non-empty list"),
    ({"type": "choice", "values": [1, 1]}, "params.k.values", [1, 1], "values must be distinct"),
    ({"type": "simplex", "dim": 1}, "params.k.dim", 1, "a simplex needs at least 2 weights"),
    ({"type": "simplex", "dim": 3, "min": 0.4}, "params.k.min", 0.4,
     "must be >= 0 with dim*min < 1 so 3 weights >= min can sum to 1"),
]


@pytest.mark.parametrize(("spec", "key", "value", "allowed"), BAD, ids=[b[1] + ":" + b[3][:20] for b in BAD])
def test_bad_values_are_refused_naming_key_value_and_what_is_allowed(spec, key, value, allowed):
    with pytest.raises(dm.DomainError) as info:
        dm.parse("params.k", spec)
    assert (info.value.key, info.value.value, info.value.allowed) == (key, value, allowed)
    assert str(info.value).startswith(f"{key} = ")


def test_to_ray():
    lu = dm.LogUniform(0.001, 0.1).to_ray("g")["g"]
    assert isinstance(lu, sample.Float) and (lu.lower, lu.upper) == (0.001, 0.1)
    assert isinstance(lu.get_sampler(), sample.LogUniform)
    u = dm.Uniform(0.1, 0.5).to_ray("g")["g"]
    assert isinstance(u.get_sampler(), sample.Uniform) and (u.lower, u.upper) == (0.1, 0.5)
    q = dm.QUniform(0.0, 1.0, 0.25).to_ray("g")["g"]
    assert isinstance(q.get_sampler(), sample.Quantized) and q.get_sampler().q == 0.25
    r = dm.RandInt(2, 9).to_ray("b")["b"]
    assert isinstance(r, sample.Integer) and (r.lower, r.upper) == (2, 9)
    c = dm.Choice((1, 2)).to_ray("c")["c"]
    assert isinstance(c, sample.Categorical) and c.categories == [1, 2]
    assert dm.Choice((1, 2)).to_ray("c", enumerate_choices=True) == {"c": {"grid_search": [1, 2]}}
    assert dm.Grid((1, 2)).to_ray("c") == {"c": {"grid_search": [1, 2]}}
    with pytest.raises(ValueError, match="no Ray domain for 'fixed'"):
        dm.Fixed(1).to_ray("k")
    # Every sampled value lies in its domain, as Ray draws it.
    rows = variants({k: v for spec, dom in SAMPLED for k, v in dom.to_ray(spec["type"]).items()})
    for row in rows:
        assert 0.1 <= row["uniform"] <= 0.5 and 0.001 <= row["loguniform"] <= 0.1
        assert row["quniform"] in (0.0, 0.25, 0.5, 0.75, 1.0) and row["randint"] in range(2, 9)
        assert row["choice"] in (0.01, "a", [1, 2])
    assert len({row["uniform"] for row in rows}) == len(rows)


def test_a_simplex_draws_its_weights_from_internal_uniforms():
    dom = dm.Simplex(3, 0.1)
    entries = dom.to_ray("sw")
    assert list(entries) == ["_simplex_sw_0", "_simplex_sw_1", "_simplex_sw_2", "sw"]
    for row in variants(entries):
        assert row["sw"] == dom.from_uniforms([row[k] for k in dom.raw_keys("sw")])
        assert abs(sum(row["sw"]) - 1) < 1e-5 and min(row["sw"]) >= 0.1 - 1e-6
    assert dom.to_optuna("sw") == {k: FloatDistribution(0.0, 1.0) for k in dom.raw_keys("sw")}
    assert dom.from_suggested("sw", dict.fromkeys(dom.raw_keys("sw"), 0.5)) == pytest.approx([1 / 3] * 3, abs=1e-6)
    assert dom.derived and not dm.Uniform(0, 1).derived


def test_to_optuna():
    assert dm.Uniform(0.1, 0.5).to_optuna("g") == {"g": FloatDistribution(0.1, 0.5)}
    assert dm.LogUniform(0.001, 0.1).to_optuna("g") == {"g": FloatDistribution(0.001, 0.1, log=True)}
    assert dm.QUniform(0.0, 1.0, 0.25).to_optuna("g") == {"g": FloatDistribution(0.0, 1.0, step=0.25)}
    assert dm.RandInt(2, 9).to_optuna("b") == {"b": IntDistribution(2, 8)}  # Optuna's high is included
    assert dm.Choice((1, "a")).to_optuna("c") == {"c": CategoricalDistribution([1, "a"])}
    assert dm.Uniform(0.1, 0.5).from_suggested("g", {"g": 0.3}) == 0.3
    for dom in (dm.Grid((1, 2)), dm.Fixed(1)):
        with pytest.raises(ValueError, match=f"optuna cannot search 'k' of type '{dom.kind}'"):
            dom.to_optuna("k")


@pytest.mark.parametrize(("spec", "dom"), SAMPLED, ids=[c[0]["type"] for c in SAMPLED])
def test_the_analysis_reads_the_recorded_form_back(spec, dom):
    back = type(dom).from_record(dom.to_record())
    assert back == dom
    assert back.components("k") == (("k",) if dom.vector_length() is None else ("k[0]", "k[1]", "k[2]"))


def test_recorded_forms_are_read_leniently_and_refused_naming_the_missing_field():
    assert dm.Uniform.from_record({"type": "uniform", "low": 0, "high": 1}) == dm.Uniform(0.0, 1.0)
    assert dm.Simplex.from_record({"type": "simplex", "dim": 1, "min": None}) == dm.Simplex(1, 0.0)
    assert dm.Choice.from_record({"type": "choice", "values": [2, 2]}).values() == (2, 2)
    for cls, spec, missing in ((dm.Uniform, {"low": 0.0}, "'low' and 'high'"),
                               (dm.QUniform, {"low": 0.0, "high": 1.0}, "'q'"),
                               (dm.Choice, {"values": []}, "'values'"),
                               (dm.Simplex, {"dim": "3"}, "'dim'")):
        with pytest.raises(ValueError, match=missing):
            cls.from_record(spec)


def test_analysis_components_descriptions_and_importance_distributions():
    assert dm.LogUniform(0.001, 0.02).describe("g") == "`g` loguniform [0.001, 0.02]"
    assert dm.RandInt(2, 9).describe("b") == "`b` randint [2, 9)"
    assert dm.Simplex(3, 0.1).describe("s") == "`s` simplex of 3 weights ≥ 0.1 (as its 3 components)"
    assert dm.Choice((1, [2, 3])).describe("c") == "`c` choice of 1, [2, 3]"
    assert dm.Uniform(0.1, 0.5).component_values(0.2) == (0.2,)
    assert dm.Uniform(0.1, 0.5).component_values("x") is None
    assert dm.Choice((1, [2, 3])).component_values([2, 3]) == ("[2, 3]",)
    assert dm.Simplex(2).component_values([0.25, 0.75]) == (0.25, 0.75)
    assert dm.Simplex(2).component_values([0.25, math.inf]) is None
    # The domain's range, widened to what was observed (a rounded value past a bound, a value the space lost).
    assert dm.LogUniform(0.001, 0.02).importance_distribution(0, [0.03, None]) == FloatDistribution(
        0.001, 0.03, log=True)
    assert dm.Uniform(-1.0, 1.0).importance_distribution(0, []) == FloatDistribution(-1.0, 1.0)
    assert dm.RandInt(2, 9).importance_distribution(0, [1.0]) == IntDistribution(1, 8)
    assert dm.Simplex(3, 0.1).importance_distribution(2, [0.05]) == FloatDistribution(0.05, 0.8)
    assert dm.Choice((1,)).importance_distribution(0, [1, "b"]) == CategoricalDistribution([1, "b"])


@pytest.mark.parametrize(("spec", "dom"), SAMPLED, ids=[c[0]["type"] for c in SAMPLED])
def test_validation_values_lie_in_the_domain(spec, dom):
    if dom.categorical:
        return  # validation takes a categorical domain's listed values, not draws
    rng = random.Random(0)
    values = [*dom.extremes(), dom.typical(), *(dom.draw(rng) for _ in range(50))]
    for v in values:
        parts = v if isinstance(v, list) else [v]
        lows_highs = [(dom.min, 1 - (dom.dim - 1) * dom.min)] * dom.dim if dom.vector_length() else [dom.bounds()]
        for x, (low, high) in zip(parts, lows_highs, strict=True):
            assert low - 1e-6 <= x <= high + 1e-6, (dom, v)
    assert dom.extremes()[0] != dom.extremes()[1]


def test_traits_say_each_domain_s_role():
    roles = {kind: (cls.sampled, cls.grid_axis, cls.constant) for kind, cls in dm.DOMAINS.items()}
    assert all(sum(r) == 1 for r in roles.values()), roles  # exactly one role each
    assert [k for k, c in dm.DOMAINS.items() if c.categorical] == ["choice"]
    assert [k for k, c in dm.DOMAINS.items() if c.log] == ["loguniform"]
    with pytest.raises(ValueError, match="already registered"):
        dm.register(dm.Uniform)


def test_words():
    assert (dm.words([]), dm.words(["a"]), dm.words(["a", "b"]), dm.words(["a", "b", "c"], "and")) == (
        "", "a", "a or b", "a, b and c")


# -- a domain defined here, registered into the table, through the sweep and the analysis -----------------------


@dataclass(frozen=True)
class LogRandInt(dm.Domain):
    """Integers in [low, high), uniform in log (Ray's lograndint)."""

    low: int
    high: int
    kind: ClassVar[str] = "lograndint"
    yaml_fields: ClassVar[frozenset[str]] = frozenset({"low", "high"})
    log: ClassVar[bool] = True

    @classmethod
    def parse(cls, where: str, spec: Any) -> LogRandInt:
        low, high = spec.get("low"), spec.get("high")
        if not (dm.is_int(low) and dm.is_int(high) and 0 < low < high):
            raise dm.DomainError(f"{where}.low", low, "integers 0 < low < high")
        return cls(low, high)

    def bounds(self) -> tuple[float, float]:
        return (self.low, self.high - 1)

    def extremes(self) -> tuple[Any, Any]:
        return self.bounds()

    def draw(self, rng: random.Random) -> int:
        return min(int(math.exp(rng.uniform(math.log(self.low), math.log(self.high)))), self.high - 1)

    def to_ray(self, key: str, enumerate_choices: bool = False) -> dict[str, Any]:
        from ray import tune

        return {key: tune.lograndint(self.low, self.high)}

    def to_optuna(self, key: str) -> dict[str, Any]:
        return {key: IntDistribution(self.low, self.high - 1, log=True)}

    def importance_distribution(self, index: int, observed: list) -> Any:
        values = [int(v) for v in observed if v is not None]
        return IntDistribution(min([self.low, *values]), max([self.high - 1, *values]), log=True)


@pytest.fixture
def lograndint(monkeypatch):
    monkeypatch.setitem(dm.DOMAINS, LogRandInt.kind, LogRandInt)
    return LogRandInt


def test_a_new_domain_is_one_class(lograndint, storage_dir):
    import optuna

    from hpcm_tune.analysis import search
    from hpcm_tune.analysis.report import build_report
    from hpcm_tune.analysis.results import load_experiments
    from hpcm_tune.analysis.tables import AnalysisOptions
    from hpcm_tune.sweep import space as sp
    from hpcm_tune.sweep.schedulers import build_scheduler
    from hpcm_tune.sweep.searchers import build_searcher
    from hpcm_tune.testing import write_experiment_dir

    data = {"study": "new", "searcher": "random", "scheduler": "fifo", "samples": 4,
            "fixed": {"preset": "tiny", "lmbda": 0.0067, "epochs": 2},
            "params": {"batch_size": {"type": "lograndint", "low": 2, "high": 17}}}
    # Parsed and validated (its bounds by batch_size's rule, whole configs at both ends and at draws).
    space = sp.parse_space(data, "new.yaml")
    assert space.params["batch_size"] == LogRandInt(2, 17)
    with pytest.raises(sp.SpaceError, match="^new.yaml: params.batch_size.low = 0: integers 0 < low < high$"):
        sp.parse_space({**data, "params": {"batch_size": {"type": "lograndint", "low": 0, "high": 17}}}, "new.yaml")
    with pytest.raises(sp.SpaceError, match=r"^new.yaml: patch_size = 47: allowed: a multiple of 16"):
        sp.parse_space({**data, "params": {"patch_size": {"type": "lograndint", "low": 32, "high": 48}}}, "new.yaml")
    # The grid searcher refuses it (drawn, not listed); the space's record holds it.
    with pytest.raises(sp.SpaceError, match="searcher grid enumerates values"):
        sp.parse_space({**data, "searcher": "grid"}, "new.yaml")
    assert space.to_json()["params"]["batch_size"] == {"type": "lograndint", "low": 2, "high": 17}
    # Ray's random searcher and PBT's mutations.
    _, ps, _ = build_searcher(space)
    assert {row["batch_size"] for row in variants(ps, seeds=20)} <= set(range(2, 17))
    pbt = build_scheduler(space.with_overrides(scheduler="pbt"))
    assert isinstance(pbt._hyperparam_mutations["batch_size"], sample.Integer)
    # Optuna's define-by-run search.
    alg, _, _ = build_searcher(space.with_overrides(searcher="optuna", scheduler="fifo"))
    alg._ot_study.sampler = optuna.samplers.RandomSampler(seed=0)
    suggested = [alg.suggest(f"t{i}")["batch_size"] for i in range(10)]
    assert all(isinstance(b, int) and 2 <= b <= 16 for b in suggested) and len(set(suggested)) > 1
    # The analysis rebuilds it from the recorded space and ranks its importance.
    rng = np.random.default_rng(0)
    trials = []
    for _ in range(12):
        b = int(np.exp(rng.uniform(math.log(2), math.log(17))))
        trials.append({"config": {"objective": "standard", "lmbda": 0.0067, "seed": 0, "epochs": 2, "study": "new",
                                  "label": "new", "batch_size": b, "preset": "tiny"},
                       "psnr_offset": -abs(math.log2(b) - 3)})
    write_experiment_dir(storage_dir, "exp", trials, study="new", search_space=space.to_json())
    (section,) = build_report(load_experiments([storage_dir / "exp"]), AnalysisOptions(reference=False)).searches
    (param,) = section.params
    assert param.domain == LogRandInt(2, 17) and param.log
    assert param.describe() == "`batch_size` lograndint [2, 16]"
    (at,) = section.per_lambda
    assert at.importances and all(set(imp.values) == {"batch_size"} for imp in at.importances)
    with pytest.raises(ValueError, match=r"^params\.batch_size = .*: lograndint\.low = 2: integers 0 < low < high$"):
        search.parse_param("batch_size", {"type": "lograndint", "low": 2}, "random")


@pytest.fixture
def storage_dir(tmp_path):
    return tmp_path / "results"
