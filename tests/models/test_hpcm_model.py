"""HPCM forward pass: presets, parameter counts, shapes, the per-scale rate partition, gradients, RNG replay,
bad inputs (docs/design.md §2, docs/architecture.md 'Models')."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from hpcm_tune.metrics import LIKELIHOOD_KEYS
from hpcm_tune.models import PRESETS, build_model
from hpcm_tune.models.hpcm import HPCM


@pytest.fixture(scope="module")
def tiny() -> HPCM:
    torch.manual_seed(0)
    return build_model("tiny")


def _count(preset: str) -> int:
    with torch.device("meta"):  # count without allocating 68 M parameters
        model = build_model(preset)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(("preset", "millions"), [("base", 68.50), ("large", 89.71)])
def test_paper_parameter_counts(preset, millions):
    assert abs(_count(preset) / 1e6 - millions) <= 0.005 * millions


def test_presets_are_ordered_by_size():
    counts = [_count(p) for p in ("tiny", "small", "base", "large")]
    assert counts == sorted(counts) and counts[0] < 1e6


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="tiny, small, base, large"):
        build_model("huge")
    with pytest.raises(ValueError, match="unknown model override.*widht"):
        build_model("tiny", widht=3)
    with pytest.raises(ValueError, match="M=12.*multiple of 8"):
        build_model("tiny", M=12)
    with pytest.raises(ValueError, match="heads=5"):
        build_model("tiny", heads=5)


def test_overrides_and_metadata():
    model = build_model("tiny", N=16)
    assert model.preset == "tiny" and model.N == 16 and model.pad_multiple == 64
    assert set(PRESETS) == {"tiny", "small", "base", "large"}


def _y_elements(model: HPCM, h: int, w: int, batch: int) -> int:
    m = model.pad_multiple
    hp, wp = -(-h // m) * m, -(-w // m) * m
    return batch * model.M * (hp // 16) * (wp // 16)


@pytest.mark.parametrize("size", [(64, 64), (64, 128), (70, 100), (129, 65)])
@pytest.mark.parametrize("training", [True, False])
def test_shapes_and_scale_partition_counts(tiny, size, training):
    tiny.train(training)
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        out = tiny(x)
    assert out["x_hat"].shape == x.shape
    likes = out["likelihoods"]
    assert tuple(likes) == LIKELIHOOD_KEYS
    n = [likes[k].numel() for k in ("y_s1", "y_s2", "y_s3")]
    assert sum(n) == _y_elements(tiny, *size, batch=2)
    assert n[1] == 3 * n[0] and n[2] == 12 * n[0]  # 1/16, 3/16, 12/16 of y
    for v in likes.values():
        assert torch.all((v > 0) & (v <= 1))
    if not training:
        assert out["x_hat"].min() >= 0 and out["x_hat"].max() <= 1


def test_each_y_element_is_counted_in_exactly_one_scale(tiny, monkeypatch):
    # Replace the likelihood by the element's own index: the three outputs must be a permutation of all y.
    def ids(residual, scales):
        return torch.arange(residual.numel(), dtype=torch.float64).view_as(residual)

    monkeypatch.setattr(tiny.y_conditional, "likelihood", ids)
    tiny.eval()
    with torch.no_grad():
        out = tiny(torch.rand(2, 3, 128, 64))
    got = torch.cat([out["likelihoods"][k].reshape(-1) for k in ("y_s1", "y_s2", "y_s3")])
    assert torch.equal(got.sort().values, torch.arange(_y_elements(tiny, 128, 64, 2), dtype=torch.float64))


def test_gradient_reaches_every_parameter():
    torch.manual_seed(1)
    model = build_model("tiny").train()
    with torch.no_grad():  # at init z rounds to 0 (so h_s's first weight would see only zeros): widen z
        model.h_a[-1].weight.mul_(20)
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    bits = sum(-torch.log2(v).sum() for v in out["likelihoods"].values())
    loss = bits / (2 * 64 * 64) + 100 * torch.mean((out["x_hat"] - x) ** 2)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    names = {n for n, _ in model.named_parameters()}
    assert {f"step_scales.{k}" for k in range(10)} <= names  # the per-step vectors are registered


def test_training_noise_replays_from_global_rng(tiny):
    tiny.train()
    x = torch.rand(1, 3, 64, 64)
    state = torch.get_rng_state()
    with torch.no_grad():
        a = tiny(x)
        b = tiny(x)
        torch.set_rng_state(state)
        c = tiny(x)
    assert not torch.equal(a["likelihoods"]["y_s3"], b["likelihoods"]["y_s3"])
    for key in LIKELIHOOD_KEYS:
        assert torch.equal(a["likelihoods"][key], c["likelihoods"][key])
    assert torch.equal(a["x_hat"], c["x_hat"])


def test_eval_is_deterministic(tiny):
    tiny.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = tiny(x), tiny(x)
    assert torch.equal(a["x_hat"], b["x_hat"])
    assert torch.equal(a["likelihoods"]["y_s2"], b["likelihoods"]["y_s2"])


def test_tiny_training_step_is_fast():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(2, 3, 64, 64)
    times = []
    # CPU time of this process (all its threads), not wall time: the test machine is shared, and CPU time
    # is what a step costs whether or not other jobs compete for the cores.
    for _ in range(4):
        start = time.process_time()
        out = model(x)
        loss = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) + torch.mean((out["x_hat"] - x) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.process_time() - start)
    assert sorted(times)[1] < 1.0, times


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (torch.rand(1, 1, 64, 64), "3 \\(RGB\\) channels, got 1"),
        (torch.rand(3, 64, 64), "shape \\(3, 64, 64\\)"),
        (torch.randint(0, 255, (1, 3, 64, 64)), "dtype torch.int64"),
        (torch.rand(0, 3, 64, 64), "empty"),
        (torch.rand(1, 3, 0, 64), "empty"),
        (torch.full((1, 3, 64, 64), float("nan")), "NaN or inf"),
        (torch.tensor([[[[float("inf")]]]]).expand(1, 3, 64, 64), "NaN or inf"),
        ([[0.0]], "got list"),
    ],
)
def test_bad_inputs_raise_value_error(tiny, bad, match):
    tiny.eval()
    with pytest.raises(ValueError, match=match):
        tiny(bad)
    tiny.update(force=True)
    with pytest.raises(ValueError, match=match):
        tiny.compress(bad)


def test_no_hard_coded_device_and_meta_construction():
    with torch.device("meta"):
        model = build_model("small")
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    model = build_model("tiny").cuda().train()
    out = model(torch.rand(2, 3, 64, 64, device="cuda"))
    assert out["x_hat"].is_cuda and all(v.is_cuda for v in out["likelihoods"].values())


def test_bf16_autocast_forward_backward():
    torch.manual_seed(0)
    model = build_model("tiny").train()
    x = torch.rand(1, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert all(v.dtype == torch.float32 for v in out["likelihoods"].values())
    loss = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) + out["x_hat"].float().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_channels_last_model_matches_contiguous():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    x = torch.rand(1, 3, 64, 128)
    with torch.no_grad():
        ref = model(x)
        model_cl = model.to(memory_format=torch.channels_last)
        out = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out["x_hat"], ref["x_hat"], atol=1e-4, rtol=0)


def test_resumed_training_equals_uninterrupted():
    def train(model, opt, steps):
        for _ in range(steps):
            x = torch.rand(1, 3, 64, 64)
            out = model(x)
            loss = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) / 4096
            loss = loss + 100 * torch.mean((out["x_hat"] - x) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()

    torch.manual_seed(0)
    model = build_model("tiny").train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    train(model, opt, 2)
    saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()})
    train(model, opt, 2)

    resumed = build_model("tiny").train()
    resumed.load_state_dict(saved["model"])
    opt2 = torch.optim.Adam(resumed.parameters(), lr=1e-3)
    opt2.load_state_dict(saved["opt"])
    torch.set_rng_state(saved["rng"])
    train(resumed, opt2, 2)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
