"""Geometry of the 11-step hierarchical schedule: partition, phases, grids, aligned hyperprior gathers."""

from __future__ import annotations

import pytest
import torch

from hpcm_tune.models import build_model
from hpcm_tune.models import context as cm


@pytest.mark.parametrize(("c", "h", "w"), [(8, 4, 4), (16, 8, 12), (320, 16, 16), (32, 20, 4)])
def test_every_element_has_one_step_and_scales_have_their_share(c, h, w):
    steps = cm.step_map(c, h, w)
    assert steps.shape == (c, h, w) and steps.min() == 0 and steps.max() == cm.NUM_STEPS - 1
    per_channel = torch.stack([(steps == k).sum(dim=(1, 2)) for k in range(cm.NUM_STEPS)], 1)  # (C, 11)
    hw = h * w
    assert torch.all(per_channel[:, :2].sum(1) == hw // 16)  # s1: 1/16
    assert torch.all(per_channel[:, 2:5] == hw // 16)  # s2: three cosets of 1/16 each
    assert torch.all(per_channel[:, 5:] == hw // 8)  # s3: six steps of 2 positions per 4x4 block


def test_groups_have_distinct_phases():
    steps = cm.step_map(8, 8, 8)
    s1_positions = {tuple((steps[g] < 2).nonzero()[0].tolist()) for g in range(8)}
    assert len(s1_positions) == 8  # every channel group starts from its own position
    assert len(set(cm.PHASE_S2)) == 4


def test_down_up_are_inverse_on_the_lattice():
    t = torch.randn(2, 16, 8, 12)
    small = cm.to_s2(t)
    assert small.shape == (2, 16, 4, 6)
    assert torch.equal(cm.to_s2(cm.from_s2(small)), small)
    back = cm.from_s2(small)
    assert torch.equal(back[back != 0], t[back != 0])
    assert (back != 0).float().mean().item() == pytest.approx(0.25)


def test_grids_and_masks_point_at_the_right_elements():
    """Step k's mask on its scale's grid must select exactly the full-grid elements that step_map gives to k."""
    c, h, w = 16, 12, 8
    sched = cm.Schedule(c, h, w, torch.device("cpu"))
    coords = torch.arange(c * h * w).view(1, c, h, w)
    s2 = cm.to_s2(coords)
    grid_coords = (cm.to_s1(s2), s2, coords)
    flat = sched.full.reshape(-1)
    for k in range(cm.NUM_STEPS):
        sel = grid_coords[cm.STEP_SCALE[k]][sched.masks[k]]
        assert torch.all(flat[sel] == k)
        assert sel.numel() == int((flat == k).sum())


def test_split_partitions_y():
    c, h, w = 8, 8, 8
    sched = cm.Schedule(c, h, w, torch.device("cpu"))
    t = torch.arange(2 * c * h * w).view(2, c, h, w)
    parts = sched.split(t)
    assert [p.shape for p in parts] == [(2, c, 4), (2, c, 12), (2, c, 48)]
    assert torch.equal(torch.cat([p.reshape(-1) for p in parts]).sort().values, t.reshape(-1))


def test_s2_and_s3_hyperprior_gathers_are_aligned():
    """The hyperprior parameters that fill new positions at s2/s3 come from the same y positions they describe
    (the official code gathers misaligned parameters for s2 in channel groups 2-7)."""
    model = build_model("tiny").eval()
    m, h, w = model.M, 8, 8
    coords = torch.arange(m * h * w, dtype=torch.float32).view(1, m, h, w) + 1
    params = torch.cat((coords, coords), 1)  # scales and means both carry the position id
    captured = []
    hooks = [net.register_forward_hook(lambda mod, inp, out: captured.append(inp[0])) for net in model.context_net]
    sched = cm.Schedule(m, h, w, torch.device("cpu"))
    with torch.no_grad():
        model._hierarchy(params, lambda k, scales, means, mask: torch.zeros_like(means))
    for hook in hooks:
        hook.remove()
    flat_steps = sched.full.reshape(-1)
    for s, ctx in ((1, captured[0]), (2, captured[1])):
        fresh = ~sched.coarser[s][0]
        grid_ids = cm.to_s2(coords)[0] if s == 1 else coords[0]
        for half in (ctx[0, :m], ctx[0, m:]):
            assert torch.equal(half[fresh], grid_ids[fresh])
            ids = half[fresh].long() - 1
            lo = cm.FIRST_STEP[s]
            assert torch.all((flat_steps[ids] >= lo) & (flat_steps[ids] < lo + cm.STEPS_PER_SCALE[s]))


def test_rejects_bad_geometry():
    with pytest.raises(ValueError, match="multiple of 8"):
        cm.step_map(12, 4, 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        cm.step_map(8, 6, 4)
