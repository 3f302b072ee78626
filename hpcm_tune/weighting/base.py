"""The small interface every task-weighting method offers the training engine, and its validated options.

Per training step the engine calls, never branching on the method:
``loss = w.loss(task_losses)``; ``loss.backward()``; clip; ``optimizer.step()``;
``w.update(task_losses, reevaluate)``, where ``reevaluate()`` returns the same batch's task losses computed
after the step, without gradient and with the same quantization noise. Only methods that need it call it.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import torch

from hpcm_tune.metrics import SCALES, TASK_SCALE

TaskLosses = Mapping[str, torch.Tensor]
Reevaluate = Callable[[], TaskLosses]

UPDATE_MODES: tuple[str, ...] = ("same_batch", "next_batch")
DEFAULT_SCALE_WEIGHTS: tuple[float, float, float] = (0.3, 0.4, 0.3)
DEFAULT_SCALE_GAMMAS: tuple[float, float, float] = (0.008, 0.006, 0.004)


def _number(key: str, value: object, *, low: float | None = None, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}: got {value!r}; must be a finite number")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{key}: got {value!r}; must be {'>' if low_open else '>='} {low}")
    return float(value)


@dataclass(frozen=True)
class WeightingConfig:
    """Options shared by all weighting methods; a method ignores those it has no use for, so one flat run
    config serves all of them (the original design's names: w_lr, gamma_s1..3, scale_weights).

    - ``w_lr``: Adam learning rate of the logits (FAMO, default 0.025).
    - ``gamma_s1``, ``gamma_s2``, ``gamma_s3``: L2 coefficients of the logits per scale (hierarchical).
    - ``gamma``: the one L2 coefficient of ``famo``; ``None`` = mean of the three scale gammas.
    - ``scale_weights``: scale importance [s1, s2, s3] for the prior p (three positive values; normalized
      with a warning if they do not sum to 1).
    - ``min_loss``: m_i in log(L_i - m_i + eps), one value or one per task. -1 (Balanced-RD) keeps lambda's
      role only while lambda*D <~ 1: the model follows grad R + lambda_eff grad D with, for two tasks,
      lambda_eff = lambda (z_D / z_R) (1 + R) / (1 + lambda D); 0 cancels lambda from the gradient; a large
      negative value gives the plain loss with an adaptive weight (docs/architecture.md, "The effective lambda").
    - ``eps``: 1e-8 as FAMO. ``update_mode``: same_batch (exact FAMO) or next_batch (cheaper, noisier).
    """

    w_lr: float = 0.025
    gamma: float | None = None
    gamma_s1: float = DEFAULT_SCALE_GAMMAS[0]
    gamma_s2: float = DEFAULT_SCALE_GAMMAS[1]
    gamma_s3: float = DEFAULT_SCALE_GAMMAS[2]
    scale_weights: tuple[float, ...] = DEFAULT_SCALE_WEIGHTS
    min_loss: float | tuple[float, ...] = -1.0
    eps: float = 1e-8
    update_mode: str = "same_batch"

    def __post_init__(self) -> None:
        _number("w_lr", self.w_lr, low=0.0, low_open=True)
        if self.gamma is not None:
            _number("gamma", self.gamma, low=0.0)
        for key in ("gamma_s1", "gamma_s2", "gamma_s3"):
            _number(key, getattr(self, key), low=0.0)
        _number("eps", self.eps, low=0.0, low_open=True)
        if self.update_mode not in UPDATE_MODES:
            raise ValueError(f"update_mode: got {self.update_mode!r}; allowed: {', '.join(UPDATE_MODES)}")
        sw = self.scale_weights
        if isinstance(sw, str | bytes) or not isinstance(sw, Sequence) or len(sw) != len(SCALES):
            raise ValueError(f"scale_weights: got {sw!r}; must be three positive numbers [s1, s2, s3]")
        sw = tuple(_number("scale_weights", v, low=0.0, low_open=True) for v in sw)
        total = sum(sw)
        if abs(total - 1.0) > 1e-6:
            warnings.warn(f"scale_weights {list(sw)} sum to {total:g}, not 1; normalized", stacklevel=3)
            sw = tuple(v / total for v in sw)
        object.__setattr__(self, "scale_weights", sw)
        if isinstance(self.min_loss, Sequence) and not isinstance(self.min_loss, str | bytes):
            object.__setattr__(self, "min_loss", tuple(_number("min_loss", v) for v in self.min_loss))
        else:
            object.__setattr__(self, "min_loss", _number("min_loss", self.min_loss))

    @classmethod
    def from_options(cls, **options) -> WeightingConfig:
        """Build from keyword options; ``None`` means the default; unknown keys raise listing the valid ones."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"unknown weighting option(s) {unknown}; allowed: {', '.join(allowed)}")
        return cls(**{k: v for k, v in options.items() if v is not None})

    @property
    def scale_gammas(self) -> tuple[float, float, float]:
        return (self.gamma_s1, self.gamma_s2, self.gamma_s3)


class Weighting(ABC):
    """Turns named task losses into the loss to back-propagate, and adapts itself after each step."""

    name: str = ""

    def __init__(self, task_names: Sequence[str], config: WeightingConfig | None = None) -> None:
        task_names = tuple(task_names)
        if not task_names or len(set(task_names)) != len(task_names):
            raise ValueError(f"task_names: got {list(task_names)}; must be non-empty and unique")
        self.task_names = task_names
        self.config = config or WeightingConfig()
        self._multipliers: tuple[float, float, float] = (1.0, 1.0, 1.0)
        self._last_losses: torch.Tensor | None = None  # detached, for scale_contributions()

    # --- helpers -------------------------------------------------------------------------------------
    def _stack(self, task_losses: TaskLosses) -> torch.Tensor:
        missing = [t for t in self.task_names if t not in task_losses]
        if missing:
            raise ValueError(f"task losses lack {missing}; this {self.name} weighting needs {list(self.task_names)}")
        return torch.stack([torch.as_tensor(task_losses[t]).reshape(()) for t in self.task_names])

    # --- the interface ---------------------------------------------------------------------------------
    @abstractmethod
    def loss(self, task_losses: TaskLosses) -> torch.Tensor:
        """The scalar to back-propagate for this step."""

    def update(self, task_losses: TaskLosses, reevaluate: Reevaluate | None = None) -> None:  # noqa: B027
        """Adapt after ``optimizer.step()``; the default method has nothing to adapt."""

    @abstractmethod
    def weights(self) -> dict[str, float]:
        """The current task weights by task name."""

    def coefficients(self, task_losses: Mapping[str, float]) -> dict[str, float]:
        """a_i with the model's gradient proportional to sum_i a_i grad L_i at these task losses (for
        hpcm_tune.metrics.effective_lambda); the plain sum has every a_i = 1."""
        return dict.fromkeys(self.task_names, 1.0)

    def gammas(self) -> dict[str, float]:
        """The effective L2 coefficient of each scale (base gamma times the schedule); empty if none."""
        return {}

    def set_gamma_multipliers(self, multipliers: Sequence[float]) -> None:
        """The schedule's (m_s1, m_s2, m_s3) for this epoch (hpcm_tune.schedules.gamma_multipliers)."""
        if isinstance(multipliers, str) or len(multipliers) != len(SCALES):
            raise ValueError(f"gamma multipliers: got {multipliers!r}; must be three numbers (m_s1, m_s2, m_s3)")
        self._multipliers = tuple(_number("gamma multiplier", m, low=0.0) for m in multipliers)

    def _task_weight_vector(self) -> torch.Tensor:
        w = self.weights()
        return torch.tensor([w[t] for t in self.task_names], dtype=torch.float64)

    def scale_contributions(self) -> dict[str, float]:
        """Share of the weighted loss, sum_i z_i L_i, that each scale's tasks make (sums to 1).

        Computed from the last ``loss()`` call; empty before it or when the tasks belong to no scale
        (the 2-task objectives).
        """
        if self._last_losses is None or not all(t in TASK_SCALE for t in self.task_names):
            return {}
        last = self._last_losses.to("cpu", torch.float64)
        parts = (self._task_weight_vector() * last.clamp_min(0)).tolist()
        total = sum(parts)
        shares = {s: 0.0 for s in SCALES}
        for task, part in zip(self.task_names, parts):
            shares[TASK_SCALE[task]] += part / total if total > 0 else 1.0 / len(parts)
        return shares

    def state_dict(self) -> dict:
        return {"method": self.name, "task_names": list(self.task_names), "gamma_multipliers": list(self._multipliers)}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("method") != self.name or list(state.get("task_names", [])) != list(self.task_names):
            raise ValueError(
                f"weighting state is for method {state.get('method')!r} with tasks {state.get('task_names')}; "
                f"this is {self.name!r} with tasks {list(self.task_names)}"
            )
        self.set_gamma_multipliers(state["gamma_multipliers"])
