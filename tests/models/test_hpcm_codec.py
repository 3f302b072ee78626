"""The real codec: rANS bitstreams per scale, bit-exact decoding, rate accuracy, damaged and foreign streams."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from hpcm_tune.models import BitstreamError, build_model
from hpcm_tune.models.hpcm import HPCM


def _rate_realistic(seed: int = 0, preset: str = "tiny") -> HPCM:
    """A randomly initialised model whose rate is in the range of a trained one (~0.3-1 bpp).

    At initialisation y is tiny and every symbol is 0, which would test nothing; widening y and lifting the
    predicted scales gives symbols spread over many CDF table entries."""
    torch.manual_seed(seed)
    model = build_model(preset).eval()
    with torch.no_grad():
        model.g_a[-1].weight.mul_(10)
        model.h_a[-1].weight.mul_(10)
        model.scales_hyper.fill_(20.0)
        model.h_s[-1].project.bias[: model.M] += 4
        for prior in (model.prior_s12, model.prior_s3):
            prior.branch_2[-1].bias[: model.M] += 4
    model.update(force=True)
    return model


@pytest.fixture(scope="module")
def model() -> HPCM:
    return _rate_realistic()


def _astronaut(size: int | None = None) -> torch.Tensor:
    img = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 255
    return img if size is None else img[..., 100 : 100 + size, 150 : 150 + size]


def _bits(likelihoods: dict) -> dict[str, float]:
    return {k: float(-torch.log2(v).sum()) for k, v in likelihoods.items()}


@pytest.mark.parametrize("size", [(64, 64), (70, 130)])
def test_round_trip_random_batch_is_bit_exact(model, size):
    torch.manual_seed(3)
    x = torch.rand(2, 3, *size)
    enc = model.compress(x)
    assert enc["shape"] == size
    assert [len(s) for s in enc["strings"]] == [2, 2, 2, 2]
    assert all(isinstance(b, bytes) for s in enc["strings"] for b in s)
    dec = model.decompress(enc["strings"], enc["shape"])
    assert torch.equal(dec["y_hat"], enc["y_hat"]) and torch.equal(dec["z_hat"], enc["z_hat"])
    with torch.no_grad():
        ref = torch.cat([model(x[i : i + 1])["x_hat"] for i in range(2)])
    assert dec["x_hat"].shape == x.shape
    torch.testing.assert_close(dec["x_hat"], ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [256, None])
def test_astronaut_bytes_match_estimated_rate(model, size):
    x = _astronaut(size)
    with torch.no_grad():
        out = model(x)
    est = _bits(out["likelihoods"])
    enc = model.compress(x)
    dec = model.decompress(enc["strings"], enc["shape"])
    torch.testing.assert_close(dec["x_hat"], out["x_hat"], atol=1e-5, rtol=0)
    actual = sum(len(s[0]) for s in enc["strings"]) * 8
    total = sum(est.values())
    pixels = x.shape[2] * x.shape[3]
    assert 0.2 < total / pixels < 2.0  # a realistic operating point, so the check means something
    assert abs(actual - total) / total < 0.02
    # One stream per scale: each carries its own scale's bits (z's stream also the small header).
    for s, key in enumerate(("y_s1", "y_s2", "y_s3")):
        assert abs(len(enc["strings"][s][0]) * 8 - est[key]) <= 0.03 * est[key] + 64


def test_compress_needs_update():
    fresh = build_model("tiny").eval()
    with pytest.raises(RuntimeError, match="update"):
        fresh.compress(torch.rand(1, 3, 64, 64))


@pytest.fixture(scope="module")
def encoded(model):
    torch.manual_seed(5)
    return model.compress(torch.rand(1, 3, 128, 128))


def _with(enc, index: int, data: bytes) -> list:
    strings = [list(s) for s in enc["strings"]]
    strings[index][0] = data
    return strings


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_truncated_streams_are_rejected(model, encoded, index):
    data = encoded["strings"][index][0]
    for cut in (len(data) - 1, len(data) // 2, 0):
        with pytest.raises(BitstreamError):
            model.decompress(_with(encoded, index, data[:cut]), encoded["shape"])


@pytest.mark.parametrize("index", [0, 2, 3])
def test_flipped_bits_are_rejected(model, encoded, index):
    data = bytearray(encoded["strings"][index][0])
    data[len(data) - 1] ^= 0x10
    with pytest.raises(BitstreamError, match="checksum|lengths"):
        model.decompress(_with(encoded, index, bytes(data)), encoded["shape"])


def test_garbage_and_foreign_streams_are_rejected(model, encoded):
    rng = np.random.default_rng(0)
    garbage = [[rng.bytes(200)] for _ in range(4)]
    with pytest.raises(BitstreamError, match="not an HPCM bitstream"):
        model.decompress(garbage, (128, 128))
    other = _rate_realistic(seed=1)
    with pytest.raises(BitstreamError, match="another model"):
        other.decompress(encoded["strings"], encoded["shape"])
    with pytest.raises(BitstreamError, match="another image size"):
        model.decompress(encoded["strings"], (128, 127))


def test_malformed_arguments_are_rejected(model, encoded):
    with pytest.raises(BitstreamError, match="s1_list"):
        model.decompress(encoded["strings"][:3], encoded["shape"])
    with pytest.raises(BitstreamError, match="equal length"):
        model.decompress([*encoded["strings"][:3], []], encoded["shape"])
    with pytest.raises(BitstreamError, match="bytes"):
        model.decompress(_with(encoded, 1, "text"), encoded["shape"])
    with pytest.raises(ValueError, match="shape"):
        model.decompress(encoded["strings"], (0, 5))
    header_only = encoded["strings"][3][0][:4] + bytes([0xFF] * 6)
    with pytest.raises(BitstreamError, match="header"):
        model.decompress(_with(encoded, 3, header_only), encoded["shape"])


def test_state_dict_round_trip_decodes_old_streams(model, encoded):
    clone = build_model("tiny").eval()
    clone.load_state_dict(model.state_dict())
    dec = clone.decompress(encoded["strings"], encoded["shape"])
    assert torch.equal(dec["y_hat"], encoded["y_hat"])


def test_codec_pins_deterministic_kernels_and_restores_flags(model, monkeypatch):
    seen = []
    original = model._hierarchy

    def spy(params, step_fn):
        seen.append((torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32))
        return original(params, step_fn)

    monkeypatch.setattr(model, "_hierarchy", spy)
    saved = torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = True, True
    try:
        enc = model.compress(torch.rand(1, 3, 64, 64))
        model.decompress(enc["strings"], enc["shape"])
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32 = saved
    assert seen == [(False, False), (False, False)]


def test_loading_a_checkpoint_from_before_update_clears_the_tables(model):
    fresh = build_model("tiny")
    updated = build_model("tiny").eval()
    updated.update(force=True)
    updated.load_state_dict(fresh.state_dict())  # tables in the checkpoint are empty
    with pytest.raises(RuntimeError, match="update"):
        updated.compress(torch.rand(1, 3, 64, 64))
    fresh.load_state_dict(model.state_dict())  # and filled tables load into an empty model
    assert fresh.y_conditional._quantized_cdf.shape == model.y_conditional._quantized_cdf.shape
