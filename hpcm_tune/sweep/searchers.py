"""Searchers: ``optuna`` (TPE, define-by-run), ``random`` and ``grid`` (Ray's BasicVariantGenerator), one
Registry. Each turns a validated SearchSpace into (search algorithm, Tune param_space, num_samples).

Every trial config is flat (docs/architecture.md): the fixed keys, the sampled keys, ``study``, ``label``,
``seed``; a simplex adds its weights under its own key and its raw uniform draws under ``_simplex_<key>_<i>``
(search internals, stripped before training).

Optuna and early stopping: Ray tells Optuna a trial that the scheduler stopped early as COMPLETE with its early
value, which biases TPE towards configurations that merely start fast (DESIGN.md §6). ``PrunedOptunaSearch``
records that value as an intermediate value at its step and tells Optuna the trial was PRUNED (Optuna refuses a
value with PRUNED).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ray import tune
from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from hpcm_tune import metrics
from hpcm_tune.registry import Registry
from hpcm_tune.sweep.space import (
    SEED_KEY,
    Choice,
    Domain,
    Grid,
    LogUniform,
    QUniform,
    RandInt,
    SearchSpace,
    Simplex,
    Uniform,
)

TRAINING_ITERATION = "training_iteration"


def ray_domain(dom: Domain, enumerate_choices: bool = False) -> Any:
    """The Ray Tune domain of a non-simplex parameter."""
    if isinstance(dom, Uniform):
        return tune.uniform(dom.low, dom.high)
    if isinstance(dom, LogUniform):
        return tune.loguniform(dom.low, dom.high)
    if isinstance(dom, QUniform):
        return tune.quniform(dom.low, dom.high, dom.q)
    if isinstance(dom, RandInt):
        return tune.randint(dom.low, dom.high)
    if isinstance(dom, Choice):
        return tune.grid_search(list(dom.choices)) if enumerate_choices else tune.choice(list(dom.choices))
    if isinstance(dom, Grid):
        return tune.grid_search(list(dom.grid))
    raise ValueError(f"no Ray domain for {dom.kind!r}")


class SimplexFromDraws:
    """Ray ``sample_from`` body: the simplex weights from the trial's raw uniform draws (Ray resolves those
    first: reading an unresolved key raises, and Ray retries after resolving it)."""

    def __init__(self, dom: Simplex, keys: tuple[str, ...]) -> None:
        self.dom, self.keys = dom, keys

    def __call__(self, config: Any) -> list[float]:
        return self.dom.from_uniforms([config[k] for k in self.keys])


class FromConfiguration:
    """Ray ``sample_from`` body: the value of ``key`` in the trial's named configuration (its label)."""

    def __init__(self, table: Mapping[str, Mapping[str, Any]], key: str) -> None:
        self.table, self.key = {k: dict(v) for k, v in table.items()}, key

    def __call__(self, config: Any) -> Any:
        return self.table[config["label"]][self.key]


def variant_param_space(space: SearchSpace, enumerate_choices: bool) -> dict[str, Any]:
    """The Tune param_space for BasicVariantGenerator (random and grid searchers)."""
    ps: dict[str, Any] = dict(space.fixed)
    ps["study"] = space.study
    seeds = space.seeds
    ps[SEED_KEY] = tune.grid_search(list(seeds)) if len(seeds) > 1 else seeds[0]
    if space.configurations:
        ps["label"] = tune.grid_search(list(space.configurations))
        for key in next(iter(space.configurations.values())):
            ps[key] = tune.sample_from(FromConfiguration(space.configurations, key))
    else:
        ps["label"] = space.study
    for key, dom in space.params.items():
        if isinstance(dom, Simplex):
            raw = dom.raw_keys(key)
            for k in raw:
                ps[k] = tune.uniform(0.0, 1.0)
            ps[key] = tune.sample_from(SimplexFromDraws(dom, raw))
        else:
            ps[key] = ray_domain(dom, enumerate_choices=enumerate_choices)
    return ps


class DefineByRun:
    """Optuna define-by-run space: suggests every parameter of the space; returns the simplex weights as
    constants (their raw draws stay as suggested parameters, prefixed '_')."""

    def __init__(self, params: Mapping[str, Domain]) -> None:
        self.params = dict(params)

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        constants: dict[str, Any] = {}
        for key, dom in self.params.items():
            if isinstance(dom, Uniform):
                trial.suggest_float(key, dom.low, dom.high)
            elif isinstance(dom, LogUniform):
                trial.suggest_float(key, dom.low, dom.high, log=True)
            elif isinstance(dom, QUniform):
                trial.suggest_float(key, dom.low, dom.high, step=dom.q)
            elif isinstance(dom, RandInt):
                trial.suggest_int(key, dom.low, dom.high - 1)  # Optuna's high is included, ours is not
            elif isinstance(dom, Choice):
                trial.suggest_categorical(key, list(dom.choices))
            elif isinstance(dom, Simplex):
                raw = dom.raw_keys(key)
                constants[key] = dom.from_uniforms([trial.suggest_float(k, 0.0, 1.0) for k in raw])
            else:  # grids are refused for optuna by space validation
                raise ValueError(f"optuna cannot search {key!r} of type {dom.kind!r}")
        return constants or None


class PrunedOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED for a trial that ended before ``max_epochs`` without error, after
    recording its last value as an intermediate value at that step (so TPE sees how far it got), and FAIL for
    an errored trial whatever it reported before."""

    def __init__(self, *args: Any, max_epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = int(max_epochs)
        self.pruned: list[str] = []

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        ot_trial = self._ot_trials.get(trial_id)
        if error and ot_trial is not None and trial_id not in self._completed_trials:
            # Ray would tell an errored trial that had reported COMPLETE with its last value: it failed.
            self._ot_study.tell(ot_trial, state=TrialState.FAIL)
            self._completed_trials.add(trial_id)
            return
        early = (
            not error
            and result
            and ot_trial is not None
            and trial_id not in self._completed_trials
            and result.get(metrics.EPOCH) is not None
            and result[metrics.EPOCH] < self._max_epochs
            and result.get(self.metric) is not None
        )
        if not early:
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        step = int(result.get(TRAINING_ITERATION, result[metrics.EPOCH]))
        ot_trial.report(float(result[self.metric]), step)
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
        self.pruned.append(trial_id)


SearcherBuild = tuple[Searcher, dict[str, Any], int]
SEARCHERS: Registry[Callable[[SearchSpace], SearcherBuild]] = Registry("searcher")


@SEARCHERS.register("optuna")
def build_optuna(space: SearchSpace) -> SearcherBuild:
    import optuna

    opts = space.searcher_options
    if opts.get("sampler", "tpe") == "tpe":
        sampler = optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=int(opts.get("n_startup_trials", 4)))
    else:
        sampler = optuna.samplers.RandomSampler(seed=space.seed)
    searcher = PrunedOptunaSearch(space=DefineByRun(space.params), metric=space.metric, mode=space.mode,
                                  sampler=sampler, max_epochs=space.max_epochs)
    ps = {**space.fixed, "study": space.study, "label": space.study, SEED_KEY: space.seed}
    return searcher, ps, space.samples


def _variants(space: SearchSpace) -> BasicVariantGenerator:
    # max_concurrent here: Ray ignores TuneConfig.max_concurrent_trials when it is given a BasicVariantGenerator.
    return BasicVariantGenerator(random_state=space.seed, max_concurrent=space.max_concurrent)


@SEARCHERS.register("random")
def build_random(space: SearchSpace) -> SearcherBuild:
    return _variants(space), variant_param_space(space, False), space.samples


@SEARCHERS.register("grid")
def build_grid(space: SearchSpace) -> SearcherBuild:
    return _variants(space), variant_param_space(space, True), space.samples


def build_searcher(space: SearchSpace) -> SearcherBuild:
    return SEARCHERS.get(space.searcher)(space)
