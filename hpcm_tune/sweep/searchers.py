"""Searchers: ``optuna`` (TPE, define-by-run), ``random`` and ``grid`` (Ray's BasicVariantGenerator), one
Registry. Each turns a validated SearchSpace into (search algorithm, Tune param_space, num_samples); each domain
gives its own Ray and Optuna forms (hpcm_tune.domains: ``to_ray``, ``to_optuna``), each searcher's traits come
from hpcm_tune.sweep_settings.

Every trial config is flat (docs/architecture.md): the fixed keys, the sampled keys, ``study``, ``label``,
``seed``; a simplex adds its weights under its own key and its raw uniform draws under ``_simplex_<key>_<i>``
(search internals, stripped before training).

Optuna and early stopping: Ray tells Optuna a trial that the scheduler stopped early as COMPLETE with its early
value, which biases TPE towards configurations that merely start fast (docs/design.md §6). ``PrunedOptunaSearch``
records that value as an intermediate value at its step and tells Optuna the trial was PRUNED (Optuna refuses a
value with PRUNED).

Optuna's study in a database (``build_optuna(..., storage_url=URL, study_name=NAME)``): the searcher's study
lives in an Optuna RDB storage (SQLite, PostgreSQL, MySQL) instead of memory, so ``optuna.load_study`` and
optuna-dashboard read it while the sweep runs and after it. Every trial carries its Ray trial id as the user
attribute ``ray_trial_id``. Trial numbers are the database's, so a resumed sweep never repeats one; on resume,
``PrunedOptunaSearch.restore`` reconciles the database with the snapshot Ray restored (see there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ray import tune
from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from hpcm_tune import metrics
from hpcm_tune.domains import Domain
from hpcm_tune.domains import SimplexFromDraws as SimplexFromDraws  # older experiments' pickles name it here
from hpcm_tune.experiment import TRAINING_ITERATION
from hpcm_tune.registry import Registry
from hpcm_tune.sweep.space import SEED_KEY, SearchSpace
from hpcm_tune.sweep_settings import GRID, OPTUNA, RANDOM, SEARCHER_SPECS, TPE, searcher_options

RAY_TRIAL_ID_ATTR = "ray_trial_id"
LOST_ATTR = "hpcm_tune_lost"
# Database URLs --optuna-storage accepts (SQLAlchemy dialects Optuna's RDBStorage is tested with), any +driver.
OPTUNA_SCHEMES = ("sqlite", "postgresql", "mysql")
OPTUNA_URL_HELP = ("sqlite:///PATH (a file), postgresql://USER@HOST[:PORT]/DB or mysql://USER@HOST[:PORT]/DB "
                   "(a +driver suffix such as postgresql+psycopg2:// is allowed); no password in the URL: it "
                   "would be saved in the experiment's state, give it in ~/.pgpass, PGPASSWORD or ~/.my.cnf")


def optuna_url_problem(url: str) -> str | None:
    """Why ``url`` is not an Optuna storage URL this project accepts (None when it is), without connecting."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return f"not a database URL; allowed: {OPTUNA_URL_HELP}"
    if parsed.get_backend_name() not in OPTUNA_SCHEMES:
        return f"unknown scheme {parsed.drivername!r}; allowed: {OPTUNA_URL_HELP}"
    if parsed.password:
        return f"the URL contains a password; allowed: {OPTUNA_URL_HELP}"
    if parsed.get_backend_name() == "sqlite" and not parsed.database:
        return f"an in-memory SQLite database is lost with the driver; allowed: {OPTUNA_URL_HELP}"
    return None


def mask_url(url: str) -> str:
    """The URL as it may be printed and written to hpcm_tune.json (a password, if any, as ***)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def optuna_storage(url: str) -> Any:
    """An Optuna RDB storage at ``url`` (tables created if needed); SQLite waits up to 60 s for a lock held by a
    reader such as optuna-dashboard, a server database at most 10 s for the connection. Raises ValueError
    naming the URL and why when it is refused or unreachable."""
    import optuna
    from sqlalchemy.engine import make_url

    problem = optuna_url_problem(url)
    if problem:
        raise ValueError(problem)
    backend = make_url(url).get_backend_name()
    connect_args = {"timeout": 60} if backend == "sqlite" else {"connect_timeout": 10}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": connect_args})
    except Exception as exc:  # ImportError (no DB driver), sqlalchemy.exc.OperationalError (unreachable), ...
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise ValueError(f"cannot open the database ({type(exc).__name__}: "
                         f"{(lines[0] if lines else '')[:300]})") from None


def new_study_storage(url: str, study_name: str) -> Any:
    """The storage at ``url`` for a new sweep's study ``study_name``: refused (ValueError) when unreachable or
    when a study of that name already has trials (another sweep's, which the new one would mix with). An
    empty one is reused: that of a sweep stopped before its first trial."""
    storage = optuna_storage(url)
    for study in storage.get_all_studies():
        if study.study_name == study_name and storage.get_n_trials(study._study_id) > 0:
            raise ValueError(f"{mask_url(url)} already holds an Optuna study named {study_name!r} with trials "
                             f"(another sweep's); choose a new --name, or delete it first: optuna delete-study "
                             f"--study-name {study_name} --storage URL")
    return storage


class FromConfiguration:
    """Ray ``sample_from`` body: the value of ``key`` in the trial's named configuration (its label)."""

    def __init__(self, table: Mapping[str, Mapping[str, Any]], key: str) -> None:
        self.table, self.key = {k: dict(v) for k, v in table.items()}, key

    def __call__(self, config: Any) -> Any:
        return self.table[config["label"]][self.key]


def variant_param_space(space: SearchSpace) -> dict[str, Any]:
    """The Tune param_space for BasicVariantGenerator (random and grid searchers); a searcher that enumerates
    choices (sweep_settings) gets each choice as a grid axis."""
    enumerate_choices = SEARCHER_SPECS[space.searcher].enumerates
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
        ps.update(dom.to_ray(key, enumerate_choices=enumerate_choices))
    return ps


def suggest(trial: Any, name: str, distribution: Any) -> Any:
    """Ask ``trial`` for ``name`` from ``distribution`` through the public ``suggest_*`` calls (the ones Ray's
    OptunaSearch records as the trial's config)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    d = distribution
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, list(d.choices))
    raise ValueError(f"no suggest call for {name!r}: {d!r}")


class DefineByRun:
    """Optuna define-by-run space: suggests every parameter of the space (each domain's ``to_optuna``); returns
    the derived values (a simplex's weights) as constants (their raw draws stay as suggested parameters, prefixed
    '_'). Grids are refused for optuna by space validation (and by ``to_optuna``)."""

    def __init__(self, params: Mapping[str, Domain]) -> None:
        self.params = dict(params)

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        constants: dict[str, Any] = {}
        for key, dom in self.params.items():
            asked = {name: suggest(trial, name, d) for name, d in dom.to_optuna(key).items()}
            if dom.derived:
                constants[key] = dom.from_suggested(key, asked)
        return constants or None


class PrunedOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED for a trial that ended before ``max_epochs`` without error, after
    recording its last value as an intermediate value at that step (so TPE sees how far it got), and FAIL for
    an errored trial whatever it reported before."""

    def __init__(self, *args: Any, max_epochs: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_epochs = int(max_epochs)
        self.pruned: list[str] = []
        self._finished_elsewhere: set[str] = set()  # finished in the database after Ray's last snapshot

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is not None and RAY_TRIAL_ID_ATTR not in ot_trial.user_attrs:
            ot_trial.set_user_attr(RAY_TRIAL_ID_ATTR, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._finished_elsewhere:
            return  # told before the driver stopped, after the snapshot Ray resumed from: keep what was told
        super().on_trial_result(trial_id, result)

    def restore(self, checkpoint_path: str) -> None:
        """Ray's snapshot of the searcher, reconciled with a database study that lived on after it: a trial the
        database already has as finished is not reported again (Ray may rerun its last epochs), and a trial
        asked after the snapshot, which Ray no longer knows, is marked FAIL with the user attribute
        ``hpcm_tune_lost`` instead of staying RUNNING forever. An in-memory study is the snapshot itself. (A
        finished Optuna trial cannot be reopened: one that Ray resumes from the older snapshot keeps the state
        and value told before the driver stopped, even if ASHA now judges it differently.)"""
        from optuna.storages import InMemoryStorage
        from optuna.trial import TrialState

        super().restore(checkpoint_path)
        if self._ot_study is None or isinstance(self._storage, InMemoryStorage) or self._storage is None:
            return
        known = {t._trial_id: tid for tid, t in self._ot_trials.items()}
        self._finished_elsewhere = set()
        storage = self._ot_study._storage
        for frozen in self._ot_study.get_trials(deepcopy=False):
            ray_id = known.get(frozen._trial_id)
            if ray_id is None and frozen.state == TrialState.RUNNING:
                storage.set_trial_user_attr(frozen._trial_id, LOST_ATTR,
                                            "asked by a driver that stopped before its next snapshot; the resumed "
                                            "sweep never ran it")
                storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
            elif ray_id is not None and frozen.state.is_finished() and ray_id not in self._completed_trials:
                self._finished_elsewhere.add(ray_id)
                self._completed_trials.add(ray_id)

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
            if (not error and result and ot_trial is not None and trial_id not in self._completed_trials
                    and result.get(self.metric) is not None and result.get(TRAINING_ITERATION) is not None):
                # Ray passes the last result here, not to on_trial_result: record it as the last epoch's value too.
                step = int(result[TRAINING_ITERATION])
                if step not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:
                    ot_trial.report(float(result[self.metric]), step)
            super().on_trial_complete(trial_id, result=result, error=error)
            return
        step = int(result.get(TRAINING_ITERATION, result[metrics.EPOCH]))
        if step not in ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values:  # else Optuna warns
            ot_trial.report(float(result[self.metric]), step)
        self._ot_study.tell(ot_trial, state=TrialState.PRUNED)
        self._completed_trials.add(trial_id)
        self.pruned.append(trial_id)


SearcherBuild = tuple[Searcher, dict[str, Any], int]
SEARCHERS: Registry[Callable[[SearchSpace], SearcherBuild]] = Registry("searcher")


@SEARCHERS.register(OPTUNA)
def build_optuna(space: SearchSpace, storage_url: str | None = None, study_name: str | None = None,
                 experiment: str | None = None) -> SearcherBuild:
    """TPE (or random) over the space; the study in memory (pickled with the searcher's state), or in the
    database at ``storage_url`` under ``study_name`` (created here; an existing study of that name is
    refused, so a new sweep never mixes its trials with another's)."""
    import warnings

    import optuna

    opts = searcher_options(OPTUNA, space.searcher_options)
    if opts["sampler"] == TPE:
        sampler = optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=int(opts["n_startup_trials"]))
    else:
        sampler = optuna.samplers.RandomSampler(seed=space.seed)
    storage = None
    if storage_url is not None:
        if not study_name:
            raise ValueError("a study in a database needs a study name")
        storage = new_study_storage(storage_url, study_name)
    searcher = PrunedOptunaSearch(space=DefineByRun(space.params), metric=space.metric, mode=space.mode,
                                  sampler=sampler, max_epochs=space.max_epochs, storage=storage,
                                  study_name=study_name)
    if storage is not None:  # what optuna-dashboard shows next to the study
        study = searcher._ot_study
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([space.metric])
        study.set_user_attr("metric", space.metric)
        study.set_user_attr("hpcm_tune_study", space.study)
        if experiment:
            study.set_user_attr("experiment", experiment)
    ps = {**space.fixed, "study": space.study, "label": space.study, SEED_KEY: space.seed}
    return searcher, ps, space.samples


def _variants(space: SearchSpace) -> BasicVariantGenerator:
    # max_concurrent here: Ray ignores TuneConfig.max_concurrent_trials when it is given a BasicVariantGenerator.
    return BasicVariantGenerator(random_state=space.seed, max_concurrent=space.max_concurrent)


@SEARCHERS.register(RANDOM)
@SEARCHERS.register(GRID)
def build_variants(space: SearchSpace) -> SearcherBuild:
    """Ray's variant generator: every grid point (and, under grid, every choice) x ``samples`` draws."""
    return _variants(space), variant_param_space(space), space.samples


def build_searcher(space: SearchSpace, optuna_storage_url: str | None = None, study_name: str | None = None,
                   experiment: str | None = None) -> SearcherBuild:
    """The searcher of ``space``; with ``optuna_storage_url`` (a searcher that keeps an Optuna study), its study in
    that database."""
    if space.searcher_spec.keeps_optuna_study:
        return SEARCHERS.get(space.searcher)(space, storage_url=optuna_storage_url, study_name=study_name,
                                             experiment=experiment)
    if optuna_storage_url is not None:
        raise ValueError(f"an Optuna study database needs the optuna searcher; this sweep's is {space.searcher!r}")
    return SEARCHERS.get(space.searcher)(space)
