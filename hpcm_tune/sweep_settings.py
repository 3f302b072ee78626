"""The settings of a search-space file beside its config keys, declared once, here: the schedulers and searchers a
file may name, the options each takes and their defaults, and the defaults of the other settings
(:data:`SPACE_DEFAULTS`: samples, resources, ...).

``hpcm_tune.sweep.space`` validates a file's ``scheduler``/``searcher`` sections against this table (and checks
the values); ``hpcm_tune.sweep.schedulers`` and ``hpcm_tune.sweep.searchers`` register one builder per name and
build from :func:`scheduler_options` / :func:`searcher_options` (the file's options over these defaults);
``tune.py --scheduler/--searcher`` offers these names; search_spaces/README.md states them
(tests/sweep/test_sweep_settings.py checks its claims against this table).

Plain Python (no Ray, no torch): the analysis reads the defaults too (what a file that leaves a setting out ran).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hpcm_tune import metrics
from hpcm_tune.experiment import LAMBDA_KEY

ASHA, FIFO, PBT = "asha", "fifo", "pbt"
OPTUNA, RANDOM, GRID = "optuna", "random", "grid"
DEFAULT_SCHEDULER = ASHA
DEFAULT_SEARCHER = OPTUNA

# name -> {option: default}; an option not listed is refused (its value is checked in sweep/space.py).
SCHEDULER_DEFAULTS: dict[str, dict[str, Any]] = {
    ASHA: {"grace_period": 1, "reduction_factor": 2, "group_by": [LAMBDA_KEY]},
    FIFO: {},
    PBT: {"perturbation_interval": 2, "quantile_fraction": 0.25, "resample_probability": 0.25},
}
TPE = "tpe"
OPTUNA_SAMPLERS: tuple[str, ...] = (TPE, "random")
SEARCHER_DEFAULTS: dict[str, dict[str, Any]] = {
    OPTUNA: {"sampler": TPE, "n_startup_trials": 4},
    RANDOM: {},
    GRID: {},
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

SCHEDULER_NAMES: tuple[str, ...] = tuple(SCHEDULER_DEFAULTS)
SEARCHER_NAMES: tuple[str, ...] = tuple(SEARCHER_DEFAULTS)
SCHEDULER_OPTIONS: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in SCHEDULER_DEFAULTS.items()}
SEARCHER_OPTIONS: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in SEARCHER_DEFAULTS.items()}


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
