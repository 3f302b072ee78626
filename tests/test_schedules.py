"""Gamma schedules (docs/design.md §4): values at epoch 0, at every phase boundary, at the end and past it."""

from __future__ import annotations

import io
import math

import pytest
import torch

from hpcm_tune.schedules import (
    HIERARCHICAL_PHASES,
    LR_SCHEDULES,
    OFFICIAL_LR_STEPS,
    STRATEGIES,
    AdaptiveGamma,
    gamma_multipliers,
    make_state,
)

TOTAL = 3000


def approx3(values):
    return pytest.approx(tuple(values), abs=1e-12)


def test_registry_has_the_five_strategies_and_rejects_others() -> None:
    assert set(STRATEGIES.names()) == {"fixed", "linear", "cosine", "adaptive", "hierarchical"}
    with pytest.raises(ValueError, match="adaptive, cosine, fixed, hierarchical, linear"):
        gamma_multipliers("cosin", 0, TOTAL)


@pytest.mark.parametrize("total, epoch", [(0, 1), (-3, 1), (float("nan"), 1), (10, float("inf"))])
def test_bad_epochs_name_the_key(total, epoch) -> None:
    with pytest.raises(ValueError, match="epoch"):
        gamma_multipliers("linear", epoch, total)


@pytest.mark.parametrize(
    "strategy, start, end",
    [("fixed", (1, 1, 1), (1, 1, 1)), ("linear", (1, 1, 1), (0.5, 0.5, 0.5)),
     ("cosine", (1, 1, 1), (0.5, 0.5, 0.5)), ("hierarchical", (1.0, 0.8, 0.6), (0.5, 0.5, 1.3))],
)
def test_start_end_and_past_the_end(strategy: str, start, end) -> None:
    assert gamma_multipliers(strategy, 0, TOTAL) == approx3(start)
    assert gamma_multipliers(strategy, -5, TOTAL) == approx3(start)  # clamped before the start too
    assert gamma_multipliers(strategy, TOTAL, TOTAL) == approx3(end)
    assert gamma_multipliers(strategy, 2 * TOTAL, TOTAL) == approx3(end)


def test_linear_and_cosine_midpoints() -> None:
    assert gamma_multipliers("linear", 1500, TOTAL) == approx3((0.75,) * 3)
    assert gamma_multipliers("cosine", 1500, TOTAL) == approx3((0.75,) * 3)
    m = 0.5 + 0.25 * (1 + math.cos(math.pi * 0.25))
    assert gamma_multipliers("cosine", 750, TOTAL) == approx3((m,) * 3)


@pytest.mark.parametrize(
    "epoch, expected",
    [(300, (1.2, 0.8, 0.6)), (1500, (0.9, 1.1, 1.0)), (2500, (0.7, 0.8, 1.1)), (3000, (0.5, 0.5, 1.3)),
     (150, (1.1, 0.8, 0.6)), (900, (1.05, 0.95, 0.8)), (2000, (0.8, 0.95, 1.05)), (2750, (0.6, 0.65, 1.2))],
)
def test_hierarchical_at_every_phase_boundary_and_midpoint(epoch: int, expected) -> None:
    assert gamma_multipliers("hierarchical", epoch, TOTAL) == approx3(expected)


def test_hierarchical_is_continuous_across_phases_and_never_negative() -> None:
    for _name, end, _start, _change in HIERARCHICAL_PHASES[:-1]:
        left = gamma_multipliers("hierarchical", end * TOTAL - 1e-6, TOTAL)
        right = gamma_multipliers("hierarchical", end * TOTAL + 1e-6, TOTAL)
        assert left == pytest.approx(right, abs=1e-8)
    for epoch in range(-10, 2 * TOTAL, 7):
        assert min(gamma_multipliers("hierarchical", epoch, TOTAL)) >= 0


def test_schedules_are_relative_to_the_run_length() -> None:
    for strategy in ("linear", "cosine", "hierarchical"):
        assert gamma_multipliers(strategy, 10, 100) == approx3(gamma_multipliers(strategy, 300, TOTAL))


def test_adaptive_needs_its_state() -> None:
    with pytest.raises(ValueError, match="AdaptiveGamma"):
        gamma_multipliers("adaptive", 0, TOTAL)
    assert make_state("linear") is None
    assert isinstance(make_state("adaptive", window=5), AdaptiveGamma)


def test_adaptive_shrinks_settled_scales_and_grows_noisy_ones_within_bounds() -> None:
    state = AdaptiveGamma(window=5)
    for epoch in range(4):
        state.record({"s1_distortion": 1.0, "s1_bpp": 0.5, "s2_distortion": 1.0 + (epoch % 2),
                      "s2_bpp": 0.1, "s3_bpp": 0.7})
        assert gamma_multipliers("adaptive", epoch, 100, state=state) == (1.0, 1.0, 1.0)  # window not full
    state.record({"s1_distortion": 1.0, "s1_bpp": 0.5, "s2_distortion": 1.0, "s2_bpp": 0.1, "s3_bpp": 0.7 + 0.02})
    m1, m2, m3 = gamma_multipliers("adaptive", 4, 100, state=state)
    assert m1 == pytest.approx(0.95)  # flat losses: coefficient of variation 0 < 0.01
    assert m2 == pytest.approx(1.02)  # alternating losses: CV far above 0.05
    assert m3 == pytest.approx(1.0)  # CV about 0.011, between the two thresholds
    for epoch in range(5, 200):
        state.record({"s1": 1.5, "s2": 1.0 + (epoch % 2), "s3": 0.7})
    m1, m2, m3 = gamma_multipliers("adaptive", 199, 200, state=state)
    assert (m1, m2) == (0.5, 1.5)  # clamped to [0.5, 1.5] gamma0
    with pytest.raises(ValueError, match="scale"):
        state.record({"distortion": 1.0})


def test_adaptive_resumed_equals_uninterrupted() -> None:
    def losses(epoch: int) -> dict[str, float]:
        return {"s1": 1 + 0.1 * math.sin(epoch), "s2": 1.0, "s3": 1 + 0.01 * (epoch % 3)}

    straight = AdaptiveGamma(window=4)
    for epoch in range(20):
        straight.record(losses(epoch))
    first = AdaptiveGamma(window=4)
    for epoch in range(9):
        first.record(losses(epoch))
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = AdaptiveGamma(window=4)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for epoch in range(9, 20):
        resumed.record(losses(epoch))
    assert resumed.state_dict() == straight.state_dict()
    assert straight.multipliers != [1.0, 1.0, 1.0]


def test_visualization_script_writes_the_figure(tmp_path) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "visualize_gamma_schedules.py"
    spec = importlib.util.spec_from_file_location("visualize_gamma_schedules", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = module.curves(60, (0.008, 0.006, 0.004))
    assert data["hierarchical"][-1] == pytest.approx((0.004, 0.003, 0.0052))
    out = module.plot(60, tmp_path / "scale_gamma_strategies.png")
    assert out.exists() and out.stat().st_size > 10_000
    assert not list(tmp_path.glob("*.tmp.png"))


# --- learning-rate schedules (OptimizerConfig.lr_at applies them; tests/test_config.py checks the learning rates) ---


def test_lr_schedule_registry_and_factors() -> None:
    assert set(LR_SCHEDULES.names()) == {"step", "cosine", "constant"}
    with pytest.raises(ValueError, match="constant, cosine, step"):
        LR_SCHEDULES.get("exponential")
    step = LR_SCHEDULES.get("step")
    assert [step(m, 3001) for m, _ in OFFICIAL_LR_STEPS] == [f for _, f in OFFICIAL_LR_STEPS]
    assert step(0, 3001) == 1.0 and step(OFFICIAL_LR_STEPS[0][0] - 1, 3001) == 1.0
    cosine = LR_SCHEDULES.get("cosine")
    assert cosine(0, 10) == 1.0 and cosine(10, 10) == pytest.approx(0.01) and cosine(99, 10) == pytest.approx(0.01)
    assert {LR_SCHEDULES.get("constant")(e, 7) for e in range(10)} == {1.0}
