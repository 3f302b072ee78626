"""Task-weighting methods: the registry and ``build_weighting`` (docs/design.md §3, docs/architecture.md).

``build_weighting("hierarchical", TASKS, config)`` with the run config's section ``config`` (a
``hpcm_tune.config.WeightingConfig``, what the engine passes), or with its fields as keywords for tests and
benchmarks: ``build_weighting("hierarchical", TASKS, w_lr=0.025, gamma_s1=0.008)``. Every method takes the same
options and ignores those it has no use for.
"""

from __future__ import annotations

from collections.abc import Sequence

from hpcm_tune.config import UPDATE_MODES, WeightingConfig
from hpcm_tune.registry import Registry
from hpcm_tune.weighting.base import DEFAULT_EPS, Reevaluate, TaskLosses, Weighting
from hpcm_tune.weighting.famo import FAMO
from hpcm_tune.weighting.hierarchical import HierarchicalFAMO
from hpcm_tune.weighting.standard import StandardWeighting

WEIGHTINGS: Registry[type[Weighting]] = Registry("weighting method")
for _cls in (StandardWeighting, FAMO, HierarchicalFAMO):
    WEIGHTINGS.add(_cls.name, _cls)


def build_weighting(name: str, task_names: Sequence[str], config: WeightingConfig | None = None, *,
                    eps: float = DEFAULT_EPS, task_min_loss: Sequence[float] | None = None, **options) -> Weighting:
    """The weighting method ``name`` over ``task_names`` with ``config`` (the run config's weighting section), or
    with ``options`` named as its fields (None = default) to build one; ``eps`` and ``task_min_loss``: see
    ``Weighting``."""
    cls = WEIGHTINGS.get(name)
    if config is not None and options:
        raise ValueError(f"build_weighting: give a WeightingConfig or its options, not both (got {sorted(options)})")
    if config is None:
        config = WeightingConfig.from_options(**options)
    return cls(task_names, config, eps=eps, task_min_loss=task_min_loss)


__all__ = [
    "DEFAULT_EPS",
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
