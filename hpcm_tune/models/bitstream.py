"""The container of HPCM's four streams per image: what ``HPCM.compress`` writes around the rANS payloads and
``HPCM.decompress`` checks before decoding a symbol.

z stream = magic (2 B) | version (1 B) | 4 varint payload lengths (z, s1, s2, s3) | CRC32 (4 B) | z payload;
the three y streams (s1, s2, s3) are their rANS payloads alone. The CRC covers the model fingerprint and the
image size as well as every payload, so a stream written by another model or for another size is rejected
without spending header bytes on them (each byte counts: at 256x256 and 0.3 bpp one byte is 0.3 % of the rate).
Plain Python; damaged, truncated or foreign streams raise ``BitstreamError`` (a ValueError).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

from hpcm_tune.models.rans import BitstreamError, check_stream_size

MAGIC = b"HP"
VERSION = 1
CRC = struct.Struct(">I")
MAX_VARINT = 5  # bytes of one length field (32-bit lengths)
STREAM_NAMES: tuple[str, ...] = ("z", "s1", "s2", "s3")  # the order of the header's lengths


def varint(n: int) -> bytes:
    """n >= 0 as LEB128: 7 bits a byte, low first, the high bit set on every byte but the last."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``pos``; BitstreamError if truncated or too long."""
    value = 0
    for i in range(MAX_VARINT):
        if pos + i >= len(buf):
            raise BitstreamError("truncated header")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise BitstreamError("malformed header (length field too long)")


def checksum(fingerprint: int, h: int, w: int, z_payload: bytes, y_payloads: Sequence[bytes]) -> int:
    """CRC32 of the model fingerprint, the image size (H, W) and every payload (z, s1, s2, s3)."""
    crc = zlib.crc32(struct.pack(">III", fingerprint, h, w))
    for part in (z_payload, *y_payloads):
        crc = zlib.crc32(part, crc)
    return crc


def pack(fingerprint: int, shape: tuple[int, int], z_payload: bytes, y_payloads: Sequence[bytes]) -> bytes:
    """The z stream: header (magic, version, the four lengths, CRC) then the z payload."""
    lengths = b"".join(varint(len(p)) for p in (z_payload, *y_payloads))
    crc = checksum(fingerprint, *shape, z_payload, y_payloads)
    return MAGIC + bytes([VERSION]) + lengths + CRC.pack(crc) + z_payload


def unpack(z_string: object, y_strings: Sequence[object], fingerprint: int, shape: tuple[int, int],
           what: str = "image 0") -> tuple[bytes, list[bytes]]:
    """(z payload, [s1, s2, s3] payloads) of one image's four streams, after checking the header, the lengths,
    that each payload is a whole rANS stream, and the CRC against ``fingerprint`` and ``shape``. ``what`` starts
    every error message."""
    if not all(isinstance(s, bytes | bytearray) for s in (z_string, *y_strings)):
        raise BitstreamError(f"{what}: every stream must be bytes")
    z_string, y_strings = bytes(z_string), [bytes(s) for s in y_strings]  # type: ignore[arg-type]
    if z_string[: len(MAGIC)] != MAGIC:
        raise BitstreamError(f"{what}: not an HPCM bitstream (magic {z_string[:2]!r}, expected {MAGIC!r})")
    pos = len(MAGIC)
    if len(z_string) <= pos or z_string[pos] != VERSION:
        got = z_string[pos] if len(z_string) > pos else "missing"
        raise BitstreamError(f"{what}: bitstream version {got}, this decoder reads {VERSION}")
    pos += 1
    lengths = []
    for _ in STREAM_NAMES:
        try:
            n, pos = read_varint(z_string, pos)
        except BitstreamError as err:
            raise BitstreamError(f"{what}: {err}") from None
        lengths.append(n)
    if len(z_string) < pos + CRC.size:
        raise BitstreamError(f"{what}: truncated header")
    (crc,) = CRC.unpack_from(z_string, pos)
    z_payload = z_string[pos + CRC.size :]
    actual = [len(z_payload), *(len(s) for s in y_strings)]
    if actual != lengths:
        raise BitstreamError(
            f"{what}: stream lengths (z, s1, s2, s3) {actual} differ from the header's {lengths} (truncated?)"
        )
    for name, payload in zip(STREAM_NAMES, (z_payload, *y_strings), strict=True):
        check_stream_size(payload, f"{what}: the {name}")
    if checksum(fingerprint, *shape, z_payload, y_strings) != crc:
        raise BitstreamError(
            f"{what}: checksum mismatch: the bitstream is corrupted, or was written by another model "
            f"(weights or update() differ) or for another image size than {tuple(shape)}"
        )
    return z_payload, y_strings


__all__ = ["CRC", "MAGIC", "MAX_VARINT", "STREAM_NAMES", "VERSION", "BitstreamError", "checksum", "pack",
           "read_varint", "unpack", "varint"]
