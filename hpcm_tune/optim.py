"""Parameter optimizers of the model: one registry, ``OPTIMIZERS`` (name -> factory(params, lr)).

- ``adam``: torch's Adam (HPCM's official training; Balanced-RD's baseline).
- ``cautious_adam``: Adam whose update is masked where it disagrees in sign with the current gradient, the kept
  entries rescaled by the inverse of the kept fraction so the step keeps its size (Cautious Optimizers, Liang et
  al. 2024). Balanced-RD (CVPR 2025) trains its balanced models with it and its baseline with plain Adam, so an
  ablation that compares objectives names the optimizer of every row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from hpcm_tune.registry import Registry

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer]
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")


class CautiousAdam(torch.optim.Optimizer):
    """Adam (bias-corrected, no weight decay) with the cautious mask, per parameter tensor:

        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
        k = [u * g > 0];  p -= lr * u * k * numel / max(sum k, 1)

    An entry whose update would move against its own gradient this step is left alone; the others are scaled
    up by the inverse of the kept fraction.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if not lr > 0:
            raise ValueError(f"lr: got {lr!r}; allowed: a number > 0")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas: got {betas!r}; allowed: two numbers in [0, 1)")
        if not eps > 0:
            raise ValueError(f"eps: got {eps!r}; allowed: a number > 0")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                update = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + group["eps"])
                keep = (update * g > 0).to(update.dtype)
                scale = keep.numel() / keep.sum().clamp_min(1.0)
                p.add_(update * keep * scale, alpha=-group["lr"])
        return loss


@OPTIMIZERS.register("adam")
def adam(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr)


@OPTIMIZERS.register("cautious_adam")
def cautious_adam(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return CautiousAdam(params, lr=lr)


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """The optimizer ``name`` (unknown names fail listing the valid ones)."""
    return OPTIMIZERS.get(name)(params, lr)


__all__ = ["OPTIMIZERS", "CautiousAdam", "build_optimizer"]
