"""FAMO, Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023), as adapted by Balanced Rate-Distortion
Optimization (CVPR 2025) and docs/design.md §3.

Task weights z = softmax(w + log p) from logits w (start 0) and a prior p. The model minimizes
    sum_i z_i log(L_i - m_i + eps) / c,   c = sum_i z_i / (L_i - m_i + eps)  (held constant),
whose gradient is the convex combination sum_i (a_i / c) grad L_i with a_i = z_i / (L_i - m_i + eps)
(``coefficients``). With the two R-D tasks lambda*D and R that is grad R + lambda_eff grad D up to a positive
factor, lambda_eff = lambda (z_D / z_R) (R - m_R + eps) / (lambda D - m_D + eps) (hpcm_tune.metrics.
effective_lambda). With m_i = 0 lambda cancels from the gradient (grad log(lambda D) = grad D / D). With m_i = -1
(log(1 + L), as Balanced-RD) it does not cancel, but lambda_eff = lambda (z_D / z_R) (1 + R) / (1 + lambda D):
lambda keeps its role only while lambda*D <~ 1 (a model fine-tuned from one trained on the plain loss); far
above (a model trained from scratch) lambda_eff << lambda. A large negative common m makes every a_i ~ z_i / |m|:
the plain loss with the adaptive weight z_D / z_R on lambda. docs/architecture.md, "The effective lambda".

After the parameter step the improvement of each task, delta_i = log(L_i^before - m_i + eps) -
log(L_i^after - m_i + eps), drives the logits: g = J_softmax(z)^T delta + gamma_i w_i (the gamma term is L2
regularization of the logits), followed by one Adam step with lr w_lr. Tasks that improved faster lose weight,
so the tasks' relative improvement rates even out. ``same_batch`` (exact FAMO) takes L^after from the same batch
re-evaluated after the step with the same noise; ``next_batch`` takes it from the next batch's losses (no extra
forward pass, but delta then also carries the batch-to-batch difference and arrives one step later).

All state lives on the device of the task losses, so a training step never waits for the host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from hpcm_tune.config import WeightingConfig
from hpcm_tune.metrics import SCALES, TASK_SCALE
from hpcm_tune.weighting.base import Reevaluate, TaskLosses, Weighting

ADAM_BETAS: tuple[float, float] = (0.9, 0.999)
ADAM_EPS = 1e-8


class FAMO(Weighting):
    """FAMO with a uniform prior and one gamma (``config.gamma``, default the mean of the scale gammas).

    With the 2-task balanced objective this is Balanced-RD. The gamma of a task that belongs to a scale is
    multiplied by that scale's schedule multiplier, otherwise by the mean of the three multipliers.
    """

    name = "famo"

    def __init__(self, task_names: Sequence[str], config: WeightingConfig | None = None, **options) -> None:
        super().__init__(task_names, config, **options)
        n = len(self.task_names)
        if n < 2:
            raise ValueError(f"task_names: got {list(self.task_names)}; {self.name} needs at least two tasks")
        min_loss = self.task_min_loss if self.task_min_loss is not None else (self.config.min_loss,) * n
        self._device = torch.device("cpu")
        self._min = torch.tensor(min_loss, dtype=torch.float64)
        self._log_prior = self.prior().log()
        self._w = torch.zeros(n, dtype=torch.float64)
        self._adam_m = torch.zeros(n, dtype=torch.float64)
        self._adam_v = torch.zeros(n, dtype=torch.float64)
        self._adam_step = torch.zeros((), dtype=torch.float64)
        self._prev: torch.Tensor | None = None  # next_batch: the losses seen at the previous update
        self._gamma_vec = self._task_gammas()

    # --- what the hierarchical variant changes -------------------------------------------------------
    def prior(self) -> torch.Tensor:
        """The prior p over tasks (sums to 1); uniform for plain FAMO."""
        n = len(self.task_names)
        return torch.full((n,), 1.0 / n, dtype=torch.float64)

    def base_gammas(self) -> dict[str, float]:
        """Base gamma per scale before the schedule's multipliers."""
        config = self.config
        gamma = config.gamma if config.gamma is not None else sum(config.gammas) / len(SCALES)
        return dict.fromkeys(SCALES, gamma)

    def _task_gammas(self) -> torch.Tensor:
        base, mult = self.base_gammas(), dict(zip(SCALES, self._multipliers))
        mean_gamma = sum(base[s] * mult[s] for s in SCALES) / len(SCALES)
        values = [base[TASK_SCALE[t]] * mult[TASK_SCALE[t]] if t in TASK_SCALE else mean_gamma
                  for t in self.task_names]
        return torch.tensor(values, dtype=torch.float64, device=self._device)

    # --- device handling -----------------------------------------------------------------------------
    def _to(self, device: torch.device) -> None:
        if device == self._device:
            return
        self._device = device
        for key in ("_min", "_log_prior", "_w", "_adam_m", "_adam_v", "_adam_step", "_gamma_vec"):
            setattr(self, key, getattr(self, key).to(device))
        if self._prev is not None:
            self._prev = self._prev.to(device)

    def _z(self) -> torch.Tensor:
        return torch.softmax(self._w + self._log_prior, dim=0)

    def _log_gap(self, losses: torch.Tensor) -> torch.Tensor:
        """log(L - m + eps) in float64, floored at log(eps) so a loss below its minimum is never NaN."""
        eps = self.eps
        return (losses.to(torch.float64) - self._min + eps).clamp_min(eps).log()

    # --- the interface -------------------------------------------------------------------------------
    def loss(self, task_losses: TaskLosses) -> torch.Tensor:
        losses = self._stack(task_losses)
        self._to(losses.device)
        self._last_losses = losses.detach()
        eps = self.eps
        z = self._z().to(losses.dtype)
        gap = (losses - self._min.to(losses.dtype) + eps).clamp_min(eps)
        c = (z / gap).sum().detach()
        return (z * gap.log()).sum() / c

    def update(self, task_losses: TaskLosses, reevaluate: Reevaluate | None = None) -> None:
        current = self._stack(task_losses).detach()
        self._to(current.device)
        if self.config.update_mode == "same_batch":
            if reevaluate is None:
                raise ValueError(f"{self.name} with update_mode 'same_batch' needs reevaluate() in update()")
            with torch.no_grad():
                after = self._stack(reevaluate()).detach()
            self._logit_step(current, after)
        else:
            # The improvement of step t is seen at step t+1: batch t's losses before, batch t+1's after.
            if self._prev is not None:
                self._logit_step(self._prev, current)
            self._prev = current.to(torch.float64)

    def _logit_step(self, before: torch.Tensor, after: torch.Tensor) -> None:
        delta = self._log_gap(before) - self._log_gap(after)
        z = self._z()
        # Softmax Jacobian (diag z - z z^T) applied to delta, plus the L2 term gamma_i * w_i.
        grad = z * (delta - (z * delta).sum()) + self._gamma_vec * self._w
        # A non-finite step is skipped without a host sync: every state tensor keeps its value.
        ok = torch.isfinite(grad).all()
        grad = torch.where(ok, grad, torch.zeros_like(grad))
        b1, b2 = ADAM_BETAS
        step = self._adam_step + ok.to(torch.float64)
        m = b1 * self._adam_m + (1 - b1) * grad
        v = b2 * self._adam_v + (1 - b2) * grad * grad
        m_hat = m / (1 - b1**step).clamp_min(1e-300)
        v_hat = v / (1 - b2**step).clamp_min(1e-300)
        w = self._w - self.config.w_lr * m_hat / (v_hat.sqrt() + ADAM_EPS)
        self._w = torch.where(ok, w, self._w)
        self._adam_m = torch.where(ok, m, self._adam_m)
        self._adam_v = torch.where(ok, v, self._adam_v)
        self._adam_step = step

    def weights(self) -> dict[str, float]:
        return dict(zip(self.task_names, self._z().tolist()))

    def coefficients(self, task_losses: Mapping[str, float]) -> dict[str, float]:
        """a_i = z_i / (L_i - m_i + eps): the gradient of sum_i z_i log(L_i - m_i + eps) up to the common c."""
        z, m, eps = self._z().cpu(), self._min.cpu(), self.eps
        return {t: float(z[i]) / max(float(task_losses[t]) - float(m[i]) + eps, eps)
                for i, t in enumerate(self.task_names)}

    def gammas(self) -> dict[str, float]:
        base = self.base_gammas()
        return {s: base[s] * m for s, m in zip(SCALES, self._multipliers)}

    def set_gamma_multipliers(self, multipliers: Sequence[float]) -> None:
        super().set_gamma_multipliers(multipliers)
        self._gamma_vec = self._task_gammas()

    def logits(self) -> torch.Tensor:
        """A copy of the logits w (the weights are softmax(w + log p))."""
        return self._w.detach().cpu().clone()

    def state_dict(self) -> dict:
        def host(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().cpu().clone()

        return {
            **super().state_dict(),
            "update_mode": self.config.update_mode,
            "logits": host(self._w),
            "adam_exp_avg": host(self._adam_m),
            "adam_exp_avg_sq": host(self._adam_v),
            "adam_step": host(self._adam_step),
            "prev_losses": host(self._prev),
        }

    def load_state_dict(self, state: Mapping) -> None:
        super().load_state_dict(state)
        n = len(self.task_names)
        for key in ("logits", "adam_exp_avg", "adam_exp_avg_sq"):
            if tuple(state[key].shape) != (n,):
                raise ValueError(f"weighting state {key!r} has shape {tuple(state[key].shape)}; expected ({n},)")
        dev = self._device

        def dev64(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(dev, torch.float64).clone()

        self._w = dev64(state["logits"])
        self._adam_m = dev64(state["adam_exp_avg"])
        self._adam_v = dev64(state["adam_exp_avg_sq"])
        self._adam_step = dev64(state["adam_step"]).reshape(())
        prev = state.get("prev_losses")
        self._prev = None if prev is None else dev64(prev)
