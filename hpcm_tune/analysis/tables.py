"""Tables from sweep results: tidy trials, configurations and their RD curves, ablation tables with BD-rate
against a baseline, per-lambda leaderboards (issue 6; docs/design.md §7-§8).

Vocabulary. A *trial* is one training run (one config). A *configuration* is the set of trials with the
same hyperparameters except lambda and seed; its *RD curve* is its points over lambda (mean over seeds). A
*study* (the config's ``study`` key, else the experiment's) is what one ablation table compares.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from hpcm_tune import metrics as m
from hpcm_tune.analysis import formatting as fmt
from hpcm_tune.analysis.bd import (
    BD_METHODS,
    DEFAULT_MIN_OVERLAP,
    DEFAULT_MIN_QUALITY_SPAN_DB,
    BDError,
    BDOverlapWarning,
    bd_psnr,
    bd_rate,
    curve_problem,
)
from hpcm_tune.analysis.results import (
    ERRORED,
    FINISHED,
    ITERATION,
    LABEL,
    LMBDA,
    OBJECTIVE,
    SEED,
    STATUSES,
    STUDY,
    TIME_TOTAL,
    Experiment,
    TrialRecord,
    finite,
)

# Config keys that do not make a different configuration: lambda and seed by definition, metadata, and
# where/how fast a run executes.
NOT_HYPERPARAMETERS = frozenset({LMBDA, SEED, STUDY, LABEL, "device", "num_workers"})
# The original design's 'ratio' decomposition (docs/design.md §3): every task is a fixed multiple of D or R.
DECOMPOSITION, RATIO_DECOMPOSITION = "decomposition", "ratio"
RATIO_NOTE = ("ratio decomposition: each task is a fixed fraction of lambda·D or R, so the gradient only mixes "
              "grad D and grad R: a 2-task method in disguise; under a log-based weighting the fractions only "
              "rescale the effective lambda (they cancel only with min loss 0) (docs/design.md §3)")
# The objective every ablation is measured against when present (docs/design.md §3 baselines).
DEFAULT_BASELINE_OBJECTIVE = "standard"

POINTS = ("final", "best")  # final: last evaluation of a run; best: the epoch best in the sweep's metric
RATES = {"bpp": m.EVAL_BPP, "actual_bpp": m.EVAL_ACTUAL_BPP}  # estimated (likelihoods) or real bitstreams
BEST_PREFIX = "best "
# Families of per-epoch metrics whose final value goes into the trial table, by their name prefix.
_TRAJECTORY_PREFIXES = tuple(
    name.split("/")[0] + "/" for name in (m.weight_name("x"), m.GAMMA[m.SCALES[0]], m.SCALE_CONTRIB[m.SCALES[0]])
)
# The collapse diagnostics (reported by newer engines; absent from older experiments, which then get no marks).
COLLAPSE_METRICS = (m.EVAL_Y_SHARE, m.EVAL_FLAT_PSNR, m.EVAL_COLLAPSED, m.TRAIN_LAMBDA_EFF)
COLLAPSED = "collapsed"  # 1.0 / 0.0 / NaN (unknown) per RD point
DAGGER = "†"
LAMBDA_EFF_RATIO = "lambda_eff/lambda"
# eval_epoch: the epoch of a trial's last evaluation (its final RD point); best_epoch: of its best one.
META_COLUMNS = ("experiment", "trial_id", STUDY, LABEL, "configuration", "status", "epochs_run", "epochs_planned",
                "eval_epoch", "best_epoch", TIME_TOTAL, "error", "trial_dir")


@dataclass(frozen=True)
class AnalysisOptions:
    """How curves and BD-rates are computed. ``baseline``: label or key=value specs (all must match).
    ``min_quality_span_db``: a curve (per seed, or mean over seeds) enters a BD only when its points are
    monotone (rate and quality rising with lambda) and its quality spans at least this many dB."""

    method: str = "pchip"
    point: str = "final"
    rate: str = "bpp"
    include_partial: bool = False
    baseline: tuple[str, ...] = ()
    min_overlap: float = DEFAULT_MIN_OVERLAP
    reference: bool = True  # reference codecs (JPEG, WebP, AVIF) on the evaluation images: curves, BD vs JPEG
    min_quality_span_db: float = DEFAULT_MIN_QUALITY_SPAN_DB

    def __post_init__(self) -> None:
        if self.method not in BD_METHODS:
            raise ValueError(f"method={self.method!r} is not allowed; valid: {', '.join(BD_METHODS.names())}")
        if self.point not in POINTS:
            raise ValueError(f"point={self.point!r} is not allowed; valid: {', '.join(POINTS)}")
        if self.rate not in RATES:
            raise ValueError(f"rate={self.rate!r} is not allowed; valid: {', '.join(RATES)}")
        if not 0.0 <= self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap={self.min_overlap!r} is not allowed; valid: a fraction in [0, 1]")
        if not (finite(self.min_quality_span_db) and self.min_quality_span_db >= 0.0):
            raise ValueError(f"min_quality_span_db={self.min_quality_span_db!r} is not allowed; valid: a number of "
                             "dB >= 0")
        if isinstance(self.baseline, str):
            raise ValueError(f"baseline={self.baseline!r} must be a tuple of specs, e.g. ({self.baseline!r},)")


# ---------------------------------------------------------------------------------------------- trial table


def _hashable(value):
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _final_values(rows: list[dict], names: set[str] | None, prefixes: tuple[str, ...]) -> dict[str, float]:
    """Each metric's last reported finite value (evaluation may run only every few epochs)."""
    out: dict[str, float] = {}
    for row in reversed(rows):
        for key, value in row.items():
            if key in out or not finite(value):
                continue
            if (names is not None and key in names) or key.startswith(prefixes):
                out[key] = float(value)
    return out


def _best_row(rows: list[dict], metric: str, mode: str) -> dict | None:
    scored = [r for r in rows if finite(r.get(metric))]
    if not scored:
        return None
    pick = min if mode == "min" else max
    return pick(scored, key=lambda r: r[metric])


def trial_table(experiments: list[Experiment]) -> pd.DataFrame:
    """One row per trial: metadata, its flat config (lists as tuples), status, epochs, final values of the
    eval metrics, task weights, scale contributions and gammas, and the eval metrics at its best epoch
    (columns ``"best <metric>"``; best in the sweep's metric and mode from hpcm_tune.json)."""
    records = []
    eval_names = set(m.EVAL_METRICS) | set(COLLAPSE_METRICS)
    for exp in experiments:
        metric = exp.header.get("metric") or m.DEFAULT_METRIC
        mode = exp.header.get("mode") or m.DEFAULT_MODE
        for trial in exp.trials:
            records.append(_trial_row(exp, trial, metric, mode, eval_names))
    table = pd.DataFrame.from_records(records)
    if table.empty:
        return pd.DataFrame(columns=[c for c in META_COLUMNS if c != "configuration"])
    return assign_configurations(table)


def _trial_row(exp: Experiment, trial: TrialRecord, metric: str, mode: str, eval_names: set[str]) -> dict:
    row: dict = {
        "experiment": exp.name,
        "trial_id": trial.trial_id,
        STUDY: trial.study,
        LABEL: trial.params.get(LABEL),
        "status": trial.status,
        "epochs_run": trial.epochs_run,
        "epochs_planned": trial.epochs_planned,
        "error": trial.error,
        "trial_dir": str(exp.path / trial.dirname),
        TIME_TOTAL: next((float(r[TIME_TOTAL]) for r in reversed(trial.rows) if finite(r.get(TIME_TOTAL))),
                         math.nan),
    }
    for key, value in trial.params.items():
        if key in (STUDY, LABEL):
            continue
        row[key if key not in row else f"param:{key}"] = _hashable(value)
    row.update(_final_values(trial.rows, eval_names, _TRAJECTORY_PREFIXES))
    last_eval = next((r for r in reversed(trial.rows) if finite(r.get(m.EVAL_PSNR))), None)
    row["eval_epoch"] = last_eval.get(m.EPOCH, last_eval.get(ITERATION)) if last_eval else None
    best = _best_row(trial.rows, metric, mode)
    row["best_epoch"] = (best.get(m.EPOCH, best.get(ITERATION)) if best else None)
    if best:
        for name in (*m.EVAL_METRICS, *COLLAPSE_METRICS):
            if finite(best.get(name)):
                row[BEST_PREFIX + name] = float(best[name])
    return row


def _config_key(params: dict) -> str:
    # Keys starting with "_" are search internals (e.g. the raw draws behind a simplex), not hyperparameters.
    items = sorted((k, _hashable(v)) for k, v in params.items() if k not in NOT_HYPERPARAMETERS and k[:1] != "_")
    return json.dumps(items, default=str)


def assign_configurations(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``config_key`` (hyperparameters except lambda and seed) and ``configuration``, a label unique in
    its study: the trials' ``label`` when they have one, else the hyperparameters that vary in the study."""
    table = table.copy()
    param_cols = [c for c in table.columns if c not in META_COLUMNS and "/" not in c and not c.startswith(BEST_PREFIX)
                  and c not in NOT_HYPERPARAMETERS and c[:1] != "_"]
    keys = []
    for rec in table[param_cols].to_dict("records"):
        keys.append(_config_key({k: v for k, v in rec.items() if not _missing(v)}))
    table["config_key"] = keys
    labels: dict[tuple[str, str], str] = {}
    for study, part in table.groupby(STUDY, sort=False):
        varying = [c for c in param_cols if part[c].map(_fmt_or_none).nunique(dropna=False) > 1]
        names: dict[str, str] = {}
        for key, group in part.groupby("config_key", sort=False):
            given = Counter(str(v) for v in group[LABEL] if not _missing(v) and str(v).strip())
            if given:
                names[key] = given.most_common(1)[0][0]
            else:
                first = group.iloc[0]
                names[key] = ", ".join(f"{c}={fmt.plain(first[c])}" for c in varying if not _missing(first[c]))
                names[key] = names[key] or str(first.get(OBJECTIVE) or "configuration")
        # Two configurations with one label (a label reused, or none given): name what differs.
        clashes = Counter(names.values())
        for key, group in part.groupby("config_key", sort=False):
            if clashes[names[key]] > 1:
                first = group.iloc[0]
                detail = ", ".join(f"{c}={fmt.plain(first[c])}" for c in varying if not _missing(first[c]))
                names[key] = f"{names[key]} [{detail}]"
        for key, name in names.items():
            labels[(study, key)] = name
    table["configuration"] = [labels[(s, k)] for s, k in zip(table[STUDY], table["config_key"], strict=True)]
    return table


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt_or_none(value):
    return None if _missing(value) else fmt.plain(value)


# ---------------------------------------------------------------------------------------------- RD curves


def metric_column(name: str, options: AnalysisOptions) -> str:
    return BEST_PREFIX + name if options.point == "best" else name


def curve_points(table: pd.DataFrame, options: AnalysisOptions) -> pd.DataFrame:
    """One row per trial usable as an RD point: finished trials (all with eval data if include_partial),
    with columns study, configuration, lmbda, seed, rate, psnr, ms_ssim_db, loss, status, collapsed, trial_id,
    epoch (of the point: the last evaluation, or the best one with ``point='best'``) and lambda_eff
    (train/lambda_eff at the point; NaN when not reported). ``rate`` is the axis ``options.rate`` chose."""
    if table.empty or LMBDA not in table.columns:
        return pd.DataFrame(columns=[STUDY, "configuration", LMBDA, SEED, "rate", "psnr", "ms_ssim_db", "loss",
                                     COLLAPSED, "trial_id", "epoch", "lambda_eff"])
    usable = table if options.include_partial else table[table["status"] == FINISHED]
    epoch_col = "best_epoch" if options.point == "best" else "eval_epoch"
    lambda_eff_col = metric_column(m.TRAIN_LAMBDA_EFF, options)
    columns = {
        "rate": metric_column(RATES[options.rate], options),
        "psnr": metric_column(m.EVAL_PSNR, options),
        "ms_ssim_db": metric_column(m.EVAL_MS_SSIM_DB, options),
        "loss": metric_column(m.EVAL_LOSS, options),
    }
    out = pd.DataFrame({
        STUDY: usable[STUDY],
        "configuration": usable["configuration"],
        "config_key": usable["config_key"],
        LMBDA: pd.to_numeric(usable[LMBDA], errors="coerce"),
        SEED: usable[SEED] if SEED in usable.columns else 0,
        "status": usable["status"],
        **{k: pd.to_numeric(usable[c], errors="coerce") if c in usable.columns else np.nan
           for k, c in columns.items()},
        COLLAPSED: collapse_flags(usable, options),
        "trial_id": usable["trial_id"] if "trial_id" in usable.columns else None,
        "epoch": pd.to_numeric(usable[epoch_col], errors="coerce") if epoch_col in usable.columns else np.nan,
        "lambda_eff": (pd.to_numeric(usable[lambda_eff_col], errors="coerce") if lambda_eff_col in usable.columns
                       else np.nan),
    })
    return out[out[LMBDA].notna() & out["rate"].notna() & out["psnr"].notna()].reset_index(drop=True)


def collapse_flags(table: pd.DataFrame, options: AnalysisOptions) -> pd.Series:
    """Per trial, at its RD point (final or best): 1.0 when collapsed, 0.0 when not, NaN when unknown (an
    experiment written before the collapse metrics existed). eval/collapsed when reported, else
    metrics.is_collapsed of the y share (eval/y_share, or from eval/bpp and eval/bpp_z), eval/psnr and
    eval/flat_psnr."""
    col = metric_column(m.EVAL_COLLAPSED, options)
    flags = (pd.to_numeric(table[col], errors="coerce").astype(np.float64) if col in table.columns
             else pd.Series(np.nan, index=table.index, dtype=np.float64))
    names = [metric_column(n, options) for n in (m.EVAL_BPP, m.EVAL_BPP_Z, m.EVAL_PSNR, m.EVAL_FLAT_PSNR)]
    missing = flags.isna()
    if not missing.any() or any(c not in table.columns for c in names):
        return flags
    share_col = metric_column(m.EVAL_Y_SHARE, options)
    flags = flags.copy()
    for index in table.index[missing]:
        bpp, bpp_z, psnr, flat = (table.at[index, c] for c in names)
        share = table.at[index, share_col] if share_col in table.columns else math.nan
        if not finite(share) and finite(bpp) and finite(bpp_z):
            share = m.y_rate_share(float(bpp), float(bpp_z))
        if finite(share) and finite(psnr) and finite(flat):
            flags.at[index] = float(m.is_collapsed(float(share), float(psnr), float(flat)))
    return flags


def mean_curves(points: pd.DataFrame) -> pd.DataFrame:
    """Per study, configuration and lambda: mean, std and count over seeds of rate, PSNR, MS-SSIM, loss (and
    the number of collapsed trials, when the experiment reports the collapse diagnostics)."""
    if points.empty:
        return pd.DataFrame(columns=[STUDY, "configuration", LMBDA, "n"])
    grouped = points.groupby([STUDY, "configuration", LMBDA], sort=True)
    values = ["rate", "psnr", "ms_ssim_db", "loss"]
    mean = grouped[values].mean()
    std = grouped[values].std(ddof=1).add_suffix("_std")
    out = pd.concat([mean, std], axis=1)
    out["n"] = grouped.size()
    if COLLAPSED in points.columns and points[COLLAPSED].notna().any():
        out[COLLAPSED] = grouped[COLLAPSED].agg(lambda v: int((v == 1.0).sum()))
    return out.reset_index()


# ---------------------------------------------------------------------------------------------- baseline


class BaselineError(ValueError):
    """--baseline selects several configurations of a study."""


class Footnotes:
    """Numbered footnotes, one number per distinct text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"


def _parse_spec(spec: str) -> tuple[str, object] | None:
    if "=" not in spec:
        return None
    key, _, raw = spec.partition("=")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip(), _hashable(value)


def _equal(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if finite(a) and finite(b):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return str(a) == str(b)


def match_baseline(part: pd.DataFrame, specs: tuple[str, ...]) -> list[str]:
    """Configurations of one study that the user's baseline specs select (a label, or key=value pairs that
    must all match)."""
    labels = list(dict.fromkeys(part["configuration"]))
    pairs = [p for p in (_parse_spec(s) for s in specs) if p is not None]
    names = [s for s in specs if "=" not in s]
    chosen = []
    for label in labels:
        rows = part[part["configuration"] == label]
        first = rows.iloc[0]
        ok = all(label.lower() == n.lower() or str(first.get(LABEL) or "").lower() == n.lower() for n in names)
        ok = ok and all(k in rows.columns and _equal(first[k], v) for k, v in pairs)
        if ok:
            chosen.append(label)
    return chosen


def _run_config_defaults() -> dict | None:
    """The training defaults, when the config module offers them (the study's default configuration is the
    one that matches them on the keys the study varies). Read from the dataclass fields: constructing a
    RunConfig would import the model code (seconds) for nothing."""
    try:
        from hpcm_tune.config import flat_defaults  # optional: only for the default baseline
    except ImportError:
        return None
    return {k: _hashable(v) for k, v in flat_defaults().items()}


def _at_defaults(part: pd.DataFrame, labels: list[str]) -> list[str]:
    """The configurations among ``labels`` whose values of the keys that vary in ``part`` are the defaults."""
    defaults = _run_config_defaults()
    if not defaults:
        return []
    varying = [c for c in defaults if c in part.columns and c not in NOT_HYPERPARAMETERS
               and part[c].map(_fmt_or_none).nunique(dropna=False) > 1]
    return [lb for lb in labels if varying and all(
        _equal(part.loc[part["configuration"] == lb, c].iloc[0], defaults[c]) for c in varying)]


def choose_baseline(part: pd.DataFrame, options: AnalysisOptions, header_baseline=None) -> tuple[str | None, str]:
    """The baseline configuration of one study and why it was chosen: ``--baseline``; else the ``standard``
    objective; else the study's default configuration (hpcm_tune.json's baseline, else the one matching the
    training defaults); else the configuration with most trials."""
    labels = list(dict.fromkeys(part["configuration"]))
    if not labels:
        return None, "no configuration"
    if options.baseline:
        chosen = match_baseline(part, options.baseline)
        if len(chosen) == 1:
            return chosen[0], f"--baseline {' '.join(options.baseline)}"
        if len(chosen) > 1:
            raise BaselineError(f"--baseline {' '.join(options.baseline)} matches several configurations: "
                             f"{', '.join(chosen)}; add key=value specs to pick one")
    note = "" if not options.baseline else f"--baseline {' '.join(options.baseline)} not in this study; "
    if OBJECTIVE in part.columns:
        standard = [lb for lb in labels if (part.loc[part["configuration"] == lb, OBJECTIVE]
                                            == DEFAULT_BASELINE_OBJECTIVE).any()]
        if len(standard) == 1:
            return standard[0], note + f"the {DEFAULT_BASELINE_OBJECTIVE} objective"
        if len(standard) > 1:  # e.g. standard with Adam and with Cautious Adam: the one at the training defaults
            at_defaults = _at_defaults(part[part["configuration"].isin(standard)], standard)
            if len(at_defaults) == 1:
                return at_defaults[0], note + f"the {DEFAULT_BASELINE_OBJECTIVE} objective at the training defaults"
    if header_baseline:
        specs = (header_baseline,) if isinstance(header_baseline, str) else tuple(
            f"{k}={json.dumps(v)}" for k, v in dict(header_baseline).items())
        chosen = match_baseline(part, specs)
        if len(chosen) == 1:
            return chosen[0], note + "the study's default configuration (hpcm_tune.json)"
    matching = _at_defaults(part, labels)
    if len(matching) == 1:
        return matching[0], note + "the study's default configuration (training defaults)"
    named = [lb for lb in labels if "default" in lb.lower()]
    if len(named) == 1:
        return named[0], note + "the configuration labeled default"
    counts = part["configuration"].value_counts()
    return str(counts.index[0]), note + "no standard objective nor default found: the configuration with most trials"


# ---------------------------------------------------------------------------------------------- ablation


@dataclass
class StudyTables:
    """Everything printed for one study.

    ``ablation`` is numeric, one row per configuration (NaN for n/a). For each BD column ``K`` (``"BD-rate
    PSNR (%)"``, ``"BD-rate MS-SSIM (%)"``, ``"BD-PSNR (dB)"``): ``K`` the mean of the per-seed paired values
    (or the one mean-curve value), ``K std``, ``K n`` (how many values), ``K lo`` / ``K hi`` (95 % t-interval;
    NaN below 2 values) and ``K basis`` (``"paired seeds"``, ``"mean curve"``, ``"anchor"`` or ``""``). Per
    lambda: ``PSNR @<lambda>``, ``bpp @<lambda>`` (means), their ``... std`` and ``n @<lambda>``.

    ``display`` (BD-rates, rate shares, weights) and ``per_lambda`` (``lambda X``: PSNR / bpp mean ± std with
    n and collapse counts; ``Δ lambda X``: the paired ΔPSNR / Δbpp against the baseline) are the formatted
    forms with footnote marks; ``leaderboard`` ranks configurations at each lambda.

    ``paired`` is tidy, one row per (configuration, lambda, quantity) for every configuration but the
    baseline, columns :data:`PAIRED_COLUMNS`: ``quantity`` is a BD column name (``lmbda`` NaN: over the curve)
    or :data:`DELTA_PSNR` / :data:`DELTA_RATE` (at ``lmbda``); ``mean``, ``std``, ``n`` of the per-seed
    differences against the baseline's same seed (same lambda), ``lo`` / ``hi`` their 95 % t-interval (n − 1
    degrees of freedom; NaN with n < 2), ``within_noise`` (the interval contains 0; NA with n < 2),
    ``basis`` (``"paired seeds"``, or ``"mean curve"`` for a BD of the mean curves, n = 1; ``""`` when n/a)
    and ``note`` (why n/a, or caveats).

    ``per_seed`` is every trial's RD point, columns :data:`PER_SEED_COLUMNS` (``bpp`` is the rate axis
    ``rate`` chose; ``collapsed`` 1/0/NaN; ``lambda_eff`` NaN when not reported; ``epoch`` the point's epoch).
    ``point``, ``rate``, ``method`` and ``min_quality_span_db`` record the options the tables were made with.
    ``numbers`` is the :class:`StudyNumbers` that ``ablation``, ``paired`` (numbers) and ``display``,
    ``per_lambda``, ``footnotes`` (text, :func:`format_study`) were made from.
    """

    study: str
    baseline: str | None
    baseline_reason: str
    ablation: pd.DataFrame
    display: pd.DataFrame
    per_lambda: pd.DataFrame
    leaderboard: pd.DataFrame
    footnotes: list[str] = field(default_factory=list)
    user_baseline_found: bool = False  # whether --baseline named a configuration of this study
    reference: object | None = None  # analysis.references.StudyReference (None: --no-reference)
    reference_notes: list[str] = field(default_factory=list)  # are these codecs? (plain sentences)
    paired: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PAIRED_COLUMNS))
    per_seed: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PER_SEED_COLUMNS))
    point: str = "final"
    rate: str = "bpp"
    method: str = "pchip"
    min_quality_span_db: float = DEFAULT_MIN_QUALITY_SPAN_DB
    numbers: StudyNumbers | None = None  # the numeric ablation the tables were formatted from


_CURVE_COLUMNS = ("rate", "psnr", "ms_ssim_db")
CONFIDENCE = 0.95
DELTA_PSNR, DELTA_RATE = "ΔPSNR (dB)", "Δbpp (%)"
PAIRED_SEEDS, MEAN_CURVE, ANCHOR = "paired seeds", "mean curve", "anchor"
PAIRED_COLUMNS = ["configuration", LMBDA, "quantity", "mean", "std", "lo", "hi", "n", "within_noise", "basis",
                  "note"]
PER_SEED_COLUMNS = ["configuration", LMBDA, SEED, "trial_id", "status", "epoch", "bpp", "psnr", "ms_ssim_db",
                    "loss", COLLAPSED, "lambda_eff"]
PAIRED_NOTE = ("paired with the baseline seed by seed (same seed, same lambdas): mean ± std of the n per-seed "
               f"differences; ~ within noise: their {CONFIDENCE:.0%} t-interval (n − 1 degrees of freedom) contains 0 "
               "(lo/hi in ablation.csv)")
ONE_SEED_NOTE = ("one seed: a single paired difference has no interval, so it cannot be judged against noise "
                 "(within noise: n/a)")
MEAN_CURVE_NOTE = ("no seed's curve could be paired with the baseline's same seed: BD of the mean curves (mean over "
                   "seeds at each lambda), one value, noise unknown")
MIXED_NOTE = (f"seeds disagree at this lambda: some collapsed ({DAGGER}), some not, so the mean describes no run; "
              "see the per-seed table")


@functools.lru_cache(maxsize=256)
def _t_quantile(dof: int) -> float:
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2.0, dof))


@dataclass(frozen=True)
class Interval:
    """Mean, sample std (ddof 1) and the 95 % t-interval (n − 1 degrees of freedom) of ``n`` paired
    differences; std, lo and hi are NaN below 2 values."""

    mean: float
    std: float
    lo: float
    hi: float
    n: int

    @property
    def within_noise(self) -> bool | None:
        """Whether the interval contains 0 (None: no interval)."""
        within = _within(self.lo, self.hi, self.n)
        return None if within is pd.NA else within


def paired_interval(differences) -> Interval:
    """:class:`Interval` of the finite values among ``differences`` (test minus baseline, one per seed)."""
    d = np.asarray(differences, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    mean = float(d.mean())
    if d.size == 1:
        return Interval(mean, math.nan, math.nan, math.nan, 1)
    std = float(d.std(ddof=1))
    half = _t_quantile(d.size - 1) * std / math.sqrt(d.size)
    return Interval(mean, std, mean - half, mean + half, int(d.size))


def _curves(points: pd.DataFrame, keys: list[str]) -> dict[tuple, dict[str, np.ndarray]]:
    """Mean RD curve (arrays over sorted lambda) for each group of ``keys``, in one pass (fast on big sweeps)."""
    if points.empty:
        return {}
    grouped = points.groupby([*keys, LMBDA], sort=True)[list(_CURVE_COLUMNS)].mean().reset_index()
    arrays = {c: grouped[c].to_numpy(dtype=np.float64) for c in _CURVE_COLUMNS}
    return {(k if isinstance(k, tuple) else (k,)): {c: a[idx] for c, a in arrays.items()}
            for k, idx in grouped.groupby(keys, sort=False).indices.items()}


_QUALITY_NAMES = {"psnr": "PSNR", "ms_ssim_db": "MS-SSIM (dB)"}


def _problem(curve: dict | None, quality: str, options: AnalysisOptions) -> str | None:
    if curve is None:
        return "no RD point"
    return curve_problem(curve["rate"], curve[quality], options.min_quality_span_db, _QUALITY_NAMES[quality])


def _bd_paired(label: str, baseline: str, seed_curves: dict, mean_curves_: dict, fn, quality: str,
               options: AnalysisOptions, cache: dict) -> tuple[Interval, str, list[str]]:
    """BD of ``label`` against the baseline, seed by seed (the baseline's curve of the same seed: same
    initialisation and data order, so identical settings give exactly 0), over the seeds whose two curves are
    R-D curves; with none, the BD of the two mean curves. Returns (interval, basis, reasons); basis ``""``
    and an empty interval when nothing can be computed."""

    def problem(lb: str, seed, curve: dict) -> str | None:
        key = (lb, seed, quality)
        if key not in cache:
            cache[key] = _problem(curve, quality, options)
        return cache[key]

    own, base = seed_curves.get(label, {}), seed_curves.get(baseline, {})
    values, reasons = [], []
    if any(seed not in base for seed in own):
        reasons.append("seeds the baseline has no usable RD point for are left out of the paired BD")
    for seed, curve in own.items():
        if seed not in base:
            continue
        why = problem(baseline, seed, base[seed])
        if why:
            reasons.append(f"some seeds' curves of the baseline: {why}; those seeds are left out (see the per-seed "
                           "table)")
            continue
        why = problem(label, seed, curve)
        if why:
            reasons.append(f"some seeds' curves: {why}; those seeds are left out (see the per-seed table)")
            continue
        value, note = _bd_one(base[seed], curve, fn, quality, options)
        if note:
            reasons.append(note)
        if value is not None:
            values.append(value)
    if values:
        return paired_interval(values), PAIRED_SEEDS, reasons
    why_base = problem(baseline, None, mean_curves_.get(baseline))
    why_own = problem(label, None, mean_curves_.get(label))
    if why_base or why_own:
        if why_base:
            reasons.append(f"the baseline's mean curve: {why_base}")
        if why_own:
            reasons.append(f"mean curve: {why_own}")
        return paired_interval([]), "", reasons
    value, note = _bd_one(mean_curves_[baseline], mean_curves_[label], fn, quality, options)
    if note:
        reasons.append(note)
    if value is None:
        return paired_interval([]), "", reasons
    return Interval(value, math.nan, math.nan, math.nan, 1), MEAN_CURVE, reasons


def _bd_one(anchor: dict, test: dict, fn, quality: str, options: AnalysisOptions):
    """(value, None), (value, overlap note) or (None, reason it cannot be computed)."""
    keep_a = np.isfinite(anchor["rate"]) & np.isfinite(anchor[quality])
    keep_t = np.isfinite(test["rate"]) & np.isfinite(test[quality])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BDOverlapWarning)
        try:
            value = fn(anchor["rate"][keep_a], anchor[quality][keep_a], test["rate"][keep_t],
                       test[quality][keep_t], method=options.method, min_overlap=options.min_overlap)
        except BDError as err:
            return None, err.reason
    overlap = [str(w.message) for w in caught if issubclass(w.category, BDOverlapWarning)]
    return value, ("curves overlap little: " + overlap[0].split(": ", 1)[-1]) if overlap else None


def _collapse_note(points: pd.DataFrame) -> str:
    left_out = int((points[COLLAPSED] == 1.0).sum())
    return (f"{DAGGER} collapsed (hpcm_tune.metrics.is_collapsed, at the trial's RD point): y carries less than "
            f"{m.COLLAPSE_Y_SHARE:.0%} of the estimated rate, or the PSNR is below the flat-colour reference (the "
            f"images replaced by their mean colour). Collapsed trials are left out of every BD-rate: {left_out} of "
            f"{len(points)} RD points of this study left out")


def _paired_at_lambda(points: pd.DataFrame, baseline: str | None) -> pd.DataFrame:
    """Per (configuration, lambda) but the baseline: the per-seed differences against the baseline's same
    seed and lambda (ΔPSNR in dB, Δbpp in % of the baseline's rate), summarised: columns configuration, lmbda,
    quantity, mean, std, n, lo, hi (collapsed points included: the per-lambda table counts them)."""
    if points.empty or baseline is None or not (points["configuration"] == baseline).any():
        return pd.DataFrame(columns=["configuration", LMBDA, "quantity", "mean", "std", "n", "lo", "hi"])
    seeds = points.groupby(["configuration", LMBDA, SEED], sort=False)[["rate", "psnr"]].mean().reset_index()
    base = seeds[seeds["configuration"] == baseline].drop(columns="configuration")
    joined = seeds[seeds["configuration"] != baseline].merge(base, on=[LMBDA, SEED], suffixes=("", "_base"))
    joined[DELTA_PSNR] = joined["psnr"] - joined["psnr_base"]
    joined[DELTA_RATE] = 100.0 * (joined["rate"] / joined["rate_base"] - 1.0)
    long = joined.melt(id_vars=["configuration", LMBDA], value_vars=[DELTA_PSNR, DELTA_RATE], var_name="quantity")
    long = long[np.isfinite(long["value"].to_numpy(dtype=np.float64))]
    out = long.groupby(["configuration", LMBDA, "quantity"], sort=True)["value"].agg(["mean", "std", "count"])
    out = out.rename(columns={"count": "n"}).reset_index()
    t = np.array([_t_quantile(int(n) - 1) if n >= 2 else math.nan for n in out["n"]])
    half = t * out["std"] / np.sqrt(out["n"])
    out.loc[out["n"] < 2, "std"] = math.nan
    out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    return out


# An interval "contains 0" up to rounding: BDs of bit-identical curves are 0 exactly, but sums of differences
# of equal values may leave a few ulps.
_ZERO_TOLERANCE = 1e-9


def _within(lo: float, hi: float, n: int):
    """Whether the interval [lo, hi] of n values contains 0 (NA without an interval)."""
    if n < 2 or not (finite(lo) and finite(hi)):
        return pd.NA
    return bool(lo - _ZERO_TOLERANCE <= 0.0 <= hi + _ZERO_TOLERANCE)


def _delta_cell(rows: dict, notes: Footnotes) -> str:
    """``+0.12 dB ~ / -1.3 % (n=3) [k]`` from the ΔPSNR and Δbpp rows of one configuration and lambda."""
    parts, n = [], 0
    for quantity, unit, digits in ((DELTA_PSNR, "dB", fmt.BD_PSNR_DIGITS), (DELTA_RATE, "%", fmt.BD_RATE_DIGITS)):
        row = rows.get(quantity)
        if row is None:
            continue
        n = max(n, int(row["n"]))
        mark = " ~" if _within(row["lo"], row["hi"], int(row["n"])) is True else ""
        parts.append(f"{fmt.signed(row['mean'], digits)} {unit}{mark}")
    if not parts:
        return "n/a " + notes.mark("no seed in common with the baseline at this lambda: no paired difference")
    return " / ".join(parts) + f" (n={n}) " + notes.mark(ONE_SEED_NOTE if n < 2 else PAIRED_NOTE)


EARLIER_NOTE = ("best earlier: finished trials whose best evaluation (in the sweep's metric) came before their last "
                "one; these tables use the last (--point final; --point best takes the best)")


def _best_earlier(trials: pd.DataFrame, options: AnalysisOptions) -> int:
    """With the final point: how many finished trials had their best evaluation before their last one."""
    if options.point != "final" or "best_epoch" not in trials.columns or "eval_epoch" not in trials.columns:
        return 0
    done = trials[trials["status"] == FINISHED]
    best = pd.to_numeric(done["best_epoch"], errors="coerce")
    last = pd.to_numeric(done["eval_epoch"], errors="coerce")
    return int((best < last).sum())


@dataclass(frozen=True)
class BDCell:
    """One BD value of a configuration against the baseline, before formatting: the interval of the per-seed
    paired values (or the one mean-curve value), its ``basis`` (:data:`PAIRED_SEEDS`, :data:`MEAN_CURVE`,
    :data:`ANCHOR` for the baseline itself, ``""`` when n/a) and the ``reasons`` it is n/a or caveated."""

    interval: Interval = field(default_factory=lambda: Interval(math.nan, math.nan, math.nan, math.nan, 0))
    basis: str = ""
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnchorCell:
    """The BD-rate vs JPEG of a configuration's mean curve: ``value`` (NaN when n/a), ``available`` and
    ``reason`` (why n/a, or a caveat of the value; None when none)."""

    value: float
    available: bool
    reason: str | None = None


@dataclass(frozen=True)
class LambdaCell:
    """A configuration at one lambda: mean and std over seeds of PSNR and rate, ``n`` RD points (``have``: any),
    ``collapsed`` (collapsed points, points) when the study reports collapse, and ``deltas``: the paired ΔPSNR /
    Δbpp rows against the baseline by quantity (empty when none)."""

    lmbda: float
    have: bool
    n: int = 0
    psnr: float = math.nan
    psnr_std: float = math.nan
    rate: float = math.nan
    rate_std: float = math.nan
    collapsed: tuple[int, int] | None = None
    deltas: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ConfigurationNumbers:
    """Everything the tables say about one configuration of a study, as numbers (NaN for n/a, with reasons)."""

    label: str
    is_baseline: bool
    trials: int
    finished: int
    errored: int
    seeds: int
    best_earlier: int = 0
    ratio: bool = False  # the ratio decomposition (a footnote)
    collapsed: tuple[int, int] | None = None  # (collapsed RD points, RD points) when the study reports collapse
    bd: dict[str, BDCell] = field(default_factory=dict)  # BD column -> cell, in column order
    anchor: AnchorCell | None = None  # None: no reference codecs
    compared: dict | None = None  # references.compare_points against JPEG's points
    at_lambda: tuple[LambdaCell, ...] = ()
    rate_share: dict[str, float] = field(default_factory=dict)  # scale -> % of the estimated rate
    lambda_eff: float | None = None  # mean lambda_eff/lambda (None: not reported)
    weights: dict[str, float] = field(default_factory=dict)  # task -> mean final weight


@dataclass(frozen=True)
class StudyNumbers:
    """The numeric ablation of one study, before any formatting: :func:`study_numbers` computes it,
    :func:`numeric_table` / :func:`paired_table` turn it into DataFrames and :func:`format_study` into text."""

    study: str
    baseline: str | None
    baseline_reason: str
    configurations: tuple[ConfigurationNumbers, ...]
    show_deltas: bool
    has_collapse: bool
    collapse_note: str
    include_partial: bool


@dataclass(frozen=True)
class BDContext:
    """What a BD value of a configuration against the baseline is computed from (:func:`_bd_cell`)."""

    baseline: str | None
    anchor: dict | None  # the baseline's mean curve
    mean_curves: dict  # configuration -> mean curve (collapsed points left out)
    seed_curves: dict  # configuration -> seed -> curve
    options: AnalysisOptions
    cache: dict = field(default_factory=dict)  # (configuration, seed, quality) -> curve problem


def study_numbers(table: pd.DataFrame, study: str, options: AnalysisOptions, header_baseline=None,
                  reference=None) -> tuple[StudyNumbers, pd.DataFrame, list[str]]:
    """The numeric ablation of one study, its RD points and the reference verdict sentences."""
    from hpcm_tune.analysis import references as refs

    part = table[table[STUDY] == study]
    baseline, reason = choose_baseline(part, options, header_baseline)
    points = curve_points(part, options)
    lambdas = sorted(points[LMBDA].unique()) if not points.empty else []
    has_ms_ssim = bool(points["ms_ssim_db"].notna().any()) if not points.empty else False
    # Collapse marks only when the experiment reports the diagnostics (older ones analyse as before).
    has_collapse = bool(points[COLLAPSED].notna().any()) if not points.empty else False
    is_collapsed = points[COLLAPSED] == 1.0 if not points.empty else pd.Series(dtype=bool)
    bd_points = points[~is_collapsed] if has_collapse else points
    all_collapsed = ({lb for lb, g in points.groupby("configuration") if (g[COLLAPSED] == 1.0).all()}
                     if has_collapse else set())
    all_curves = {k[0]: v for k, v in _curves(points, ["configuration"]).items()}
    mean_curves_ = {k[0]: v for k, v in _curves(bd_points, ["configuration"]).items()}
    seed_curves: dict[str, dict] = {}
    for (label, seed), curve in _curves(bd_points, ["configuration", SEED]).items():
        seed_curves.setdefault(label, {})[seed] = curve
    ctx = BDContext(baseline=baseline, anchor=mean_curves_.get(baseline), mean_curves=mean_curves_,
                    seed_curves=seed_curves, options=options)
    bd_columns = [c for c in _BD_COLUMNS if has_ms_ssim or c[0] != "ms_ssim_db"]
    at_lambda = (points.groupby(["configuration", LMBDA])[["psnr", "rate"]].agg(["mean", "std", "count"])
                 if not points.empty else None)
    collapsed_at = (points.assign(_c=is_collapsed).groupby(["configuration", LMBDA])["_c"].agg(["sum", "count"])
                    if has_collapse else None)
    delta_rows: dict[tuple, dict] = {}
    for row in _paired_at_lambda(points, baseline).to_dict("records"):
        delta_rows.setdefault((row["configuration"], row[LMBDA]), {})[row["quantity"]] = row
    show_deltas = baseline is not None and bool((points["configuration"] == baseline).any()) if lambdas else False
    trials_by = dict(tuple(part.groupby("configuration", sort=False)))
    lambda_eff_col = metric_column(m.TRAIN_LAMBDA_EFF, options)
    lambda_eff = (pd.to_numeric(part[lambda_eff_col], errors="coerce") / pd.to_numeric(part[LMBDA], errors="coerce")
                  if lambda_eff_col in part.columns and LMBDA in part.columns else None)
    if lambda_eff is not None and not np.isfinite(lambda_eff.to_numpy(dtype=np.float64)).any():
        lambda_eff = None
    weight_cols = [c for c in part.columns if c.startswith(m.weight_name(""))]
    configurations, compared = [], {}
    for label, trials in trials_by.items():
        n_seeds = (int(bd_points.loc[bd_points["configuration"] == label, SEED].nunique())
                   if label in mean_curves_ else 0)
        finished = trials["status"] == FINISHED
        bd = {}
        for quality, fn, key in bd_columns:
            if label in all_collapsed and not (label == baseline and ctx.anchor is not None):
                bd[key] = BDCell(reasons=(f"every RD point of this configuration collapsed ({DAGGER}): no BD value"
                                          + (", and it is the baseline" if label == baseline else ""),))
            elif label == baseline:
                bd[key] = (BDCell(Interval(0.0, math.nan, math.nan, math.nan, n_seeds), ANCHOR)
                           if ctx.anchor is not None else
                           BDCell(reasons=(f"the baseline {baseline!r} has no usable RD point: no BD-rate",)))
            else:
                bd[key] = _bd_cell(label, fn, quality, ctx)
        anchor = None
        if reference is not None:
            anchor = _anchor_cell(reference, label, mean_curves_, all_collapsed, options)
            compared[label] = refs.compare_points(reference, all_curves.get(label))
        cells = []
        for lam in lambdas:
            have = at_lambda is not None and (label, lam) in at_lambda.index
            k_total = None
            if collapsed_at is not None and (label, lam) in collapsed_at.index:
                k_total = tuple(int(v) for v in collapsed_at.loc[(label, lam)])
            if not have:
                cells.append(LambdaCell(lam, False, collapsed=k_total, deltas=delta_rows.get((label, lam), {})))
                continue
            s = at_lambda.loc[(label, lam)]
            cells.append(LambdaCell(lam, True, int(s[("psnr", "count")]), float(s[("psnr", "mean")]),
                                    float(s[("psnr", "std")]), float(s[("rate", "mean")]), float(s[("rate", "std")]),
                                    k_total, delta_rows.get((label, lam), {})))
        done = trials[finished] if finished.any() else trials
        own = is_collapsed[points["configuration"] == label] if has_collapse else None
        configurations.append(ConfigurationNumbers(
            label=label, is_baseline=label == baseline, trials=len(trials), finished=int(finished.sum()),
            errored=int((trials["status"] == ERRORED).sum()), seeds=n_seeds,
            best_earlier=_best_earlier(trials, options),
            ratio=bool(DECOMPOSITION in trials.columns and (trials[DECOMPOSITION] == RATIO_DECOMPOSITION).any()),
            collapsed=(int(own.sum()), len(own)) if own is not None else None,
            bd=bd, anchor=anchor, compared=compared.get(label), at_lambda=tuple(cells),
            rate_share=_rate_shares(trials, options),
            lambda_eff=float(lambda_eff.loc[done.index].mean()) if lambda_eff is not None else None,
            weights={c.split("/", 1)[1]: float(pd.to_numeric(done[c], errors="coerce").mean()) for c in weight_cols}))
    verdict = (refs.verdict(reference, compared, [lb for lb in trials_by if (is_collapsed[points["configuration"]
                                                                                          == lb]).any()])
               if reference is not None else [])
    numbers = StudyNumbers(study=study, baseline=baseline, baseline_reason=reason,
                           configurations=tuple(configurations), show_deltas=show_deltas, has_collapse=has_collapse,
                           collapse_note=_collapse_note(points) if has_collapse else "",
                           include_partial=options.include_partial)
    return numbers, points, verdict


def numeric_table(numbers: StudyNumbers) -> pd.DataFrame:
    """The ablation as numbers, one row per configuration (:attr:`StudyTables.ablation`)."""
    rows = []
    for c in numbers.configurations:
        num: dict = {"configuration": c.label, "baseline": c.is_baseline, "trials": c.trials,
                     "finished": c.finished, "errored": c.errored, "seeds": c.seeds}
        if c.best_earlier:
            num["best earlier"] = c.best_earlier
        if c.collapsed is not None:
            num[COLLAPSED], num["rd points"] = c.collapsed
        for key, cell in c.bd.items():
            _put_bd(num, key, cell.interval, cell.basis)
        if c.anchor is not None:
            from hpcm_tune.analysis.references import BD_VS_ANCHOR

            num[BD_VS_ANCHOR] = c.anchor.value
        for cell in c.at_lambda:
            lam = f"{cell.lmbda:g}"
            num[f"PSNR @{lam}"], num[f"PSNR @{lam} std"] = cell.psnr, cell.psnr_std
            num[f"bpp @{lam}"], num[f"bpp @{lam} std"] = cell.rate, cell.rate_std
            num[f"n @{lam}"] = cell.n
        for scale, value in c.rate_share.items():
            num[f"rate share {scale} (%)"] = value
        if c.lambda_eff is not None:
            num[LAMBDA_EFF_RATIO] = c.lambda_eff
        for task, value in c.weights.items():
            num[f"w {task}"] = value
        rows.append(num)
    return pd.DataFrame(rows)


def paired_table(numbers: StudyNumbers) -> pd.DataFrame:
    """Every configuration but the baseline against the baseline (:attr:`StudyTables.paired`)."""
    rows = []
    for c in numbers.configurations:
        if c.is_baseline:
            continue
        for key, cell in c.bd.items():
            rows.append(_paired_row(c.label, math.nan, key, cell.interval, cell.basis, list(cell.reasons)))
        if not numbers.show_deltas:
            continue
        for at in c.at_lambda:
            for quantity in (DELTA_PSNR, DELTA_RATE):
                row = at.deltas.get(quantity)
                interval = (Interval(float(row["mean"]), float(row["std"]), float(row["lo"]), float(row["hi"]),
                                     int(row["n"])) if row is not None else Interval(math.nan, math.nan, math.nan,
                                                                                      math.nan, 0))
                why = ([] if row is not None else ["no seed in common with the baseline at this lambda" if at.have
                                                   else "no point at this lambda"])
                rows.append(_paired_row(c.label, at.lmbda, quantity, interval, PAIRED_SEEDS if row is not None
                                        else "", why))
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def format_study(numbers: StudyNumbers) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """The printed forms of the numeric ablation: (display, per_lambda, footnotes). Footnotes are numbered in
    the order the cells are written: configuration by configuration, its ablation cells, then its cells per
    lambda, then its rate shares."""
    from hpcm_tune.analysis import references as refs

    notes = Footnotes()
    display, per_lambda = [], []
    for c in numbers.configurations:
        disp: dict = {"configuration": c.label + (" (baseline)" if c.is_baseline else ""),
                      "trials": f"{c.finished}/{c.trials}"}
        if c.best_earlier:
            disp["trials"] += f" ({c.best_earlier} best earlier) " + notes.mark(EARLIER_NOTE)
        if c.ratio:
            disp["configuration"] += " " + notes.mark(RATIO_NOTE)
        if c.collapsed is not None:
            disp[COLLAPSED] = f"{c.collapsed[0]}/{c.collapsed[1]}"
            if c.collapsed[0]:
                disp["configuration"] += f" {DAGGER}"
                disp[COLLAPSED] += " " + notes.mark(numbers.collapse_note)
        for key, cell in c.bd.items():
            disp[key] = format_bd_cell(cell, BD_DIGITS[key], notes)
        if c.anchor is not None:
            a = c.anchor
            disp[refs.BD_VS_ANCHOR] = ("n/a " + notes.mark(a.reason) if not a.available else
                                       fmt.signed(a.value, fmt.BD_RATE_DIGITS) + (" " + notes.mark(a.reason)
                                                                                  if a.reason else ""))
            disp[refs.VS_ANCHOR] = refs.comparison_cell(c.compared) or fmt.NA
        lam_disp = {"configuration": disp["configuration"]}
        for at in c.at_lambda:
            column = f"lambda {at.lmbda:g}"
            lam_disp[column] = format_lambda_cell(at, notes, numbers.include_partial)
            if not numbers.show_deltas:
                continue
            lam_disp[f"Δ {column}"] = ("baseline" if c.is_baseline else _delta_cell(at.deltas, notes) if at.have else
                                       "n/a " + notes.mark("no point at this lambda: no paired difference"))
        per_lambda.append(lam_disp)
        shares = c.rate_share.values()
        disp["rate share s1/s2/s3 (%)"] = (fmt.joined(shares, 0) if all(finite(v) for v in shares)
                                           else "n/a " + notes.mark("per-scale rates not reported"))
        if c.lambda_eff is not None:
            disp[LAMBDA_EFF_RATIO] = fmt.significant(c.lambda_eff, 3, missing="")
        for task, value in c.weights.items():
            disp[f"w {task}"] = fmt.fixed(value, 3, missing="")
        display.append(disp)
    return pd.DataFrame(display).fillna(""), pd.DataFrame(per_lambda).fillna(""), notes.texts


def format_bd_cell(cell: BDCell, digits: int, notes: Footnotes) -> str:
    """``+1.23 ± 0.40 (n=3) ~ [k]``, ``+1.23 (n=1) [k]``, ``+1.23 (mean curve) [k]``, ``0 (anchor)`` or ``n/a
    [k]``; the reasons' footnotes are numbered before the basis' note."""
    if cell.basis == ANCHOR:
        return "0 (anchor)"
    marks = "".join(" " + notes.mark(r) for r in dict.fromkeys(cell.reasons))
    interval = cell.interval
    if not cell.basis:
        return "n/a" + marks
    if cell.basis == MEAN_CURVE:
        return f"{fmt.signed(interval.mean, digits)} (mean curve) " + notes.mark(MEAN_CURVE_NOTE) + marks
    if interval.n < 2:
        return f"{fmt.signed(interval.mean, digits)} (n=1) " + notes.mark(ONE_SEED_NOTE) + marks
    mark = " ~" if interval.within_noise else ""
    return (f"{fmt.signed(interval.mean, digits, interval.std)} (n={interval.n}){mark} " + notes.mark(PAIRED_NOTE)
            + marks)


def format_lambda_cell(cell: LambdaCell, notes: Footnotes, include_partial: bool = False) -> str:
    """``31.20 ± 0.10 dB / 0.4123 ± 0.0100 (n=3)``, with the collapse count (``† 1/3``) and a footnote when the
    seeds disagree; ``n/a [k]`` without a point."""
    if not cell.have:
        return "n/a " + notes.mark(f"no {'usable ' if include_partial else 'finished '}trial at this lambda")
    text = (f"{fmt.number(cell.psnr, fmt.PSNR_DIGITS, cell.psnr_std)} dB / "
            f"{fmt.number(cell.rate, fmt.BPP_DIGITS, cell.rate_std)} (n={cell.n})")
    if cell.collapsed is not None:
        k, total = cell.collapsed
        if 0 < k < total:
            text += " " + notes.mark(MIXED_NOTE)
        if k:
            text += f" {DAGGER} {k}/{total}"
    return text


def study_tables(table: pd.DataFrame, study: str, options: AnalysisOptions, header_baseline=None,
                 reference=None) -> StudyTables:
    """The ablation of one study: :func:`study_numbers`, then :func:`format_study`. ``reference``: its
    analysis.references.StudyReference (adds the BD-rate vs JPEG and the comparison with JPEG's points; None: no
    reference columns)."""
    numbers, points, verdict = study_numbers(table, study, options, header_baseline, reference)
    display, per_lambda, footnotes = format_study(numbers)
    part = table[table[STUDY] == study]
    return StudyTables(study=study, baseline=numbers.baseline, baseline_reason=numbers.baseline_reason,
                       ablation=numeric_table(numbers), display=display, per_lambda=per_lambda,
                       leaderboard=leaderboard(part, options), footnotes=footnotes,
                       user_baseline_found=bool(options.baseline and match_baseline(part, options.baseline)),
                       reference=reference, reference_notes=verdict, paired=paired_table(numbers),
                       per_seed=_per_seed(points, [c.label for c in numbers.configurations], numbers.has_collapse),
                       point=options.point, rate=options.rate, method=options.method,
                       min_quality_span_db=options.min_quality_span_db, numbers=numbers)


def _put_bd(num: dict, key: str, interval: Interval, basis: str) -> None:
    num[key], num[key + " std"], num[key + " n"] = interval.mean, interval.std, interval.n
    num[key + " lo"], num[key + " hi"], num[key + " basis"] = interval.lo, interval.hi, basis


def _paired_row(label: str, lam: float, quantity: str, interval: Interval, basis: str, reasons: list[str]) -> dict:
    note = "; ".join(dict.fromkeys(reasons))
    if interval.n == 1 and basis == PAIRED_SEEDS:
        note = "; ".join(t for t in ("one seed: no interval", note) if t)
    return {"configuration": label, LMBDA: lam, "quantity": quantity, "mean": interval.mean, "std": interval.std,
            "lo": interval.lo, "hi": interval.hi, "n": interval.n,
            "within_noise": _within(interval.lo, interval.hi, interval.n), "basis": basis, "note": note}


def _per_seed(points: pd.DataFrame, order: list[str], has_collapse: bool) -> pd.DataFrame:
    """Every trial's RD point, configurations in table order, then lambda and seed."""
    if points.empty:
        return pd.DataFrame(columns=PER_SEED_COLUMNS)
    out = points.rename(columns={"rate": "bpp"})
    rank = {label: i for i, label in enumerate(order)}
    out = out.assign(_order=out["configuration"].map(rank)).sort_values(["_order", LMBDA, SEED], kind="stable")
    columns = [c for c in PER_SEED_COLUMNS if (c != COLLAPSED or has_collapse)]
    return out.reindex(columns=columns).reset_index(drop=True)


def _anchor_cell(reference, label: str, curves: dict, all_collapsed: set, options: AnalysisOptions) -> AnchorCell:
    """BD-rate vs JPEG of the configuration's mean curve, collapsed trials left out."""
    from hpcm_tune.analysis import references as refs

    if reference.anchor_curve is None:
        why = reference.error or "JPEG not available in this Pillow build"
        return AnchorCell(math.nan, False, f"no reference codec points: {why}")
    if label in all_collapsed:
        return AnchorCell(math.nan, False, f"every RD point of this configuration collapsed ({DAGGER}): no BD value")
    curve = curves.get(label)
    problem = _problem(curve, "psnr", options) if curve is not None else None
    if problem:
        return AnchorCell(math.nan, False, f"mean curve: {problem}")
    value, note, unavailable = refs.bd_vs_anchor(reference, curve, options)
    if unavailable:
        why = note or ("no finished trial" if not options.include_partial else "no trial with eval results")
        return AnchorCell(math.nan, False, why)
    return AnchorCell(value, True, note or None)


_BD_COLUMNS = (
    ("psnr", bd_rate, "BD-rate PSNR (%)"),
    ("ms_ssim_db", bd_rate, "BD-rate MS-SSIM (%)"),
    ("psnr", bd_psnr, "BD-PSNR (dB)"),
)
BD_DIGITS = {"BD-rate PSNR (%)": fmt.BD_RATE_DIGITS, "BD-rate MS-SSIM (%)": fmt.BD_RATE_DIGITS,
             "BD-PSNR (dB)": fmt.BD_PSNR_DIGITS}


def _bd_cell(label: str, fn, quality: str, ctx: BDContext) -> BDCell:
    """One BD column of a configuration other than the baseline."""
    if ctx.anchor is None:
        return BDCell(reasons=("the baseline has no usable RD point: no BD-rate",))
    mean_curve = ctx.mean_curves.get(label)
    if mean_curve is None or not np.isfinite(mean_curve[quality]).any():
        why = "no finished trial" if not ctx.options.include_partial else "no trial with eval results"
        return BDCell(reasons=(why if mean_curve is None else f"{quality} not reported",))
    interval, basis, reasons = _bd_paired(label, ctx.baseline, ctx.seed_curves, ctx.mean_curves, fn, quality,
                                          ctx.options, ctx.cache)
    return BDCell(interval, basis, tuple(reasons))


def _rate_shares(trials: pd.DataFrame, options: AnalysisOptions) -> dict[str, float]:
    """Each scale's share of the total estimated rate, in %, mean over finished trials; z is counted in s3
    (docs/design.md §3: the original design calls s3 the hyperprior scale)."""
    done = trials[trials["status"] == FINISHED] if (trials["status"] == FINISHED).any() else trials
    cols = [metric_column(m.EVAL_BPP_SCALE[scale], options) for scale in m.SCALES]
    if any(c not in done.columns for c in cols):
        return {s: math.nan for s in m.SCALES}
    parts = np.array(done[cols].to_numpy(dtype=np.float64, na_value=np.nan))  # writable copy
    z_col = metric_column(m.EVAL_BPP_Z, options)
    if z_col in done.columns:
        parts[:, -1] += np.nan_to_num(done[z_col].to_numpy(dtype=np.float64, na_value=np.nan))
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = 100.0 * parts / parts.sum(axis=1, keepdims=True)
    rows = np.isfinite(shares).all(axis=1)
    if not rows.any():
        return {s: math.nan for s in m.SCALES}
    return dict(zip(m.SCALES, shares[rows].mean(axis=0).tolist(), strict=True))


LEADERBOARD_COLUMNS = [LMBDA, "rank", "configuration", "loss", "psnr", "bpp", "n", "note"]


def leaderboard(part: pd.DataFrame, options: AnalysisOptions) -> pd.DataFrame:
    """Per lambda, the configurations ranked by eval R-D loss (lower is better; PSNR when no loss): mean
    over the finished trials, or over the others (noted) when none finished. With the collapse diagnostics the
    note counts collapsed trials; with train/lambda_eff a ``lambda_eff`` column (mean) follows ``bpp``. Every
    value is at the RD point ``options.point`` chose; ``bpp`` is the rate axis ``options.rate`` chose."""
    if LMBDA not in part.columns or part.empty:
        return pd.DataFrame(columns=LEADERBOARD_COLUMNS)
    names = {"loss": m.EVAL_LOSS, "psnr": m.EVAL_PSNR, "bpp": RATES[options.rate]}
    frame = pd.DataFrame({
        LMBDA: pd.to_numeric(part[LMBDA], errors="coerce"), "configuration": part["configuration"],
        "status": part["status"], "finished": part["status"] == FINISHED,
        **{k: (pd.to_numeric(part[metric_column(c, options)], errors="coerce")
               if metric_column(c, options) in part.columns else np.nan) for k, c in names.items()},
    })
    frame[COLLAPSED] = collapse_flags(part, options)
    has_collapse = bool(frame[COLLAPSED].notna().any())
    lambda_eff_col = metric_column(m.TRAIN_LAMBDA_EFF, options)
    frame["lambda_eff"] = (pd.to_numeric(part[lambda_eff_col], errors="coerce")
                           if lambda_eff_col in part.columns else np.nan)
    has_lambda_eff = bool(frame["lambda_eff"].notna().any())
    frame = frame[frame[LMBDA].notna()]
    keys = [LMBDA, "configuration"]
    has_finished = frame.groupby(keys)["finished"].transform("any")
    use = frame[frame["finished"] | ~has_finished]
    board = use.groupby(keys, sort=True)[[*names, "lambda_eff"]].mean()
    board["n"] = use.groupby(keys, sort=True).size()
    board["_collapsed"] = use.groupby(keys, sort=True)[COLLAPSED].agg(lambda v: int((v == 1.0).sum()))
    board = board.reset_index()
    unfinished = frame[~has_finished]
    notes = {}
    if not unfinished.empty:
        counts = unfinished.groupby([*keys, "status"]).size()
        for (lam, label, status), n in counts.items():
            notes.setdefault((lam, label), []).append(f"{n} {status}")
    board["note"] = ["not finished: " + ", ".join(notes[k]) if k in notes else ""
                     for k in zip(board[LMBDA], board["configuration"], strict=True)]
    empty = board[list(names)].isna().all(axis=1)
    board.loc[empty & (board["note"] == ""), "note"] = "no eval results"
    if has_collapse:
        marks = [f"collapsed {k}/{n} {DAGGER}" if k else "" for k, n in zip(board["_collapsed"], board["n"],
                                                                           strict=True)]
        board["note"] = ["; ".join(t for t in (note, mark) if t) for note, mark in zip(board["note"], marks,
                                                                                      strict=True)]
    columns = LEADERBOARD_COLUMNS
    if has_lambda_eff:
        columns = [*LEADERBOARD_COLUMNS[:6], "lambda_eff", *LEADERBOARD_COLUMNS[6:]]
    if board.empty:
        return pd.DataFrame(columns=columns)
    by_loss = bool(board["loss"].notna().any())
    board = board.sort_values([LMBDA, "loss" if by_loss else "psnr"], ascending=[True, by_loss],
                              na_position="last", kind="stable")
    board.insert(1, "rank", board.groupby(LMBDA).cumcount() + 1)
    return board[columns].reset_index(drop=True)


def status_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Trials per study and status (all four statuses as columns)."""
    if table.empty:
        return pd.DataFrame(columns=[STUDY, *STATUSES])
    counts = table.groupby([STUDY, "status"]).size().unstack(fill_value=0)
    return counts.reindex(columns=list(STATUSES), fill_value=0).reset_index()
