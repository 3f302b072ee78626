"""Search-space files: parsing and validation, before Ray starts.

A search space is a YAML file (format: ``search_spaces/README.md``) with the fixed config keys, the searched
parameters (one domain each: fixed, uniform, loguniform, quniform, randint, choice, grid, simplex), optional named
configurations (the ablation studies of docs/design.md §7, e.g. "s2 emphasis"), and the sweep settings: metric,
mode, scheduler, searcher, samples, repeats (seeds), resources. Every mistake is reported as a
``SpaceError`` naming the file, the key and the value, so a typo never costs a cluster start.

This module is plain Python (no Ray). Each domain (its YAML fields, parsing, recorded form, Ray and Optuna forms)
is owned by hpcm_tune.domains; each scheduler's and searcher's options and traits by hpcm_tune.sweep_settings: the
checks here read those traits and never name a domain, scheduler or searcher.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpcm_tune import domains, metrics
from hpcm_tune.config import FLAT_KEYS, ConfigError, RunConfig, check_value

# The domain classes are imported here too because pickles of older experiments (Tune's param_space, the Optuna
# searcher's define-by-run space) name them here.
from hpcm_tune.domains import (  # noqa: F401
    Choice,
    Domain,
    DomainError,
    Fixed,
    Grid,
    LogUniform,
    QUniform,
    RandInt,
    Simplex,
    Uniform,
    is_int,
    is_number,
    words,
)
from hpcm_tune.experiment import (  # the experiment directory contract (trial config keys, training_config)
    INIT_FROM_KEY,
    LAMBDA_KEY,
    PARENT_MATCH_KEYS,
    is_internal,
    parent_key,
    training_config,
)
from hpcm_tune.sweep_settings import (  # schedulers, searchers, their options, defaults and traits: declared once
    SCHEDULER_SPECS,
    SEARCHER_SPECS,
    SPACE_DEFAULTS,
    SchedulerSpec,
    SearcherSpec,
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


def parse_domain(source: str, key: str, spec: Any) -> Domain:
    """A ``params`` entry (hpcm_tune.domains.parse: a mapping with ``type``, or a bare value meaning fixed); a
    mistake is a SpaceError naming the file, the key and the value."""
    try:
        return domains.parse(f"params.{key}", spec)
    except DomainError as exc:
        raise SpaceError(source, exc.key, exc.value, exc.allowed) from None


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

    @property
    def scheduler_spec(self) -> SchedulerSpec:
        """The scheduler's declaration (hpcm_tune.sweep_settings): its traits."""
        return SCHEDULER_SPECS[self.scheduler]

    @property
    def searcher_spec(self) -> SearcherSpec:
        """The searcher's declaration (hpcm_tune.sweep_settings): its traits."""
        return SEARCHER_SPECS[self.searcher]

    def runs_every_value(self, dom: Domain) -> bool:
        """Whether every value of ``dom`` is run: a grid axis, or a choice under a searcher that enumerates it."""
        return dom.grid_axis or (dom.categorical and self.searcher_spec.enumerates)

    def grid_size(self) -> int:
        """Trials per sample: product of grid axes, configurations and seeds."""
        n = max(1, len(self.configurations)) * self.repeats
        for d in self.params.values():
            if self.runs_every_value(d):
                n *= len(d.values())
        return n

    def total_trials(self) -> int:
        return self.samples if self.searcher_spec.samples_are_trials else self.grid_size() * self.samples

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
        out["params"] = {k: d.to_record() for k, d in self.params.items()}
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
    length = dom.vector_length()
    if length is not None:  # a vector (simplex): its draws are checked whole, in check_with_run_config
        if key == "scale_weights" and length != len(metrics.SCALES):
            raise SpaceError(source, f"params.{key}.dim", length, f"scale_weights has {len(metrics.SCALES)} weights")
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
            if section != "params" and is_internal(key):
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
        if not is_int(v) or v < 1:
            raise SpaceError(src, name, v, "must be an integer >= 1")
    if not is_int(space.max_failures) or space.max_failures < 0:
        raise SpaceError(src, "max_failures", space.max_failures, "must be an integer >= 0")
    if not is_int(space.seed) or space.seed < 0:
        raise SpaceError(src, "seed", space.seed, "must be an integer >= 0")
    if not isinstance(space.delete_stopped_checkpoints, bool):
        raise SpaceError(src, "delete_stopped_checkpoints", space.delete_stopped_checkpoints, "true or false")
    if not is_number(space.cpus) or space.cpus <= 0:
        raise SpaceError(src, "resources.cpus", space.cpus, "must be a number > 0")
    if not is_number(space.gpus) or space.gpus < 0 or (space.gpus > 1 and not float(space.gpus).is_integer()):
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
        if dom is not None and not space.runs_every_value(dom):
            enumerating = words([n for n, s in SEARCHER_SPECS.items() if s.enumerates])
            raise SpaceError(src, f"params.{key}.type", dom.kind,
                             f"one parent is trained per value of {key}: make it fixed, a grid, a choice under "
                             f"searcher {enumerating}, or set it in configurations")
    for k, v in space.parent_resources.items():
        if k not in RESOURCE_KEYS or not is_number(v) or v < 0 or (k == "cpus" and v <= 0):
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


def _check_options(source: str, section: str, name: str, options: Mapping[str, Any], declared: Mapping,
                   epochs: int) -> None:
    """A scheduler's or searcher's options: each declared (hpcm_tune.sweep_settings), each value by its rule."""
    for k in options:
        if k not in declared:
            allowed = ", ".join(sorted(declared)) or "none"
            raise SpaceError(source, f"{section}.{k}", options[k], f"unknown option for {name}; allowed: {allowed}")
    for k, option in declared.items():
        value = options.get(k, option.default)
        problem = option.problem(value, epochs)
        if problem:
            raise SpaceError(source, f"{section}.{k}", value, problem)


def _validate_scheduler(space: SearchSpace) -> None:
    src = space.source
    if not isinstance(space.scheduler, str) or space.scheduler not in SCHEDULER_SPECS:
        raise SpaceError(src, "scheduler", space.scheduler, f"allowed: {', '.join(SCHEDULER_SPECS)}")
    spec = SCHEDULER_SPECS[space.scheduler]
    _check_options(src, "scheduler", space.scheduler, space.scheduler_options, spec.options, space.max_epochs)
    if space.metric == metrics.EVAL_ACTUAL_BPP and space.fixed.get("codec_interval", 1) == 0:
        raise SpaceError(src, "fixed.codec_interval", 0, f"{space.metric} is only reported when the codec runs")
    if spec.judges_every_epoch and space.fixed.get("eval_interval", 1) != 1 and space.metric.startswith("eval/"):
        raise SpaceError(src, "fixed.eval_interval", space.fixed.get("eval_interval"),
                         f"{space.scheduler} watches {space.metric} every epoch: eval_interval must be 1")
    if spec.copies_weights and len(space.lambdas()) > 1:
        raise SpaceError(src, "scheduler", space.scheduler,
                         f"{spec.title or space.scheduler} copies weights between trials, so it needs one lambda; "
                         f"this space has {len(space.lambdas())}: run one sweep per lambda")
    searcher = SEARCHER_SPECS.get(space.searcher) if isinstance(space.searcher, str) else None
    if spec.mutates_configs and searcher is not None and searcher.suggests_configs:
        others = words([n for n, s in SEARCHER_SPECS.items() if not s.suggests_configs])
        raise SpaceError(src, "searcher", space.searcher,
                         f"{space.scheduler} mutates configs itself: use searcher {others}")


def _validate_searcher(space: SearchSpace) -> None:
    src, name = space.source, space.searcher
    if not isinstance(name, str) or name not in SEARCHER_SPECS:
        raise SpaceError(src, "searcher", name, f"allowed: {', '.join(SEARCHER_SPECS)}")
    spec = space.searcher_spec
    _check_options(src, "searcher", name, space.searcher_options, spec.options, space.max_epochs)
    if spec.samples_are_trials:
        multiplying = [n for n, s in SEARCHER_SPECS.items() if not s.samples_are_trials]
        for key, dom in space.params.items():
            if dom.grid_axis:
                choices = words([k for k, c in domains.DOMAINS.items() if c.categorical])
                raise SpaceError(src, f"params.{key}.type", dom.kind,
                                 f"searcher {name} samples one study and cannot run a grid axis; use searcher "
                                 f"{'/'.join(multiplying)}, or {choices} (and beware: ASHA groups by lambda, "
                                 f"{name} does not)")
        if space.configurations:
            raise SpaceError(src, "configurations", list(space.configurations),
                             f"named configurations are a grid: use searcher {words(multiplying)}")
        if space.repeats != 1:
            raise SpaceError(src, "repeats", space.repeats, f"searcher {name} runs one seed per trial; repeats "
                             f"needs searcher {words(multiplying)}")
    if spec.enumerates:
        for key, dom in space.params.items():
            if dom.sampled and not dom.categorical:
                listed = words([k for k, c in domains.DOMAINS.items() if c.grid_axis or c.categorical or c.constant])
                drawing = words([n for n, s in SEARCHER_SPECS.items()
                                 if not (s.enumerates or s.samples_are_trials)])
                raise SpaceError(src, f"params.{key}.type", dom.kind,
                                 f"searcher {name} enumerates values: use {listed} (or searcher {drawing})")


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
    for k in [k for k, d in params.items() if d.constant]:
        (value,) = params.pop(k).values()
        if k in fixed:
            raise SpaceError(source, f"params.{k}", value, "also set in fixed; set it in one place")
        fixed[k] = value
    configurations = {str(k): dict(v) if isinstance(v, Mapping) else v
                      for k, v in _mapping(source, "configurations", data.get("configurations")).items()}
    resources = _mapping(source, "resources", data.get("resources"))
    for k in resources:
        if k not in RESOURCE_KEYS:
            raise SpaceError(source, f"resources.{k}", resources[k], f"allowed: {', '.join(sorted(RESOURCE_KEYS))}")
    parent = _mapping(source, "parent", data.get("parent")) if "parent" in data else None
    parent_resources = _mapping(source, "parent.resources", parent.pop("resources", None)) if parent else {}
    scheduler, scheduler_options = _named(source, "scheduler", data.get("scheduler", SPACE_DEFAULTS["scheduler"]),
                                           tuple(SCHEDULER_SPECS))
    searcher, searcher_options = _named(source, "searcher", data.get("searcher", SPACE_DEFAULTS["searcher"]),
                                         tuple(SEARCHER_SPECS))
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


def _configs(space: SearchSpace, random_rows: list[dict[str, Any]], seeds: tuple[int, ...]) -> list[dict[str, Any]]:
    """Flat trial configs: every grid and choice value x ``random_rows`` (values of the random domains) x every
    configuration x ``seeds``."""
    rows: list[dict[str, Any]] = [{}]
    for key, dom in space.params.items():
        if dom.grid_axis or dom.categorical:
            rows = [{**r, key: v} for r in rows for v in dom.values()]
    rows = [{**r, **values} for r in rows for values in random_rows]
    labelled = [(label, cfg) for label, cfg in space.configurations.items()] or [(space.study, {})]
    return [{**space.fixed, **cfg, **r, SEED_KEY: seed, "study": space.study, "label": label}
            for label, cfg in labelled for r in rows for seed in seeds]


def _random_domains(space: SearchSpace) -> dict[str, Domain]:
    """The domains drawn from a range (not a list of values)."""
    return {k: d for k, d in space.params.items() if d.sampled and not d.categorical}


def trial_configs(space: SearchSpace) -> list[dict[str, Any]]:
    """Representative flat trial configs (one per grid point/configuration/seed; random domains at their lower
    bound, a simplex at equal weights), as --dry-run lists them."""
    typical = {k: d.typical() for k, d in _random_domains(space).items()}
    return _configs(space, [typical], space.seeds)


def validation_configs(space: SearchSpace, draws: int = VALIDATION_DRAWS) -> list[dict[str, Any]]:
    """The trial configs validation builds before Ray starts: every grid point and configuration with the random
    domains at both ends and at ``draws`` random draws (seeded by the space's seed), first seed only."""
    random_domains = _random_domains(space)
    rng = random.Random(space.seed)
    rows = [{k: d.extremes()[end] for k, d in random_domains.items()} for end in (0, 1)]
    if random_domains:
        rows += [{k: d.draw(rng) for k, d in random_domains.items()} for _ in range(draws)]
    return _configs(space, rows, space.seeds[:1])
