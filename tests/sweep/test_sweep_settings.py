"""search_spaces/README.md states the schedulers, searchers, their options and defaults of
hpcm_tune.sweep_settings (the one declaration, read by the validation and the builders); these tests keep the
document's claims true. Plain Python, no Ray."""

import re
from pathlib import Path

import pytest

from hpcm_tune import sweep_settings as ss
from hpcm_tune.sweep import space as sp
from hpcm_tune.sweep_settings import (
    SCHEDULER_DEFAULTS,
    SEARCHER_DEFAULTS,
    SPACE_DEFAULTS,
    scheduler_options,
    searcher_options,
)

README = (Path(__file__).resolve().parents[2] / "search_spaces" / "README.md").read_text()


def paragraph(title: str) -> str:
    return next(p for p in README.split("\n\n") if p.startswith(title))


@pytest.mark.parametrize(("title", "table"), [("Scheduler options.", SCHEDULER_DEFAULTS),
                                              ("Searcher options.", SEARCHER_DEFAULTS)])
def test_readme_states_each_option_and_its_default(title, table):
    text = " ".join(paragraph(title).split())
    for name, options in table.items():
        assert f"`{name}`" in README, name
        for option, default in options.items():
            shown = f"[{', '.join(default)}]" if isinstance(default, list) else str(default)
            # the option, then its default within the same parenthesis: `grace_period` (..., default 1)
            assert re.search(rf"`{option}` \([^)]*?(?<![\w.]){re.escape(shown)}", text), (option, shown)


def test_readme_table_states_the_default_scheduler_and_searcher():
    for setting in ("scheduler", "searcher"):
        assert re.search(rf"^\| `{setting}` \| `{SPACE_DEFAULTS[setting]}` \|", README, re.M), setting


def test_a_file_that_names_nothing_runs_the_declared_defaults():
    s = sp.parse_space({"study": "t", "fixed": {"preset": "tiny", "lmbda": 0.01, "epochs": 6}}, "t")
    assert (s.scheduler, s.searcher, s.samples, s.cpus) == (SPACE_DEFAULTS["scheduler"], SPACE_DEFAULTS["searcher"],
                                                            SPACE_DEFAULTS["samples"], SPACE_DEFAULTS["cpus"])
    assert scheduler_options(s.scheduler, s.scheduler_options)["grace_period"] == 1
    assert searcher_options(s.searcher, {"sampler": "random"}) == {"sampler": "random", "n_startup_trials": 4}


def test_defaults_are_copies():
    scheduler_options("asha", {})["group_by"].append("preset")
    assert SCHEDULER_DEFAULTS["asha"]["group_by"] == ["lmbda"]


@pytest.mark.parametrize("spec", [*ss.SCHEDULER_SPECS.values(), *ss.SEARCHER_SPECS.values()])
def test_every_declared_default_keeps_its_own_rule(spec):
    for name, option in spec.options.items():
        assert option.problem(option.default, 10) is None, name


def space(**over):
    data = {"study": "t", "fixed": {"preset": "tiny", "lmbda": 0.01, "epochs": 6}, "scheduler": "fifo",
            "searcher": "random", "params": {"w_lr": {"type": "choice", "values": [0.01, 0.02, 0.05]}}}
    return sp.parse_space({**data, **over}, "t.yaml")


def test_a_scheduler_declared_here_is_validated_by_its_options_and_traits(monkeypatch):
    def odd(v, epochs):
        return None if isinstance(v, int) and v % 2 else f"an odd integer below {epochs}"

    monkeypatch.setitem(ss.SCHEDULER_SPECS, "median", ss.SchedulerSpec(options={"window": ss.Option(3, odd)},
                                                                      judges_every_epoch=True))
    assert space(scheduler="median").scheduler == "median"
    with pytest.raises(sp.SpaceError) as info:
        space(scheduler={"name": "median", "window": 4})
    assert (info.value.source, info.value.key, info.value.value, info.value.allowed) == (
        "t.yaml", "scheduler.window", 4, "an odd integer below 6")
    with pytest.raises(sp.SpaceError, match=r"scheduler.span = 2: unknown option for median; allowed: window"):
        space(scheduler={"name": "median", "span": 2})
    with pytest.raises(sp.SpaceError, match=r"fixed.eval_interval = 2: median watches eval/loss every epoch"):
        space(scheduler="median", fixed={"preset": "tiny", "lmbda": 0.01, "epochs": 6, "eval_interval": 2})
    # The same space under a scheduler that judges only at the end: no such rule.
    monkeypatch.setitem(ss.SCHEDULER_SPECS, "median", ss.SchedulerSpec())
    assert space(scheduler="median", fixed={"preset": "tiny", "lmbda": 0.01, "epochs": 6, "eval_interval": 2})


def test_scheduler_traits_copies_weights_and_mutates_configs(monkeypatch):
    grid = {"lmbda": {"type": "grid", "values": [0.01, 0.02]}, "w_lr": {"type": "uniform", "low": 0.01, "high": 0.05}}
    fixed = {"preset": "tiny", "epochs": 6}
    monkeypatch.setitem(ss.SCHEDULER_SPECS, "swap", ss.SchedulerSpec(copies_weights=True))
    with pytest.raises(sp.SpaceError, match=r"scheduler = 'pbt': PBT copies weights between trials"):
        space(scheduler="pbt", fixed=fixed, params=grid)
    with pytest.raises(sp.SpaceError, match=r"scheduler = 'swap': swap copies weights between trials, so it needs one "
                                            r"lambda; this space has 2"):
        space(scheduler="swap", fixed=fixed, params=grid)
    monkeypatch.setitem(ss.SCHEDULER_SPECS, "swap", ss.SchedulerSpec(mutates_configs=True))
    assert len(space(scheduler="swap", fixed=fixed, params=grid).lambdas()) == 2
    with pytest.raises(sp.SpaceError, match=r"searcher = 'optuna': swap mutates configs itself: use searcher random "
                                            r"or grid"):
        space(scheduler="swap", searcher="optuna", params={"w_lr": {"type": "uniform", "low": 0.01, "high": 0.05}})


def test_a_searcher_declared_here_is_validated_by_its_traits(monkeypatch):
    monkeypatch.setitem(ss.SEARCHER_SPECS, "sobol", ss.SearcherSpec(samples_are_trials=True))
    s = space(searcher="sobol", samples=7, params={"w_lr": {"type": "uniform", "low": 0.01, "high": 0.05}})
    assert s.total_trials() == 7
    with pytest.raises(sp.SpaceError, match=r"repeats = 2: searcher sobol runs one seed per trial; repeats needs "
                                            r"searcher random or grid$"):
        space(searcher="sobol", repeats=2)
    with pytest.raises(sp.SpaceError, match=r"params.lmbda.type = 'grid': searcher sobol samples one study"):
        space(searcher="sobol", fixed={"preset": "tiny", "epochs": 6},
              params={"lmbda": {"type": "grid", "values": [0.01, 0.02]}})
    # An enumerating searcher runs every choice (3 values x 2 seeds), and refuses a drawn domain.
    monkeypatch.setitem(ss.SEARCHER_SPECS, "sweep-all", ss.SearcherSpec(enumerates=True))
    assert space(searcher="sweep-all", repeats=2).total_trials() == 6
    assert space(searcher="random", repeats=2).total_trials() == 2
    with pytest.raises(sp.SpaceError, match=r"params.w_lr.type = 'uniform': searcher sweep-all enumerates values: use "
                                            r"fixed, choice or grid \(or searcher random\)"):
        space(searcher="sweep-all", params={"w_lr": {"type": "uniform", "low": 0.01, "high": 0.05}})
    assert ss.enumerates_choices("sweep-all") and ss.enumerates_choices("grid")
    assert not ss.enumerates_choices("random") and not ss.enumerates_choices(None)
