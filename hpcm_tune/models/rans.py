"""A bounds-checked rANS decoder for CompressAI's 64-bit rANS streams (compressai.ans, precision 16, bypass
coding in 4-bit chunks).

CompressAI's C++ ``RansDecoder`` trusts its input: it reads 32-bit words from the stream without comparing
the read position with the stream's end, so a forged stream (empty, short, or random bytes that decode to many
bypass symbols) makes it read past its buffer. This decoder performs the same arithmetic, symbol for symbol
(the tests compare it with CompressAI's decoder), and raises :class:`BitstreamError` instead of reading past
the end. :meth:`RansStreamDecoder.finish` then checks that the stream is canonical: every byte read and the
final state equal to the encoder's initial state. Only a stream that the encoder produces passes.

Work is bounded too: every read checks the end first, and a bypass value longer than the 8 chunks of an int32
(which the encoder never writes) raises, so a symbol costs at most 1 + 1 + 9 + 8 state updates: no hang.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Sequence

PRECISION = 16
BYPASS_PRECISION = 4
MAX_BYPASS_VAL = (1 << BYPASS_PRECISION) - 1
RANS64_L = 1 << 31
# The encoder keeps its state in [RANS64_L, RANS64_L << 32) and flushes it as two 32-bit words.
MIN_STREAM_BYTES = 8
# A bypass value is an int32 written in 4-bit chunks: at most 8 of them.
_MAX_BYPASS_CHUNKS = 32 // BYPASS_PRECISION


class BitstreamError(ValueError):
    """A bitstream that is truncated, corrupted, forged, or was produced by another model or for another shape."""


def check_stream_size(payload: bytes, what: str) -> None:
    """A CompressAI rANS stream is whole 32-bit words, at least the two the encoder's flush writes."""
    if len(payload) < MIN_STREAM_BYTES or len(payload) % 4:
        raise BitstreamError(f"{what} stream has {len(payload)} bytes: a rANS stream is a whole number of 32-bit "
                             f"words, at least {MIN_STREAM_BYTES} bytes")


class RansStreamDecoder:
    """Decode one stream over several calls (like ``RansDecoder.set_stream`` + ``decode_stream``), never
    reading past its end; :meth:`finish` checks that the whole stream was consumed."""

    def __init__(self, payload: bytes, what: str = "rANS") -> None:
        check_stream_size(payload, what)
        self._words = struct.unpack(f"<{len(payload) // 4}I", payload)
        self._what = what
        x = self._words[0] | (self._words[1] << 32)
        if not RANS64_L <= x < RANS64_L << 32:
            raise BitstreamError(f"{what} stream: initial state {x:#x} outside the encoder's range")
        self._state = x
        self._pos = 2

    def _overrun(self) -> BitstreamError:
        return BitstreamError(f"{self._what} stream ends before its last symbol (truncated or forged)")

    def decode_stream(self, indexes: Sequence[int], cdfs: Sequence[Sequence[int]], cdf_sizes: Sequence[int],
                      offsets: Sequence[int]) -> list[int]:
        words, n_words, pos, x = self._words, len(self._words), self._pos, self._state
        mask, low = (1 << PRECISION) - 1, RANS64_L
        out = []
        append = out.append
        for idx in indexes:
            cdf, size = cdfs[idx], cdf_sizes[idx]
            max_value = size - 2
            cum = x & mask
            s = bisect_right(cdf, cum, 0, size) - 1
            start = cdf[s]
            x = (cdf[s + 1] - start) * (x >> PRECISION) + cum - start
            if x < low:
                if pos >= n_words:
                    raise self._overrun()
                x = (x << 32) | words[pos]
                pos += 1
            if s == max_value:
                self._pos = pos
                x, value = self._bypass(x, max_value)
                pos = self._pos
            else:
                value = s
            append(value + offsets[idx])
        self._pos, self._state = pos, x
        return out

    def _chunk(self, x: int) -> tuple[int, int]:
        val = x & MAX_BYPASS_VAL
        x >>= BYPASS_PRECISION
        if x < RANS64_L:
            if self._pos >= len(self._words):
                raise self._overrun()
            x = (x << 32) | self._words[self._pos]
            self._pos += 1
        return val, x

    def _bypass(self, x: int, max_value: int) -> tuple[int, int]:
        """CompressAI's bypass mode: the chunk count (a run of 15s and one chunk < 15), then the raw chunks."""
        val, x = self._chunk(x)
        n_bypass = val
        while val == MAX_BYPASS_VAL and n_bypass <= _MAX_BYPASS_CHUNKS:
            val, x = self._chunk(x)
            n_bypass += val
        if n_bypass > _MAX_BYPASS_CHUNKS:
            raise BitstreamError(f"{self._what} stream: a bypass value of {n_bypass}+ chunks (the encoder writes "
                                 f"at most {_MAX_BYPASS_CHUNKS})")
        raw = 0
        for j in range(n_bypass):
            val, x = self._chunk(x)
            raw |= val << (BYPASS_PRECISION * j)
        if raw >= 1 << 31:
            raise BitstreamError(f"{self._what} stream: a bypass value beyond int32 (the encoder writes none)")
        return x, (-(raw >> 1) - 1 if raw & 1 else (raw >> 1) + max_value)

    def finish(self) -> None:
        """Every word read and the state back at the encoder's initial one: the stream is exactly what the
        encoder wrote for the decoded symbols (bytes left over or a foreign state mean forged or damaged)."""
        if self._pos != len(self._words) or self._state != RANS64_L:
            raise BitstreamError(f"{self._what} stream: {4 * (len(self._words) - self._pos)} bytes left over or "
                                 f"the final state differs from the encoder's (forged or damaged)")
