"""Reading a search sweep, not only an ablation: which trials a searcher sampled, the leaderboard per lambda with
one column per searched parameter, parameter importances (Optuna's evaluators), the best configuration, its R-D
point against the reference codecs and the ``hpcm-train`` command that reproduces it from its parent.

Search or study. A sweep's ``hpcm_tune.json`` records its parsed search space (``space``; ``search_space`` in
older files and the synthetic experiments of :func:`hpcm_tune.testing.write_experiment_dir`): a parameter whose
domain is drawn by the searcher (uniform, loguniform, quniform, randint, simplex; choice unless the searcher is
``grid``, which enumerates it) makes the sweep a **search**; named ``configurations`` (and grid axes alone) make
it a **study**, read with the ablation tables. A sweep with both (configurations crossed with sampled
parameters, under the random searcher) is both: its search section takes the configuration as one more
(categorical) parameter. Without a recorded space, the only trace of a searcher in a trial's ``params.json``
is the uniform draws behind a simplex (``_simplex_<key>_<i>``): those make a search over that key, anything
else is read as a study, as before.

The domains are hpcm_tune.domains' classes, rebuilt from the recorded form (``from_record``): each says whether a
searcher draws it, its components, its description and its Optuna distribution, so this module names none.

Importances. Per lambda (losses at different lambdas are not comparable), an in-memory Optuna study is built
from the trials (``optuna.create_study`` + ``study.add_trial(optuna.trial.create_trial(...))``), with the
distributions of the search-space domains (log for loguniform; a simplex as its components) and each trial's
final value of the sweep's metric. Finished trials enter as COMPLETE, trials a scheduler stopped early as
PRUNED (their last value as an intermediate value: what the sweep tells Optuna's searcher), errored ones as
FAIL. Optuna's importance evaluators (5.0.0: fANOVA, PED-ANOVA, mean decrease impurity) read only COMPLETE
trials, so the early-stopped ones are left out of every importance, by Optuna itself; the report says how many.
Below :data:`MIN_TRIALS_FOR_IMPORTANCE` finished trials at a lambda no importance is printed.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from hpcm_tune import metrics as m
from hpcm_tune.analysis import formatting as fmt
from hpcm_tune.analysis.results import (
    ERRORED,
    FINISHED,
    LABEL,
    LMBDA,
    STOPPED,
    STUDY,
    UNFINISHED,
    Experiment,
    TrialRecord,
    finite,
)
from hpcm_tune.analysis.tables import COLLAPSED, RATES, AnalysisOptions, collapse_flags, metric_column
from hpcm_tune.domains import DOMAINS, Choice, Domain, Simplex, category
from hpcm_tune.sweep_settings import enumerates_choices

# Fewer finished trials than this at one lambda: no importance is printed (a random forest or a Parzen estimator
# of a handful of points ranks noise). Optuna's PED-ANOVA docs ask for at least 5 trials in its top quantile.
MIN_TRIALS_FOR_IMPORTANCE = 10
# Rows of a leaderboard in the Markdown report (all of them in search_leaderboard.csv).
MAX_BOARD_ROWS = 20
SIMPLEX_DRAW = re.compile(r"^_simplex_(.+)_(\d+)$")  # the uniform draws behind a simplex, in params.json
CONFIGURATION_PARAM = "configuration"  # a mixed sweep's configuration label, as a categorical parameter
# Config keys the reproduce command leaves out: metadata, ignored by training (docs/architecture.md).
METADATA_KEYS = (STUDY, LABEL)
FANOVA, PED_ANOVA = "fANOVA", "PED-ANOVA"
FANOVA_SEED = 0  # the forest's seed: the same report for the same trials
PED_ANOVA_TOP = 5  # trials PED-ANOVA's top quantile holds at least (see ped_anova_quantile)
COMMAND_WIDTH = 110  # characters per line of the printed command
EARLY_NOTE = ("trials stopped early enter as PRUNED (their last value an intermediate value, as the sweep tells "
              "Optuna); Optuna's importance evaluators use COMPLETE trials only, so they are left out")


# ---------------------------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class SearchParam:
    """One parameter a searcher sampled: its name and its search-space domain (hpcm_tune.domains, rebuilt from
    the recorded YAML form, search_spaces/README.md)."""

    name: str
    domain: Domain

    @property
    def kind(self) -> str:
        return self.domain.kind

    @property
    def log(self) -> bool:
        return self.domain.log

    @property
    def categorical(self) -> bool:
        return self.domain.categorical

    @property
    def values(self) -> tuple:
        """A categorical domain's values as Optuna holds them (lists as JSON); () for the others."""
        return tuple(category(v) for v in self.domain.values()) if self.categorical else ()

    @property
    def components(self) -> tuple[str, ...]:
        """The names importances and figures use: a simplex as its components ``key[i]``, else the key."""
        return self.domain.components(self.name)

    def component_values(self, value) -> tuple | None:
        """The values of :attr:`components` in a trial's config value; None when absent or malformed."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return self.domain.component_values(value)

    def describe(self) -> str:
        return self.domain.describe(self.name)

    def distribution(self, index: int, observed: list):
        """The Optuna distribution of component ``index``: the domain's, widened to the observed values."""
        return self.domain.importance_distribution(index, observed)


def parse_param(name: str, spec, searcher: str | None) -> SearchParam | None:
    """The :class:`SearchParam` of one ``params`` entry of a recorded search space, or None when the searcher
    does not sample it (a bare value, fixed, grid; choice under a searcher that enumerates it, such as grid).
    Raises ValueError naming the key and the spec when a sampled domain lacks its fields."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    cls = DOMAINS.get(kind) if isinstance(kind, str) else None
    if cls is None or not cls.sampled or (cls.categorical and enumerates_choices(searcher)):
        return None
    try:
        return SearchParam(name, cls.from_record(spec))
    except ValueError as exc:
        raise ValueError(f"params.{name} = {spec!r}: {exc}") from None


def recorded_space(header: dict) -> dict | None:
    """The parsed search space an experiment's hpcm_tune.json records (``space``; ``search_space`` in older
    files), or None."""
    for key in ("space", "search_space"):
        if isinstance(header.get(key), dict):
            return header[key]
    return None


@dataclass(frozen=True)
class SweepParts:
    """What one experiment is: its sampled parameters (empty: no search) and named configurations."""

    experiment: str
    study: str
    params: tuple[SearchParam, ...]
    configurations: tuple[str, ...]
    searcher: str | None
    source: str  # where the classification comes from, in words

    @property
    def is_search(self) -> bool:
        return bool(self.params)

    @property
    def is_study(self) -> bool:
        return bool(self.configurations) or not self.params


def classify(experiment: Experiment) -> SweepParts:
    """Search, study or both, from the experiment's recorded search space; without one, from the simplex draws
    in its trials' params.json (see the module docstring)."""
    header = experiment.header
    study = str(header.get("study") or (experiment.trials[0].study if experiment.trials else experiment.name))
    space = recorded_space(header)
    if space is not None:
        searcher = space.get("searcher") if isinstance(space.get("searcher"), str) else header.get("searcher")
        if isinstance(searcher, dict):
            searcher = searcher.get("name")
        domains = space.get("params") if isinstance(space.get("params"), dict) else {}
        params = tuple(p for p in (parse_param(k, v, searcher) for k, v in domains.items()) if p is not None)
        configurations = tuple(str(k) for k in (space.get("configurations") or {}))
        return SweepParts(experiment.name, str(space.get("study") or study), params, configurations, searcher,
                          "the search space recorded in hpcm_tune.json")
    dims: dict[str, int] = {}
    for trial in experiment.trials:
        for key in trial.params:
            found = SIMPLEX_DRAW.match(str(key))
            if found:
                dims[found.group(1)] = max(dims.get(found.group(1), 0), int(found.group(2)) + 1)
    params = tuple(SearchParam(k, Simplex(dim=d)) for k, d in dims.items())
    return SweepParts(experiment.name, study, params, (), None,
                      "the simplex draws in the trials' params.json (no search space recorded)" if params else
                      "no search space recorded and no trace of a searcher in the trials")


def search_only_studies(experiments: list[Experiment]) -> set[str]:
    """Studies every experiment of which is a search without named configurations: no ablation table for them."""
    kinds: dict[str, list[bool]] = {}
    for exp in experiments:
        parts = classify(exp)
        for study in {t.study for t in exp.trials} or {parts.study}:
            kinds.setdefault(study, []).append(parts.is_search and not parts.is_study and study == parts.study)
    return {study for study, flags in kinds.items() if all(flags)}


# ---------------------------------------------------------------------------------------------- per lambda


@dataclass(frozen=True)
class Importance:
    """Normalized importances (summing to 1) of one evaluator, by component name."""

    method: str
    values: dict[str, float]


@dataclass(frozen=True)
class BestConfig:
    """The best finished trial at one lambda and how to rebuild it."""

    trial_id: str
    trial_dir: str
    value: float
    psnr: float
    rate: float
    config: dict  # the flat training config (search internals stripped, init_from resolved)
    parent: str | None
    command: str
    snippet: str  # the searched values as a `fixed:` block of a search-space file
    vs_reference: str
    parent_note: str = ""


@dataclass(frozen=True)
class SearchAtLambda:
    """The search at one lambda. ``board``: every trial, finished first (ranked by the metric), then stopped
    early, errored, unfinished; columns trial, status, epochs, value, psnr, bpp, collapsed, each component of
    the searched parameters, trial_dir."""

    lmbda: float
    board: pd.DataFrame
    counts: dict[str, int]
    importances: tuple[Importance, ...] = ()
    importance_note: str = ""
    best: BestConfig | None = None


@dataclass(frozen=True)
class SearchSection:
    """Everything printed for the search of one study."""

    study: str
    experiments: tuple[str, ...]
    params: tuple[SearchParam, ...]
    metric: str
    mode: str
    searcher: str | None
    source: str
    point: str
    rate: str
    per_lambda: tuple[SearchAtLambda, ...] = field(default_factory=tuple)

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(c for p in self.params for c in p.components)

    def param_of(self, component: str) -> SearchParam:
        return next(p for p in self.params if component in p.components)


_STATUS_ORDER = {FINISHED: 0, STOPPED: 1, ERRORED: 2, UNFINISHED: 3}


def _board(rows: pd.DataFrame, params: tuple[SearchParam, ...], value_col: str, mode: str,
           options: AnalysisOptions) -> pd.DataFrame:
    def column(name: str) -> pd.Series:
        col = metric_column(name, options)
        return pd.to_numeric(rows[col], errors="coerce") if col in rows.columns else pd.Series(np.nan, rows.index)

    board = pd.DataFrame({
        "trial": rows["trial_id"].astype(str), "status": rows["status"],
        "epochs": [f"{int(r)}/{int(p)}" if finite(p) else f"{int(r)}" for r, p in
                   zip(rows["epochs_run"], pd.to_numeric(rows["epochs_planned"], errors="coerce"), strict=True)],
        "value": (pd.to_numeric(rows[value_col], errors="coerce") if value_col in rows.columns
                  else pd.Series(np.nan, rows.index)),
        "psnr": column(m.EVAL_PSNR), "bpp": column(RATES[options.rate]),
        COLLAPSED: collapse_flags(rows, options), "trial_dir": rows["trial_dir"],
    }, index=rows.index)
    for p in params:
        source = rows[p.name] if p.name in rows.columns else pd.Series(None, rows.index, dtype=object)
        parts = [p.component_values(v) for v in source]
        for i, comp in enumerate(p.components):
            board[comp] = [v[i] if v is not None else None for v in parts]
    order = board["status"].map(_STATUS_ORDER).fillna(4)
    key = board["value"] if mode == "min" else -board["value"]
    board = board.assign(_o=order, _k=key).sort_values(["_o", "_k"], na_position="last", kind="stable")
    board.insert(0, "rank", range(1, len(board) + 1))
    return board.drop(columns=["_o", "_k"]).reset_index(drop=True)


def ped_anova_quantile(finished: int) -> float:
    """PED-ANOVA's ``target_quantile`` for ``finished`` COMPLETE trials: Optuna's default 0.1, raised so that at
    least PED_ANOVA_TOP trials are in the top quantile (Optuna's docs ask for 5; with the default, a sweep of 20
    trials would judge every parameter by the 2 best), at most 0.5."""
    if finished < 1:
        raise ValueError(f"finished={finished!r} is not allowed; valid: an integer >= 1")
    return min(max(0.1, PED_ANOVA_TOP / finished), 0.5)


def _sklearn_importable() -> bool:
    """Whether fANOVA's scikit-learn imports (installed and whole: a broken install counts as missing)."""
    try:
        import sklearn.ensemble  # noqa: F401
    except Exception:  # ImportError, or whatever a half-installed package raises on import
        return False
    return True


def available_evaluators(finished: int = 100) -> list[tuple[str, object]]:
    """(name, evaluator) of the Optuna importance evaluators this installation can run for ``finished`` COMPLETE
    trials: fANOVA (needs scikit-learn; seeded), PED-ANOVA (optuna >= 3.6; :func:`ped_anova_quantile`)."""
    import optuna.importance as oi

    out: list[tuple[str, object]] = []
    if _sklearn_importable():
        out.append((FANOVA, oi.FanovaImportanceEvaluator(seed=FANOVA_SEED)))
    if hasattr(oi, "PedAnovaImportanceEvaluator"):
        out.append((PED_ANOVA, oi.PedAnovaImportanceEvaluator(target_quantile=ped_anova_quantile(finished))))
    return out


def evaluator_names() -> str:
    """The evaluators in words, naming the Optuna classes (and what is missing)."""
    import optuna

    found = [n for n, _ in available_evaluators()]
    classes = {FANOVA: "FanovaImportanceEvaluator", PED_ANOVA: "PedAnovaImportanceEvaluator"}
    text = ", ".join(f"{n} (optuna.importance.{classes[n]})" for n in found) or "none"
    if FANOVA not in found:
        text += "; fANOVA needs scikit-learn, which is not installed"
    return f"{text}; optuna {optuna.__version__}"


def importance_study(board: pd.DataFrame, components: list[tuple[SearchParam, int, str]], mode: str):
    """The in-memory Optuna study of one lambda's trials (see the module docstring)."""
    import optuna
    from optuna.trial import TrialState, create_trial

    distributions = {name: p.distribution(i, list(board[name])) for p, i, name in components}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory" line
    try:
        study = optuna.create_study(direction="minimize" if mode == "min" else "maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for row in board.to_dict("records"):
        params = {name: row[name] for _p, _i, name in components}
        if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in params.values()):
            continue
        value = row["value"]
        if row["status"] == FINISHED and finite(value):
            trial = create_trial(params=params, distributions=distributions, value=float(value))
        elif row["status"] == STOPPED and finite(value):
            epoch = int(str(row["epochs"]).split("/")[0] or 0)
            trial = create_trial(params=params, distributions=distributions, state=TrialState.PRUNED,
                                 intermediate_values={epoch: float(value)})
        elif row["status"] in (ERRORED, FINISHED, STOPPED):
            trial = create_trial(params=params, distributions=distributions, state=TrialState.FAIL)
        else:
            continue  # unfinished: Optuna would hold it as RUNNING, which no evaluator reads
        study.add_trial(trial)
    return study


def importances(board: pd.DataFrame, params: tuple[SearchParam, ...], mode: str,
                min_trials: int = MIN_TRIALS_FOR_IMPORTANCE) -> tuple[tuple[Importance, ...], str]:
    """(importances by evaluator, note) of one lambda's board; no importance, and the note says why, below
    ``min_trials`` finished trials with a finite value, or when no evaluator is installed."""
    if min_trials < 2:
        raise ValueError(f"min_trials={min_trials!r} is not allowed; valid: an integer >= 2")
    finished = int(((board["status"] == FINISHED) & board["value"].map(finite)).sum())
    stopped = int((board["status"] == STOPPED).sum())
    if finished < min_trials:
        return (), (f"Importances not computed: {finished} finished trial(s) at this lambda, fewer than "
                    f"{min_trials} (MIN_TRIALS_FOR_IMPORTANCE); with so few, an importance ranks noise. "
                    "Run more samples (`--num-samples`), or every trial to the end (`--scheduler fifo`).")
    components = [(p, i, name) for p in params for i, name in enumerate(p.components) if name in board.columns]
    evaluators = available_evaluators(finished)
    if not components or not evaluators:
        return (), "Importances not computed: " + ("no searched parameter in the trials' configs" if not components
                                                   else "no Optuna importance evaluator installed") + "."
    from optuna.importance import get_param_importances

    study = importance_study(board, components, mode)
    out = []
    for name, evaluator in evaluators:
        values = get_param_importances(study, evaluator=evaluator, normalize=True)
        out.append(Importance(name, {c: float(values.get(c, 0.0)) for _p, _i, c in components}))
    note = (f"Computed on {finished} finished trials (COMPLETE); PED-ANOVA: importance of reaching the best "
            f"{ped_anova_quantile(finished):.0%} (target_quantile), fANOVA: share of the variance of the value"
            + (f"; {stopped} {EARLY_NOTE}" if stopped else "") + ".")
    return tuple(out), note


# ---------------------------------------------------------------------------------------------- best config


def _yaml_scalar(value) -> str:
    """A value as YAML text that ``hpcm-train --set`` (yaml.safe_load) reads back as the same value: floats in
    full precision (with a '.' so YAML 1.1 sees a float), lists and strings as JSON when plain text would change."""
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent if exponent[0] in '+-' else '+' + exponent}"
        return text
    if isinstance(value, list | tuple):
        return "[" + ",".join(_yaml_scalar(v) for v in value) + "]"
    if isinstance(value, str):
        try:
            plain = yaml.safe_load(value) == value and "," not in value and "[" not in value
        except yaml.YAMLError:
            plain = False
        return value if plain and value.strip() == value and value else json.dumps(value)
    return json.dumps(value)


def training_config(params: dict) -> tuple[dict, str]:
    """(the flat config a trial trained with, a note): search internals stripped, ``init_from`` resolved from the
    sweep's parents table (hpcm_tune.experiment.training_config); the note says when the parent is unknown."""
    from hpcm_tune.experiment import is_internal
    from hpcm_tune.experiment import training_config as trial_training_config

    try:
        return trial_training_config(params), ""
    except (ValueError, KeyError, TypeError) as err:
        plain = {k: v for k, v in params.items() if not is_internal(k)}
        return plain, f"the trial's parent could not be resolved ({err})"


def reproduce_command(config: dict, searched: tuple[str, ...], out: str) -> str:
    """``hpcm-train --init-from PARENT --set KEY=VALUE ... --out OUT`` rebuilding ``config`` exactly
    (``hpcm-train ... --print-config`` prints it): every key the trial set, the searched ones first; metadata
    (study, label) left out. Lines continued with a backslash."""
    keys = [k for k in searched if k in config] + sorted(k for k in config if k not in searched)
    parent = config.get("init_from")
    words = ["hpcm-train"] + (["--init-from", str(parent)] if parent else [])
    for key in keys:
        if key in METADATA_KEYS or key == "init_from":
            continue
        words += ["--set", f"{key}={_yaml_scalar(config[key])}"]
    words += ["--out", out]
    lines, line = [], ""
    for i, word in enumerate(words):
        piece = shlex.quote(word)
        breakable = word == "--set" or (word in ("--out", "--init-from") and i)
        if breakable and line and len(line) + len(piece) + 40 > COMMAND_WIDTH:
            lines.append(line)
            line = "    "
        line = f"{line} {piece}" if line.strip() else f"{line}{piece}"
    lines.append(line)
    return " \\\n".join(lines)


def searched_snippet(config: dict, params: tuple[SearchParam, ...]) -> str:
    """The searched values as a ``fixed:`` block, to paste into a search-space file (and drop from ``params``)."""
    body = {p.name: (list(config[p.name]) if isinstance(config[p.name], tuple) else config[p.name])
            for p in params if p.name in config}
    return yaml.safe_dump({"fixed": body}, default_flow_style=None, sort_keys=False).rstrip("\n")


def _vs_reference(reference, rate: float, psnr: float, rate_name: str) -> str:
    from hpcm_tune.reference import ANCHOR, compare_point

    if reference is None:
        return "reference codecs off (`--no-reference`)"
    if reference.anchor_curve is None:
        return f"no reference codec points ({reference.error or 'JPEG not available in this Pillow build'})"
    if not (finite(rate) and finite(psnr)):
        return "no finite R-D point"
    result = compare_point(rate, psnr, reference.anchor_curve, reference.points.label(ANCHOR))
    text = f"{fmt.psnr_bpp(psnr, rate, units=True)} ({rate_name}): {result['how']}"
    if psnr <= reference.points.flat_psnr:
        flat = fmt.number(reference.points.flat_psnr, fmt.PSNR_DIGITS)
        text += f"; no better than a flat colour ({flat} dB): not a codec"
    return text


def best_config(board: pd.DataFrame, records: dict[str, TrialRecord], params: tuple[SearchParam, ...],
                study: str, lmbda: float, reference, rate_name: str) -> BestConfig | None:
    """The first finished trial of the board (None without one) and its reproduction."""
    done = board[(board["status"] == FINISHED) & board["value"].map(finite)]
    if done.empty:
        return None
    top = done.iloc[0]
    record = records.get(str(top["trial_dir"]))
    raw = dict(record.params) if record is not None else {}
    config, note = training_config(raw)
    parent = config.get("init_from")
    if parent and "://" not in str(parent) and not Path(str(parent)).exists():
        note = "; ".join(t for t in (note, f"the parent {parent} is not on this machine") if t)
    out = f"runs/{fmt.file_slug(study)}-best-lmbda{lmbda:g}"
    names = tuple(p.name for p in params)
    return BestConfig(trial_id=str(top["trial"]), trial_dir=str(top["trial_dir"]), value=float(top["value"]),
                      psnr=float(top["psnr"]), rate=float(top["bpp"]), config=config,
                      parent=str(parent) if parent else None, command=reproduce_command(config, names, out),
                      snippet=searched_snippet(config, params),
                      vs_reference=_vs_reference(reference, float(top["bpp"]), float(top["psnr"]), rate_name),
                      parent_note=note)


# ---------------------------------------------------------------------------------------------- sections


def search_sections(experiments: list[Experiment], trials: pd.DataFrame, options: AnalysisOptions,
                    references: dict | None = None,
                    min_trials: int = MIN_TRIALS_FOR_IMPORTANCE) -> list[SearchSection]:
    """One :class:`SearchSection` per study with sampled parameters (see :func:`classify`), its trials split by
    lambda. ``trials``: the report's trial table (tables.trial_table); ``references``: study -> the
    analysis.references.StudyReference of its evaluation images (None or missing: no comparison)."""
    if trials.empty or "trial_dir" not in trials.columns:
        return []
    references = references or {}
    groups: dict[str, dict] = {}
    for exp in experiments:
        parts = classify(exp)
        if not parts.is_search:
            continue
        group = groups.setdefault(parts.study, {"exps": [], "params": {}, "records": {}, "labels": set(),
                                                "metric": exp.header.get("metric") or m.DEFAULT_METRIC,
                                                "mode": exp.header.get("mode") or m.DEFAULT_MODE,
                                                "searcher": parts.searcher, "source": parts.source})
        group["exps"].append(exp.name)
        for p in parts.params:
            group["params"].setdefault(p.name, p)
        for t in exp.trials:
            if t.study == parts.study:
                group["records"][str(exp.path / t.dirname)] = t
                if parts.configurations and t.params.get(LABEL) is not None:
                    group["labels"].add(str(t.params[LABEL]))
    sections = []
    for study, group in groups.items():
        params = tuple(group["params"].values())
        if len(group["labels"]) > 1:  # configurations crossed with sampled parameters: one more parameter
            params = (*params, SearchParam(CONFIGURATION_PARAM, Choice(tuple(sorted(group["labels"])))))
        rows = trials[trials["trial_dir"].isin(list(group["records"]))]
        if len(group["labels"]) > 1:
            rows = rows.assign(**{CONFIGURATION_PARAM: rows[LABEL]})
        value_col = metric_column(group["metric"], options)
        lams = pd.to_numeric(rows[LMBDA], errors="coerce") if LMBDA in rows.columns else pd.Series(np.nan, rows.index)
        per_lambda = []
        for lam in sorted(v for v in lams.unique() if finite(v)):
            board = _board(rows[lams == lam], params, value_col, group["mode"], options)
            counts = {s: int((board["status"] == s).sum()) for s in _STATUS_ORDER}
            found, note = importances(board, params, group["mode"], min_trials)
            best = best_config(board, group["records"], params, study, float(lam), references.get(str(study)),
                               RATES[options.rate])
            per_lambda.append(SearchAtLambda(float(lam), board, counts, found, note, best))
        sections.append(SearchSection(study=str(study), experiments=tuple(group["exps"]), params=params,
                                      metric=group["metric"], mode=group["mode"], searcher=group["searcher"],
                                      source=group["source"], point=options.point, rate=options.rate,
                                      per_lambda=tuple(per_lambda)))
    return sections


# ---------------------------------------------------------------------------------------------- output


def figure_names(section: SearchSection, at: SearchAtLambda) -> dict[str, str]:
    """The PNG files of one lambda: ``params`` (value against each searched parameter) and ``parallel``."""
    slug = fmt.file_slug(section.study)
    return {kind: f"search_{slug}_lmbda{at.lmbda:g}_{kind}.png" for kind in ("params", "parallel")}


def board_display(section: SearchSection, at: SearchAtLambda, rows: int | None = MAX_BOARD_ROWS) -> pd.DataFrame:
    """The leaderboard as printed: short trial names, one column per searched parameter (a simplex as
    a/b/c), the value of the metric, PSNR and rate; the first ``rows`` rows (None: all)."""
    board = at.board if rows is None else at.board.head(rows)
    out = pd.DataFrame({"rank": board["rank"], "trial": board["trial"], "status": board["status"],
                        "epochs": board["epochs"],
                        section.metric: [fmt.compact(v) for v in board["value"]],
                        "PSNR (dB)": [fmt.compact(v, fmt.PSNR_DIGITS) for v in board["psnr"]],
                        "bpp": [fmt.compact(v, fmt.BPP_DIGITS) for v in board["bpp"]]})
    for p in section.params:
        if len(p.components) > 1:
            out[p.name] = [fmt.joined((board.at[i, c] for c in p.components), 3) if all(
                finite(board.at[i, c]) for c in p.components) else fmt.NA for i in board.index]
        elif p.categorical:
            out[p.name] = [str(v) for v in board[p.name]]
        else:
            out[p.name] = [fmt.significant(v, 4) for v in board[p.name]]
    if (board[COLLAPSED] == 1.0).any():
        out["note"] = ["collapsed †" if c == 1.0 else "" for c in board[COLLAPSED]]
    return out


def importance_display(at: SearchAtLambda) -> pd.DataFrame:
    """Parameters by importance (the first evaluator's order), one column per evaluator."""
    if not at.importances:
        return pd.DataFrame()
    first = at.importances[0].values
    names = sorted(first, key=lambda c: -first[c])
    out = pd.DataFrame({"parameter": names})
    for imp in at.importances:
        out[imp.method] = [fmt.number(imp.values[c], 3) for c in names]
    return out


def markdown(sections: list[SearchSection], figures: bool = True) -> list[str]:
    """The search sections of report.md (figures referenced as ``![caption](file.png)`` when ``figures``)."""
    from hpcm_tune.analysis.report import markdown_table  # the report's own table format

    out: list[str] = []
    for section in sections:
        mode = "lower is better" if section.mode == "min" else "higher is better"
        n = sum(len(at.board) for at in section.per_lambda)
        point = "best epoch" if section.point == "best" else "final evaluation"
        out += [f"## Search `{section.study}`", "",
                f"{n} trials sampled by the {section.searcher or 'unknown'} searcher over "
                + ", ".join(p.describe() for p in section.params) + f" (read from {section.source}). Ranked by "
                f"`{section.metric}` ({mode}) at each trial's {point}; "
                "trials at different lambdas are never compared. Trials stopped early come after the finished "
                "ones: their value is from fewer epochs.", ""]
        for at in section.per_lambda:
            c = at.counts
            out += [f"### Search `{section.study}` at lambda {at.lmbda:g}: {c[FINISHED]} finished, {c[STOPPED]} "
                    f"stopped early, {c[ERRORED]} errored" + (f", {c[UNFINISHED]} unfinished" if c[UNFINISHED]
                                                              else ""), "",
                    markdown_table(board_display(section, at)), ""]
            if len(at.board) > MAX_BOARD_ROWS:
                out += [f"{len(at.board) - MAX_BOARD_ROWS} more trials in search_leaderboard.csv.", ""]
            out += ["Parameter importances (Optuna's evaluators, normalized to sum 1; methods: "
                    f"{evaluator_names()}):", ""]
            table = importance_display(at)
            out += [markdown_table(table) if not table.empty else at.importance_note, ""]
            if not table.empty:
                out += [at.importance_note, ""]
            if figures:
                names = figure_names(section, at)
                out += [f"![{section.study}, lambda {at.lmbda:g}: {section.metric} against each searched parameter "
                        f"(finished trials filled, stopped early hollow, the best starred)]({names['params']})", "",
                        f"![{section.study}, lambda {at.lmbda:g}: parallel coordinates of the searched parameters "
                        f"and {section.metric}, coloured by it]({names['parallel']})", ""]
            out += _best_markdown(section, at)
    return out


def _best_markdown(section: SearchSection, at: SearchAtLambda) -> list[str]:
    best = at.best
    head = f"#### Best configuration at lambda {at.lmbda:g}"
    if best is None:
        return [head, "", "No finished trial at this lambda: no best configuration.", ""]
    searched = ", ".join(f"{p.name} = {_yaml_scalar(best.config[p.name]) if p.name in best.config else 'n/a'}"
                         for p in section.params if p.name != CONFIGURATION_PARAM)
    value = fmt.compact(best.value)
    out = [head, "", f"Trial `{best.trial_id}` ({best.trial_dir}): {section.metric} {value}; {searched}.",
           "", f"Against the reference codecs: {best.vs_reference}.", "",
           f"Parent: {best.parent or 'none (trained from scratch)'}" + (f" ({best.parent_note})" if best.parent_note
                                                                         else "") + ".", "",
           "Reproduce it from its parent (`--print-config` instead of `--out` prints the config without training):",
           "", "```bash", best.command, "```", "",
           "Or as a search space: the searched values fixed (paste into the file's `fixed:`, drop them from "
           "`params:`):", "", "```yaml", best.snippet, "```", ""]
    return out


def csv_outputs(sections: list[SearchSection]) -> dict[str, str]:
    """search_leaderboard.csv (every trial of every search, parameter components as columns) and
    search_importance.csv (study, lmbda, parameter, method, importance). Empty without a search."""
    if not sections:
        return {}
    boards, imps = [], []
    for section in sections:
        for at in section.per_lambda:
            boards.append(at.board.assign(**{STUDY: section.study, LMBDA: at.lmbda, "metric": section.metric}))
            for imp in at.importances:
                imps += [{STUDY: section.study, LMBDA: at.lmbda, "parameter": c, "method": imp.method,
                          "importance": v} for c, v in imp.values.items()]
    board = pd.concat(boards, ignore_index=True) if boards else pd.DataFrame()
    return {"search_leaderboard.csv": board.to_csv(index=False),
            "search_importance.csv": pd.DataFrame(imps, columns=[STUDY, LMBDA, "parameter", "method",
                                                                 "importance"]).to_csv(index=False)}
