"""The Ray Tune function trainable: one trial = one ``hpcm_tune.engine.Engine`` run.

The engine knows nothing of Ray; this adapter builds it from the trial's flat config (search internals
stripped), restores it from ``ray.tune.get_checkpoint()`` when Tune resumes or retries the trial, and turns each
``on_epoch(metrics, checkpoint_dir)`` into ``ray.tune.report(metrics, checkpoint=...)`` (``ray.train.report``
inside Tune fails the trial, docs/design.md §6). A non-finite watched metric raises, so the trial is marked errored
with that message and the sweep goes on. With a fractional GPU the CUDA memory fraction is capped to the share.
"""

from __future__ import annotations

import importlib
import logging
import math
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ray.tune import Callback

from hpcm_tune import metrics
from hpcm_tune.experiment import INIT_FROM_KEY, PARENTS_KEY, PROGRESS_FILE, RESULT_FILE, training_config
from hpcm_tune.registry import Registry

# Engine factories by name, as "module:attribute" (imported in the trial's worker):
# factory(config, workdir) -> engine, where workdir is a scratch folder for its checkpoints.
# Production has one engine; tests register their stand-ins themselves (tests/sweep/fake_engine.py).
ENGINES: Registry[str] = Registry("engine")
ENGINES.add("hpcm", "hpcm_tune.sweep.trainable:hpcm_engine")

# Metrics whose non-finite value errors the trial (the watched metric is added per sweep).
ALWAYS_FINITE: tuple[str, ...] = (metrics.TRAIN_LOSS, metrics.EVAL_LOSS)


class NonFiniteMetricError(RuntimeError):
    """A watched metric became NaN or infinite: the run diverged."""


def hpcm_engine(config: Mapping[str, Any], workdir: str | Path) -> Any:
    """The real engine from a flat trial config."""
    from hpcm_tune.config import RunConfig
    from hpcm_tune.engine import Engine

    return Engine(RunConfig.from_dict(training_config(config)), workdir=workdir)


def localize_init_from(config: Mapping[str, Any], scratch: str) -> dict[str, Any]:
    """The trial config with a parent or ``init_from`` on object storage (a URI) copied under ``scratch``, since
    the engine reads local checkpoints. A trial resumed from its own checkpoint downloads nothing."""
    from ray import tune

    from hpcm_tune.sweep.parents import fetch

    source = training_config(config).get(INIT_FROM_KEY)
    if source is None or "://" not in str(source) or tune.get_checkpoint() is not None:
        return dict(config)
    out = {k: v for k, v in config.items() if k != PARENTS_KEY}
    out[INIT_FROM_KEY] = fetch(str(source), Path(scratch) / "init_from")
    return out


def resolve_engine(name: str) -> Callable[[Mapping[str, Any]], Any]:
    """An engine factory by its registered name or by its "module:attribute" path (what the trial's worker gets:
    its fresh copy of ENGINES lacks engines registered in the driver only, by a plugin or a test)."""
    module, _, attr = (name if ":" in name else ENGINES.get(name)).partition(":")
    return getattr(importlib.import_module(module), attr)


def set_cuda_memory_fraction(gpus: float) -> float | None:
    """Cap this process's CUDA memory to its logical GPU share (Ray's fractional GPUs are logical only).
    Returns the fraction set, or None when not sharing a GPU or without CUDA."""
    if not 0 < gpus < 1:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU, so it is device 0 here.
    torch.cuda.set_per_process_memory_fraction(float(gpus), device=0)
    return float(gpus)


def check_finite(result: Mapping[str, Any], watched: Iterable[str]) -> None:
    bad = {k: result[k] for k in watched if k in result and not math.isfinite(float(result[k]))}
    if bad:
        raise NonFiniteMetricError(f"epoch {result.get(metrics.EPOCH)}: non-finite {bad}; the run diverged "
                                   f"(try a lower lr or w_lr)")


def quiet_exit_in_finalisers() -> None:
    """In a Ray worker: drop the exit that Ray's SIGTERM handler raises when the signal lands inside a finaliser
    (a weakref callback, a ``__del__``), and report any other exception there as before.

    Ray stops its workers with SIGTERM when a sweep ends; its handler raises SystemExit, and when that happens
    inside a finaliser Python cannot raise it, so it prints "Exception ignored in: ... SystemExit: 1" and a
    traceback, which Ray forwards to the driver's terminal after the sweep's summary (about one sweep in eight).
    The worker is going away either way; nothing is lost by not printing it."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_exit", False):
        return

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, SystemExit):
            return
        previous(unraisable)

    hook.drops_exit = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def run_trial(config: Mapping[str, Any], engine: str, watched: tuple[str, ...]) -> None:
    """Body of the trainable (runs in the trial's worker process)."""
    import ray
    from ray import tune

    quiet_exit_in_finalisers()
    gpus = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))
    set_cuda_memory_fraction(gpus)
    # Ray Train logs "Checkpoint successfully created" at INFO for every epoch of every trial; the progress
    # table already shows checkpoints, and the line buried the sweep's output (even with -q).
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    # Scratch space for the engine's checkpoints: each is copied to the experiment's storage when reported,
    # so the folder goes when the trial ends (it never lands in the experiment directory).
    with tempfile.TemporaryDirectory(prefix="hpcm-trial-") as workdir:
        config = localize_init_from(config, workdir)
        run = resolve_engine(engine)(dict(config), workdir)
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                run.restore(Path(d))

        def on_epoch(result: Mapping[str, Any], checkpoint_dir: str | Path) -> None:
            check_finite(result, watched)
            tune.report(dict(result), checkpoint=tune.Checkpoint.from_directory(str(checkpoint_dir)))

        run.run(on_epoch)


class KeepResultsOfRetriedTrials(Callback):
    """Ray Tune starts a retried trial's result.json and progress.csv over from their copies in storage, which
    are only as new as the last experiment snapshot (every 10 s or more): the epochs reported since then would
    vanish from the trial's results while the retry continues from its newest checkpoint, leaving a hole in its
    curve. Before the retry starts, this uploads the driver's copies (complete: Ray flushes every line)."""

    FILES = (RESULT_FILE, PROGRESS_FILE)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        import pyarrow.fs

        for name in self.FILES:
            local = Path(trial.local_path, name)
            if not local.is_file():
                continue
            try:
                pyarrow.fs.copy_files(str(local), f"{trial.storage.trial_fs_path}/{name}",
                                      destination_filesystem=trial.storage.storage_filesystem)
            except Exception as error:  # the retry still runs; its results may then miss epochs
                warnings.warn(f"could not upload {local} before retrying {trial}: {type(error).__name__}: {error}",
                              stacklevel=2)


def make_trainable(engine: str = "hpcm", metric: str = metrics.DEFAULT_METRIC) -> Callable[[dict], None]:
    """The function trainable Tune runs; its name (``hpcm_trial``) names the trials."""
    target = ENGINES.get(engine)  # unknown names fail here, listing the valid ones
    watched = tuple(dict.fromkeys((*ALWAYS_FINITE, metric)))

    def hpcm_trial(config: dict) -> None:
        run_trial(config, target, watched)  # the path, not the name: the worker imports it (resolve_engine)

    return hpcm_trial
