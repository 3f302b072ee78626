"""The plain sum of the task losses: with the standard objective, CompressAI's lambda * D + R."""

from __future__ import annotations

import torch

from hpcm_tune.weighting.base import TaskLosses, Weighting


class StandardWeighting(Weighting):
    """L = sum_i L_i, every weight 1; nothing adapts, so ``update`` never re-evaluates."""

    name = "standard"

    def loss(self, task_losses: TaskLosses) -> torch.Tensor:
        losses = self._stack(task_losses)
        self._last_losses = losses.detach()  # kept on its device: no host sync per step
        return losses.sum()

    def weights(self) -> dict[str, float]:
        return dict.fromkeys(self.task_names, 1.0)
