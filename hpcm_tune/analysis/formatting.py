"""How the analysis writes numbers: the one set of formatters behind every table cell, CSV-free text and caption
(tables, report, search, provenance, plots). Numeric tables stay numeric; these turn their values into text at
the last moment, so one decision (digits, sign, the n/a word) lives in one place. Also the one rule that turns a
study name into a piece of a file name (:func:`file_slug`).

Digits by quantity: PSNR and other dB values 2, bpp 4, BD-rate (%) 2, BD-PSNR and paired ΔPSNR (dB) 3.
"""

from __future__ import annotations

import math
import re

from hpcm_tune.analysis.results import finite

PSNR_DIGITS = 2
BPP_DIGITS = 4
BD_RATE_DIGITS = 2
BD_PSNR_DIGITS = 3
NA = "n/a"

# Characters a file name of the analysis' outputs may hold as they are (portable on every file system we write to).
_UNSAFE_IN_FILE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def cell(value) -> str:
    """A value of a Markdown / LaTeX table cell: '' for None and NaN, floats with 4 decimals without trailing
    zeros (4 significant digits in scientific notation below 1e-3 and from 1e5), anything else ``str``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def plain(value) -> str:
    """A setting as it reads in a label: floats as short as ``:g`` makes them (0.0067, 1e-05), lists and tuples
    as ``[a, b]``, anything else ``str``."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(plain(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def number(value, digits: int, std: float = math.nan, signed: bool = False) -> str:
    """``value`` with ``digits`` decimals (``+`` sign with ``signed``), then `` ± std`` when the std is finite;
    '' when the value is not finite."""
    if not finite(value):
        return ""
    sign = "+" if signed else ""
    return f"{value:{sign}.{digits}f}" + (f" ± {std:.{digits}f}" if finite(std) else "")


def signed(value, digits: int, std: float = math.nan) -> str:
    """:func:`number` with a sign: a difference (+0.12, -1.30 ± 0.40)."""
    return number(value, digits, std, signed=True)


def fixed(value, digits: int, missing: str = NA) -> str:
    """``digits`` decimals, or ``missing`` when the value is not a finite float."""
    return f"{value:.{digits}f}" if isinstance(value, float) and math.isfinite(value) else missing


def significant(value, digits: int, missing: str = NA) -> str:
    """``digits`` significant digits (``:g``), or ``missing`` when the value is not finite."""
    return f"{value:.{digits}g}" if finite(value) else missing


def compact(value, digits: int = 4) -> str:
    """A metric's value in a leaderboard: ``digits`` decimals, or ``digits`` significant digits below 1e-3 (but
    not 0) and from 1e5; 'n/a' for None and NaN, ``str`` for bools and other non-numbers."""
    if isinstance(value, bool) or not finite(value):
        return NA if value is None or isinstance(value, float) else str(value)
    value = float(value)
    return f"{value:.{digits}g}" if (abs(value) < 1e-3 and value) or abs(value) >= 1e5 else f"{value:.{digits}f}"


def joined(values, digits: int) -> str:
    """Parts of one whole as ``a/b/c`` with ``digits`` decimals (rate shares, simplex weights)."""
    return "/".join(f"{v:.{digits}f}" for v in values)


def interval(lo, hi, digits: int) -> str:
    """A signed interval ``[-0.12, +0.30]``; '' when either end is not finite."""
    return f"[{lo:+.{digits}f}, {hi:+.{digits}f}]" if finite(lo) and finite(hi) else ""


def psnr_bpp(psnr, bpp, units: bool = False) -> str:
    """An RD point: ``31.20 / 0.4123`` (``31.20 dB at 0.4123 bpp`` with ``units``)."""
    if units:
        return f"{psnr:.{PSNR_DIGITS}f} dB at {bpp:.{BPP_DIGITS}f} bpp"
    return f"{psnr:.{PSNR_DIGITS}f} / {bpp:.{BPP_DIGITS}f}"


def value_range(values, digits: int = 2) -> str:
    """``lo–hi`` of an array."""
    import numpy as np

    return f"{np.min(values):.{digits}f}–{np.max(values):.{digits}f}"


def count_range(counts, what: str = "seeds") -> str:
    """'3 seeds' or '2–3 seeds' of the counts behind each drawn point (zeros ignored)."""
    counts = [int(c) for c in counts if c]
    if not counts:
        return f"0 {what}"
    lo, hi = min(counts), max(counts)
    return f"{hi} {what}" if lo == hi else f"{lo}–{hi} {what}"


def file_slug(text: str, empty: str = "study") -> str:
    """``text`` (a study name) as a piece of a file name: every run of characters other than ASCII letters,
    digits, ``.``, ``_`` and ``-`` becomes one ``_``, with none at either end; ``empty`` when nothing is left
    (``'gamma & λ_1'`` -> ``'gamma__1'``). The one rule behind tables_<study>.tex, the search figures and the
    output folder of a search's reproduction command."""
    return _UNSAFE_IN_FILE_NAME.sub("_", str(text)).strip("_") or empty
