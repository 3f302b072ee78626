"""python -m hpcm_tune.demo: runs offline and prints estimated and actual bpp and PSNR."""

from __future__ import annotations

import pytest

from hpcm_tune import demo


def test_demo_prints_rates_and_psnr(monkeypatch, capsys):
    full = demo.load_astronaut()
    assert full.shape == (1, 3, 512, 512) and full.min() >= 0 and full.max() <= 1
    monkeypatch.setattr(demo, "load_astronaut", lambda: full[..., 200:264, 200:328])  # keep the test fast
    assert demo.main(["--preset", "tiny"]) == 0
    text = capsys.readouterr().out
    assert "bpp estimated" in text and "bpp actual" in text and "PSNR" in text
    assert "bit-exact: yes" in text


def test_demo_rejects_unknown_preset():
    with pytest.raises(SystemExit):
        demo.main(["--preset", "huge"])
