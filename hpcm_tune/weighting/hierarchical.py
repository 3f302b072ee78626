"""Hierarchical FAMO: FAMO over HPCM's five scale tasks with a scale prior and per-scale gammas (docs/design.md §3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hpcm_tune.config import WeightingConfig
from hpcm_tune.metrics import SCALES, TASK_SCALE
from hpcm_tune.weighting.famo import FAMO


class HierarchicalFAMO(FAMO):
    """FAMO whose prior p comes from the scale importance weights (a scale's share split equally among its
    tasks; the default weights give s1 tasks 0.15 each, s2 tasks 0.2 each, s3_bpp 0.3) and whose gamma of task i
    is its scale's gamma (``config.gammas``) times the schedule's multiplier. Defaults: hpcm_tune.config."""

    name = "hierarchical"

    def __init__(self, task_names: Sequence[str], config: WeightingConfig | None = None, **options) -> None:
        unscaled = [t for t in task_names if t not in TASK_SCALE]
        if unscaled:
            raise ValueError(
                f"task_names: {unscaled} belong to no scale; hierarchical weighting needs tasks among "
                f"{list(TASK_SCALE)} (use famo for the 2-task objectives)"
            )
        super().__init__(task_names, config, **options)

    def prior(self) -> torch.Tensor:
        weight = dict(zip(SCALES, self.config.scale_weights))
        count = {s: sum(TASK_SCALE[t] == s for t in self.task_names) for s in SCALES}
        p = torch.tensor([weight[TASK_SCALE[t]] / count[TASK_SCALE[t]] for t in self.task_names],
                         dtype=torch.float64)
        return p / p.sum()  # renormalized in case a scale has no task here

    def base_gammas(self) -> dict[str, float]:
        return dict(zip(SCALES, self.config.gammas))
