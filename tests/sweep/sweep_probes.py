"""Probe engines for the Ray tests: the real engine (``hpcm_tune.sweep.trainable.hpcm_engine``) wrapped so a
trial records what happened inside its Ray worker and can fail on cue. The trial config's ``_probe_*`` keys
(test hooks, stripped from the engine's config by ``training_config``):

``_probe_log``        a JSON-lines file: one line per construction, restore and epoch, with the node id, the
                      process, the GPU ids and GPU share Ray assigned (what the trainable caps CUDA memory to).
``_probe_crash_epoch`` raise after training that epoch, before it is reported (its checkpoint never reaches
                      Ray), once: ``_probe_marker`` is created then, and a retry that finds it does not crash.
``_probe_hold_epoch``  after reporting that epoch, wait until the file ``_probe_gate`` exists, or at most
                      ``_probe_hold_s`` seconds (default 120): the test does something to the running trial
                      meanwhile (removes its node), or lets the driver act on the report.

Each report also carries ``probe_node``, ``probe_gpu_ids``, ``probe_gpu_share``, ``probe_pid`` and
``probe_start`` (when the engine was built), so the trials' result rows say where they ran.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from hpcm_tune.sweep.trainable import ENGINES, hpcm_engine

NAME = "probe"
if NAME not in ENGINES:
    ENGINES.add(NAME, "sweep_probes:ProbeEngine")


def where() -> dict[str, Any]:
    import ray

    ctx = ray.get_runtime_context()
    return {"probe_node": ctx.get_node_id(), "probe_pid": os.getpid(),
            "probe_gpu_ids": ",".join(map(str, ray.get_gpu_ids())),
            "probe_gpu_share": float(ctx.get_assigned_resources().get("GPU", 0.0))}


class ProbeEngine:
    def __init__(self, config: dict, workdir: str | Path) -> None:
        self.config = dict(config)
        self.start = time.time()
        self.engine = hpcm_engine(config, workdir)
        self._log("build")

    def _log(self, event: str, **fields: Any) -> None:
        path = self.config.get("_probe_log")
        if path:
            row = {"event": event, "label": self.config.get("label"), "time": time.time(), **where(), **fields}
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def restore(self, checkpoint_dir: str | Path) -> Path:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            used = self.engine.restore(checkpoint_dir)
        weights = self.engine.model.state_dict()
        self._log("restore", given=str(checkpoint_dir), used=str(used), epoch=self.engine.epoch,
                  warnings=[str(w.message) for w in caught],
                  weights={k: float(v.double().sum()) for k, v in weights.items() if v.is_floating_point()})
        return used

    def run(self, on_epoch) -> Any:
        c = self.config
        marker = Path(c["_probe_marker"]) if c.get("_probe_marker") else None
        gate = Path(c["_probe_gate"]) if c.get("_probe_gate") else None

        def report(result: dict, checkpoint_dir: Path) -> None:
            epoch = int(result["epoch"])
            self._log("epoch", epoch=epoch)
            if epoch == c.get("_probe_crash_epoch") and marker is not None and not marker.exists():
                marker.touch()
                raise RuntimeError(f"probe crash at epoch {epoch}")
            on_epoch({**result, **where(), "probe_start": self.start, "probe_end": time.time()}, checkpoint_dir)
            if epoch == c.get("_probe_hold_epoch"):
                deadline = time.time() + float(c.get("_probe_hold_s", 120))
                while not (gate is not None and gate.exists()) and time.time() < deadline:
                    time.sleep(0.1)

        return self.engine.run(report)
