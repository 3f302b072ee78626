"""Forged bitstreams: a valid header and a recomputed checksum around payloads the encoder never wrote.

The checksum cannot stop these (anyone holding the model can recompute it), so the decoder itself must: every
forged stream either raises BitstreamError or decodes to an image of the stated shape, and none of them reaches
CompressAI's C++ decoder, which reads past the end of a short or forged stream."""

from __future__ import annotations

import random
import struct
import time
import tracemalloc

import pytest
import torch
from compressai.ans import BufferedRansEncoder, RansDecoder

from hpcm_tune.data import MAX_IMAGE_PIXELS
from hpcm_tune.models import BitstreamError, bitstream, build_model
from hpcm_tune.models import hpcm as hpcm_mod
from hpcm_tune.models.entropy import GeneralizedGaussianConditional
from hpcm_tune.models.rans import RANS64_L, RansStreamDecoder

SIZE = (64, 64)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = build_model("tiny").eval()
    with torch.no_grad():  # spread the symbols over many tables and some bypass values, as a trained model would
        m.g_a[-1].weight.mul_(10)
        m.h_a[-1].weight.mul_(10)
        m.scales_hyper.fill_(20.0)
    m.update(force=True)
    return m


@pytest.fixture(scope="module")
def encoded(model):
    torch.manual_seed(1)
    return model.compress(torch.rand(1, 3, *SIZE))


@pytest.fixture(autouse=True)
def no_compressai_decoder(monkeypatch):
    """Prove that no forged stream reaches CompressAI's unchecked C++ decoder: calling it fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("CompressAI's rANS decoder was called")

    monkeypatch.setattr(GeneralizedGaussianConditional, "decompress", refuse)  # the y and z conditionals
    monkeypatch.setattr(hpcm_mod, "RansDecoder", refuse, raising=False)


def forge(model, z_payload: bytes, y_payloads, shape=SIZE) -> list[list[bytes]]:
    """A stream in the container's format with correct lengths and a recomputed checksum."""
    z = bitstream.pack(model.fingerprint(), shape, z_payload, y_payloads)
    return [[y_payloads[0]], [y_payloads[1]], [y_payloads[2]], [z]]


def payloads(encoded) -> tuple[bytes, list[bytes]]:
    z = encoded["strings"][3][0]
    pos = 3
    for _ in range(4):
        _, pos = bitstream.read_varint(z, pos)
    return z[pos + 4 :], [encoded["strings"][s][0] for s in range(3)]


def decode_or_reject(model, strings, shape=SIZE) -> str:
    try:
        out = model.decompress(strings, shape)
    except BitstreamError:
        return "rejected"
    assert out["x_hat"].shape == (1, 3, *shape)
    return "decoded"


def test_forge_helper_reproduces_the_encoder(model, encoded):
    z, ys = payloads(encoded)
    assert forge(model, z, ys) == encoded["strings"]
    dec = model.decompress(forge(model, z, ys), SIZE)
    assert torch.equal(dec["y_hat"], encoded["y_hat"])


def test_empty_payloads_are_rejected(model, encoded):
    z, ys = payloads(encoded)
    for forged in (forge(model, b"", [b"", b"", b""]), forge(model, z, [ys[0], b"", ys[2]]),
                   forge(model, b"", ys)):
        with pytest.raises(BitstreamError, match="at least 8 bytes"):
            model.decompress(forged, SIZE)


@pytest.mark.parametrize("seed", range(3))
def test_random_payloads_are_rejected_or_decode(model, encoded, seed):
    rng = random.Random(seed)
    z, ys = payloads(encoded)
    outcomes = []
    for n in (1, 3, 4, 7, 8, 12, 16, 64, len(ys[2]), len(ys[2]) + 4):
        rand = bytes(rng.randrange(256) for _ in range(n))
        for forged in (forge(model, rand, ys), forge(model, z, [ys[0], ys[1], rand]),
                       forge(model, z, [rand, rand, rand])):
            outcomes.append(decode_or_reject(model, forged))
    # A random stream is not what the encoder writes for the symbols it decodes to.
    assert outcomes == ["rejected"] * len(outcomes)


def test_random_payload_with_a_valid_state_is_rejected_not_read_past(model, encoded):
    """8 bytes holding a state the encoder could flush: the decoder needs more words than there are."""
    z, ys = payloads(encoded)
    state = struct.pack("<Q", RANS64_L + 12345)
    with pytest.raises(BitstreamError, match="ends before its last symbol|left over"):
        model.decompress(forge(model, z, [ys[0], ys[1], state]), SIZE)


def test_huge_claimed_shape_is_rejected_before_allocating(model, encoded):
    assert hpcm_mod.MAX_IMAGE_PIXELS == MAX_IMAGE_PIXELS
    z, ys = payloads(encoded)
    forged = forge(model, z, ys, shape=(60000, 60000))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(BitstreamError, match="pixel maximum"):
            model.decompress(forged, (60000, 60000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 1 << 20  # a 60000x60000 latent would be gigabytes
    for shape in ((0, 64), (64, -1), (64.0, 64), ("64", 64), (64,), None):
        with pytest.raises(BitstreamError, match="shape"):
            model.decompress(forged, shape)


@pytest.mark.parametrize("stream", [0, 1, 2, 3])
def test_truncated_and_padded_payloads_with_recomputed_checksum_are_rejected(model, encoded, stream):
    z, ys = payloads(encoded)
    parts = [*ys, z]
    for change in (lambda p: p[:-4], lambda p: p[:-1], lambda p: p[:8], lambda p: p + bytes(4),
                   lambda p: p + b"\xff" * 4):
        forged_parts = list(parts)
        forged_parts[stream] = change(parts[stream])
        with pytest.raises(BitstreamError, match="stream"):
            model.decompress(forge(model, forged_parts[3], forged_parts[:3]), SIZE)


def test_wrong_stream_counts_are_rejected(model, encoded):
    s = encoded["strings"]
    for bad in (s[:3], [*s, s[0]], [[], [], [], []], [s[0], s[1], s[2], s[3] * 2], [s[0], s[1], s[2], s[3][0]],
                "HP", None):
        with pytest.raises(BitstreamError):
            model.decompress(bad, SIZE)


def _y_tables(model):
    yc = model.y_conditional
    return (yc._quantized_cdf.tolist(), yc._cdf_length.reshape(-1).int().tolist(),
            yc._offset.reshape(-1).int().tolist())


def test_checked_decoder_matches_compressai_symbol_for_symbol(model):
    tables = _y_tables(model)
    rng = random.Random(0)
    indexes = [rng.randrange(len(tables[1])) for _ in range(3000)]
    symbols = [int(rng.gauss(0, 3 + i / 8)) for i in indexes]
    symbols[:6] = [5000, -5000, 1 << 20, -(1 << 20), 200, -200]  # bypass values of 1 to 6 chunks
    enc = BufferedRansEncoder()
    enc.encode_with_indexes(symbols, indexes, *tables)
    stream = enc.flush()
    ref = RansDecoder()
    ref.set_stream(stream)
    expected = ref.decode_stream(indexes, *tables)
    dec = RansStreamDecoder(stream)
    got = dec.decode_stream(indexes[:1000], *tables) + dec.decode_stream(indexes[1000:], *tables)
    dec.finish()
    assert got == expected == symbols
    # One symbol short of the end: the stream is not fully read, or the state is not the encoder's initial one.
    short = RansStreamDecoder(stream)
    short.decode_stream(indexes[:-1], *tables)
    with pytest.raises(BitstreamError, match="left over"):
        short.finish()
    # One symbol too many: the decoder stops at the end instead of reading past it.
    with pytest.raises(BitstreamError, match="ends before"):
        RansStreamDecoder(stream).decode_stream(indexes + indexes[:50], *tables)


def test_checked_decoder_rejects_malformed_streams(model):
    tables = _y_tables(model)
    for bad in (b"", b"\x00" * 4, b"\x00" * 9):
        with pytest.raises(BitstreamError, match="32-bit words"):
            RansStreamDecoder(bad)
    for state in (0, RANS64_L - 1, RANS64_L << 32):
        with pytest.raises(BitstreamError, match="initial state"):
            RansStreamDecoder(struct.pack("<Q", state))
    # State 2^31 + cdf[max_value]: the first symbol is the bypass escape of table 0, the state drops below 2^31,
    # and the next word (all ones) gives chunk counts of 15, 15, ...: more chunks than an int32 has, which the
    # encoder never writes.
    cdf, size = tables[0][0], tables[1][0]
    dec = RansStreamDecoder(struct.pack("<Q", RANS64_L | cdf[size - 2]) + b"\xff" * 64)
    with pytest.raises(BitstreamError, match="bypass"):
        dec.decode_stream([0] * 4, *tables)
