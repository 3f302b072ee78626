"""Tune callbacks: the scheduler's rung records in the experiment snapshot, and W&B logging.

``Tuner.restore`` brings back the scheduler pickled before ``fit()``, so ASHA's rung records would come back
empty and resumed trials would pass rungs unjudged (docs/design.md §6). A callback's ``get_state``/``set_state`` is
saved with each experiment snapshot and restored in step with it, so the records match the trials restored.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from ray.tune import Callback

from hpcm_tune.experiment import delete_checkpoints, is_state_file, newest_stored_checkpoints
from hpcm_tune.sweep.schedulers import PerGroupASHA

# Seconds the end of a sweep waits for W&B uploads before giving up (runs stay on disk for `wandb sync`).
DEFAULT_WANDB_UPLOAD_TIMEOUT_S = 60


class SchedulerStateCallback(Callback):
    """Carries ``PerGroupASHA.state_dict()`` in the experiment snapshot.

    The scheduler object is referenced directly: Tune pickles the TuneConfig (scheduler) and the RunConfig
    (callbacks) in one tuner.pkl, so after ``Tuner.restore`` this reference still points at the scheduler Tune
    uses. Never returns an empty state (Tune would skip it).
    """

    def __init__(self, scheduler: PerGroupASHA) -> None:
        self.scheduler = scheduler
        self.restored_from: dict[str, Any] | None = None

    def get_state(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.restored_from = state


class KeepRestorableCheckpoints(Callback):
    """Keeps each trial's newest ``keep`` checkpoints, as Ray's ``CheckpointConfig(num_to_keep)`` would, without
    deleting the checkpoint that the experiment snapshot in storage names.

    Ray deletes the oldest checkpoint as soon as a new one is registered, while the stored snapshot may still name
    it until the next snapshot is stored (~10 s, or num_to_keep checkpoints, later): a driver killed in between
    left a snapshot whose checkpoint was gone, and the resumed trial failed ('Could not recover from checkpoint as
    it does not exist on storage anymore'; test_resume_after_sigkill failed so in a fresh-clone CI run). So Ray
    keeps every checkpoint (num_to_keep=None) and this callback deletes after each save, reading the newest stored
    snapshot (again only when it changed).
    """

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._seen: tuple[str, int, int] | None = None  # the stored snapshot last read: path, size, mtime (ns)
        self._restores: dict[str, int] = {}

    def _stored_restores(self, fs: Any, experiment: str) -> dict[str, int]:
        import pyarrow.fs

        states = [i for i in fs.get_file_info(pyarrow.fs.FileSelector(experiment, allow_not_found=True))
                  if i.type == pyarrow.fs.FileType.File and is_state_file(i.base_name)]
        if not states:
            return {}
        newest = max(states, key=lambda i: i.base_name)  # experiment_state-<start time>.json: the newest run's
        key = (newest.path, newest.size, newest.mtime_ns or 0)
        if key != self._seen:
            with fs.open_input_stream(newest.path) as f:
                self._restores = newest_stored_checkpoints(f.read().decode())
            self._seen = key
        return self._restores

    def on_trial_save(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        fs = trial.storage.storage_filesystem
        try:
            restores = self._stored_restores(fs, trial.storage.experiment_fs_path)
            delete_checkpoints(fs, trial.storage.trial_fs_path, self.keep, restores.get(trial.trial_id))
        except (OSError, ValueError) as error:  # disk use only: the sweep goes on, the end of it prunes again
            warnings.warn(f"could not prune the checkpoints of {trial}: {type(error).__name__}: {error}",
                          stacklevel=2)


def wandb_mode() -> str:
    """'online' when an API key is configured (environment or W&B's own login), else 'offline'; an explicit
    WANDB_MODE wins. Never reads or prints the key itself."""
    explicit = os.environ.get("WANDB_MODE")
    if explicit:
        return explicit
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import wandb

        wandb.ensure_configured()
        if wandb.api.api_key:
            return "online"
    except Exception:  # no login, or wandb's internals moved: offline is always safe
        pass
    return "offline"


def _quiet_wandb_logger() -> type:
    """Ray's WandbLoggerCallback without its two tracebacks at the end of a sweep:

    - its finaliser does nothing while the interpreter shuts down: Ray's own ``__del__`` then calls
      ``ray.is_initialized()`` on a module already torn down and prints an AttributeError traceback after every
      W&B sweep (the logging actors end with the process anyway);
    - each logging actor tears W&B down (``wandb.teardown()``) as soon as its run is finished, while W&B's service
      process still lives: left to W&B's atexit hook, the teardown runs when Ray stops the actor at the end of the
      sweep, and the service, stopped with it, may already be gone ("Exception ignored in atexit callback ...
      ConnectionResetError: Connection lost", about one sweep in six).
    """
    import sys

    from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

    class WandbRunActor(_WandbLoggingActor):
        def run(self) -> None:
            try:
                super().run()
            finally:
                self._wandb.teardown()

    class WandbLogger(WandbLoggerCallback):
        _logger_actor_cls = WandbRunActor

        def __del__(self) -> None:
            if sys.is_finalizing():
                return
            super().__del__()

    WandbLogger.__qualname__ = WandbLogger.__name__ = "WandbLogger"
    return WandbLogger


def offline_runs(experiment: str) -> list[str]:
    """The offline W&B runs of a local experiment directory (one per trial, in the trial's folder)."""
    from pathlib import Path

    if "://" in experiment:
        return []
    return sorted(str(p) for p in Path(experiment).glob("*/wandb/offline-run-*") if p.is_dir())


def wandb_callback(project: str, group: str, upload_timeout_s: int = DEFAULT_WANDB_UPLOAD_TIMEOUT_S) -> Callback:
    """One W&B run per trial (named by the trial, grouped by sweep); metric names are the engine's
    (hpcm_tune.metrics, docs/design.md §5). Offline without an API key: runs are written under the trial
    directories and can be uploaded later with ``wandb sync``."""
    mode = wandb_mode()
    if mode in ("offline", "disabled"):
        # Set before ray.init so the logging actors inherit it; Ray's key check is skipped in these modes.
        os.environ["WANDB_MODE"] = mode
        # Offline, each run's own farewell names a sync path inside Ray's temporary session folder, gone after
        # the session; the sweep's summary names the runs where they stay (offline_runs) instead.
        os.environ.setdefault("WANDB_SILENT", "true")
    return _quiet_wandb_logger()(project=project, group=group, upload_timeout=int(upload_timeout_s), mode=mode,
                               log_config=False)
