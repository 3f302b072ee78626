"""The fake engine: a seconds-long stand-in for ``hpcm_tune.engine.Engine``, for the sweep tests and for
``bench/sweep.py`` (the sweep machinery measured without training). Test support, not production: tune.py trains
only the real engine (``hpcm_tune.sweep.trainable.ENGINES`` holds only ``hpcm``).

Importing this module registers it as engine ``fake`` (NAME) under its "module:attribute" path, which a trial's
Ray worker imports (``trainable.resolve_engine``: the worker's fresh ENGINES lacks it). So that the workers find
it, importing also puts this folder on PYTHONPATH, which the Ray processes started afterwards inherit (the sweep
tests' conftest.py does the same for this process's import path); ``fake_tune.py`` runs tune.py's command line
with it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from hpcm_tune.config import WeightingConfig
from hpcm_tune.sweep.trainable import ENGINES
from hpcm_tune.testing import fake_rd_metrics

NAME = "fake"
HERE = os.path.dirname(os.path.abspath(__file__))
TUNE = os.path.join(HERE, "fake_tune.py")  # tune.py with this engine: [sys.executable, TUNE, *tune.py's flags]
_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if HERE not in _paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([HERE, *_paths])
if NAME not in ENGINES:
    ENGINES.add(NAME, "fake_engine:FakeEngine")


class FakeEngine:
    """Seconds-long stand-in for ``hpcm_tune.engine.Engine`` with its interface: built from a flat trial config
    (a dict, as Ray passes it), ``restore(checkpoint_dir)``, ``run(on_epoch)`` calling
    ``on_epoch(metrics, checkpoint_dir)`` after every remaining epoch (metrics of ``fake_rd_metrics``).

    The R-D point depends on the searched keys like a real sweep's would: PSNR drops with the squared log
    distance of each gamma from 0.005 and with the distance of scale_weights from the default ones; a small
    gamma_s1 converges faster (so early and final rankings differ). Test hooks, keys prefixed ``_fake_``:
    ``_fake_epoch_seconds`` (sleep per epoch), ``_fake_fail_epoch`` (raise at that epoch; with
    ``_fake_fail_once_dir`` only the first time, so a retry from the checkpoint succeeds), ``_fake_nan_epoch``
    (report a NaN loss from that epoch on), ``_fake_log`` (a file each epoch and restore appends a line to),
    ``_fake_omit`` (metric names never reported).
    """

    def __init__(self, config: dict, workdir: str | Path | None = None) -> None:
        self.config = dict(config)
        self.workdir = workdir
        self.epochs = int(self.config.get("epochs", 10))
        self.epoch = 0
        self._dirs: list[Path] = []

    def _quality(self) -> tuple[float, float]:
        """(final PSNR offset in dB, speed of convergence)."""
        c = self.config
        offset = 0.0
        for scale in ("s1", "s2", "s3"):
            g = float(c.get(f"gamma_{scale}", 0.005))
            offset -= 0.3 * math.log(max(g, 1e-6) / 0.005) ** 2
        best = WeightingConfig().scale_weights  # the landscape's optimum is the default (hpcm_tune.config)
        w = c.get("scale_weights", best)
        offset -= 4.0 * sum((float(a) - b) ** 2 for a, b in zip(w, best, strict=True))
        speed = 1.0 + 0.5 * math.log(0.02 / max(float(c.get("gamma_s1", 0.005)), 1e-6))
        return offset, max(speed, 0.2)

    def _log(self, line: str) -> None:
        if self.config.get("_fake_log"):
            with open(self.config["_fake_log"], "a") as f:
                f.write(f"{self.config.get('lmbda')} {self.config.get('gamma_s1')} {line}\n")

    def restore(self, checkpoint_dir: str | Path) -> None:
        import json

        state = json.loads((Path(checkpoint_dir) / "fake_engine.json").read_text())
        if state.get("config_lmbda") != self.config.get("lmbda"):
            raise ValueError(f"checkpoint {checkpoint_dir} is for lmbda {state.get('config_lmbda')}, "
                             f"this run has {self.config.get('lmbda')}")
        self.epoch = int(state["epoch"])
        self._log(f"restore {self.epoch}")

    def run(self, on_epoch) -> None:
        import json
        import shutil
        import tempfile
        import time

        offset, speed = self._quality()
        fail_epoch = self.config.get("_fake_fail_epoch")
        nan_epoch = self.config.get("_fake_nan_epoch")
        while self.epoch < self.epochs:
            self.epoch += 1
            time.sleep(float(self.config.get("_fake_epoch_seconds", 0.0)))
            if fail_epoch is not None and self.epoch == int(fail_epoch):
                marker_dir = self.config.get("_fake_fail_once_dir")
                marker = Path(marker_dir) / f"failed-{self.config.get('lmbda')}-{self.config.get('seed')}" \
                    if marker_dir else None
                if marker is None or not marker.exists():
                    if marker is not None:
                        marker.touch()
                    raise RuntimeError(f"fake failure at epoch {self.epoch}")
            # Convergence: a trial with speed s at epoch e is where a unit-speed one is at epoch s*e.
            virtual = min(self.epoch * speed, float(self.epochs))
            out = fake_rd_metrics(self.config, 0, psnr_offset=offset)
            late = fake_rd_metrics(self.config, self.epochs, psnr_offset=offset)
            progress = virtual / self.epochs
            out = {k: (1 - progress) * out[k] + progress * late[k] if isinstance(out[k], float) else out[k]
                   for k in out}
            out["epoch"] = self.epoch
            for name in self.config.get("_fake_omit", ()):
                out.pop(name, None)
            if nan_epoch is not None and self.epoch >= int(nan_epoch):
                out["eval/loss"] = float("nan")
                out["train/loss"] = float("nan")
            d = Path(tempfile.mkdtemp(prefix="fake_ckpt_", dir=self.workdir))
            (d / "fake_engine.json").write_text(json.dumps({"epoch": self.epoch,
                                                            "config_lmbda": self.config.get("lmbda")}))
            self._dirs.append(d)
            self._log(f"epoch {self.epoch}")
            on_epoch(out, d)
            while len(self._dirs) > 2:  # Ray has copied a reported checkpoint by the time report returns
                shutil.rmtree(self._dirs.pop(0), ignore_errors=True)
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)
