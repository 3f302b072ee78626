"""Search-space files: parsing and validation, before Ray starts.

A search space is a YAML file (format: ``search_spaces/README.md``) with the fixed config keys, the searched
parameters (fixed, uniform, loguniform, quniform, randint, choice, grid, simplex), optional named
configurations (the ablation studies of docs/design.md §7, e.g. "s2 emphasis"), and the sweep settings: metric,
mode, scheduler, searcher, samples, repeats (seeds), resources. Every mistake is reported as a
``SpaceError`` naming the file, the key and the value, so a typo never costs a cluster start.

This module is plain Python (no Ray): the translation to Ray Tune and Optuna lives in ``searchers.py``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpcm_tune import metrics
from hpcm_tune.config import FLAT_KEYS, ConfigError, RunConfig, check_value
from hpcm_tune.experiment import (  # the experiment directory contract (trial config keys, training_config)
    INIT_FROM_KEY,
    INTERNAL_PREFIX,
    LAMBDA_KEY,
    PARENT_MATCH_KEYS,
    parent_key,
    training_config,
)
from hpcm_tune.sweep_settings import (  # schedulers, searchers, their options and defaults: declared once
    OPTUNA_SAMPLERS,
    SCHEDULER_NAMES,
    SCHEDULER_OPTIONS,
    SEARCHER_NAMES,
    SEARCHER_OPTIONS,
    SPACE_DEFAULTS,
    scheduler_options,
    searcher_options,
)

# Keys a file sets through its own fields, never in fixed/params/configurations.
RESERVED_KEYS: frozenset[str] = frozenset({"study", "label"})
SEED_KEY = "seed"
EPOCHS_KEY = "epochs"

TOP_LEVEL_KEYS: frozenset[str] = frozenset({
    "study", "description", "metric", "mode", "samples", "repeats", "max_concurrent", "max_failures",
    "checkpoints_to_keep", "delete_stopped_checkpoints", "resources", "scheduler", "searcher", "fixed", "params",
    "configurations", "parent",
})
# Pretrain once, fine-tune many: a `parent` section describes the run every trial starts from, one parent per
# distinct value of PARENT_MATCH_KEYS (hpcm_tune.experiment). What else a parent takes from the sweep's fixed keys:
# the data and the machine. Everything else is the parent section over the defaults, so sweeps that ask for the
# same parent section share one parent.
PARENT_INHERITED_KEYS: tuple[str, ...] = ("data", "eval_max_images", "num_workers", "device", "amp", "compile",
                                          "channels_last")
PARENT_LABEL = "parent"
# Parents are shared by sweeps, so they belong to no sweep's study: analyze.py over a storage shows them apart.
PARENT_STUDY = "parents"
# Metrics a scheduler/searcher may watch (reported every epoch by the engine).
WATCHABLE_METRICS: tuple[str, ...] = (*metrics.EVAL_METRICS, metrics.TRAIN_LOSS, metrics.TRAIN_BPP, metrics.TRAIN_PSNR)
RESOURCE_KEYS: frozenset[str] = frozenset({"cpus", "gpus"})
# A study names the experiment directory (study-date-time) under the storage: no separators, no '..'.
STUDY_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9 ._-]{0,99}")
# Keys that belong to the whole sweep, so configurations and params may not set them: the budget ASHA, the
# summary and checkpoint clean-up count against, and the seed, which comes from 'seed' and 'repeats'.
SWEEP_KEYS: dict[str, str] = {
    EPOCHS_KEY: "the sweep's budget (ASHA's maximum, the summary's full budget): set it in fixed",
    SEED_KEY: "seeds come from fixed.seed (the first) and repeats",
}


class SpaceError(ValueError):
    """A search-space file or override is invalid; the message names the file, the key and the value."""

    def __init__(self, source: str, key: str, value: Any, allowed: str) -> None:
        from hpcm_tune.safe_yaml import excerpt

        self.source, self.key, self.value, self.allowed = source, key, value, allowed
        super().__init__(f"{source}: {key} = {excerpt(value)}: {allowed}")


def known_config_keys() -> frozenset[str]:
    """The flat RunConfig keys (hpcm_tune.config.FLAT_KEYS, the one table of them)."""
    return frozenset(FLAT_KEYS) | RESERVED_KEYS


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# ----------------------------------------------------------------------------------------------------------------
# Parameter domains
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Domain:
    """One searched parameter. ``kind`` is the YAML ``type``."""

    kind: str = field(init=False, default="")

    def is_grid(self) -> bool:
        return False

    def is_random(self) -> bool:
        """True when the value is drawn at random (needs a sampling searcher, not `grid`)."""
        return True

    def bounds(self) -> tuple[float, float] | None:
        """(low, high) for numeric domains, for the sign checks of validate()."""
        return None

    def values(self) -> tuple[Any, ...]:
        return ()


@dataclass(frozen=True)
class Fixed(Domain):
    value: Any
    kind: str = field(init=False, default="fixed")

    def is_random(self) -> bool:
        return False

    def values(self) -> tuple[Any, ...]:
        return (self.value,)


@dataclass(frozen=True)
class _Interval(Domain):
    """A numeric domain between low and high (both included unless a subclass says otherwise)."""

    low: float
    high: float

    def bounds(self) -> tuple[float, float]:
        return (self.low, self.high)


@dataclass(frozen=True)
class Uniform(_Interval):
    kind: str = field(init=False, default="uniform")


@dataclass(frozen=True)
class LogUniform(_Interval):
    kind: str = field(init=False, default="loguniform")


@dataclass(frozen=True)
class QUniform(_Interval):
    q: float
    kind: str = field(init=False, default="quniform")


@dataclass(frozen=True)
class RandInt(_Interval):
    """Integers in [low, high) (Ray Tune's convention: high is excluded)."""

    low: int
    high: int
    kind: str = field(init=False, default="randint")

    def bounds(self) -> tuple[float, float]:
        return (self.low, self.high - 1)


@dataclass(frozen=True)
class Choice(Domain):
    choices: tuple[Any, ...]
    kind: str = field(init=False, default="choice")

    def values(self) -> tuple[Any, ...]:
        return self.choices


@dataclass(frozen=True)
class Grid(Domain):
    """Every value is run (a grid axis); with lmbda, the lambda grid the BD-rate needs."""

    grid: tuple[Any, ...]
    kind: str = field(init=False, default="grid")

    def is_grid(self) -> bool:
        return True

    def is_random(self) -> bool:
        return False

    def values(self) -> tuple[Any, ...]:
        return self.grid


@dataclass(frozen=True)
class Simplex(Domain):
    """``dim`` non-negative weights summing to 1, each at least ``min``: w = min + (1 - dim*min) * d with d
    uniform on the simplex (Dirichlet(1), drawn as normalised -log(u) of ``dim`` uniforms u)."""

    dim: int
    min: float = 0.0
    kind: str = field(init=False, default="simplex")

    def raw_keys(self, name: str) -> tuple[str, ...]:
        """Names of the uniform draws behind the weights (search internals, prefixed by '_')."""
        return tuple(f"{INTERNAL_PREFIX}simplex_{name}_{i}" for i in range(self.dim))

    def from_uniforms(self, us: list[float]) -> list[float]:
        # u is in (0, 1]; clip away 0 so -log stays finite.
        e = [-math.log(min(max(float(u), 1e-12), 1.0)) + 1e-12 for u in us]
        total = sum(e)
        free = 1.0 - self.dim * self.min
        return [round(self.min + free * v / total, 6) for v in e]


def domain_spec(dom: Domain) -> dict[str, Any]:
    """The YAML form of a domain (parse_domain(domain_spec(d)) == d)."""
    spec: dict[str, Any] = {"type": dom.kind}
    for f in dataclasses.fields(dom):
        if f.name != "kind":
            value = getattr(dom, f.name)
            spec["values" if f.name in ("grid", "choices") else f.name] = list(value) if isinstance(value, tuple) \
                else value
    return spec


def _num(source: str, key: str, spec: Mapping, name: str, integer: bool = False) -> Any:
    if name not in spec:
        raise SpaceError(source, key, dict(spec), f"missing '{name}'")
    v = spec[name]
    ok = _is_int(v) if integer else _is_number(v)
    if not ok:
        raise SpaceError(source, f"{key}.{name}", v, "must be an integer" if integer else "must be a finite number")
    return v


DOMAIN_FIELDS: dict[str, frozenset[str]] = {
    "fixed": frozenset({"value"}),
    "uniform": frozenset({"low", "high"}),
    "loguniform": frozenset({"low", "high"}),
    "quniform": frozenset({"low", "high", "q"}),
    "randint": frozenset({"low", "high"}),
    "choice": frozenset({"values"}),
    "grid": frozenset({"values"}),
    "simplex": frozenset({"dim", "min"}),
}


def parse_domain(source: str, key: str, spec: Any) -> Domain:
    """A ``params`` entry: a mapping with ``type`` (or a bare value, meaning fixed)."""
    if not isinstance(spec, Mapping):
        return Fixed(spec)
    kind = spec.get("type")
    if kind not in DOMAIN_FIELDS:
        raise SpaceError(source, f"params.{key}.type", kind, f"allowed: {', '.join(DOMAIN_FIELDS)}")
    extra = set(spec) - DOMAIN_FIELDS[kind] - {"type"}
    if extra:
        raise SpaceError(source, f"params.{key}", sorted(extra)[0],
                         f"unknown field for type {kind}; allowed: {', '.join(sorted(DOMAIN_FIELDS[kind]))}")
    where = f"params.{key}"
    if kind == "fixed":
        if "value" not in spec:
            raise SpaceError(source, where, dict(spec), "missing 'value'")
        return Fixed(spec["value"])
    if kind in ("uniform", "loguniform", "quniform"):
        low, high = _num(source, where, spec, "low"), _num(source, where, spec, "high")
        if not low < high:
            raise SpaceError(source, f"{where}.low", low, f"must be below high ({high})")
        if kind == "loguniform" and low <= 0:
            raise SpaceError(source, f"{where}.low", low, "loguniform needs low > 0")
        if kind == "uniform":
            return Uniform(float(low), float(high))
        if kind == "loguniform":
            return LogUniform(float(low), float(high))
        q = _num(source, where, spec, "q")
        if q <= 0 or q > high - low:
            raise SpaceError(source, f"{where}.q", q, f"must be in (0, high - low = {high - low}]")
        for name, bound in (("low", low), ("high", high)):
            if abs(bound / q - round(bound / q)) > 1e-9:
                raise SpaceError(source, f"{where}.{name}", bound, f"must be a multiple of q = {q} (values are "
                                 f"rounded to multiples of q, so the bounds must be ones)")
        return QUniform(float(low), float(high), float(q))
    if kind == "randint":
        low, high = _num(source, where, spec, "low", integer=True), _num(source, where, spec, "high", integer=True)
        if not low < high:
            raise SpaceError(source, f"{where}.low", low, f"must be below high ({high}; high is excluded)")
        return RandInt(int(low), int(high))
    if kind in ("choice", "grid"):
        vals = spec.get("values")
        if not isinstance(vals, list) or not vals:
            raise SpaceError(source, f"{where}.values", vals, "must be a non-empty list")
        if len({repr(v) for v in vals}) != len(vals):
            raise SpaceError(source, f"{where}.values", vals, "values must be distinct")
        return Choice(tuple(vals)) if kind == "choice" else Grid(tuple(vals))
    # simplex
    dim = _num(source, where, spec, "dim", integer=True)
    if dim < 2:
        raise SpaceError(source, f"{where}.dim", dim, "a simplex needs at least 2 weights")
    lo = spec.get("min", 0.0)
    if not _is_number(lo) or lo < 0 or dim * lo >= 1.0:
        raise SpaceError(source, f"{where}.min", lo,
                         f"must be >= 0 with dim*min < 1 so {dim} weights >= min can sum to 1")
    return Simplex(int(dim), float(lo))


# ----------------------------------------------------------------------------------------------------------------
# The search space
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchSpace:
    """A validated search-space file (plus command-line overrides, applied with ``with_overrides``)."""

    source: str
    study: str
    fixed: dict[str, Any]
    params: dict[str, Domain] = field(default_factory=dict)
    configurations: dict[str, dict[str, Any]] = field(default_factory=dict)
    description: str = SPACE_DEFAULTS["description"]
    metric: str = SPACE_DEFAULTS["metric"]
    mode: str = SPACE_DEFAULTS["mode"]
    samples: int = SPACE_DEFAULTS["samples"]
    repeats: int = SPACE_DEFAULTS["repeats"]
    max_concurrent: int = SPACE_DEFAULTS["max_concurrent"]
    max_failures: int = SPACE_DEFAULTS["max_failures"]
    checkpoints_to_keep: int = SPACE_DEFAULTS["checkpoints_to_keep"]
    delete_stopped_checkpoints: bool = SPACE_DEFAULTS["delete_stopped_checkpoints"]
    cpus: float = SPACE_DEFAULTS["cpus"]
    gpus: float = SPACE_DEFAULTS["gpus"]
    scheduler: str = SPACE_DEFAULTS["scheduler"]
    scheduler_options: dict[str, Any] = field(default_factory=dict)
    searcher: str = SPACE_DEFAULTS["searcher"]
    searcher_options: dict[str, Any] = field(default_factory=dict)
    seed: int = SPACE_DEFAULTS["seed"]
    parent: dict[str, Any] | None = None  # None: no parent section (trials start from scratch)
    parent_resources: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate(self)

    # -- derived facts ------------------------------------------------------------------------------------------
    @property
    def max_epochs(self) -> int:
        return int(self.fixed[EPOCHS_KEY])

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.seed + i for i in range(self.repeats))

    def lambdas(self) -> tuple[float, ...]:
        """The lambda values of the sweep (one group each, never compared with each other)."""
        if LAMBDA_KEY in self.params:
            return tuple(self.params[LAMBDA_KEY].values())
        vals = {c[LAMBDA_KEY] for c in self.configurations.values() if LAMBDA_KEY in c}
        if vals:
            return tuple(sorted(vals))
        return (self.fixed[LAMBDA_KEY],) if LAMBDA_KEY in self.fixed else ()

    def grid_size(self) -> int:
        """Trials per sample: product of grid axes, configurations and seeds."""
        n = max(1, len(self.configurations)) * self.repeats
        for d in self.params.values():
            if d.is_grid() or (self.searcher == "grid" and isinstance(d, Choice)):
                n *= len(d.values())
        return n

    def total_trials(self) -> int:
        return self.grid_size() * self.samples if self.searcher != "optuna" else self.samples

    def with_overrides(self, **overrides: Any) -> SearchSpace:
        """A new validated space with command-line overrides; ``epochs`` goes into ``fixed``.
        None values are ignored (flag not given)."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        fixed = dict(self.fixed)
        if EPOCHS_KEY in overrides:
            fixed[EPOCHS_KEY] = overrides.pop(EPOCHS_KEY)
        names = {f.name for f in dataclasses.fields(self)}
        for k in overrides:
            if k not in names:
                raise SpaceError("command line", k, overrides[k], f"not an overridable setting; allowed: "
                                 f"{', '.join(sorted(names - {'source', 'raw', 'fixed'}))}, epochs")
        if "scheduler" in overrides and overrides["scheduler"] != self.scheduler:
            overrides.setdefault("scheduler_options", {})
        if "searcher" in overrides and overrides["searcher"] != self.searcher:
            overrides.setdefault("searcher_options", {})
        return dataclasses.replace(self, fixed=fixed, **overrides)

    def to_json(self) -> dict[str, Any]:
        """The parsed content as plain JSON (written to hpcm_tune.json)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("params", "raw")}
        out["params"] = {k: domain_spec(d) for k, d in self.params.items()}
        return _jsonable(out)


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    return v


def _check_value(source: str, key: str, value: Any) -> None:
    """One value of a config key, by RunConfig's own rule for that key (hpcm_tune.config.check_value: its
    section's check); keys that are not config keys (test hooks, internals) are left alone."""
    if key not in FLAT_KEYS:
        return
    try:
        check_value(key, value)
    except ConfigError as exc:
        raise SpaceError(source, key, value, f"allowed: {exc.allowed}") from None


def _check_domain(source: str, key: str, dom: Domain) -> None:
    if isinstance(dom, Simplex):
        if key == "scale_weights" and dom.dim != len(metrics.SCALES):
            raise SpaceError(source, f"params.{key}.dim", dom.dim, f"scale_weights has {len(metrics.SCALES)} weights")
        return
    if key == "scale_weights" and not dom.values():
        raise SpaceError(source, f"params.{key}.type", dom.kind, "scale_weights takes simplex, choice, grid or fixed")
    for v in dom.bounds() or ():
        _check_value(source, key, v)
    for v in dom.values():
        _check_value(source, key, v)


def validate(space: SearchSpace) -> None:
    """Every rule a space must satisfy; raises SpaceError naming file, key and value."""
    src = space.source
    if not isinstance(space.study, str) or not STUDY_NAME.fullmatch(space.study) or ".." in space.study:
        raise SpaceError(src, "study", space.study, "a name of letters, digits, spaces and . _ - not starting with "
                         "'.' or a space, at most 100 characters (it names the experiment's directory)")
    known = known_config_keys()
    for section, keys in (("fixed", space.fixed), ("params", space.params),
                          *((f"configurations.{label}", cfg) for label, cfg in space.configurations.items())):
        for key in keys:
            if section != "params" and key.startswith(INTERNAL_PREFIX):
                continue  # test hooks and search internals (e.g. the fake engine's _fake_*), stripped before training
            if key in RESERVED_KEYS:
                raise SpaceError(src, f"{section}.{key}", keys[key],
                                 "set by the sweep (study from 'study', label from 'configurations')")
            if key not in known:
                raise SpaceError(src, f"{section}.{key}", keys[key],
                                 f"unknown config key; allowed: {', '.join(sorted(known - RESERVED_KEYS))}")
    for key, value in space.fixed.items():
        _check_value(src, key, value)
    for key, dom in space.params.items():
        if key in space.fixed:
            raise SpaceError(src, f"params.{key}", dom.kind, "also set in fixed; set it in one place")
        if key in SWEEP_KEYS:
            raise SpaceError(src, f"params.{key}", dom.kind, SWEEP_KEYS[key])
        _check_domain(src, key, dom)
    for label, cfg in space.configurations.items():
        if not isinstance(label, str) or not label.strip():
            raise SpaceError(src, "configurations", label, "labels must be non-empty strings")
        if not isinstance(cfg, Mapping) or not cfg:
            raise SpaceError(src, f"configurations.{label}", cfg, "a non-empty mapping of config keys to values")
        for key, value in cfg.items():
            if key in space.params:
                raise SpaceError(src, f"configurations.{label}.{key}", value, "also searched in params")
            if key in SWEEP_KEYS:
                raise SpaceError(src, f"configurations.{label}.{key}", value, SWEEP_KEYS[key])
            _check_value(src, key, value)
    if len({frozenset(c) for c in space.configurations.values()}) > 1:
        raise SpaceError(src, "configurations", list(space.configurations),
                         "every configuration must set the same keys")
    if EPOCHS_KEY not in space.fixed:
        raise SpaceError(src, "fixed.epochs", None, "the sweep needs the number of epochs in fixed (max budget)")
    _check_value(src, EPOCHS_KEY, space.fixed[EPOCHS_KEY])
    if space.metric not in WATCHABLE_METRICS:
        raise SpaceError(src, "metric", space.metric, f"allowed: {', '.join(WATCHABLE_METRICS)}")
    if space.mode not in ("min", "max"):
        raise SpaceError(src, "mode", space.mode, "allowed: min, max")
    for name in ("samples", "repeats", "max_concurrent", "checkpoints_to_keep"):
        v = getattr(space, name)
        if not _is_int(v) or v < 1:
            raise SpaceError(src, name, v, "must be an integer >= 1")
    if not _is_int(space.max_failures) or space.max_failures < 0:
        raise SpaceError(src, "max_failures", space.max_failures, "must be an integer >= 0")
    if not _is_int(space.seed) or space.seed < 0:
        raise SpaceError(src, "seed", space.seed, "must be an integer >= 0")
    if not isinstance(space.delete_stopped_checkpoints, bool):
        raise SpaceError(src, "delete_stopped_checkpoints", space.delete_stopped_checkpoints, "true or false")
    if not _is_number(space.cpus) or space.cpus <= 0:
        raise SpaceError(src, "resources.cpus", space.cpus, "must be a number > 0")
    if not _is_number(space.gpus) or space.gpus < 0 or (space.gpus > 1 and not float(space.gpus).is_integer()):
        raise SpaceError(src, "resources.gpus", space.gpus,
                         "must be 0, a fraction in (0, 1] (trials share a GPU) or a whole number of GPUs")
    _validate_scheduler(space)
    _validate_searcher(space)
    _validate_parent(space)
    check_with_run_config(space)


def _validate_parent(space: SearchSpace) -> None:
    src, parent = space.source, space.parent
    if parent is None:
        return
    known = known_config_keys()
    for key, value in parent.items():
        where = f"parent.{key}"
        if key in RESERVED_KEYS or key not in known:
            allowed = ", ".join(sorted(known - RESERVED_KEYS))
            raise SpaceError(src, where, value, f"unknown config key; allowed: {allowed} (and resources)")
        if key in space.params:
            raise SpaceError(src, where, value, f"{key} is searched in params; a parent is shared by the trials, so "
                             f"it cannot set a searched key")
        if key in PARENT_MATCH_KEYS:
            raise SpaceError(src, where, value, f"taken from each trial: a parent matches its trials in "
                             f"{', '.join(PARENT_MATCH_KEYS)}")
        try:
            _check_value(src, key, value)
        except SpaceError as exc:
            raise SpaceError(src, where, value, exc.allowed) from None
    if INIT_FROM_KEY in space.fixed or any(INIT_FROM_KEY in c for c in space.configurations.values()):
        raise SpaceError(src, f"fixed.{INIT_FROM_KEY}", space.fixed.get(INIT_FROM_KEY),
                         "the trials start from the parent; set init_from in 'parent' to warm-start the parent")
    for key in PARENT_MATCH_KEYS:
        dom = space.params.get(key)
        if dom is not None and not (dom.is_grid() or (space.searcher == "grid" and isinstance(dom, Choice))):
            raise SpaceError(src, f"params.{key}.type", dom.kind,
                             f"one parent is trained per value of {key}: make it fixed, a grid, a choice under "
                             f"searcher grid, or set it in configurations")
    for k, v in space.parent_resources.items():
        if k not in RESOURCE_KEYS or not _is_number(v) or v < 0 or (k == "cpus" and v <= 0):
            raise SpaceError(src, f"parent.resources.{k}", v,
                             f"allowed: {', '.join(sorted(RESOURCE_KEYS))}, numbers (cpus > 0, gpus >= 0)")


def parent_configs(space: SearchSpace) -> dict[str, dict[str, Any]]:
    """One flat parent config per distinct parent key of the sweep's trials: the parent section over the
    defaults, with the trial's match keys and the sweep's data and machine keys (PARENT_INHERITED_KEYS; seed:
    the parent section's or the sweep's first)."""
    if space.parent is None:
        return {}
    base = {k: space.fixed[k] for k in PARENT_INHERITED_KEYS if k in space.fixed}
    out: dict[str, dict[str, Any]] = {}
    for cfg in trial_configs(space):
        key = parent_key(cfg)
        if key not in out:
            match = {k: cfg[k] for k in PARENT_MATCH_KEYS if k in cfg}
            out[key] = {**base, **match, SEED_KEY: space.seed, **space.parent, "study": PARENT_STUDY,
                        "label": PARENT_LABEL}
    return out


def check_with_run_config(space: SearchSpace) -> None:
    """Build the validation configs (validation_configs) and the parents with RunConfig.from_dict, so a value
    the engine would refuse fails here, naming the file, before any trial starts."""
    for cfg in validation_configs(space):
        try:
            RunConfig.from_dict(training_config(cfg))
        except ValueError as exc:
            raise SpaceError(space.source, f"trial config (label {cfg.get('label')!r})",
                             {k: v for k, v in cfg.items() if k in space.params or k == LAMBDA_KEY},
                             f"rejected by RunConfig: {exc} (every domain is tried at both bounds and at "
                             f"{VALIDATION_DRAWS} random draws)") from None
    for key, cfg in parent_configs(space).items():
        try:
            RunConfig.from_dict(cfg)
        except ValueError as exc:
            raise SpaceError(space.source, "parent", f"the parent for {PARENT_MATCH_KEYS} = {key}",
                             f"rejected by RunConfig: {exc}") from None


def _validate_scheduler(space: SearchSpace) -> None:
    src, opts = space.source, space.scheduler_options
    if space.scheduler not in SCHEDULER_NAMES:
        raise SpaceError(src, "scheduler", space.scheduler, f"allowed: {', '.join(SCHEDULER_NAMES)}")
    for k in opts:
        if k not in SCHEDULER_OPTIONS[space.scheduler]:
            allowed = ", ".join(sorted(SCHEDULER_OPTIONS[space.scheduler])) or "none"
            raise SpaceError(src, f"scheduler.{k}", opts[k],
                             f"unknown option for {space.scheduler}; allowed: {allowed}")
    opts = scheduler_options(space.scheduler, opts)  # the declared defaults filled in
    if space.scheduler == "asha":
        gp = opts["grace_period"]
        if not _is_int(gp) or not 1 <= gp <= space.max_epochs:
            raise SpaceError(src, "scheduler.grace_period", gp, f"an integer in [1, epochs = {space.max_epochs}]")
        rf = opts["reduction_factor"]
        if not _is_number(rf) or rf <= 1:
            raise SpaceError(src, "scheduler.reduction_factor", rf, "a number > 1")
        gb = opts["group_by"]
        if not isinstance(gb, list) or not all(isinstance(k, str) for k in gb):
            raise SpaceError(src, "scheduler.group_by", gb, "a list of config keys")
        if LAMBDA_KEY not in gb:
            raise SpaceError(src, "scheduler.group_by", gb,
                             f"must contain {LAMBDA_KEY}: losses at different lambda are not comparable")
    if space.metric == metrics.EVAL_ACTUAL_BPP and space.fixed.get("codec_interval", 1) == 0:
        raise SpaceError(src, "fixed.codec_interval", 0, f"{space.metric} is only reported when the codec runs")
    if space.scheduler in ("asha", "pbt") and space.fixed.get("eval_interval", 1) != 1 and \
            space.metric.startswith("eval/"):
        raise SpaceError(src, "fixed.eval_interval", space.fixed.get("eval_interval"),
                         f"{space.scheduler} watches {space.metric} every epoch: eval_interval must be 1")
    if space.scheduler == "pbt":
        if len(space.lambdas()) > 1:
            raise SpaceError(src, "scheduler", "pbt", f"PBT copies weights between trials, so it needs one "
                             f"lambda; this space has {len(space.lambdas())}: run one sweep per lambda")
        if space.searcher == "optuna":
            raise SpaceError(src, "searcher", "optuna", "pbt mutates configs itself: use searcher random or grid")
        pi = opts["perturbation_interval"]
        if not _is_int(pi) or pi < 1:
            raise SpaceError(src, "scheduler.perturbation_interval", pi, "an integer >= 1 (epochs)")
        qf = opts["quantile_fraction"]
        if not _is_number(qf) or not 0 < qf <= 0.5:
            raise SpaceError(src, "scheduler.quantile_fraction", qf, "a number in (0, 0.5]")
        rp = opts["resample_probability"]
        if not _is_number(rp) or not 0 <= rp <= 1:
            raise SpaceError(src, "scheduler.resample_probability", rp, "a number in [0, 1]")


def _validate_searcher(space: SearchSpace) -> None:
    src, opts = space.source, space.searcher_options
    if space.searcher not in SEARCHER_NAMES:
        raise SpaceError(src, "searcher", space.searcher, f"allowed: {', '.join(SEARCHER_NAMES)}")
    for k in opts:
        if k not in SEARCHER_OPTIONS[space.searcher]:
            allowed = ", ".join(sorted(SEARCHER_OPTIONS[space.searcher])) or "none"
            raise SpaceError(src, f"searcher.{k}", opts[k], f"unknown option for {space.searcher}; allowed: {allowed}")
    opts = searcher_options(space.searcher, opts)  # the declared defaults filled in
    if space.searcher == "optuna":
        sampler = opts["sampler"]
        if sampler not in OPTUNA_SAMPLERS:
            raise SpaceError(src, "searcher.sampler", sampler, f"allowed: {', '.join(OPTUNA_SAMPLERS)}")
        ns = opts["n_startup_trials"]
        if not _is_int(ns) or ns < 1:
            raise SpaceError(src, "searcher.n_startup_trials", ns, "an integer >= 1")
        for key, dom in space.params.items():
            if dom.is_grid():
                raise SpaceError(src, f"params.{key}.type", "grid",
                                 "searcher optuna samples one study and cannot run a grid axis; use searcher "
                                 "random/grid, or choice (and beware: ASHA groups by lambda, TPE does not)")
        if space.configurations:
            raise SpaceError(src, "configurations", list(space.configurations),
                             "named configurations are a grid: use searcher grid or random")
        if space.repeats != 1:
            raise SpaceError(src, "repeats", space.repeats, "searcher optuna runs one seed per trial; repeats "
                             "needs searcher grid or random")
    if space.searcher == "grid":
        for key, dom in space.params.items():
            if dom.is_random() and not isinstance(dom, Choice):
                raise SpaceError(src, f"params.{key}.type", dom.kind,
                                 "searcher grid enumerates values: use grid, choice or fixed (or searcher random)")


def _mapping(source: str, key: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpaceError(source, key, value, "must be a mapping")
    return dict(value)


def _named(source: str, key: str, value: Any, names: tuple[str, ...]) -> tuple[str, dict]:
    """'asha' or {name: asha, option: ...}."""
    if isinstance(value, str):
        return value, {}
    m = _mapping(source, key, value)
    if "name" not in m:
        raise SpaceError(source, key, value, f"a name ({', '.join(names)}) or a mapping with 'name'")
    name = m.pop("name")
    return name, m


def parse_space(data: Any, source: str = "<string>") -> SearchSpace:
    """Build a SearchSpace from parsed YAML content (a mapping)."""
    if not isinstance(data, Mapping):
        raise SpaceError(source, "<file>", type(data).__name__, "the file must hold a mapping of settings")
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            raise SpaceError(source, str(key), data[key],
                             f"unknown setting; allowed: {', '.join(sorted(TOP_LEVEL_KEYS))}")
    fixed = _mapping(source, "fixed", data.get("fixed"))
    params = {str(k): parse_domain(source, str(k), v)
              for k, v in _mapping(source, "params", data.get("params")).items()}
    # A fixed-type param is just a fixed value.
    for k in [k for k, d in params.items() if isinstance(d, Fixed)]:
        if k in fixed:
            raise SpaceError(source, f"params.{k}", params[k].value, "also set in fixed; set it in one place")
        fixed[k] = params.pop(k).value
    configurations = {str(k): dict(v) if isinstance(v, Mapping) else v
                      for k, v in _mapping(source, "configurations", data.get("configurations")).items()}
    resources = _mapping(source, "resources", data.get("resources"))
    for k in resources:
        if k not in RESOURCE_KEYS:
            raise SpaceError(source, f"resources.{k}", resources[k], f"allowed: {', '.join(sorted(RESOURCE_KEYS))}")
    parent = _mapping(source, "parent", data.get("parent")) if "parent" in data else None
    parent_resources = _mapping(source, "parent.resources", parent.pop("resources", None)) if parent else {}
    scheduler, scheduler_options = _named(source, "scheduler", data.get("scheduler", SPACE_DEFAULTS["scheduler"]),
                                           SCHEDULER_NAMES)
    searcher, searcher_options = _named(source, "searcher", data.get("searcher", SPACE_DEFAULTS["searcher"]),
                                         SEARCHER_NAMES)
    seed = fixed.pop(SEED_KEY, SPACE_DEFAULTS["seed"])
    kwargs: dict[str, Any] = {}
    for name in ("description", "metric", "mode", "samples", "repeats", "max_concurrent", "max_failures",
                 "checkpoints_to_keep", "delete_stopped_checkpoints"):
        if name in data:
            kwargs[name] = data[name]
    return SearchSpace(
        source=source,
        study=data.get("study", Path(source).stem),
        fixed=fixed,
        params=params,
        configurations=configurations,
        cpus=resources.get("cpus", SPACE_DEFAULTS["cpus"]),
        gpus=resources.get("gpus", SPACE_DEFAULTS["gpus"]),
        scheduler=scheduler,
        scheduler_options=scheduler_options,
        searcher=searcher,
        searcher_options=searcher_options,
        seed=seed,
        parent=parent,
        parent_resources=parent_resources,
        raw=_jsonable(dict(data)),
        **kwargs,
    )


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space file (safe YAML: no file can execute code)."""
    path = Path(path)
    if not path.is_file():
        raise SpaceError(str(path), "<file>", str(path), "no such file")
    from hpcm_tune import safe_yaml

    try:
        data = safe_yaml.load(path.read_text(), str(path))
    except yaml.YAMLError as exc:
        raise SpaceError(str(path), "<file>", str(path), f"not valid YAML: {exc}") from None
    except (safe_yaml.YAMLLimitError, UnicodeDecodeError) as exc:
        raise SpaceError(str(path), "<file>", str(path), f"refused: {exc}") from None
    return parse_space(data, source=str(path))


def resolve_space_path(name_or_path: str, root: Path | None = None) -> Path:
    """A path, or the name of a preset in search_spaces/ ('default' -> search_spaces/default.yaml)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    root = root or Path(__file__).resolve().parents[2] / "search_spaces"
    for cand in (root / name_or_path, root / f"{name_or_path}.yaml"):
        if cand.is_file():
            return cand
    presets = sorted(x.stem for x in root.glob("*.yaml")) if root.is_dir() else []
    raise SpaceError(name_or_path, "--space", name_or_path, f"no such file or preset; presets: {', '.join(presets)}")


# Random draws per random domain, besides both bounds, that validation builds with RunConfig before Ray starts.
VALIDATION_DRAWS = 8


def _random_value(dom: Domain, where: str, rng: random.Random | None = None) -> Any:
    """A value of a random domain: at its lower or upper bound (``where``), or drawn with ``rng``."""
    if isinstance(dom, Simplex):
        us = {"low": [1e-9] + [1.0] * (dom.dim - 1), "high": [1.0] * (dom.dim - 1) + [1e-9],
              "middle": [0.5] * dom.dim}.get(where) or [rng.random() for _ in range(dom.dim)]
        return dom.from_uniforms(us)
    if isinstance(dom, RandInt):  # high is excluded (Ray's convention)
        if where == "draw":
            return rng.randrange(dom.low, dom.high)
        return dom.high - 1 if where == "high" else dom.low
    if where in ("low", "high"):
        return getattr(dom, where)
    if isinstance(dom, LogUniform):
        return math.exp(rng.uniform(math.log(dom.low), math.log(dom.high)))
    value = rng.uniform(dom.low, dom.high)
    return round(value / dom.q) * dom.q if isinstance(dom, QUniform) else value


def _configs(space: SearchSpace, random_rows: list[dict[str, Any]], seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    """Flat trial configs: every grid and choice value x ``random_rows`` (values of the random domains) x every
    configuration x ``seeds``."""
    rows: list[dict[str, Any]] = [{}]
    for key, dom in space.params.items():
        if dom.is_grid() or isinstance(dom, Choice):
            rows = [{**r, key: v} for r in rows for v in dom.values()]
    rows = [{**r, **values} for r in rows for values in random_rows]
    labelled = [(label, cfg) for label, cfg in space.configurations.items()] or [(space.study, {})]
    return [{**space.fixed, **cfg, **r, SEED_KEY: seed, "study": space.study, "label": label}
            for label, cfg in labelled for r in rows for seed in seeds]


def _random_domains(space: SearchSpace) -> dict[str, Domain]:
    return {k: d for k, d in space.params.items()
            if not (d.is_grid() or isinstance(d, Choice)) and isinstance(d, Simplex | RandInt | _Interval)}


def trial_configs(space: SearchSpace) -> list[dict[str, Any]]:
    """Representative flat trial configs (one per grid point/configuration/seed; random domains at their lower
    bound, a simplex at equal weights), as --dry-run lists them."""
    random_domains = _random_domains(space)
    middle = {k: _random_value(d, "middle" if isinstance(d, Simplex) else "low") for k, d in random_domains.items()}
    return _configs(space, [middle], space.seeds)


def validation_configs(space: SearchSpace, draws: int = VALIDATION_DRAWS) -> list[dict[str, Any]]:
    """The trial configs validation builds before Ray starts: every grid point and configuration with the random
    domains at both bounds and at ``draws`` random draws (seeded by the space's seed), first seed only."""
    random_domains = _random_domains(space)
    rng = random.Random(space.seed)
    rows = [{k: _random_value(d, where) for k, d in random_domains.items()} for where in ("low", "high")]
    if random_domains:
        rows += [{k: _random_value(d, "draw", rng) for k, d in random_domains.items()} for _ in range(draws)]
    return _configs(space, rows, space.seeds[:1])
