"""Trial schedulers: ``asha`` (one ASHA per lambda), ``fifo`` and ``pbt``, one Registry.

ASHA (Li et al., "A System for Massively Parallel Hyperparameter Tuning", MLSys 2020) stops a trial at a rung
when its metric is below the (1 - 1/eta) quantile of the trials already recorded there. It compares raw metric
values, and the R-D loss lambda*255^2*MSE + bpp changes scale with lambda, so plain ASHA on a lambda grid
stops every trial of the larger lambdas at the first rungs (docs/design.md §6). ``PerGroupASHA`` keeps separate
rung records per group (by default per lambda value), so trials at different lambda are never compared.

Its rung records are not restored by ``Tuner.restore`` (the scheduler is the object pickled before ``fit``);
``SchedulerStateCallback`` (callbacks.py) carries ``state_dict()`` in the experiment snapshot instead.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from ray.tune.schedulers import FIFOScheduler, PopulationBasedTraining, TrialScheduler

from hpcm_tune import metrics
from hpcm_tune.domains import DOMAINS, words
from hpcm_tune.registry import Registry
from hpcm_tune.sweep.space import SearchSpace
from hpcm_tune.sweep_settings import ASHA, FIFO, PBT, SCHEDULER_DEFAULTS, scheduler_options

STATE_VERSION = 1


def rung_milestones(grace_period: int, max_t: int, reduction_factor: float) -> tuple[int, ...]:
    """Rung epochs grace*eta^k below max_t, ascending (ASHA's single bracket, s = 0)."""
    out, t = [], float(grace_period)
    while t < max_t:
        out.append(int(round(t)))
        t *= reduction_factor
    return tuple(sorted(set(out)))


def rung_decision(
    rungs: dict[int, dict[str, float]], trial_id: str, t: int, score: float, reduction_factor: float
) -> tuple[str, int | None]:
    """ASHA's decision at one result, updating ``rungs`` (milestone -> {trial_id: score}, higher is better).

    The highest rung the trial has reached and not yet been recorded at judges it: STOP when its score is below
    the (1 - 1/eta) quantile of the scores recorded there (NaN scores ignored), then the score is recorded.
    Returns (decision, milestone judged or None).
    """
    for milestone in sorted(rungs, reverse=True):
        recorded = rungs[milestone]
        if t < milestone or trial_id in recorded:
            continue
        decision = TrialScheduler.CONTINUE
        if recorded:
            cutoff = np.nanpercentile(list(recorded.values()), (1.0 - 1.0 / reduction_factor) * 100.0)
            if not math.isnan(cutoff) and score < cutoff:
                decision = TrialScheduler.STOP
        recorded[trial_id] = score
        return decision, milestone
    return TrialScheduler.CONTINUE, None


class PerGroupASHA(FIFOScheduler):
    """Asynchronous successive halving with one set of rungs per group of trials (default: per lambda).

    Metric and mode come from ``TuneConfig`` (given once: Tune refuses a second time); the metric stays set on
    this scheduler, so Tune checks every result carries it and a sweep whose engine does not report the metric
    fails at the first report instead of stopping nothing. Trial choice is FIFO's. Errored trials are dropped
    from their group's records (a retry is judged afresh).
    """

    def __init__(
        self,
        max_t: int,
        grace_period: int = SCHEDULER_DEFAULTS[ASHA]["grace_period"],
        reduction_factor: float = SCHEDULER_DEFAULTS[ASHA]["reduction_factor"],
        time_attr: str = metrics.EPOCH,
        group_by: Iterable[str] = tuple(SCHEDULER_DEFAULTS[ASHA]["group_by"]),
    ) -> None:
        super().__init__()
        if not (isinstance(max_t, int) and max_t >= 1):
            raise ValueError(f"max_t: got {max_t!r}; allowed: an integer >= 1")
        if not (isinstance(grace_period, int) and 1 <= grace_period <= max_t):
            raise ValueError(f"grace_period: got {grace_period!r}; allowed: an integer in [1, max_t={max_t}]")
        if not reduction_factor > 1:
            raise ValueError(f"reduction_factor: got {reduction_factor!r}; allowed: a number > 1")
        self._metric: str | None = None
        self._mode: str | None = None
        self._max_t = max_t
        self._grace_period = grace_period
        self._reduction_factor = float(reduction_factor)
        self._time_attr = time_attr
        self._group_by = tuple(group_by)
        self._milestones = rung_milestones(grace_period, max_t, reduction_factor)
        # group -> milestone -> trial_id -> score (score = value for max, -value for min: higher is better)
        self._rungs: dict[str, dict[int, dict[str, float]]] = {}
        # trial_id -> {"group", "epoch", "value"} of the trials this scheduler stopped before max_t
        self._stopped: dict[str, dict[str, Any]] = {}

    # -- Tune hooks ---------------------------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if (self._metric and metric) or (self._mode and mode):
            return False
        if metric:
            self._metric = metric
        if mode:
            if mode not in ("min", "max"):
                raise ValueError(f"mode: got {mode!r}; allowed: min, max")
            self._mode = mode
        return True

    def group_of(self, config: Mapping[str, Any]) -> str:
        """The group key of a trial config: its group_by values (JSON, so 0.0067 and 0.0067 match exactly)."""
        return json.dumps([config.get(k) for k in self._group_by])

    def _group_rungs(self, group: str) -> dict[int, dict[str, float]]:
        return self._rungs.setdefault(group, {m: {} for m in self._milestones})

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if not self._metric or not self._mode:
            raise ValueError(f"{type(self).__name__} needs metric and mode from tune.TuneConfig "
                             f"(got metric={self._metric!r}, mode={self._mode!r})")
        self._group_rungs(self.group_of(trial.config))

    def on_trial_result(self, tune_controller: Any, trial: Any, result: Mapping[str, Any]) -> str:
        if self._time_attr not in result:
            raise ValueError(f"trial {trial.trial_id} reported no {self._time_attr!r}; "
                             f"{type(self).__name__} needs it every report (reported: {sorted(result)})")
        t = result[self._time_attr]
        if t >= self._max_t:
            return TrialScheduler.STOP
        value = result[self._metric]
        group = self.group_of(trial.config)
        decision, _ = rung_decision(self._group_rungs(group), trial.trial_id, t, self._score(value),
                                    self._reduction_factor)
        if decision == TrialScheduler.STOP:
            self._stopped[trial.trial_id] = {"group": group, "epoch": t, "value": float(value)}
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: Mapping[str, Any]) -> None:
        # Like ASHA: the final result is recorded at the highest rung it reached, if not yet recorded there.
        if result and self._time_attr in result and self._metric in result:
            rung_decision(self._group_rungs(self.group_of(trial.config)), trial.trial_id,
                          result[self._time_attr], self._score(result[self._metric]), self._reduction_factor)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        for recorded in self._group_rungs(self.group_of(trial.config)).values():
            recorded.pop(trial.trial_id, None)

    def debug_string(self) -> str:
        lines = [f"PerGroupASHA on {self._metric} ({self._mode}), rungs at {self._time_attr} "
                 f"{list(self._milestones)}, stopped {len(self._stopped)}"]
        for group, rungs in sorted(self._rungs.items()):
            counts = ", ".join(f"{m}: {len(r)}" for m, r in sorted(rungs.items()))
            lines.append(f"  {dict(zip(self._group_by, json.loads(group)))}: {counts}")
        return "\n".join(lines)

    # -- helpers and state ---------------------------------------------------------------------------------------
    def _score(self, value: float) -> float:
        v = float(value)
        return v if self._mode == "max" else -v

    @property
    def stopped_early(self) -> dict[str, dict[str, Any]]:
        """trial_id -> {"group", "epoch", "value"} for every trial stopped before max_t."""
        return dict(self._stopped)

    @property
    def max_t(self) -> int:
        return self._max_t

    def state_dict(self) -> dict[str, Any]:
        """Rung records and early stops, JSON-able (milestones as strings)."""
        return {
            "version": STATE_VERSION,
            "rungs": {g: {str(m): dict(r) for m, r in rungs.items()} for g, rungs in self._rungs.items()},
            "stopped": {k: dict(v) for k, v in self._stopped.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"scheduler state version {state.get('version')!r}; this code reads {STATE_VERSION}")
        self._rungs = {g: {int(m): dict(r) for m, r in rungs.items()} for g, rungs in state["rungs"].items()}
        self._stopped = {k: dict(v) for k, v in state["stopped"].items()}


SCHEDULERS: Registry[Callable[[SearchSpace], TrialScheduler]] = Registry("scheduler")


@SCHEDULERS.register(ASHA)
def build_asha(space: SearchSpace) -> PerGroupASHA:
    o = scheduler_options(ASHA, space.scheduler_options)
    return PerGroupASHA(
        max_t=space.max_epochs,
        grace_period=int(o["grace_period"]),
        reduction_factor=float(o["reduction_factor"]),
        group_by=tuple(o["group_by"]),
    )


@SCHEDULERS.register(FIFO)
def build_fifo(space: SearchSpace) -> FIFOScheduler:
    return FIFOScheduler()


@SCHEDULERS.register(PBT)
def build_pbt(space: SearchSpace) -> PopulationBasedTraining:
    """PBT (Jaderberg et al. 2017) over the space's sampled parameters whose value is one Ray parameter (not a
    derived one, such as a simplex's weights); one lambda only (validated in space.py, from the declared traits),
    since exploit copies weights between trials."""
    mutations: dict = {}
    for key, dom in space.params.items():
        if dom.sampled and not dom.derived:
            mutations.update(dom.to_ray(key))
    if not mutations:
        kinds = words([k for k, c in DOMAINS.items() if c.sampled and not c.derived])
        raise ValueError(f"{space.source}: scheduler pbt needs at least one sampled parameter ({kinds}) to mutate; "
                         f"params: {sorted(space.params) or 'none'}")
    o = scheduler_options(PBT, space.scheduler_options)
    return PopulationBasedTraining(
        time_attr=metrics.EPOCH,
        perturbation_interval=int(o["perturbation_interval"]),
        hyperparam_mutations=mutations,
        quantile_fraction=float(o["quantile_fraction"]),
        resample_probability=float(o["resample_probability"]),
    )


def build_scheduler(space: SearchSpace) -> TrialScheduler:
    return SCHEDULERS.get(space.scheduler)(space)
