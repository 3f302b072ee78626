"""python -m hpcm_tune.demo: runs offline and prints estimated and actual bpp and PSNR."""

from __future__ import annotations

import math
import re

import pytest

from hpcm_tune import demo


def test_demo_prints_rates_and_psnr(monkeypatch, capsys):
    full = demo.load_astronaut()
    assert full.shape == (1, 3, 512, 512) and full.min() >= 0 and full.max() <= 1
    monkeypatch.setattr(demo, "load_astronaut", lambda: full[..., 200:264, 200:328])  # keep the test fast
    assert demo.main(["--preset", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "bit-exact: yes" in text
    # The figures it prints are real: the actual rate at least the estimate and above it by no more than the
    # streams' fixed overhead (under 100 bytes on this 64 x 128 crop), the decoded PSNR the eval forward's.
    estimated = float(re.search(r"bpp estimated (\S+)", text).group(1))
    actual = float(re.search(r"bpp actual +(\S+)", text).group(1))
    decoded, forward = map(float, re.search(r"PSNR +(\S+) dB +\(decoded; eval forward (\S+) dB\)", text).groups())
    assert estimated > 0 and estimated * 0.95 <= actual <= estimated + 100 * 8 / (64 * 128)
    assert math.isfinite(decoded) and decoded == pytest.approx(forward, abs=0.01)


def test_demo_rejects_unknown_preset(capsys):
    with pytest.raises(SystemExit) as info:
        demo.main(["--preset", "huge"])
    assert info.value.code == 2 and "invalid choice: 'huge'" in capsys.readouterr().err
