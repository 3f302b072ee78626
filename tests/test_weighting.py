"""Task weighting: FAMO exactly as docs/design.md §3, and the tests that show it is not the broken original
(weights that never moved, gammas that were no-ops, NaN within two steps, state never saved)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from hpcm_tune.config import WeightingConfig
from hpcm_tune.metrics import SCALES, TASK_SCALE, TASKS
from hpcm_tune.testing import ToyMultiTask, ToyRateDistortion
from hpcm_tune.weighting import FAMO, WEIGHTINGS, HierarchicalFAMO, build_weighting

# --- helpers -------------------------------------------------------------------------------------------------


def _roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would be."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


class FiveTaskToy(ToyMultiTask):
    """ToyMultiTask with the hierarchical objective's five task names."""

    def __init__(self, scales=(1.0, 20.0, 3.0, 60.0, 8.0), seed: int = 0) -> None:
        super().__init__(scales=scales, dim=6, seed=seed)
        self.task_names = TASKS

    def forward(self) -> dict[str, torch.Tensor]:
        return dict(zip(TASKS, super().forward().values()))


def train_toy(toy, weighting, steps: int, lr: float = 0.01, noise: float = 0.0, start: int = 0,
              optimizer: torch.optim.Optimizer | None = None) -> torch.optim.Optimizer:
    """Mini training loop as the engine runs it; ``noise`` multiplies each step's losses by a per-step factor
    (a stand-in for the batch) drawn from a generator seeded by the step, so a resumed run sees the same."""
    optimizer = optimizer or torch.optim.Adam(toy.parameters(), lr=lr)
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(step)
        factors = 1 + noise * torch.randn(len(toy.task_names), generator=gen, dtype=torch.float64)

        def batch_losses(factors=factors) -> dict[str, torch.Tensor]:
            return {k: v * f for (k, v), f in zip(toy().items(), factors)}

        losses = batch_losses()
        loss = weighting.loss(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        def reevaluate(batch_losses=batch_losses) -> dict[str, torch.Tensor]:
            with torch.no_grad():
                return batch_losses()

        weighting.update(losses, reevaluate)
    return optimizer


def log_improvements(toy, before: dict[str, float]) -> list[float]:
    with torch.no_grad():
        return [math.log1p(before[k]) - math.log1p(float(v)) for k, v in toy().items()]


# --- registry and options ------------------------------------------------------------------------------------


def test_registry_and_unknown_names() -> None:
    assert set(WEIGHTINGS.names()) == {"standard", "famo", "hierarchical"}
    with pytest.raises(ValueError, match="famo, hierarchical, standard"):
        build_weighting("famous", TASKS)
    with pytest.raises(ValueError, match="w_lr"):
        build_weighting("famo", TASKS, wlr=0.1)


@pytest.mark.parametrize(
    "options, key",
    [({"w_lr": 0}, "w_lr"), ({"gamma_s2": -1}, "gamma_s2"), ({"eps": 0}, "eps"),
     ({"update_mode": "every_batch"}, "update_mode"), ({"scale_weights": (0.5, 0.5)}, "scale_weights"),
     ({"scale_weights": (0.5, -0.2, 0.7)}, "scale_weights"), ({"min_loss": float("nan")}, "min_loss")],
)
def test_bad_options_name_the_key(options: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        build_weighting("hierarchical", TASKS, **options)


def test_scale_weights_follow_the_one_rule_of_the_run_config() -> None:
    """The weighting takes the run config's section, so its scale_weights rule is config.check_scale_weights
    (three numbers > 0 summing to 1), the rule sweeps and hand runs follow: [2, 4, 4] is refused, not normalized."""
    with pytest.raises(ValueError, match=r"scale_weights: got \[2, 4, 4\]; allowed: three numbers > 0 .* summing to 1"):
        build_weighting("hierarchical", TASKS, scale_weights=[2, 4, 4])
    w = build_weighting("hierarchical", TASKS, WeightingConfig(scale_weights=(0.2, 0.4, 0.4)))
    assert w.config.scale_weights == pytest.approx((0.2, 0.4, 0.4))
    assert list(w.weights().values()) == pytest.approx([0.1, 0.1, 0.2, 0.2, 0.4])
    with pytest.raises(ValueError, match="not both"):
        build_weighting("hierarchical", TASKS, WeightingConfig(), w_lr=0.1)


def test_hierarchical_needs_scale_tasks_and_famo_two_tasks() -> None:
    with pytest.raises(ValueError, match="no scale"):
        build_weighting("hierarchical", ("distortion", "bpp"))
    with pytest.raises(ValueError, match="two tasks"):
        build_weighting("famo", ("loss",))


# --- the exact update ----------------------------------------------------------------------------------------


def test_one_logit_update_by_hand() -> None:
    """Two FAMO steps with given numbers, computed with plain math (softmax Jacobian, gamma*w, Adam)."""
    w_lr, gamma, eps = 0.1, 0.5, 1e-8
    weighting = build_weighting("famo", ("a", "b"), w_lr=w_lr, gamma=gamma)
    steps = [((2.0, 50.0), (1.5, 45.0)), ((1.5, 45.0), (1.4, 30.0))]
    w, m, v = [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
    for t, (before, after) in enumerate(steps, start=1):
        # by hand
        e = [math.exp(x) for x in w]
        z = [x / sum(e) for x in e]
        delta = [math.log(b + 1 + eps) - math.log(a + 1 + eps) for b, a in zip(before, after)]
        mean = sum(zi * di for zi, di in zip(z, delta))
        g = [zi * (di - mean) + gamma * wi for zi, di, wi in zip(z, delta, w)]
        m = [0.9 * mi + 0.1 * gi for mi, gi in zip(m, g)]
        v = [0.999 * vi + 0.001 * gi * gi for vi, gi in zip(v, g)]
        w = [wi - w_lr * (mi / (1 - 0.9**t)) / (math.sqrt(vi / (1 - 0.999**t)) + 1e-8)
             for wi, mi, vi in zip(w, m, v)]
        # implementation
        losses = dict(zip(("a", "b"), torch.tensor(before, dtype=torch.float64)))
        weighting.update(losses, lambda after=after: dict(zip(("a", "b"), torch.tensor(after, dtype=torch.float64))))
        assert weighting.logits().tolist() == pytest.approx(w, rel=1e-12, abs=1e-15)
    e = [math.exp(x) for x in w]
    assert list(weighting.weights().values()) == pytest.approx([x / sum(e) for x in e], rel=1e-12)
    # The faster-improving task (a: 2.0 -> 1.5 first) lost weight.
    assert weighting.weights()["a"] < 0.5


def test_model_loss_and_its_gradient_by_hand() -> None:
    weighting = build_weighting("famo", ("a", "b"))
    la = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    lb = torch.tensor(50.0, dtype=torch.float64, requires_grad=True)
    loss = weighting.loss({"a": la, "b": lb})
    eps = 1e-8
    da, db = 2.0 + 1 + eps, 50.0 + 1 + eps  # L - m + eps with m = -1
    c = 0.5 / da + 0.5 / db
    assert loss.item() == pytest.approx((0.5 * math.log(da) + 0.5 * math.log(db)) / c, rel=1e-12)
    loss.backward()
    # d loss / d L_i = z_i / (L_i - m + eps) / c: a convex combination of the task gradients.
    assert la.grad.item() == pytest.approx(0.5 / da / c, rel=1e-12)
    assert lb.grad.item() == pytest.approx(0.5 / db / c, rel=1e-12)
    assert la.grad.item() + lb.grad.item() == pytest.approx(1.0, rel=1e-9)


def test_matches_autograd_softmax_and_torch_adam_with_weight_decay() -> None:
    """An independent reference: the logit gradient by autograd through softmax, torch's Adam with L2."""
    gamma, w_lr = 0.05, 0.025
    weighting = build_weighting("famo", ("a", "b", "c"), w_lr=w_lr, gamma=gamma)
    ref_w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    ref_opt = torch.optim.Adam([ref_w], lr=w_lr, weight_decay=gamma)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        before = torch.rand(3, generator=gen, dtype=torch.float64) * 10
        after = before * (0.5 + torch.rand(3, generator=gen, dtype=torch.float64))
        weighting.update(dict(zip("abc", before)), lambda after=after: dict(zip("abc", after)))
        delta = torch.log(before + 1 + 1e-8) - torch.log(after + 1 + 1e-8)
        (grad,) = torch.autograd.grad(torch.softmax(ref_w, 0), ref_w, grad_outputs=delta)
        ref_w.grad = grad
        ref_opt.step()
    torch.testing.assert_close(weighting.logits(), ref_w.detach(), rtol=1e-12, atol=1e-14)


# --- behaviour on toy problems ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_famo_balances_tasks_of_very_different_scales_and_standard_does_not(seed: int) -> None:
    results = {}
    for name in ("standard", "famo"):
        toy = ToyMultiTask(scales=(1.0, 100.0), seed=seed)
        with torch.no_grad():
            before = {k: float(v) for k, v in toy().items()}
        weighting = build_weighting(name, toy.task_names)
        train_toy(toy, weighting, steps=200)
        improvements = log_improvements(toy, before)
        results[name] = (max(improvements) - min(improvements), weighting.weights())
    spread_std, weights_std = results["standard"]
    spread_famo, weights_famo = results["famo"]
    assert weights_std == {"task0": 1.0, "task1": 1.0}
    # The weights moved away from uniform, against the large task, and the improvements evened out.
    assert weights_famo["task1"] < 0.45
    assert spread_famo < 0.6 * spread_std


def test_gamma_changes_the_outcome() -> None:
    logits = {}
    for gamma in (0.0, 0.1, 1.0):
        toy = ToyMultiTask(seed=0)
        weighting = build_weighting("famo", toy.task_names, gamma=gamma)
        train_toy(toy, weighting, steps=60)
        logits[gamma] = weighting.logits()
    assert not torch.equal(logits[0.0], logits[0.1])
    # L2 on the logits pulls them toward 0 (the prior): larger gamma, smaller logits.
    assert logits[1.0].abs().sum() < logits[0.1].abs().sum() < logits[0.0].abs().sum()


def test_scale_gammas_and_multipliers_reach_the_update() -> None:
    weighting = build_weighting("hierarchical", TASKS, gamma_s1=0.01, gamma_s2=0.02, gamma_s3=0.03)
    assert weighting.gammas() == pytest.approx({"s1": 0.01, "s2": 0.02, "s3": 0.03})
    weighting.set_gamma_multipliers((0.5, 1.0, 2.0))
    assert weighting.gammas() == pytest.approx({"s1": 0.005, "s2": 0.02, "s3": 0.06})
    with pytest.raises(ValueError, match="multiplier"):
        weighting.set_gamma_multipliers((1.0, -1.0, 1.0))
    # Different multipliers change the trajectory.
    runs = []
    for mult in ((1.0, 1.0, 1.0), (50.0, 50.0, 50.0)):
        toy = FiveTaskToy()
        w = build_weighting("hierarchical", TASKS)
        w.set_gamma_multipliers(mult)
        train_toy(toy, w, steps=30)
        runs.append(w.logits())
    assert not torch.equal(*runs)


def test_prior_shifts_weights_toward_the_emphasized_scale() -> None:
    default = build_weighting("hierarchical", TASKS)
    assert list(default.weights().values()) == pytest.approx([0.15, 0.15, 0.2, 0.2, 0.3])
    s1_share = {}
    for label, sw in (("s1", (0.6, 0.2, 0.2)), ("s3", (0.2, 0.2, 0.6))):
        toy = FiveTaskToy()
        weighting = build_weighting("hierarchical", TASKS, scale_weights=sw)
        train_toy(toy, weighting, steps=40)
        s1_share[label] = sum(v for k, v in weighting.weights().items() if TASK_SCALE[k] == "s1")
    assert s1_share["s1"] > s1_share["s3"] + 0.2


def _rd_toy_final_distortion(lmbda: float, min_loss: float) -> float:
    toy = ToyRateDistortion()
    weighting = build_weighting("famo", ("distortion", "bpp"), min_loss=min_loss)
    optimizer = torch.optim.Adam(toy.parameters(), lr=0.05)
    for _ in range(300):
        out = toy()
        losses = {"distortion": lmbda * out["distortion"], "bpp": out["bpp"]}
        loss = weighting.loss(losses)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        def reevaluate() -> dict[str, torch.Tensor]:
            with torch.no_grad():
                o = toy()
            return {"distortion": lmbda * o["distortion"], "bpp": o["bpp"]}

        weighting.update(losses, reevaluate)
    with torch.no_grad():
        return float(toy()["distortion"])


def test_lambda_still_moves_the_optimum_with_default_min_loss() -> None:
    """With m = -1 lambda is not cancelled, though it is scaled down to lambda_eff while lambda*D >> 1
    (test_famo_steps_along_grad_r_plus_lambda_eff_grad_d)."""
    low, high = _rd_toy_final_distortion(1.0, -1.0), _rd_toy_final_distortion(100.0, -1.0)
    assert high < 0.5 * low


def test_lambda_cancels_from_the_gradient_with_zero_min_loss() -> None:
    """Why the default min loss is -1: with m = 0, grad log(lambda D) = grad D / D for every lambda, so the
    model's update (c times the gradient, c the held-constant normalizer) no longer depends on lambda."""
    scaled = {}
    for min_loss in (0.0, -1.0):
        for lmbda in (1.0, 100.0):
            toy = ToyRateDistortion(init_log_step=0.3)
            weighting = build_weighting("famo", ("distortion", "bpp"), min_loss=min_loss)
            out = toy()
            losses = {"distortion": lmbda * out["distortion"], "bpp": out["bpp"]}
            weighting.loss(losses).backward()
            c = sum(0.5 / (v.detach().item() - min_loss + 1e-8) for v in losses.values())
            scaled[min_loss, lmbda] = toy.log_step.grad.item() * c
    assert scaled[0.0, 1.0] == pytest.approx(scaled[0.0, 100.0], rel=1e-6)
    assert scaled[-1.0, 1.0] != pytest.approx(scaled[-1.0, 100.0], rel=1e-2)


# --- update modes ------------------------------------------------------------------------------------------------


def test_update_modes_call_reevaluate_only_when_needed() -> None:
    calls = []

    def reevaluate() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"a": torch.tensor(1.0), "b": torch.tensor(2.0)}

    losses = {"a": torch.tensor(1.5), "b": torch.tensor(3.0)}
    build_weighting("standard", ("a", "b")).update(losses, reevaluate)
    build_weighting("famo", ("a", "b"), update_mode="next_batch").update(losses, reevaluate)
    assert calls == []
    build_weighting("famo", ("a", "b")).update(losses, reevaluate)
    assert calls == [1]
    with pytest.raises(ValueError, match="reevaluate"):
        build_weighting("famo", ("a", "b")).update(losses, None)


def test_next_batch_uses_the_next_batch_as_after() -> None:
    batches = [(4.0, 30.0), (3.0, 29.0), (2.5, 20.0), (2.4, 19.5)]
    nxt = build_weighting("famo", ("a", "b"), update_mode="next_batch")
    same = build_weighting("famo", ("a", "b"), update_mode="same_batch")

    def named(values) -> dict[str, torch.Tensor]:
        return dict(zip(("a", "b"), map(torch.tensor, values)))

    nxt.update(named(batches[0]))
    assert nxt.logits().abs().sum() == 0  # nothing to compare with yet
    for before, after in zip(batches, batches[1:]):
        if before is not batches[0]:
            nxt.update(named(before))
        same.update(named(before), lambda after=after: named(after))
    nxt.update(named(batches[-1]))
    torch.testing.assert_close(nxt.logits(), same.logits(), rtol=0, atol=0)


# --- robustness ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_loss", [-1.0, 0.0])
def test_no_nan_when_a_loss_drops_below_its_first_value_or_is_zero(min_loss: float) -> None:
    weighting = build_weighting("hierarchical", TASKS, min_loss=min_loss)
    sequence = [(5.0, 1.0, 4.0, 0.5, 0.3), (0.0, 0.2, 1.0, 0.0, 0.1), (0.0, 0.0, 0.0, 0.0, 0.0),
                (-0.5, 0.0, 2.0, 0.0, 0.0)]  # below the first value, zero, even below min_loss
    for before, after in zip(sequence, sequence[1:]):
        losses = {t: torch.tensor(v, requires_grad=True) for t, v in zip(TASKS, before)}
        loss = weighting.loss(losses)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(losses[t].grad) for t in TASKS)
        weighting.update(losses, lambda after=after: {t: torch.tensor(v) for t, v in zip(TASKS, after)})
        assert torch.isfinite(weighting.logits()).all()
        assert sum(weighting.weights().values()) == pytest.approx(1.0)


def test_non_finite_losses_skip_the_logit_step() -> None:
    weighting = build_weighting("famo", ("a", "b"))
    weighting.update({"a": torch.tensor(2.0), "b": torch.tensor(3.0)},
                     lambda: {"a": torch.tensor(1.0), "b": torch.tensor(2.9)})
    state = weighting.state_dict()
    weighting.update({"a": torch.tensor(float("nan")), "b": torch.tensor(3.0)},
                     lambda: {"a": torch.tensor(1.0), "b": torch.tensor(float("inf"))})
    after = weighting.state_dict()
    for key in ("logits", "adam_exp_avg", "adam_exp_avg_sq", "adam_step"):
        assert torch.equal(state[key], after[key]), key


# --- state and resume ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["famo", "hierarchical"])
@pytest.mark.parametrize("mode", ["same_batch", "next_batch"])
def test_interrupted_and_resumed_run_is_bit_identical(name: str, mode: str) -> None:
    def fresh():
        toy = FiveTaskToy(seed=3)
        weighting = build_weighting(name, TASKS, update_mode=mode, w_lr=0.05)
        weighting.set_gamma_multipliers((1.2, 0.8, 0.6))
        return toy, weighting

    toy, weighting = fresh()
    train_toy(toy, weighting, steps=20, noise=0.2)
    uninterrupted = weighting.logits()

    toy, weighting = fresh()
    optimizer = train_toy(toy, weighting, steps=10, noise=0.2)
    checkpoint = _roundtrip({"model": toy.state_dict(), "optimizer": optimizer.state_dict(),
                             "weighting": weighting.state_dict()})
    toy, weighting = fresh()
    weighting.set_gamma_multipliers((1.0, 1.0, 1.0))  # the checkpoint must bring the multipliers back
    toy.load_state_dict(checkpoint["model"])
    optimizer = torch.optim.Adam(toy.parameters(), lr=0.01)
    optimizer.load_state_dict(checkpoint["optimizer"])
    weighting.load_state_dict(checkpoint["weighting"])
    train_toy(toy, weighting, steps=10, noise=0.2, start=10, optimizer=optimizer)
    assert torch.equal(weighting.logits(), uninterrupted)
    assert weighting.logits().abs().sum() > 0


def test_state_of_another_method_or_task_set_fails_naming_both() -> None:
    state = build_weighting("famo", ("distortion", "bpp")).state_dict()
    with pytest.raises(ValueError, match="famo.*hierarchical"):
        build_weighting("hierarchical", TASKS).load_state_dict(state)


def test_standard_weighting_is_the_plain_sum() -> None:
    weighting = build_weighting("standard", TASKS)
    losses = {t: torch.tensor(float(i + 1)) for i, t in enumerate(TASKS)}
    assert weighting.loss(losses).item() == 15.0
    assert weighting.weights() == dict.fromkeys(TASKS, 1.0)
    assert weighting.gammas() == {}
    shares = weighting.scale_contributions()
    assert shares == pytest.approx({"s1": 3 / 15, "s2": 7 / 15, "s3": 5 / 15})
    restored = build_weighting("standard", TASKS)
    restored.load_state_dict(_roundtrip(weighting.state_dict()))


def test_scale_contributions_are_weighted_shares_summing_to_one() -> None:
    weighting = build_weighting("hierarchical", TASKS)
    assert weighting.scale_contributions() == {}
    losses = {t: torch.tensor(v) for t, v in zip(TASKS, (4.0, 0.5, 2.0, 0.4, 0.8))}
    weighting.loss(losses)
    z = weighting.weights()
    parts = {s: sum(z[t] * float(losses[t]) for t in TASKS if TASK_SCALE[t] == s) for s in SCALES}
    total = sum(parts.values())
    shares = weighting.scale_contributions()
    assert shares == pytest.approx({s: parts[s] / total for s in SCALES})
    assert sum(shares.values()) == pytest.approx(1.0)
    assert build_weighting("famo", ("distortion", "bpp")).scale_contributions() == {}


def test_famo_and_hierarchical_share_one_implementation() -> None:
    assert issubclass(HierarchicalFAMO, FAMO)
    # famo's one gamma defaults to the mean scale gamma and follows the multipliers' mean for 2 tasks.
    famo = build_weighting("famo", ("distortion", "bpp"))
    assert famo.gammas() == pytest.approx(dict.fromkeys(SCALES, 0.006))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_state_follows_the_losses_to_cuda_and_matches_cpu() -> None:
    results = []
    for device in ("cpu", "cuda"):
        weighting = build_weighting("hierarchical", TASKS)
        gen = torch.Generator().manual_seed(0)
        for _ in range(5):
            before = torch.rand(5, generator=gen, dtype=torch.float64).to(device)
            after = (before * 0.9).to(device)
            weighting.loss(dict(zip(TASKS, before)))
            weighting.update(dict(zip(TASKS, before)), lambda after=after: dict(zip(TASKS, after)))
        results.append(weighting.logits())
        state = weighting.state_dict()
        assert state["logits"].device.type == "cpu"
    torch.testing.assert_close(results[0], results[1])


@pytest.mark.parametrize("mode", ["same_batch", "next_batch"])
def test_same_noise_reevaluation_measures_the_step_not_the_noise(mode: str) -> None:
    """With a zero learning rate the model does not change: re-evaluating the same batch with the same
    quantization noise gives delta = 0 and the logits stay at 0; next_batch sees only noise and moves."""
    from hpcm_tune.objectives import build_objective
    from hpcm_tune.testing import TinyCompressionModel

    torch.manual_seed(0)
    model = TinyCompressionModel().train()
    objective = build_objective("hierarchical", 0.0067)
    weighting = build_weighting("hierarchical", objective.task_names, update_mode=mode)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)
    x = torch.rand(2, 3, 32, 32)
    for _ in range(3):
        noise_state = torch.get_rng_state()
        parts = objective(model(x), x)
        task_losses = {t: parts[t] for t in objective.task_names}
        optimizer.zero_grad()
        weighting.loss(task_losses).backward()
        optimizer.step()

        def reevaluate(noise_state=noise_state) -> dict[str, torch.Tensor]:
            after = torch.get_rng_state()
            torch.set_rng_state(noise_state)
            with torch.no_grad():
                again = objective(model(x), x)
            torch.set_rng_state(after)
            return {t: again[t] for t in objective.task_names}

        weighting.update({t: v.detach() for t, v in task_losses.items()}, reevaluate)
    moved = weighting.logits().abs().max().item()
    if mode == "same_batch":
        assert moved == 0.0
    else:
        assert moved > 1e-3


# --- coefficients and the effective lambda -----------------------------------------------------------------------


def _moved_famo(name: str = "famo", tasks=("distortion", "bpp"), **options):
    """A weighting whose logits have left 0 (a few updates on made-up losses)."""
    weighting = build_weighting(name, tasks, w_lr=0.2, **options)
    gen = torch.Generator().manual_seed(4)
    for _ in range(5):
        before = torch.rand(len(tasks), generator=gen, dtype=torch.float64) * 5 + 1
        after = before * torch.tensor([0.5 + i / len(tasks) for i in range(len(tasks))], dtype=torch.float64)
        weighting.update(dict(zip(tasks, before)), lambda after=after: dict(zip(tasks, after)))
    assert len(set(weighting.weights().values())) == len(tasks)
    return weighting


def test_standard_coefficients_are_one() -> None:
    weighting = build_weighting("standard", TASKS)
    assert weighting.coefficients(dict.fromkeys(TASKS, 3.0)) == dict.fromkeys(TASKS, 1.0)


@pytest.mark.parametrize("min_loss", [-1.0, 0.0, (-1.0, -0.5)])
def test_famo_coefficients_by_hand(min_loss) -> None:
    per_task = isinstance(min_loss, tuple)  # one m_i per task: a weighting option beyond the run config's one m
    weighting = _moved_famo(**({"task_min_loss": min_loss} if per_task else {"min_loss": min_loss}))
    z = weighting.weights()
    m = dict(zip(("distortion", "bpp"), min_loss if isinstance(min_loss, tuple) else (min_loss, min_loss)))
    losses = {"distortion": 35.0, "bpp": 0.25}
    expected = {t: z[t] / (losses[t] - m[t] + 1e-8) for t in losses}
    assert weighting.coefficients(losses) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name, tasks", [("famo", ("distortion", "bpp")), ("hierarchical", TASKS)])
def test_coefficients_are_the_gradient_of_the_loss_up_to_its_normalizer(name, tasks) -> None:
    """d loss / d L_i = a_i / sum_j a_j: the model's step follows sum_i a_i grad L_i."""
    weighting = _moved_famo(name, tasks)
    values = torch.tensor([30.0, 0.2, 7.0, 0.4, 0.6][: len(tasks)], dtype=torch.float64, requires_grad=True)
    weighting.loss(dict(zip(tasks, values))).backward()
    a = weighting.coefficients(dict(zip(tasks, values.tolist())))
    total = sum(a.values())
    assert values.grad.tolist() == pytest.approx([a[t] / total for t in tasks], rel=1e-9)


class _TwoSided(torch.nn.Module):
    """lambda * D and R of a 3-parameter toy whose gradients point in different directions."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = 255.0**2 * ((self.theta - torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64)) ** 2).mean()
        r = ((self.theta - torch.tensor([0.0, 2.0, 0.5], dtype=torch.float64)) ** 2).sum() + 0.05
        return d, r


def _grad(toy, value) -> torch.Tensor:
    toy.zero_grad()
    value.backward()
    return toy.theta.grad.clone()


@pytest.mark.parametrize("lmbda", [0.0067, 0.05])
def test_famo_steps_along_grad_r_plus_lambda_eff_grad_d(lmbda) -> None:
    from hpcm_tune.metrics import effective_lambda

    toy, weighting = _TwoSided(), _moved_famo()
    grad_d, grad_r = _grad(toy, toy()[0]), _grad(toy, toy()[1])
    d, r = toy()
    losses = {"distortion": lmbda * d, "bpp": r}
    step = _grad(toy, weighting.loss(losses))
    values = {t: float(v.detach()) for t, v in losses.items()}
    a = weighting.coefficients(values)
    lambda_eff = effective_lambda(lmbda, a, values, values["distortion"], values["bpp"])
    expected = a["bpp"] / sum(a.values()) * (grad_r + lambda_eff * grad_d)
    torch.testing.assert_close(step, expected, rtol=1e-9, atol=1e-12)
    # Two tasks, min loss -1: lambda (z_D / z_R) (1 + R) / (1 + lambda D); well below lambda where lambda D >> 1.
    z = weighting.weights()
    assert lambda_eff == pytest.approx(
        lmbda * z["distortion"] / z["bpp"] * (1 + values["bpp"]) / (1 + values["distortion"]), rel=1e-7)
    assert values["distortion"] > 5 and lambda_eff < lmbda / 2


def test_a_large_negative_min_loss_makes_famo_the_standard_loss_with_an_adaptive_weight() -> None:
    from hpcm_tune.metrics import effective_lambda

    weighting = _moved_famo(min_loss=-1e6)
    z = weighting.weights()
    for lambda_d, rate in ((40.0, 0.2), (0.5, 1.5)):
        values = {"distortion": lambda_d, "bpp": rate}
        got = effective_lambda(0.013, weighting.coefficients(values), values, lambda_d, rate)
        assert got == pytest.approx(0.013 * z["distortion"] / z["bpp"], rel=1e-4)  # whatever lambda * D is
