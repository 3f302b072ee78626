"""Task-weighting methods: the registry and ``build_weighting`` (DESIGN.md §3, docs/architecture.md).

``build_weighting("hierarchical", TASKS, w_lr=0.025, gamma_s1=0.008, update_mode="same_batch")``. Every method
takes the same options (see ``WeightingConfig``) and ignores those it has no use for.
"""

from __future__ import annotations

from collections.abc import Sequence

from hpcm_tune.registry import Registry
from hpcm_tune.weighting.base import UPDATE_MODES, Reevaluate, TaskLosses, Weighting, WeightingConfig
from hpcm_tune.weighting.famo import FAMO
from hpcm_tune.weighting.hierarchical import HierarchicalFAMO
from hpcm_tune.weighting.standard import StandardWeighting

WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting method")
for _cls in (StandardWeighting, FAMO, HierarchicalFAMO):
    WEIGHTINGS.add(_cls.name, _cls)


def build_weighting(name: str, task_names: Sequence[str], **options) -> Weighting:
    """The weighting method ``name`` over ``task_names``; options as ``WeightingConfig`` (None = default)."""
    cls = WEIGHTINGS.get(name)
    return cls(task_names, WeightingConfig.from_options(**options))


__all__ = [
    "FAMO",
    "UPDATE_MODES",
    "WEIGHTINGS",
    "HierarchicalFAMO",
    "Reevaluate",
    "StandardWeighting",
    "TaskLosses",
    "Weighting",
    "WeightingConfig",
    "build_weighting",
]
