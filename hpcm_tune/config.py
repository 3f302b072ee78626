"""The configuration of one training run: a frozen dataclass tree built from flat or nested dicts.

Ray passes a trial's config as a flat dict, so the flat keys of docs/architecture.md (the original design's
names kept: gamma_s1, gamma_s2, gamma_s3, w_lr, scale_weights, gamma_strategy, clip_max_norm) are the public
form; ``RunConfig.from_dict`` also accepts the nested form (``{"optimizer": {"lr": 1e-4}, ...}``, field names
of the section dataclasses). Every value is checked at construction: a bad key or value raises ValueError
naming the key, the value and what is allowed, so a typo in a search space fails before any trial starts.

Defaults are the published ones (HPCM, ICCV 2025, official training; Balanced-RD, CVPR 2025; docs/design.md §2-§4):
Adam lr 1e-4 stepped down at epochs 2750/2850/2950 of 3001, clip norm 1.0, w_lr 0.025, gammas
0.008/0.006/0.004, scale weights [0.3, 0.4, 0.3], min loss -1, same-batch re-evaluation, fixed gammas.

This module imports neither torch nor Ray at import time (the sweep validates search spaces with it); names
owned by other modules (presets, objectives, weightings, gamma strategies) are checked against their
registries, imported lazily on the first validation.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from hpcm_tune.registry import Registry
from hpcm_tune.safe_yaml import excerpt
from hpcm_tune.schedules import LR_SCHEDULES, STRATEGIES

# ---------------------------------------------------------------------------------------------------------------
# Names owned by other modules, looked up lazily so this module stays importable without torch.

# The weighting method that goes with each objective when ``weighting`` is not given (docs/architecture.md).
DEFAULT_WEIGHTING: dict[str, str] = {"standard": "standard", "balanced": "famo", "hierarchical": "hierarchical"}


# FAMO's two ways of measuring a step's improvement (hpcm_tune.weighting.famo): the same batch re-evaluated after
# the step (exact FAMO) or the next batch (cheaper, noisier).
UPDATE_MODES: tuple[str, ...] = ("same_batch", "next_batch")

# The one rule for scale_weights (sweeps, hand runs and the weighting alike): three numbers > 0, one per scale
# (s1, s2, s3), that sum to 1 within this tolerance (a simplex draw rounded to 6 decimals, or [0.33, 0.33, 0.34],
# passes; [2, 4, 4] does not). They are kept as given; the hierarchical prior divides by their sum.
SCALE_WEIGHTS_SUM_TOLERANCE = 1e-3


class ConfigError(ValueError):
    """A bad value of one run key: ``key``, ``value`` and ``allowed`` (what the key accepts), for callers that
    word the message themselves (the sweep names the file); ``str()`` is "key: got value; allowed: ..."."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}: got {excerpt(value)}; allowed: {allowed}")


def _registry_names(module: str, attribute: str) -> tuple[str, ...]:
    """The valid names of a registry (or dict) owned by a module that imports torch, imported on first use so
    that this module stays importable without it. A failing import is an error, never "any name"."""
    import importlib

    table = getattr(importlib.import_module(module), attribute)
    return tuple(table.names()) if isinstance(table, Registry) else tuple(table)


def _check_choice(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(key, value, ", ".join(allowed))
    return value


# ---------------------------------------------------------------------------------------------------------------
# Value checks; each names the flat key.


def _number(key: str, value: Any, *, low: float | None = None, low_open: bool = False, high: float | None = None,
            what: str = "") -> float:
    original = value
    if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        with contextlib.suppress(ValueError):
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise ConfigError(key, original, f"a finite number{what}")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(key, original, f"a finite number{what}")
    if high is not None and value > high:
        raise ConfigError(key, original, f"a finite number{what}")
    return value


def _integer(key: str, value: Any, *, low: int, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < low:
        raise ConfigError(key, value, f"an integer >= {low}{what}")
    return int(value)


def _boolean(key: str, value: Any) -> bool:
    if type(value).__module__ == "numpy" and type(value).__name__ in ("bool_", "bool"):
        value = bool(value)  # a searcher may hand numpy booleans
    if not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")
    return value


def _string(key: str, value: Any, *, empty_ok: bool = True) -> str:
    if not isinstance(value, str) or (not empty_ok and not value):
        raise ConfigError(key, value, f"a {'' if empty_ok else 'non-empty '}string")
    return value


def check_scale_weights(value: Any, key: str = "scale_weights") -> tuple[float, float, float]:
    """The scale_weights rule (SCALE_WEIGHTS_SUM_TOLERANCE): the three weights as floats, or ConfigError."""
    allowed = f"three numbers > 0 (s1, s2, s3) summing to 1 (within {SCALE_WEIGHTS_SUM_TOLERANCE:g})"
    if isinstance(value, str | bytes) or not hasattr(value, "__len__") or len(value) != 3:
        raise ConfigError(key, value, allowed)
    try:
        weights = tuple(_number(key, w, low=0.0, low_open=True) for w in value)
    except ValueError:
        raise ConfigError(key, value, allowed) from None
    if abs(sum(weights) - 1.0) > SCALE_WEIGHTS_SUM_TOLERANCE:
        raise ConfigError(key, value, f"{allowed}; these sum to {sum(weights):.6g}")
    return weights  # type: ignore[return-value]


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass's own field in __post_init__


# ---------------------------------------------------------------------------------------------------------------
# The sections. Field metadata "key" is the flat key (when it differs from the field name).


@dataclass(frozen=True)
class ModelConfig:
    """The HPCM preset (hpcm_tune.models.PRESETS: tiny, small, base, large) and an optional warm start.

    ``init_from``: a checkpoint directory, a run directory (``hpcm-train --out``) or a sweep trial directory
    whose newest readable checkpoint gives the model weights before training; the optimizer, the weighting
    and the schedules start fresh. Its preset and architecture must be this run's (hpcm_tune.checkpoint). A run
    resumed from its own checkpoint never reads ``init_from`` again.
    """

    preset: str = "tiny"
    init_from: str | None = None

    def __post_init__(self) -> None:
        _check_choice("preset", self.preset, _registry_names("hpcm_tune.models", "PRESETS"))
        if self.init_from is not None:
            _set(self, "init_from", _string("init_from", self.init_from, empty_ok=False))


@dataclass(frozen=True)
class ObjectiveConfig:
    """L = lambda * D + R and its split into tasks (hpcm_tune.objectives, docs/design.md §3)."""

    name: str = field(default="hierarchical", metadata={"key": "objective"})
    lmbda: float = 0.0067
    decomposition: str = "measured"
    distortion: str = "mse"

    def __post_init__(self) -> None:
        _check_choice("objective", self.name, _registry_names("hpcm_tune.objectives", "OBJECTIVES"))
        _set(self, "lmbda", _number("lmbda", self.lmbda, low=0.0, low_open=True, what=" > 0"))
        _check_choice("decomposition", self.decomposition, _registry_names("hpcm_tune.objectives", "DECOMPOSITIONS"))
        _check_choice("distortion", self.distortion, _registry_names("hpcm_tune.objectives", "DISTORTIONS"))


@dataclass(frozen=True)
class WeightingConfig:
    """The task weighting (FAMO adapted as in Balanced-RD; hierarchical: 5 tasks with scale gammas): the one
    definition of its options and their defaults. ``hpcm_tune.weighting`` methods take this object; each ignores
    the options it has no use for, so one flat run config serves all of them.

    - ``name``: None follows the objective (DEFAULT_WEIGHTING); RunConfig resolves it.
    - ``w_lr``: Adam learning rate of the logits (FAMO, default 0.025).
    - ``gamma_s1``, ``gamma_s2``, ``gamma_s3``: L2 coefficients of the logits per scale (hierarchical).
    - ``gamma``: the single logit L2 coefficient of ``famo`` (the balanced grid of docs/design.md §7); None: the mean
      of the scale gammas.
    - ``scale_weights``: scale importance [s1, s2, s3] for the prior p (check_scale_weights: three numbers > 0
      summing to 1).
    - ``min_loss``: m in log(L_i - m + eps) for every task. -1 (Balanced-RD) keeps lambda's role only while
      lambda*D <~ 1; 0 cancels lambda from the gradient; a large negative value gives the plain loss with an
      adaptive weight (docs/architecture.md, "The effective lambda").
    - ``update_mode``: UPDATE_MODES, same_batch (exact FAMO) or next_batch (cheaper, noisier).
    - ``warmup_epochs``: epochs trained on the plain R-D loss before the weighting weighs and adapts.
    """

    name: str | None = field(default=None, metadata={"key": "weighting"})
    w_lr: float = 0.025
    gamma: float | None = None
    gamma_s1: float = 0.008
    gamma_s2: float = 0.006
    gamma_s3: float = 0.004
    scale_weights: tuple[float, float, float] = (0.3, 0.4, 0.3)
    min_loss: float = -1.0
    update_mode: str = "same_batch"
    warmup_epochs: int = field(default=0, metadata={"key": "weighting_warmup_epochs"})

    def __post_init__(self) -> None:
        if self.name is not None:
            _check_choice("weighting", self.name, _registry_names("hpcm_tune.weighting", "WEIGHTINGS"))
        _set(self, "w_lr", _number("w_lr", self.w_lr, low=0.0, low_open=True, what=" > 0"))
        for key in ("gamma_s1", "gamma_s2", "gamma_s3"):
            _set(self, key, _number(key, getattr(self, key), low=0.0, what=" >= 0"))
        if self.gamma is not None:
            _set(self, "gamma", _number("gamma", self.gamma, low=0.0, what=" >= 0 or null (mean of the scale gammas)"))
        _set(self, "scale_weights", check_scale_weights(self.scale_weights))
        _set(self, "min_loss", _number("min_loss", self.min_loss))
        _check_choice("update_mode", self.update_mode, UPDATE_MODES)
        _set(self, "warmup_epochs", _integer("weighting_warmup_epochs", self.warmup_epochs, low=0,
                                             what=" (epochs on the plain R-D loss before the weighting starts)"))

    @property
    def gammas(self) -> tuple[float, float, float]:
        """The scale gammas (s1, s2, s3)."""
        return (self.gamma_s1, self.gamma_s2, self.gamma_s3)

    @classmethod
    def from_options(cls, **options: Any) -> WeightingConfig:
        """From keyword options named by the fields (``None``: the default); an unknown one raises listing them."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"unknown weighting option(s) {unknown}; allowed: {', '.join(allowed)}")
        return cls(**{k: v for k, v in options.items() if v is not None})


@dataclass(frozen=True)
class ScheduleConfig:
    """The gamma schedule (hpcm_tune.schedules, docs/design.md §4)."""

    gamma_strategy: str = "fixed"

    def __post_init__(self) -> None:
        _check_choice("gamma_strategy", self.gamma_strategy, STRATEGIES.names())


@dataclass(frozen=True)
class OptimizerConfig:
    """The model's optimizer (hpcm_tune.optim.OPTIMIZERS: adam, cautious_adam) with a per-epoch LR schedule and
    one gradient clip per step."""

    name: str = field(default="adam", metadata={"key": "optimizer"})
    lr: float = 1e-4
    lr_schedule: str = "step"
    clip_max_norm: float = 1.0

    def __post_init__(self) -> None:
        _check_choice("optimizer", self.name, _registry_names("hpcm_tune.optim", "OPTIMIZERS"))
        _set(self, "lr", _number("lr", self.lr, low=0.0, low_open=True, what=" > 0"))
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES.names())
        _set(self, "clip_max_norm", _number("clip_max_norm", self.clip_max_norm, low=0.0,
                                            what=" >= 0 (0 turns clipping off)"))

    def lr_at(self, epoch: int, epochs: int) -> float:
        """The learning rate of 0-based ``epoch`` of a run of ``epochs`` epochs."""
        return self.lr * LR_SCHEDULES.get(self.lr_schedule)(epoch, epochs)


@dataclass(frozen=True)
class DataConfig:
    """Training crops and evaluation images (hpcm_tune.data). ``data``: ``samples`` (the embedded photos) or
    the root of a CompressAI ImageFolder (root/train, root/test)."""

    data: str = "samples"
    batch_size: int = 8
    patch_size: int = 256
    num_workers: int = 2
    eval_max_images: int = 0

    def __post_init__(self) -> None:
        _set(self, "data", _string("data", self.data, empty_ok=False))
        _set(self, "batch_size", _integer("batch_size", self.batch_size, low=1))
        _set(self, "patch_size", _integer("patch_size", self.patch_size, low=16))
        if self.patch_size % 16:
            raise ConfigError("patch_size", self.patch_size, "a multiple of 16 (HPCM's stride), >= 16")
        _set(self, "num_workers", _integer("num_workers", self.num_workers, low=0))
        _set(self, "eval_max_images", _integer("eval_max_images", self.eval_max_images, low=0, what=" (0: all)"))


@dataclass(frozen=True)
class RunSection:
    """Length, evaluation cadence, randomness and hardware of the run."""

    epochs: int = 100
    steps_per_epoch: int | None = None
    eval_interval: int = 1
    codec_interval: int = 1
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    compile: bool = False
    channels_last: bool = False
    max_nonfinite: int = 20

    def __post_init__(self) -> None:
        _set(self, "epochs", _integer("epochs", self.epochs, low=1))
        if self.steps_per_epoch is not None:
            _set(self, "steps_per_epoch", _integer("steps_per_epoch", self.steps_per_epoch, low=1,
                                                   what=" or null (one pass over the training images)"))
        _set(self, "eval_interval", _integer("eval_interval", self.eval_interval, low=1))
        _set(self, "codec_interval", _integer("codec_interval", self.codec_interval, low=0,
                                              what=" (evaluations between real-codec runs; 0: never)"))
        _set(self, "seed", _integer("seed", self.seed, low=0))
        device = self.device
        ok = isinstance(device, str) and (
            device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
        )
        if not ok:
            raise ConfigError("device", device, "auto, cpu, cuda, cuda:N")
        for key in ("amp", "compile", "channels_last"):
            _set(self, key, _boolean(key, getattr(self, key)))
        _set(self, "max_nonfinite", _integer("max_nonfinite", self.max_nonfinite, low=1))


@dataclass(frozen=True)
class MetaConfig:
    """Labels for analysis (analyze.py reads them); training ignores them."""

    study: str = ""
    label: str = ""

    def __post_init__(self) -> None:
        _set(self, "study", _string("study", self.study))
        _set(self, "label", _string("label", self.label))


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "objective": ObjectiveConfig,
    "weighting": WeightingConfig,
    "schedule": ScheduleConfig,
    "optimizer": OptimizerConfig,
    "data": DataConfig,
    "run": RunSection,
    "meta": MetaConfig,
}

# The one table of flat keys: flat key -> (section, field).
FLAT_KEYS: dict[str, tuple[str, str]] = {
    f.metadata.get("key", f.name): (section, f.name) for section, cls in SECTIONS.items() for f in fields(cls)
}


@dataclass(frozen=True)
class RunConfig:
    """One training run. Build with ``RunConfig.from_dict(d)``; ``to_dict()`` gives the flat form."""

    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunSection = field(default_factory=RunSection)
    meta: MetaConfig = field(default_factory=MetaConfig)

    def __post_init__(self) -> None:
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ValueError(f"{name}: got {excerpt(getattr(self, name))}; allowed: a {cls.__name__}")
        if self.weighting.name is None:
            _set(self, "weighting", replace(self.weighting, name=DEFAULT_WEIGHTING.get(self.objective.name,
                                                                                     "standard")))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None = None) -> RunConfig:
        """Flat keys (FLAT_KEYS), nested sections (SECTIONS with their field names), or a mix of both."""
        if d is None:
            d = {}
        if not isinstance(d, Mapping):
            raise ValueError(f"config: got {type(d).__name__}; allowed: a mapping of keys to values")
        values: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        origin: dict[tuple[str, str], str] = {}

        def put(section: str, name: str, value: Any, key: str) -> None:
            if (section, name) in origin:
                raise ValueError(f"{key}: given twice (also as {origin[section, name]!r})")
            origin[section, name] = key
            values[section][name] = value

        for key, value in d.items():
            if key in SECTIONS and isinstance(value, Mapping):
                valid = {f.name for f in fields(SECTIONS[key])}
                for name, inner in value.items():
                    if name not in valid:
                        raise ValueError(
                            f"{key}.{name}: unknown key; allowed in section {key!r}: {', '.join(sorted(valid))}"
                        )
                    put(key, name, inner, f"{key}.{name}")
            elif key in FLAT_KEYS:
                section, name = FLAT_KEYS[key]
                put(section, name, value, key)
            else:
                raise ValueError(
                    f"{key}: unknown key (value {excerpt(value)}); allowed: {', '.join(sorted(FLAT_KEYS))} "
                    f"or the sections {', '.join(SECTIONS)}"
                )
        return cls(**{name: SECTIONS[name](**values[name]) for name in SECTIONS})

    def to_dict(self) -> dict[str, Any]:
        """The flat form (what Ray passes and params.json holds); ``from_dict(to_dict())`` is the same config."""
        out: dict[str, Any] = {}
        for key, (section, name) in FLAT_KEYS.items():
            value = getattr(getattr(self, section), name)
            out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def to_nested(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(getattr(self, name)) for name in SECTIONS}

    def with_updates(self, **flat: Any) -> RunConfig:
        """A copy with some flat keys changed (validated like from_dict)."""
        return RunConfig.from_dict({**self.to_dict(), **flat})


def check_value(key: str, value: Any) -> Any:
    """One flat key's value checked by the rule of its section (the same code RunConfig runs), returned
    normalised (e.g. a number given as the string "1e-4" becomes a float, scale_weights a tuple); a bad value
    raises ConfigError, an unknown key ValueError. For checks of one value at a time (the sweep's fixed values
    and domain bounds) before a whole config exists."""
    if key not in FLAT_KEYS:
        raise ValueError(f"{key}: unknown key; allowed: {', '.join(sorted(FLAT_KEYS))}")
    section, name = FLAT_KEYS[key]
    return getattr(SECTIONS[section](**{name: value}), name)


def to_flat(d: Mapping[str, Any]) -> dict[str, Any]:
    """Only the keys ``d`` gives, nested sections turned into flat keys (no defaults added, values unchecked):
    for layering configs (file, then flags, then --set) before ``RunConfig.from_dict`` checks the result."""
    by_field = {place: key for key, place in FLAT_KEYS.items()}
    out: dict[str, Any] = {}
    for key, value in d.items():
        if key in SECTIONS and isinstance(value, Mapping):
            for name, inner in value.items():
                if (key, name) not in by_field:
                    valid = ", ".join(sorted(f.name for f in fields(SECTIONS[key])))
                    raise ValueError(f"{key}.{name}: unknown key; allowed in section {key!r}: {valid}")
                out[by_field[key, name]] = inner
        else:
            out[key] = value
    return out


def flat_defaults() -> dict[str, Any]:
    """Every flat key with its default (weighting unresolved: None follows the objective)."""
    out: dict[str, Any] = {}
    for key, (section, name) in FLAT_KEYS.items():
        f = next(f for f in fields(SECTIONS[section]) if f.name == name)
        out[key] = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
    return out


__all__ = [
    "DEFAULT_WEIGHTING",
    "SCALE_WEIGHTS_SUM_TOLERANCE",
    "UPDATE_MODES",
    "ConfigError",
    "FLAT_KEYS",
    "SECTIONS",
    "DataConfig",
    "MetaConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OptimizerConfig",
    "RunConfig",
    "RunSection",
    "ScheduleConfig",
    "WeightingConfig",
    "check_scale_weights",
    "check_value",
    "flat_defaults",
    "to_flat",
]
