"""Search-space domains: what one searched parameter (a ``params`` entry of a search-space file) is, owned here.

A domain is one class registered in :data:`DOMAINS` under its YAML ``type`` (format: search_spaces/README.md);
the class holds everything about it, so a new domain is one class here (plus its tests):

- its YAML form: ``yaml_fields`` (besides ``type``), ``parse`` (strict, for files: a mistake raises
  :class:`DomainError` naming the key, the value and what is allowed) and ``to_record`` (the form hpcm_tune.json
  records; ``parse(to_record(d)) == d``);
- its role in a sweep (class traits): ``sampled`` (drawn by the searcher), ``grid_axis`` (every value is run),
  ``categorical`` (a list the searcher picks from; an enumerating searcher runs each value), ``constant`` (one
  value: a fixed config key), ``derived`` (the value is computed from draws kept under internal keys), ``log``;
  ``extremes``/``typical``/``draw`` give the values validation builds before Ray starts;
- its samplers: ``to_ray`` (Ray Tune param_space entries; ray.tune imported inside), ``to_optuna`` (the
  distributions Optuna's define-by-run search asks for; optuna imported inside) and ``from_suggested``;
- its reading by the analysis: ``from_record`` (the recorded form of any version, leniently), ``components``,
  ``component_values``, ``describe`` and ``importance_distribution`` (Optuna's, for parameter importances).

Plain Python (no Ray, torch or Optuna at import): the sweep (hpcm_tune.sweep) and the analysis, which may not
import the sweep (tests/analysis/test_layering.py), both read it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from hpcm_tune.experiment import INTERNAL_PREFIX


def is_number(v: Any) -> bool:
    """A finite real number, not a bool (YAML's true/false are not numbers here)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def is_int(v: Any) -> bool:
    """An integer, not a bool."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    # The analysis' test of a recorded value (hpcm_tune.analysis.results.finite): Python numbers only.
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def category(value: Any) -> str | int | float | bool | None:
    """A categorical value as Optuna accepts it (None, bool, int, float, str): lists and mappings as JSON."""
    import json

    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value if not isinstance(value, tuple) else list(value), default=str)


class DomainError(ValueError):
    """A ``params`` entry is invalid: ``key`` (e.g. ``params.lr.low``), ``value`` and ``allowed`` (in words).
    The sweep adds the file's name (hpcm_tune.sweep.space.SpaceError)."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        from hpcm_tune.safe_yaml import excerpt

        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key} = {excerpt(value)}: {allowed}")


# type -> class, in the order error messages list them.
DOMAINS: dict[str, type[Domain]] = {}


def register(cls: type[Domain]) -> type[Domain]:
    """Class decorator: the domain becomes the YAML ``type`` ``cls.kind``."""
    if not cls.kind or cls.kind in DOMAINS:
        raise ValueError(f"domain type {cls.kind!r} is empty or already registered")
    DOMAINS[cls.kind] = cls
    return cls


def parse(where: str, spec: Any) -> Domain:
    """A ``params`` entry (``where``: its key, e.g. ``params.lr``): a mapping with ``type`` and that type's
    fields, or a bare value (fixed). Raises DomainError naming the key, the value and what is allowed."""
    if not isinstance(spec, Mapping):
        return Fixed(spec)
    kind = spec.get("type")
    cls = DOMAINS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DomainError(f"{where}.type", kind, f"allowed: {', '.join(DOMAINS)}")
    extra = set(spec) - cls.yaml_fields - {"type"}
    if extra:
        raise DomainError(where, sorted(extra)[0],
                          f"unknown field for type {kind}; allowed: {', '.join(sorted(cls.yaml_fields))}")
    return cls.parse(where, spec)


def words(items: Sequence[str], last: str = "or") -> str:
    """'a', 'a or b', 'a, b or c' (for messages listing what is allowed)."""
    items = list(items)
    return f"{', '.join(items[:-1])} {last} {items[-1]}" if len(items) > 1 else "".join(items)


def _num(where: str, spec: Mapping, name: str, integer: bool = False) -> Any:
    if name not in spec:
        raise DomainError(where, dict(spec), f"missing '{name}'")
    v = spec[name]
    if not (is_int(v) if integer else is_number(v)):
        raise DomainError(f"{where}.{name}", v, "must be an integer" if integer else "must be a finite number")
    return v


def _widened(low: float, high: float, observed: list) -> tuple[float, float]:
    """(low, high) widened to the finite observed values."""
    values = [float(v) for v in observed if _finite(v)]
    return min([low, *values]), max([high, *values])


def _float_distribution(low: float, high: float, observed: list, log: bool) -> Any:
    from optuna.distributions import FloatDistribution

    low, high = _widened(low, high, observed)
    if high <= low:
        high = low + abs(low) * 1e-9 + 1e-12
    return FloatDistribution(low, high, log=log and low > 0)


@dataclass(frozen=True)
class Domain:
    """One searched parameter. Subclasses set the class traits and implement what their role needs: a sampled
    domain ``to_ray``, ``to_optuna``, the validation values and the analysis methods."""

    kind: ClassVar[str] = ""  # the YAML type
    yaml_fields: ClassVar[frozenset[str]] = frozenset()  # besides 'type'
    sampled: ClassVar[bool] = True  # drawn by the searcher (not fixed, not a grid axis)
    grid_axis: ClassVar[bool] = False  # every value is run, whatever the searcher
    categorical: ClassVar[bool] = False  # a list of values the searcher picks from (an enumerating one runs each)
    constant: ClassVar[bool] = False  # one value: the same as a fixed config key
    derived: ClassVar[bool] = False  # its value is computed from draws under other (internal) keys
    log: ClassVar[bool] = False  # uniform in log (figures and importances use log axes)

    # -- YAML ----------------------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, where: str, spec: Mapping) -> Domain:
        """The domain of a mapping whose fields :func:`parse` has checked are ``yaml_fields``."""
        raise NotImplementedError(cls.kind)

    def to_record(self) -> dict[str, Any]:
        """The YAML form, as hpcm_tune.json records it: ``type``, then the fields (tuples as lists)."""
        out: dict[str, Any] = {"type": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_record(cls, spec: Mapping) -> Domain:
        """The domain of a recorded form (hpcm_tune.json's ``space.params`` entry); ValueError saying what is
        wrong. By default as strict as a file (a record was a valid file)."""
        try:
            return cls.parse(cls.kind, spec)
        except DomainError as exc:
            raise ValueError(str(exc)) from None

    # -- values --------------------------------------------------------------------------------------------------
    def values(self) -> tuple[Any, ...]:
        """The values of a listed domain (constant, categorical, grid axis); () for the others."""
        return ()

    def bounds(self) -> tuple[float, float] | None:
        """(lowest, highest) value of a numeric scalar domain, checked by the config key's rule."""
        return None

    def vector_length(self) -> int | None:
        """The number of components of a vector value (its YAML field ``dim``); None for a scalar."""
        return None

    def extremes(self) -> tuple[Any, Any]:
        """Two values at the ends of a sampled domain, which validation builds whole trial configs with."""
        raise NotImplementedError(self.kind)

    def typical(self) -> Any:
        """One value of a sampled domain, for the configs --dry-run lists."""
        return self.extremes()[0]

    def draw(self, rng: random.Random) -> Any:
        """A random value (validation's draws before Ray starts)."""
        raise NotImplementedError(self.kind)

    # -- samplers ------------------------------------------------------------------------------------------------
    def to_ray(self, key: str, enumerate_choices: bool = False) -> dict[str, Any]:
        """Ray Tune param_space entries for parameter ``key`` (``enumerate_choices``: the searcher runs every
        value of a categorical domain)."""
        raise ValueError(f"no Ray domain for {self.kind!r}")

    def to_optuna(self, key: str) -> dict[str, Any]:
        """name -> Optuna distribution of what a define-by-run search asks for parameter ``key``."""
        raise ValueError(f"optuna cannot search {key!r} of type {self.kind!r}")

    def from_suggested(self, key: str, suggested: Mapping[str, Any]) -> Any:
        """The value of ``key`` from the values Optuna suggested for :meth:`to_optuna`'s names."""
        return suggested[key]

    # -- analysis (the recorded space) ---------------------------------------------------------------------------
    def components(self, name: str) -> tuple[str, ...]:
        """The names importances and figures use: a vector as its components ``name[i]``, else ``name``."""
        n = self.vector_length()
        return (name,) if n is None else tuple(f"{name}[{i}]" for i in range(n))

    def component_values(self, value: Any) -> tuple | None:
        """The values of :meth:`components` in a trial's config value (not None); None when malformed."""
        return (float(value),) if _finite(value) else None

    def describe(self, name: str) -> str:
        """The domain in words (Markdown), for the report."""
        low, high = self.bounds() or (math.nan, math.nan)
        return f"`{name}` {self.kind} [{low:g}, {high:g}]"

    def importance_distribution(self, index: int, observed: list) -> Any:
        """The Optuna distribution of component ``index`` for parameter importances: the domain's, widened to
        the ``observed`` values (a value rounded past a bound, a value the space no longer has)."""
        low, high = self.bounds()
        return _float_distribution(low, high, observed, self.log)


@register
@dataclass(frozen=True)
class Fixed(Domain):
    """One value (a bare value in ``params`` means this too); the space moves it to ``fixed``."""

    value: Any
    kind: ClassVar[str] = "fixed"
    yaml_fields: ClassVar[frozenset[str]] = frozenset({"value"})
    sampled: ClassVar[bool] = False
    constant: ClassVar[bool] = True

    @classmethod
    def parse(cls, where: str, spec: Mapping) -> Fixed:
        if "value" not in spec:
            raise DomainError(where, dict(spec), "missing 'value'")
        return cls(spec["value"])

    def values(self) -> tuple[Any, ...]:
        return (self.value,)


@dataclass(frozen=True)
class _Interval(Domain):
    """A numeric domain between low and high (both included unless a subclass says otherwise)."""

    low: float
    high: float
    yaml_fields: ClassVar[frozenset[str]] = frozenset({"low", "high"})

    @classmethod
    def _bounds(cls, where: str, spec: Mapping) -> tuple[float, float]:
        low, high = _num(where, spec, "low"), _num(where, spec, "high")
        if not low < high:
            raise DomainError(f"{where}.low", low, f"must be below high ({high})")
        return low, high

    @classmethod
    def parse(cls, where: str, spec: Mapping) -> _Interval:
        low, high = cls._bounds(where, spec)
        return cls(float(low), float(high))

    @classmethod
    def from_record(cls, spec: Mapping) -> _Interval:
        low, high = spec.get("low"), spec.get("high")
        if not (_finite(low) and _finite(high)):
            raise ValueError(f"a {cls.kind} domain needs finite 'low' and 'high'")
        return cls(float(low), float(high))

    def bounds(self) -> tuple[float, float]:
        return (self.low, self.high)

    def extremes(self) -> tuple[Any, Any]:
        return self.bounds()


@register
@dataclass(frozen=True)
class Uniform(_Interval):
    kind: ClassVar[str] = "uniform"

    def draw(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def to_ray(self, key: str, enumerate_choices: bool = False) -> dict[str, Any]:
        from ray import tune

        return {key: tune.uniform(self.low, self.high)}

    def to_optuna(self, key: str) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution

        return {key: FloatDistribution(self.low, self.high)}


@register
@dataclass(frozen=True)
class LogUniform(_Interval):
    kind: ClassVar[str] = "loguniform"
    log: ClassVar[bool] = True

    @classmethod
    def parse(cls, where: str, spec: Mapping) -> LogUniform:
        low, high = cls._bounds(where, spec)
        if low <= 0:
            raise DomainError(f"{where}.low", low, "loguniform needs low > 0")
        return cls(float(low), float(high))

    def draw(self, rng: random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))

    def to_ray(self, key: str, enumerate_choices: bool = False) -> dict[str, Any]:
        from ray import tune

        return {key: tune.loguniform(self.low, self.high)}

    def to_optuna(self, key: str) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution

        return {key: FloatDistribution(self.low, self.high, log=True)}


@register
@dataclass(frozen=True)
class QUniform(_Interval):
    """Uniform floats rounded to multiples of q (so the bounds must be multiples of q)."""

    q: float
    kind: ClassVar[str] = "quniform"
    yaml_fields: ClassVar[frozenset[str]] = frozenset({"low", "high", "q"})

    @classmethod
    def parse(cls, where: str, spec: Mapping) -> QUniform:
        low, high = cls._bounds(where, spec)
        q = _num(where, spec, "q")
        if q <= 0 or q > high - low:
            raise DomainError(f"{where}.q", q, f"must be in (0, high - low = {high - low}]")
        for name, bound in (("low", low), ("high", high)):
            if abs(bound / q - round(bound / q)) > 1e-9:
                raise DomainError(f"{where}.{name}", bound, f"must be a multiple of q = {q} (values are rounded to "
                                  f"multiples of q, so the bounds must be ones)")
        return cls(float(low), float(high), float(q))

    @classmethod
    def from_record(cls, spec: Mapping) -> QUniform:
        low, high, q = spec.get("low"), spec.get("high"), spec.get("q")
        if not (_finite(low) and _finite(high) and _finite(q)):
            raise ValueError(f"a {cls.kind} domain needs finite 'low', 'high' and 'q'")
        return cls(float(low), float(high), float(q))

    def draw(self, rng: random.Random) -> float:
        return round(rng.uniform(self.low, self.high) / self.q) * self.q

    def to_ray(self, key: str, enumerate_choices: bool = False) -> dict[str, Any]:
        from ray import tune

        return {key: tune.quniform(self.low, self.high, self.q)}

    def to_optuna(self, key: str) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution

        return {key: FloatDistribution(self.low, self.high, step=self.q)}


@register
@dataclass(frozen=True)
class RandInt(_Interval):
    """Integers in [low, high) (Ray Tune's convention: high is excluded)."""

    low: int
    high: int
    kind: ClassVar[str] = "randint"

    @classmethod
    def parse(cls, where: str, spec: Mapping) -> RandInt:
        low, high = _num(where, spec, "low", integer=True), _num(where, spec, "high", integer=True)
        if not low < high:
            raise DomainError(f"{where}.low", low, f"must be below high ({high}; high is excluded)")
        return cls(int(low), int(high))

    def bounds(self) -> tuple[float, float]:
        return (self.low, self.high - 1)

    def draw(self, rng: random.Random) -> int:
        return rng.randrange(self.low, self.high)

    def to_ray(self, key: str, enumerate_choices: bool = False) -> dict[str, Any]:
        from ray import tune

        return {key: tune.randint(self.low, self.high)}

    def to_optuna(self, key: str) -> dict[str, Any]:
        from optuna.distributions import IntDistribution

        return {key: IntDistribution(self.low, self.high - 1)}  # Optuna's high is included, ours is not

    def describe(self, name: str) -> str:
        return f"`{name}` randint [{self.low:g}, {self.high:g})"

    def importance_distribution(self, index: int, observed: list) -> Any:
        from optuna.distributions import IntDistribution

        low, high = _widened(*self.bounds(), observed)
        return IntDistribution(int(math.floor(low)), int(math.ceil(high)))


def _listed(where: str, spec: Mapping) -> tuple[Any, ...]:
    vals = spec.get("values")
    if not isinstance(vals, list) or not vals:
        raise DomainError(f"{where}.values", vals, "must be a non-empty list")
    if len({repr(v) for v in vals}) != len(vals):
        raise DomainError(f"{where}.values", vals, "values must be distinct")
    return tuple(vals)


@register
@dataclass(frozen=True)
class Choice(Domain):
    """One of the values, drawn by the searcher (an enumerating searcher runs each)."""

    choices: tuple[Any, ...]
    kind: ClassVar[str] = "choice"
    yaml_fields: ClassVar[frozenset[str]] = frozenset({"values"})
    categorical: ClassVar[bool] = True

    @classmethod
    def parse(cls, where: str, spec: Mapping) -> Choice:
        return cls(_listed(where, spec))

    @classmethod
    def from_record(cls, spec: Mapping) -> Choice:
        values = spec.get("values")
        if not isinstance(values, list | tuple) or not values:
            raise ValueError("a choice needs a non-empty list 'values'")
        return cls(tuple(values))

    def to_record(self) -> dict[str, Any]:
        return {"type": self.kind, "values": list(self.choices)}

    def values(self) -> tuple[Any, ...]:
        return self.choices

    def to_ray(self, key: str, enumerate_choices: bool = False) -> dict[str, Any]:
        from ray import tune

        return {key: tune.grid_search(list(self.choices)) if enumerate_choices else tune.choice(list(self.choices))}

    def to_optuna(self, key: str) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution

        return {key: CategoricalDistribution(list(self.choices))}

    def component_values(self, value: Any) -> tuple:
        return (category(value),)

    def describe(self, name: str) -> str:
        return f"`{name}` choice of {', '.join(str(category(v)) for v in self.choices)}"

    def importance_distribution(self, index: int, observed: list) -> Any:
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(list(dict.fromkeys([*(category(v) for v in self.choices), *observed])))


@register
@dataclass(frozen=True)
class Grid(Domain):
    """Every value is run (a grid axis); with lmbda, the lambda grid the BD-rate needs."""

    grid: tuple[Any, ...]
    kind: ClassVar[str] = "grid"
    yaml_fields: ClassVar[frozenset[str]] = frozenset({"values"})
    sampled: ClassVar[bool] = False
    grid_axis: ClassVar[bool] = True

    @classmethod
    def parse(cls, where: str, spec: Mapping) -> Grid:
        return cls(_listed(where, spec))

    def to_record(self) -> dict[str, Any]:
        return {"type": self.kind, "values": list(self.grid)}

    def values(self) -> tuple[Any, ...]:
        return self.grid

    def to_ray(self, key: str, enumerate_choices: bool = False) -> dict[str, Any]:
        from ray import tune

        return {key: tune.grid_search(list(self.grid))}


class SimplexFromDraws:
    """Ray ``sample_from`` body: the simplex weights from the trial's raw uniform draws (Ray resolves those
    first: reading an unresolved key raises, and Ray retries after resolving it)."""

    def __init__(self, dom: Simplex, keys: tuple[str, ...]) -> None:
        self.dom, self.keys = dom, keys

    def __call__(self, config: Any) -> list[float]:
        return self.dom.from_uniforms([config[k] for k in self.keys])


@register
@dataclass(frozen=True)
class Simplex(Domain):
    """``dim`` non-negative weights summing to 1, each at least ``min``: w = min + (1 - dim*min) * d with d
    uniform on the simplex (Dirichlet(1), drawn as normalised -log(u) of ``dim`` uniforms u, which the trial's
    config keeps as ``_simplex_<key>_<i>``)."""

    dim: int
    min: float = 0.0
    kind: ClassVar[str] = "simplex"
    yaml_fields: ClassVar[frozenset[str]] = frozenset({"dim", "min"})
    derived: ClassVar[bool] = True

    @classmethod
    def parse(cls, where: str, spec: Mapping) -> Simplex:
        dim = _num(where, spec, "dim", integer=True)
        if dim < 2:
            raise DomainError(f"{where}.dim", dim, "a simplex needs at least 2 weights")
        lo = spec.get("min", 0.0)
        if not is_number(lo) or lo < 0 or dim * lo >= 1.0:
            raise DomainError(f"{where}.min", lo, f"must be >= 0 with dim*min < 1 so {dim} weights >= min can sum to 1")
        return cls(int(dim), float(lo))

    @classmethod
    def from_record(cls, spec: Mapping) -> Simplex:
        dim = spec.get("dim")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError("a simplex needs an integer 'dim' >= 1")
        return cls(dim, float(spec.get("min") or 0.0))

    def raw_keys(self, name: str) -> tuple[str, ...]:
        """Names of the uniform draws behind the weights (search internals, prefixed by '_')."""
        return tuple(f"{INTERNAL_PREFIX}simplex_{name}_{i}" for i in range(self.dim))

    def from_uniforms(self, us: list[float]) -> list[float]:
        # u is in (0, 1]; clip away 0 so -log stays finite.
        e = [-math.log(min(max(float(u), 1e-12), 1.0)) + 1e-12 for u in us]
        total = sum(e)
        free = 1.0 - self.dim * self.min
        return [round(self.min + free * v / total, 6) for v in e]

    def vector_length(self) -> int:
        return self.dim

    def extremes(self) -> tuple[Any, Any]:
        # All weight on the first, then on the last component.
        return (self.from_uniforms([1e-9] + [1.0] * (self.dim - 1)),
                self.from_uniforms([1.0] * (self.dim - 1) + [1e-9]))

    def typical(self) -> list[float]:
        return self.from_uniforms([0.5] * self.dim)  # equal weights

    def draw(self, rng: random.Random) -> list[float]:
        return self.from_uniforms([rng.random() for _ in range(self.dim)])

    def to_ray(self, key: str, enumerate_choices: bool = False) -> dict[str, Any]:
        from ray import tune

        raw = self.raw_keys(key)
        return {**{k: tune.uniform(0.0, 1.0) for k in raw}, key: tune.sample_from(SimplexFromDraws(self, raw))}

    def to_optuna(self, key: str) -> dict[str, Any]:
        from optuna.distributions import FloatDistribution

        return {k: FloatDistribution(0.0, 1.0) for k in self.raw_keys(key)}

    def from_suggested(self, key: str, suggested: Mapping[str, Any]) -> list[float]:
        return self.from_uniforms([suggested[k] for k in self.raw_keys(key)])

    def component_values(self, value: Any) -> tuple | None:
        if not isinstance(value, list | tuple) or len(value) != self.dim or not all(_finite(v) for v in value):
            return None
        return tuple(float(v) for v in value)

    def describe(self, name: str) -> str:
        return f"`{name}` simplex of {self.dim} weights ≥ {self.min:g} (as its {self.dim} components)"

    def importance_distribution(self, index: int, observed: list) -> Any:
        return _float_distribution(self.min, 1.0 - (self.dim - 1) * self.min, observed, False)
