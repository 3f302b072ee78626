"""The small interface every task-weighting method offers the training engine.

Options come as ``hpcm_tune.config.WeightingConfig``, the run config's weighting section: their types, ranges and
defaults are defined there once (``UPDATE_MODES`` too), for sweeps, hand runs and this package alike.

Per training step the engine calls, never branching on the method:
``loss = w.loss(task_losses)``; ``loss.backward()``; clip; ``optimizer.step()``;
``w.update(task_losses, reevaluate)``, where ``reevaluate()`` returns the same batch's task losses computed
after the step, without gradient and with the same quantization noise. Only methods that need it call it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

import torch

from hpcm_tune.config import WeightingConfig
from hpcm_tune.metrics import SCALES, TASK_SCALE

TaskLosses = Mapping[str, torch.Tensor]
Reevaluate = Callable[[], TaskLosses]

# FAMO's eps in log(L_i - m_i + eps): an implementation constant, not a run key.
DEFAULT_EPS = 1e-8


def _number(key: str, value: object, *, low: float | None = None, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}: got {value!r}; must be a finite number")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{key}: got {value!r}; must be {'>' if low_open else '>='} {low}")
    return float(value)


class Weighting(ABC):
    """Turns named task losses into the loss to back-propagate, and adapts itself after each step."""

    name: str = ""

    def __init__(self, task_names: Sequence[str], config: WeightingConfig | None = None, *,
                 eps: float = DEFAULT_EPS, task_min_loss: Sequence[float] | None = None) -> None:
        """``config``: the run config's weighting section (default: its defaults). Beyond the run keys, for
        experiments with the weighting itself: ``eps`` (> 0) and ``task_min_loss``, one m_i per task replacing
        the common ``config.min_loss``."""
        task_names = tuple(task_names)
        if not task_names or len(set(task_names)) != len(task_names):
            raise ValueError(f"task_names: got {list(task_names)}; must be non-empty and unique")
        if config is not None and not isinstance(config, WeightingConfig):
            raise ValueError(f"config: got {type(config).__name__}; expected a hpcm_tune.config.WeightingConfig")
        self.task_names = task_names
        self.config = config if config is not None else WeightingConfig()
        self.eps = _number("eps", eps, low=0.0, low_open=True)
        if task_min_loss is not None:
            if isinstance(task_min_loss, str | bytes) or not isinstance(task_min_loss, Sequence):
                raise ValueError(f"min_loss: got {task_min_loss!r}; task_min_loss needs one number per task")
            task_min_loss = tuple(_number("min_loss", v) for v in task_min_loss)
            if len(task_min_loss) != len(task_names):
                raise ValueError(f"min_loss: got {list(task_min_loss)}; needs one value per task {list(task_names)}")
        self.task_min_loss: tuple[float, ...] | None = task_min_loss
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
