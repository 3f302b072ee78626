"""Checkpoint directories: written atomically, loaded without executing code, checked for preset and format.

Layout: ``<root>/epoch_000005/state.pt`` (+ ``meta.json`` for people and tools). A checkpoint directory is
first written under a hidden temporary name and renamed into place, so a crash never leaves a half-written
checkpoint where a good one was (docs/design.md §9); the state file inside is itself written to a temporary name and
renamed. ``state.pt`` holds only tensors and plain Python containers and is read with
``torch.load(weights_only=True)``, which refuses anything that would run code.

Every state carries ``format`` (FORMAT_VERSION) and ``preset``: a checkpoint of another preset or another
format fails with a message naming both. A checkpoint that cannot be read (truncated, corrupt) is skipped with
a warning in favour of the previous one in the same root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
META_FILE = "meta.json"
_NAME = re.compile(r"^epoch_(\d{6,})$")
# Ray Tune's checkpoint folders inside a trial directory (each holds one of ours: state.pt + meta.json).
_TUNE_NAME = re.compile(r"^checkpoint_(\d+)$")
# Buffers of CompressAI's entropy coders whose shapes depend on whether the CDF tables were built (update()),
# not on the architecture; left out of the fingerprint. GaussianConditional's scale_table is one of them: empty
# in a fresh model, filled by update() (the engine's codec evaluation), resized by CompressAI's load_state_dict.
_CODEC_TABLE_SUFFIXES: tuple[str, ...] = ("._offset", "._quantized_cdf", "._cdf_length", ".scale_table")


class CheckpointError(ValueError):
    """A checkpoint that belongs to another preset or format, or no readable checkpoint at all."""


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:06d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """The checkpoint directories of ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], root: str | Path, epoch: int, keep: int = 2) -> Path:
    """Write ``state`` as ``root/epoch_NNNNNN`` atomically; keep the newest ``keep`` checkpoints (0: all)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_name(epoch)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    part = tmp / f"{STATE_FILE}.part"
    with open(part, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, tmp / STATE_FILE)
    meta = {"format": state.get("format"), "preset": state.get("preset"), "architecture": state.get("architecture"),
            "epoch": state.get("epoch"), "step": state.get("step")}
    (tmp / META_FILE).write_text(json.dumps(meta) + "\n")
    _fsync_dir(tmp)
    if final.exists():  # the same epoch written again (a run resumed from an earlier checkpoint)
        old = root / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    if keep > 0:
        for stale in list_checkpoints(root)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def read_state(directory: str | Path) -> dict[str, Any]:
    """The state of one checkpoint directory, loaded with ``weights_only=True`` (no code runs)."""
    path = Path(directory) / STATE_FILE
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return state


def check_state(state: dict[str, Any], where: Path, preset: str) -> None:
    """Fail, naming both sides, on another format or another preset."""
    found = state.get("format")
    if found != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {where} has format {found!r}; this version of hpcm_tune reads format {FORMAT_VERSION}"
        )
    if state.get("preset") != preset:
        raise CheckpointError(
            f"checkpoint {where} is for preset {state.get('preset')!r}; this run uses preset {preset!r}"
        )


def _candidates(path: Path) -> list[Path]:
    """Newest first: ``path`` itself if it is a checkpoint directory, then the older checkpoints beside it;
    or every checkpoint of ``path`` if it is a root."""
    if (path / STATE_FILE).exists() or _NAME.match(path.name) or _TUNE_NAME.match(path.name):
        if _NAME.match(path.name):
            siblings = list_checkpoints(path.parent)
        elif _TUNE_NAME.match(path.name):  # a sweep trial's: Ray keeps the older ones beside it
            siblings = _tune_checkpoints(path.parent)
        else:
            siblings = []
        older = [p for p in siblings if _number(p) < _number(path)]
        return [path, *reversed(older)]
    return list(reversed(list_checkpoints(path)))


def _number(path: Path) -> int:
    m = _NAME.match(path.name) or _TUNE_NAME.match(path.name)
    return int(m.group(1)) if m else -1


def _tune_checkpoints(trial_dir: Path) -> list[Path]:
    """Ray Tune's checkpoint folders of a trial directory that hold one of ours, oldest first."""
    if not trial_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in trial_dir.iterdir() if p.is_dir() and (m := _TUNE_NAME.match(p.name))]
    return [p for _, p in sorted(found) if (p / STATE_FILE).exists()]


def load_checkpoint(path: str | Path, preset: str) -> tuple[dict[str, Any], Path]:
    """The newest readable checkpoint at ``path`` (a checkpoint directory or a root of them) and where it was.

    An unreadable checkpoint falls back to the previous one with a warning; a readable one of another preset or
    format raises CheckpointError at once (falling back past it would silently resume something else).
    """
    state, candidate, _ = next(iter_checkpoints(path, preset))
    return state, candidate


def iter_checkpoints(path: str | Path, preset: str):
    """(state, directory, failures so far) of every readable checkpoint at ``path``, newest first, each checked
    for format and preset; an unreadable one is skipped with a warning. For callers that must also reject a
    readable state that does not load (missing keys, wrong shapes) and fall back further. Raises
    CheckpointError when none is left."""
    path = Path(path)
    candidates = _candidates(path)
    if not candidates:
        raise CheckpointError(f"no checkpoint at {path} (expected {STATE_FILE} or {checkpoint_name(0)[:-6]}NNNNNN/)")
    failures: list[str] = []
    for i, candidate in enumerate(candidates):
        try:
            state = read_state(candidate)
        except CheckpointError:
            raise
        except Exception as error:  # truncated zip, bad pickle, missing file: the file is unusable
            failures.append(f"{candidate}: {type(error).__name__}: {error}")
            if i + 1 < len(candidates):
                warnings.warn(f"checkpoint {candidate} is unreadable ({type(error).__name__}: {error}); "
                              f"falling back to {candidates[i + 1]}", stacklevel=3)
            continue
        check_state(state, candidate, preset)
        yield state, candidate, failures
    raise CheckpointError("no readable checkpoint: " + "; ".join(failures))


def architecture_fingerprint(model_state: dict[str, Any]) -> str:
    """A short hash of a model state's parameter and buffer names and shapes (the codec's CDF tables left out):
    equal for two models of the same architecture, whatever their weights."""
    items = sorted((k, tuple(v.shape)) for k, v in model_state.items() if not k.endswith(_CODEC_TABLE_SUFFIXES))
    return hashlib.sha256(repr(items).encode()).hexdigest()[:16]


def warm_start_candidates(path: str | Path) -> list[Path]:
    """Checkpoint directories that ``init_from`` may name, newest first: a checkpoint directory (then the
    older ones beside it), a run directory (its ``checkpoints/``), a root of checkpoints, or a sweep trial
    directory (Ray Tune's ``checkpoint_NNNNNN/`` folders)."""
    path = Path(path)
    if (path / STATE_FILE).exists() or _NAME.match(path.name):
        return _candidates(path)
    if (path / "checkpoints").is_dir():
        return _candidates(path / "checkpoints")
    if list_checkpoints(path):
        return _candidates(path)
    return list(reversed(_tune_checkpoints(path)))


def load_model_weights(path: str | Path, preset: str, fingerprint: str) -> tuple[dict[str, Any], Path]:
    """The model weights of the newest readable checkpoint that ``path`` names (see warm_start_candidates) and
    where they were found. The checkpoint must be of ``preset`` and of the architecture ``fingerprint``
    (architecture_fingerprint of the model that will receive them); otherwise CheckpointError names both."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"init_from {path}: no such file or directory")
    candidates = warm_start_candidates(path)
    if not candidates:
        raise CheckpointError(
            f"init_from {path}: no checkpoint there; allowed: a checkpoint directory (with {STATE_FILE}), a run "
            f"directory (with checkpoints/), or a sweep trial directory (with checkpoint_NNNNNN/)"
        )
    failures = []
    for i, candidate in enumerate(candidates):
        try:
            state = read_state(candidate)
        except Exception as error:  # truncated zip, bad pickle, not a dict: the file is unusable
            problem = f"{type(error).__name__}: {error}"
        else:
            model = state.get("model")
            problem = None if isinstance(model, dict) else (
                "its state has no 'model' entry (not a training checkpoint)" if model is None
                else f"its 'model' entry is a {type(model).__name__}, not a state dict")
        if problem is not None:
            failures.append(f"{candidate}: {problem}")
            if i + 1 < len(candidates):
                warnings.warn(f"init_from: checkpoint {candidate} is unreadable ({problem}); "
                              f"falling back to {candidates[i + 1]}", stacklevel=2)
            continue
        if state.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"init_from {path}: checkpoint {candidate} has format {state.get('format')!r}; "
                                  f"this version of hpcm_tune reads format {FORMAT_VERSION}")
        found = architecture_fingerprint(model)
        if state.get("preset") != preset or found != fingerprint:
            raise CheckpointError(
                f"init_from {path}: checkpoint {candidate} is preset {state.get('preset')!r} (architecture "
                f"{found}); this run is preset {preset!r} (architecture {fingerprint})"
            )
        return model, candidate
    raise CheckpointError(f"init_from {path}: no readable checkpoint: " + "; ".join(failures))


__all__ = [
    "FORMAT_VERSION",
    "STATE_FILE",
    "CheckpointError",
    "architecture_fingerprint",
    "load_model_weights",
    "warm_start_candidates",
    "check_state",
    "checkpoint_name",
    "list_checkpoints",
    "load_checkpoint",
    "read_state",
    "save_checkpoint",
]
