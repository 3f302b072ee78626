"""Geometry of HPCM's hierarchical coding schedule (ICCV 2025, §3.2, Fig. 3; docs/design.md §2).

y (M channels, H x W) is split into 8 channel groups g = 0..7 of M/8 channels; each group has its own
sub-sampling phase, so the three scales of different groups sit at different positions and context flows
across groups:

- s2 grid (H/2 x W/2): group g keeps the lattice y[2a + p_g, 2b + q_g] with (p_g, q_g) = PHASE_S2[g].
- s1 grid (H/4 x W/4): inside its s2 grid, group g keeps the positions (2a, 2b) + PHASE_S1[g]; one in 16
  elements of y per channel.
- 11 coding steps: s1 codes its grid in 2 checkerboard steps (groups 0-3 and 4-7 start on opposite colours);
  s2 codes the 3 remaining cosets of its 2x2 lattice in 3 steps; s3 codes the 12 of 16 positions outside the
  s2 lattice in 6 steps of 2 positions per 4x4 block.

Everything is computed by coordinate arithmetic, so any latent size that is a multiple of 4 works (the
official code builds masks by tiling 8x8 patterns, which needs multiples of 16 and 256-pixel images). Every
element of y gets exactly one step, so the per-scale rates partition the total rate.
"""

from __future__ import annotations

import torch

GROUPS = 8
STEPS_PER_SCALE = (2, 3, 6)
NUM_STEPS = sum(STEPS_PER_SCALE)
# Global step index -> scale index (0: s1, 1: s2, 2: s3).
STEP_SCALE: tuple[int, ...] = tuple(s for s, n in enumerate(STEPS_PER_SCALE) for _ in range(n))
FIRST_STEP: tuple[int, ...] = (0, 2, 5)

# s2 lattice phase of each group on the full grid (groups 4-7 repeat 0-3 but take the s1/s3 steps in
# another order, so neighbouring groups are always coded at complementary positions).
PHASE_S2: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (0, 1), (1, 0)) * 2
# s1 phase of each group inside its s2 grid: pairs of groups share one of the four cosets.
PHASE_S1: tuple[tuple[int, int], ...] = tuple(((g // 2) >> 1, (g // 2) & 1) for g in range(GROUPS))
LATENT_MULTIPLE = 4


def _check(channels: int, h: int, w: int) -> None:
    if channels % GROUPS:
        raise ValueError(f"latent channels={channels} must be a multiple of {GROUPS} (the channel groups)")
    if h % LATENT_MULTIPLE or w % LATENT_MULTIPLE or h <= 0 or w <= 0:
        raise ValueError(f"latent size {h}x{w} must be a positive multiple of {LATENT_MULTIPLE}")


def _s3_row(pattern: torch.Tensor, g: int) -> torch.Tensor:
    """Order (0..7) in which group g visits the 8 two-position patterns of a 4x4 block; rows 0-1 are its s2
    lattice, rows 2-7 its six s3 steps. Groups 0-3 start at pattern 2g, groups 4-7 at the partner pattern."""
    if g < 4:
        return (pattern - 2 * g) % 8
    return ((pattern - 2 * (g - 4)) % 8) ^ 1


def step_map(channels: int, h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(channels, h, w) int64 tensor: the global step (0..10) that codes each element of y."""
    _check(channels, h, w)
    i = torch.arange(h).view(h, 1).expand(h, w)
    j = torch.arange(w).view(1, w).expand(h, w)
    # The pattern (0..7) of a position in its 4x4 block: lattice coset, then which diagonal pair.
    lattice = {(0, 0): 0, (1, 1): 2, (0, 1): 4, (1, 0): 6}
    base = torch.zeros(h, w, dtype=torch.long)
    for (r, c), v in lattice.items():
        base[(i % 2 == r) & (j % 2 == c)] = v
    pattern = base + (((i % 4) // 2 + (j % 4) // 2) % 2)
    per_group = []
    for g in range(GROUPS):
        p, q = PHASE_S2[g]
        on_s2 = (i % 2 == p) & (j % 2 == q)
        a, b = i // 2, j // 2
        k2 = ((a % 2) * 2 + (b % 2)) ^ (PHASE_S1[g][0] * 2 + PHASE_S1[g][1])
        s1_step = (a // 2 + b // 2 + (1 if g >= 4 else 0)) % 2
        step = torch.where(k2 == 0, s1_step, 1 + k2)
        step = torch.where(on_s2, step, 3 + _s3_row(pattern, g))
        per_group.append(step.unsqueeze(0).expand(channels // GROUPS, h, w))
    return torch.cat(per_group, 0).to(device)


def _group_slices(channels: int) -> list[slice]:
    cg = channels // GROUPS
    return [slice(g * cg, (g + 1) * cg) for g in range(GROUPS)]


def down(t: torch.Tensor, phases: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Keep, for each channel group, the stride-2 lattice at its phase: (B, C, H, W) -> (B, C, H/2, W/2)."""
    parts = [t[:, sl, p::2, q::2] for sl, (p, q) in zip(_group_slices(t.shape[1]), phases)]
    return torch.cat(parts, 1)


def up(t: torch.Tensor, phases: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """Inverse of :func:`down`: scatter into a zero grid twice the size (other positions stay 0)."""
    b, c, h, w = t.shape
    out = t.new_zeros(b, c, 2 * h, 2 * w)
    for sl, (p, q) in zip(_group_slices(c), phases):
        out[:, sl, p::2, q::2] = t[:, sl]
    return out


def to_s2(t: torch.Tensor) -> torch.Tensor:
    return down(t, PHASE_S2)


def from_s2(t: torch.Tensor) -> torch.Tensor:
    return up(t, PHASE_S2)


def to_s1(t2: torch.Tensor) -> torch.Tensor:
    return down(t2, PHASE_S1)


def from_s1(t1: torch.Tensor) -> torch.Tensor:
    return up(t1, PHASE_S1)


def to_s2_pair(t: torch.Tensor) -> torch.Tensor:
    """:func:`to_s2` for a (scales, means)-style tensor of 2M channels: each half has the group layout."""
    return torch.cat([to_s2(h) for h in t.chunk(2, 1)], 1)


def to_s1_pair(t2: torch.Tensor) -> torch.Tensor:
    return torch.cat([to_s1(h) for h in t2.chunk(2, 1)], 1)


def from_s1_pair(t1: torch.Tensor) -> torch.Tensor:
    return torch.cat([from_s1(h) for h in t1.chunk(2, 1)], 1)


def from_s2_pair(t2: torch.Tensor) -> torch.Tensor:
    return torch.cat([from_s2(h) for h in t2.chunk(2, 1)], 1)


class Schedule:
    """Step masks on each scale's grid and the per-scale partition of y, cached per (C, H, W, device)."""

    def __init__(self, channels: int, h: int, w: int, device: torch.device) -> None:
        full = step_map(channels, h, w, device)
        self.full = full
        s2 = to_s2(full.unsqueeze(0))[0]
        s1 = to_s1(s2.unsqueeze(0))[0]
        self.grid_steps = (s1, s2, full)
        # masks[k]: (1, C, h_k, w_k) bool on the grid of step k's scale.
        self.masks = [(self.grid_steps[STEP_SCALE[k]] == k).unsqueeze(0) for k in range(NUM_STEPS)]
        # Positions of the scale's grid already coded by the coarser scale (s2: s1 positions; s3: s2 lattice).
        self.coarser = (None, (s2 < FIRST_STEP[1]).unsqueeze(0), (full < FIRST_STEP[2]).unsqueeze(0))
        # Flattened (H*W) indices of the elements each scale codes, per channel: (C, K_s).
        flat = full.view(channels, -1)
        self.partition = []
        for s in range(3):
            lo, hi = FIRST_STEP[s], FIRST_STEP[s] + STEPS_PER_SCALE[s]
            sel = (flat >= lo) & (flat < hi)
            idx = sel.nonzero()[:, 1].view(channels, -1)
            self.partition.append(idx)

    def split(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Split a full-grid (B, C, H, W) tensor into the (B, C, K_s) elements coded by s1, s2, s3."""
        b, c = t.shape[:2]
        flat = t.reshape(b, c, -1)
        return [flat.gather(2, idx.unsqueeze(0).expand(b, -1, -1)) for idx in self.partition]


_CACHE: dict[tuple, Schedule] = {}


def schedule_for(channels: int, h: int, w: int, device: torch.device) -> Schedule:
    key = (channels, h, w, str(device))
    sched = _CACHE.get(key)
    if sched is None:
        if len(_CACHE) > 64:  # bounded: evaluation sees few distinct sizes
            _CACHE.clear()
        sched = _CACHE[key] = Schedule(channels, h, w, device)
    return sched
