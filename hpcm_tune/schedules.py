"""The per-epoch schedules: gamma multipliers (m_s1, m_s2, m_s3) of the scale gammas (docs/design.md §4) and
learning-rate factors (``LR_SCHEDULES``: step, the official HPCM step-down scaled to the run; cosine; constant).
Plain Python.

Progress p = clamp(epoch / total_epochs, 0, 1), so a schedule written for the original 3000 epochs fits a run of
any length and stays at its end value past it. The weighting multiplies each scale's base gamma by its
multiplier (``Weighting.set_gamma_multipliers``) once per epoch.

- fixed: 1. linear: 1 - 0.5 p. cosine: 0.5 + 0.25 (1 + cos(pi p)).
- adaptive: from the coefficient of variation of each scale's recent losses (``AdaptiveGamma``, stateful).
- hierarchical: four phases ending at 10 %, 50 %, 83.3 %, 100 % of training (300/1500/2500/3000 of the
  original 3000 epochs); continuous; ends at (0.5, 0.5, 1.3).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from hpcm_tune.metrics import SCALES, TASK_SCALE
from hpcm_tune.registry import Registry

Multipliers = tuple[float, float, float]

STRATEGIES: Registry[Callable[..., Multipliers]] = Registry("gamma strategy")

# The hierarchical schedule: (phase end as a fraction of training, multipliers at q = 0, change over the phase).
# One table; the value inside a phase is start + q * change, q the progress inside the phase.
HIERARCHICAL_PHASES: tuple[tuple[str, float, Multipliers, Multipliers], ...] = (
    ("warmup", 300 / 3000, (1.0, 0.8, 0.6), (0.2, 0.0, 0.0)),
    ("progressive", 1500 / 3000, (1.2, 0.8, 0.6), (-0.3, 0.3, 0.4)),
    ("refinement", 2500 / 3000, (0.9, 1.1, 1.0), (-0.2, -0.3, 0.1)),
    ("fine-tuning", 1.0, (0.7, 0.8, 1.1), (-0.2, -0.3, 0.2)),
)


def progress(epoch: float, total_epochs: float) -> float:
    """p = clamp(epoch / total_epochs, 0, 1)."""
    if isinstance(total_epochs, bool) or not isinstance(total_epochs, int | float) or not total_epochs > 0:
        raise ValueError(f"total_epochs: got {total_epochs!r}; must be a number > 0")
    if isinstance(epoch, bool) or not isinstance(epoch, int | float) or not math.isfinite(epoch):
        raise ValueError(f"epoch: got {epoch!r}; must be a finite number")
    return min(max(epoch / total_epochs, 0.0), 1.0)


def _same(m: float) -> Multipliers:
    return (m, m, m)


@STRATEGIES.register("fixed")
def fixed(p: float, state: Any = None) -> Multipliers:
    return _same(1.0)


@STRATEGIES.register("linear")
def linear(p: float, state: Any = None) -> Multipliers:
    return _same(1.0 - 0.5 * p)


@STRATEGIES.register("cosine")
def cosine(p: float, state: Any = None) -> Multipliers:
    return _same(0.5 + 0.25 * (1.0 + math.cos(math.pi * p)))


@STRATEGIES.register("hierarchical")
def hierarchical(p: float, state: Any = None) -> Multipliers:
    start_p = 0.0
    for _name, end_p, start, change in HIERARCHICAL_PHASES:
        if p <= end_p:
            q = (p - start_p) / (end_p - start_p)
            return tuple(max(0.0, s + q * c) for s, c in zip(start, change))  # type: ignore[return-value]
        start_p = end_p
    _name, _end, start, change = HIERARCHICAL_PHASES[-1]
    return tuple(max(0.0, s + c) for s, c in zip(start, change))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# Learning-rate schedules: factors of the base lr, pure functions of the 0-based epoch and the run's length
# (OptimizerConfig.lr_at applies them).

# The official HPCM step-down: lr 1e-4 -> 3e-5 / 1e-5 / 1e-6 at epochs 2750 / 2850 / 2950 of 3001 (docs/design.md §2),
# as (milestone epoch, factor of the base lr from that epoch on) out of OFFICIAL_EPOCHS.
OFFICIAL_EPOCHS = 3001
OFFICIAL_LR_STEPS: tuple[tuple[int, float], ...] = ((2750, 0.3), (2850, 0.1), (2950, 0.01))
# Cosine ends where the official step-down ends (1e-6 from 1e-4).
COSINE_FINAL_FACTOR = 0.01

LR_SCHEDULES: Registry[Callable[[int, int], float]] = Registry("lr_schedule")


@LR_SCHEDULES.register("step")
def step_lr_factor(epoch: int, epochs: int) -> float:
    """The official step-down scaled to ``epochs``: a milestone m of 3001 applies from the first 0-based epoch
    e with e / epochs >= m / 3001 (integer arithmetic, so 3001 epochs give exactly 2750/2850/2950)."""
    factor = 1.0
    for milestone, step_factor in OFFICIAL_LR_STEPS:
        if epoch * OFFICIAL_EPOCHS >= milestone * epochs:
            factor = step_factor
    return factor


@LR_SCHEDULES.register("cosine")
def cosine_lr_factor(epoch: int, epochs: int) -> float:
    """Cosine annealing from 1 to COSINE_FINAL_FACTOR over the run (0-based epoch)."""
    p = min(max(epoch / epochs, 0.0), 1.0)
    return COSINE_FINAL_FACTOR + (1.0 - COSINE_FINAL_FACTOR) * 0.5 * (1.0 + math.cos(math.pi * p))


@LR_SCHEDULES.register("constant")
def constant_lr_factor(epoch: int, epochs: int) -> float:
    """No schedule (useful for short tests and fine-tuning)."""
    return 1.0


class AdaptiveGamma:
    """State of the ``adaptive`` strategy: the recent per-scale losses and the current multipliers.

    Call ``record(losses)`` once per epoch with that epoch's mean task losses (task or scale names as keys;
    tasks are summed into their scale). Once ``window`` epochs of history exist, each scale's coefficient of
    variation (std / mean over the window) below ``low_cv`` multiplies its multiplier by ``shrink`` (the loss
    has settled: regularize the logits less), above ``high_cv`` by ``grow``; multipliers stay in
    [``lower``, ``upper``] (i.e. gamma in [0.5, 1.5] gamma0 by default).
    """

    def __init__(self, window: int = 50, low_cv: float = 0.01, high_cv: float = 0.05, shrink: float = 0.95,
                 grow: float = 1.02, lower: float = 0.5, upper: float = 1.5) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 2:
            raise ValueError(f"window: got {window!r}; must be an integer >= 2")
        if not 0 <= low_cv <= high_cv:
            raise ValueError(f"low_cv, high_cv: got {low_cv!r}, {high_cv!r}; need 0 <= low_cv <= high_cv")
        if not 0 < lower <= 1 <= upper:
            raise ValueError(f"lower, upper: got {lower!r}, {upper!r}; need 0 < lower <= 1 <= upper")
        self.window, self.low_cv, self.high_cv = window, low_cv, high_cv
        self.shrink, self.grow, self.lower, self.upper = shrink, grow, lower, upper
        self.history: dict[str, deque[float]] = {s: deque(maxlen=window) for s in SCALES}
        self.multipliers: list[float] = [1.0, 1.0, 1.0]

    def record(self, losses: Mapping[str, float]) -> Multipliers:
        per_scale: dict[str, float] = {}
        for key, value in losses.items():
            scale = key if key in SCALES else TASK_SCALE.get(key)
            if scale is None:
                raise ValueError(f"adaptive gamma: {key!r} is neither a scale {list(SCALES)} nor a scale task "
                                 f"{list(TASK_SCALE)}")
            per_scale[scale] = per_scale.get(scale, 0.0) + float(value)
        for i, scale in enumerate(SCALES):
            if scale not in per_scale or not math.isfinite(per_scale[scale]):
                continue
            hist = self.history[scale]
            hist.append(per_scale[scale])
            if len(hist) < self.window:
                continue
            mean = sum(hist) / len(hist)
            std = math.sqrt(sum((v - mean) ** 2 for v in hist) / len(hist))
            cv = std / abs(mean) if mean else math.inf
            if cv < self.low_cv:
                self.multipliers[i] *= self.shrink
            elif cv > self.high_cv:
                self.multipliers[i] *= self.grow
            self.multipliers[i] = min(max(self.multipliers[i], self.lower), self.upper)
        return tuple(self.multipliers)  # type: ignore[return-value]

    def state_dict(self) -> dict:
        return {"history": {s: list(h) for s, h in self.history.items()}, "multipliers": list(self.multipliers)}

    def load_state_dict(self, state: Mapping) -> None:
        self.history = {s: deque((float(v) for v in state["history"].get(s, [])), maxlen=self.window)
                        for s in SCALES}
        self.multipliers = [float(m) for m in state["multipliers"]]


@STRATEGIES.register("adaptive")
def adaptive(p: float, state: AdaptiveGamma | None = None) -> Multipliers:
    if not isinstance(state, AdaptiveGamma):
        raise ValueError(f"gamma strategy 'adaptive' needs state=AdaptiveGamma(...); got {state!r}")
    return tuple(state.multipliers)  # type: ignore[return-value]


def gamma_multipliers(strategy: str, epoch: float, total_epochs: float, state: AdaptiveGamma | None = None
                      ) -> Multipliers:
    """(m_s1, m_s2, m_s3) of ``strategy`` at ``epoch`` of ``total_epochs``; ``state`` only for adaptive."""
    return STRATEGIES.get(strategy)(progress(epoch, total_epochs), state)


def make_state(strategy: str, **options) -> AdaptiveGamma | None:
    """The state object a strategy needs (an ``AdaptiveGamma`` for adaptive, else None)."""
    STRATEGIES.get(strategy)
    return AdaptiveGamma(**options) if strategy == "adaptive" else None


__all__ = ["COSINE_FINAL_FACTOR", "HIERARCHICAL_PHASES", "LR_SCHEDULES", "OFFICIAL_EPOCHS", "OFFICIAL_LR_STEPS",
           "STRATEGIES", "AdaptiveGamma", "constant_lr_factor", "cosine_lr_factor", "gamma_multipliers", "make_state",
           "progress", "step_lr_factor"]
