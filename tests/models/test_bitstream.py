"""The stream container (hpcm_tune.models.bitstream) on its own, without a model: the header round-trips and every
kind of damage is a BitstreamError naming the image. Whole-codec damage tests: test_hpcm_codec.py and
test_bitstream_forgery.py."""

from __future__ import annotations

import pytest

from hpcm_tune.models import BitstreamError, bitstream

FINGERPRINT = 0x1234ABCD
SHAPE = (64, 48)
Z = bytes(range(8))  # whole 32-bit words, as rANS payloads are
YS = [bytes(8), bytes(range(12)), bytes(16)]


def test_varint_round_trips_and_rejects_long_or_truncated_fields() -> None:
    for n in (0, 1, 127, 128, 300, 2**32 - 1):
        encoded = bitstream.varint(n)
        assert bitstream.read_varint(b"x" + encoded + b"y", 1) == (n, 1 + len(encoded))
    assert bitstream.varint(127) == b"\x7f" and bitstream.varint(128) == b"\x80\x01"
    with pytest.raises(BitstreamError, match="truncated header"):
        bitstream.read_varint(b"\x80", 0)
    with pytest.raises(BitstreamError, match="too long"):
        bitstream.read_varint(b"\x80" * bitstream.MAX_VARINT + b"\x01", 0)


def test_pack_then_unpack_returns_the_payloads() -> None:
    z = bitstream.pack(FINGERPRINT, SHAPE, Z, YS)
    assert z.startswith(bitstream.MAGIC + bytes([bitstream.VERSION])) and z.endswith(Z)
    assert len(z) == 2 + 1 + 4 + bitstream.CRC.size + len(Z)  # four one-byte lengths
    assert bitstream.unpack(z, YS, FINGERPRINT, SHAPE) == (Z, YS)
    assert bitstream.unpack(bytearray(z), [bytearray(y) for y in YS], FINGERPRINT, SHAPE) == (Z, YS)


@pytest.mark.parametrize(("damage", "message"), [
    (lambda z, ys: (b"XX" + z[2:], ys), "not an HPCM bitstream"),
    (lambda z, ys: (z[:2] + bytes([9]) + z[3:], ys), "bitstream version 9"),
    (lambda z, ys: (z[:2], ys), "bitstream version missing"),
    (lambda z, ys: (z[:5], ys), "truncated header"),
    (lambda z, ys: (z[:9], ys), "truncated header"),
    (lambda z, ys: (z[:-4], ys), r"stream lengths \(z, s1, s2, s3\) \[4, 8, 12, 16\] differ"),
    (lambda z, ys: (z, [ys[0], ys[1][:-4], ys[2]]), "differ from the header's"),
    (lambda z, ys: (z, [ys[0], "text", ys[2]]), "every stream must be bytes"),
    (lambda z, ys: (z[:-1] + bytes([z[-1] ^ 1]), ys), "checksum mismatch"),
])
def test_damage_is_a_bitstream_error_naming_the_image(damage, message) -> None:
    z, ys = damage(bitstream.pack(FINGERPRINT, SHAPE, Z, YS), list(YS))
    with pytest.raises(BitstreamError, match=f"^image 3: .*{message}"):
        bitstream.unpack(z, ys, FINGERPRINT, SHAPE, "image 3")


def test_the_checksum_binds_the_model_and_the_image_size() -> None:
    z = bitstream.pack(FINGERPRINT, SHAPE, Z, YS)
    for fingerprint, shape in ((FINGERPRINT + 1, SHAPE), (FINGERPRINT, (48, 64))):
        with pytest.raises(BitstreamError, match="another model .* or for another image size"):
            bitstream.unpack(z, YS, fingerprint, shape)


def test_payloads_that_are_not_whole_rans_streams_are_refused_with_a_consistent_header() -> None:
    short = [YS[0], b"abc", YS[2]]  # s1, s2, s3
    with pytest.raises(BitstreamError, match="the s2 stream has 3 bytes"):
        bitstream.unpack(bitstream.pack(FINGERPRINT, SHAPE, Z, short), short, FINGERPRINT, SHAPE)
