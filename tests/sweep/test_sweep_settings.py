"""search_spaces/README.md states the schedulers, searchers, their options and defaults of
hpcm_tune.sweep_settings (the one declaration, read by the validation and the builders); these tests keep the
document's claims true. Plain Python, no Ray."""

import re
from pathlib import Path

import pytest

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
