"""The settings of a search-space file beside its config keys, declared once, here: the schedulers and searchers a
file may name, the options each takes with their defaults and rules, the traits the validation reads, and the
defaults of the other settings (:data:`SPACE_DEFAULTS`: samples, resources, ...).

``hpcm_tune.sweep.space`` validates a file's ``scheduler``/``searcher`` sections against this table (option names
and values) and checks the space against each one's traits (:class:`SchedulerSpec`, :class:`SearcherSpec`) instead
of naming schedulers or searchers; ``hpcm_tune.sweep.schedulers`` and ``hpcm_tune.sweep.searchers`` register one
builder per name and build from :func:`scheduler_options` / :func:`searcher_options` (the file's options over
these defaults); ``tune.py --scheduler/--searcher`` offers these names; search_spaces/README.md states them
(tests/sweep/test_sweep_settings.py checks its claims against this table). A new scheduler or searcher is its
declaration here and its builder.

Plain Python (no Ray, no torch): the analysis reads the defaults and the traits too (what a file that leaves a
setting out ran; which searcher enumerates choices).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hpcm_tune import metrics
from hpcm_tune.domains import is_int, is_number
from hpcm_tune.experiment import LAMBDA_KEY

ASHA, FIFO, PBT = "asha", "fifo", "pbt"
OPTUNA, RANDOM, GRID = "optuna", "random", "grid"
DEFAULT_SCHEDULER = ASHA
DEFAULT_SEARCHER = OPTUNA
TPE = "tpe"
OPTUNA_SAMPLERS: tuple[str, ...] = (TPE, "random")


@dataclass(frozen=True)
class Option:
    """One option of a scheduler or searcher: its default and its rule, ``problem(value, epochs)``: what is
    allowed, in words, when ``value`` breaks it (``epochs``: the sweep's budget, fixed.epochs), else None."""

    default: Any
    problem: Callable[[Any, int], str | None]


@dataclass(frozen=True)
class SchedulerSpec:
    """A trial scheduler as the validation sees it: its options and traits."""

    options: Mapping[str, Option] = field(default_factory=dict)
    title: str = ""  # how messages name it (its paper's name, e.g. PBT); empty: the name
    # Judges the metric at every epoch, so an eval/* metric must be evaluated every epoch (eval_interval 1).
    judges_every_epoch: bool = False
    # Copies model weights from trial to trial (PBT's exploit): weights of different lambdas must never mix, and a
    # trial may restart from another's checkpoint at any later time, so the launcher keeps every checkpoint until
    # the sweep ends.
    copies_weights: bool = False
    # Changes a running trial's config (PBT's explore): Ray refuses a search algorithm that suggests configs.
    mutates_configs: bool = False


@dataclass(frozen=True)
class SearcherSpec:
    """A searcher as the validation (and the analysis) sees it: its options and traits."""

    options: Mapping[str, Option] = field(default_factory=dict)
    # Runs every value of a categorical domain (choice) like a grid axis, and draws nothing (random domains refused).
    enumerates: bool = False
    # One study of `samples` trials in all: it runs no grid axis, named configurations or repeats.
    samples_are_trials: bool = False
    # A search algorithm that suggests every config from past results (not Ray's variant generator).
    suggests_configs: bool = False
    # Keeps an Optuna study, which may live in a database (--optuna-storage; the builder takes storage_url,
    # study_name and experiment).
    keeps_optuna_study: bool = False


def _int_in_epochs(v: Any, epochs: int) -> str | None:
    return None if is_int(v) and 1 <= v <= epochs else f"an integer in [1, epochs = {epochs}]"


def _above_one(v: Any, epochs: int) -> str | None:
    return None if is_number(v) and v > 1 else "a number > 1"


def _group_by(v: Any, epochs: int) -> str | None:
    if not isinstance(v, list) or not all(isinstance(k, str) for k in v):
        return "a list of config keys"
    if LAMBDA_KEY not in v:
        return f"must contain {LAMBDA_KEY}: losses at different lambda are not comparable"
    return None


def _epochs_interval(v: Any, epochs: int) -> str | None:
    return None if is_int(v) and v >= 1 else "an integer >= 1 (epochs)"


def _quantile(v: Any, epochs: int) -> str | None:
    return None if is_number(v) and 0 < v <= 0.5 else "a number in (0, 0.5]"


def _probability(v: Any, epochs: int) -> str | None:
    return None if is_number(v) and 0 <= v <= 1 else "a number in [0, 1]"


def _sampler(v: Any, epochs: int) -> str | None:
    return None if isinstance(v, str) and v in OPTUNA_SAMPLERS else f"allowed: {', '.join(OPTUNA_SAMPLERS)}"


def _positive_int(v: Any, epochs: int) -> str | None:
    return None if is_int(v) and v >= 1 else "an integer >= 1"


# name -> declaration; an option not declared is refused.
SCHEDULER_SPECS: dict[str, SchedulerSpec] = {
    ASHA: SchedulerSpec(
        options={"grace_period": Option(1, _int_in_epochs), "reduction_factor": Option(2, _above_one),
                 "group_by": Option([LAMBDA_KEY], _group_by)},
        judges_every_epoch=True),
    FIFO: SchedulerSpec(),
    PBT: SchedulerSpec(
        options={"perturbation_interval": Option(2, _epochs_interval), "quantile_fraction": Option(0.25, _quantile),
                 "resample_probability": Option(0.25, _probability)},
        title="PBT", judges_every_epoch=True, copies_weights=True, mutates_configs=True),
}
SEARCHER_SPECS: dict[str, SearcherSpec] = {
    OPTUNA: SearcherSpec(options={"sampler": Option(TPE, _sampler), "n_startup_trials": Option(4, _positive_int)},
                         samples_are_trials=True, suggests_configs=True, keeps_optuna_study=True),
    RANDOM: SearcherSpec(),
    GRID: SearcherSpec(enumerates=True),
}

# The settings a file may leave out, with their defaults (hpcm_tune.sweep.space.SearchSpace's field defaults).
SPACE_DEFAULTS: dict[str, Any] = {
    "description": "",
    "metric": metrics.DEFAULT_METRIC,
    "mode": metrics.DEFAULT_MODE,
    "samples": 1,
    "repeats": 1,
    "max_concurrent": 2,
    "max_failures": 1,
    "checkpoints_to_keep": 2,
    "delete_stopped_checkpoints": False,
    "cpus": 1.0,
    "gpus": 0.0,
    "scheduler": DEFAULT_SCHEDULER,
    "searcher": DEFAULT_SEARCHER,
    "seed": 0,
}

SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULER_SPECS)
SEARCHER_NAMES: tuple[str, ...] = tuple(SEARCHER_SPECS)
# name -> {option: default}
SCHEDULER_DEFAULTS: dict[str, dict[str, Any]] = {n: {k: o.default for k, o in s.options.items()}
                                                 for n, s in SCHEDULER_SPECS.items()}
SEARCHER_DEFAULTS: dict[str, dict[str, Any]] = {n: {k: o.default for k, o in s.options.items()}
                                                for n, s in SEARCHER_SPECS.items()}
SCHEDULER_OPTIONS: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in SCHEDULER_DEFAULTS.items()}
SEARCHER_OPTIONS: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in SEARCHER_DEFAULTS.items()}


def enumerates_choices(searcher: Any) -> bool:
    """Whether searcher ``searcher`` (a name; unknown or None: no) runs every value of a choice."""
    spec = SEARCHER_SPECS.get(searcher) if isinstance(searcher, str) else None
    return spec is not None and spec.enumerates


def _filled(table: Mapping[str, Mapping[str, Any]], name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    defaults = table.get(name, {})
    out = {k: (list(v) if isinstance(v, list) else v) for k, v in defaults.items()}  # copies: never shared
    out.update(given)
    return out


def scheduler_options(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The options scheduler ``name`` runs with: ``given`` (a file's) over the declared defaults."""
    return _filled(SCHEDULER_DEFAULTS, name, given)


def searcher_options(name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The options searcher ``name`` runs with: ``given`` (a file's) over the declared defaults."""
    return _filled(SEARCHER_DEFAULTS, name, given)
