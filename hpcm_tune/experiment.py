"""The experiment directory contract: what a sweep writes and what the analysis reads, defined once.

A sweep (``hpcm_tune.sweep``, Ray) writes ``<storage>/<name>/``; the analysis (``hpcm_tune.analysis``, no Ray)
reads it back from disk. Both take the names below from here, so neither imports the other (docs/architecture.md,
"Sweep" and "Analysis"):

- the default storage ``./results`` and the files: ``hpcm_tune.json`` (the sweep's header), ``hpcm_tune_summary.json``,
  Ray's ``experiment_state-*.json``, and per trial ``params.json`` (its flat config), ``result.json`` (one JSON
  line per epoch, with Ray's ``training_iteration``), ``progress.csv`` and ``error.txt``; beside the experiments,
  the cached parents in ``<storage>/parents/``;
- the trial config: keys starting with ``_`` are search internals (``_simplex_<key>_<i>``), the sweep's parents
  (``_parents``) or test hooks, never hyperparameters; :func:`training_config` is what the engine of a trial gets;
- storage paths: a local directory or a URI whose pyarrow query (``?endpoint_override=...``) stays at its end
  (:func:`join`, :func:`basename`, :func:`dirname`).

Plain Python: imports neither torch nor Ray (``hpcm_tune.config``, read for the defaults of the parent keys, is
plain too), so reading an experiment needs no training stack.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# ------------------------------------------------------------------------------------------------------------
# Files of an experiment directory.

DEFAULT_STORAGE = "results"  # relative to the working directory: ./results
META_FILE = "hpcm_tune.json"  # the sweep's header: study, search space (file and parsed), metric, mode, epochs...
SUMMARY_FILE = "hpcm_tune_summary.json"  # written at the end of each run of the driver
STATE_PREFIX = "experiment_state-"  # Ray's snapshot, experiment_state-<session>.json (JSON; the newest counts)
STATE_GLOB = f"{STATE_PREFIX}*.json"
PARAMS_FILE = "params.json"  # a trial's flat config (also a parent's and an hpcm-train run's)
RESULT_FILE = "result.json"  # one JSON object per reported epoch
PROGRESS_FILE = "progress.csv"  # the same rows as CSV
ERROR_FILE = "error.txt"  # present when the trial failed
TRIAL_FILES = (PARAMS_FILE, RESULT_FILE, PROGRESS_FILE, ERROR_FILE)
# Under the storage root beside the experiments: one folder per cached parent (the warm starts of its sweeps).
PARENTS_DIR = "parents"

CHECKPOINT_PREFIX = "checkpoint_"  # a trial's checkpoint folders, checkpoint_000000, checkpoint_000001, ...

# Ray's per-result field counting the reports of a trial (one report per epoch in the trainable).
TRAINING_ITERATION = "training_iteration"
# Ray's per-result flag: true on a trial's last result when it returned or a scheduler stopped it; a trial cut off
# by an interrupted sweep (Ctrl-C) ends with it false and resumes.
DONE = "done"


def checkpoint_index(name: str) -> int:
    """checkpoint_000007 -> 7."""
    return int(name.rsplit("_", 1)[1])


def deletable_checkpoints(names: list[str], keep: int, restored_from: int | None = None) -> list[str]:
    """The checkpoint folders of a trial that may go: all but the newest ``keep``, and never the one a stored
    snapshot restores (index ``restored_from``) or any newer one."""
    ordered = sorted(names, key=checkpoint_index)
    old = ordered[:max(len(ordered) - keep, 0)]
    return [n for n in old if restored_from is None or checkpoint_index(n) < restored_from]


def delete_checkpoints(fs: Any, trial_path: str, keep: int, restored_from: int | None = None) -> int:
    """Delete the trial folder's checkpoints that ``deletable_checkpoints`` names, on its (pyarrow) file system,
    local or object storage; returns how many were deleted."""
    import pyarrow.fs

    found = fs.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True))
    names = [i.base_name for i in found
             if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)]
    doomed = deletable_checkpoints(names, keep, restored_from)
    for name in doomed:
        fs.delete_dir(f"{trial_path}/{name}")
    return len(doomed)


def newest_stored_checkpoints(state_text: str) -> dict[str, int]:
    """From one experiment snapshot (experiment_state-*.json): trial id -> index of the checkpoint its last result
    came with (checkpoint_000007 -> 7), which is the checkpoint a resume from this snapshot restores."""
    out: dict[str, int] = {}
    for _, runtime in json.loads(state_text).get("trial_data", []):
        last = json.loads(runtime).get("last_result") or {}
        name = last.get("checkpoint_dir_name")
        if name and last.get("trial_id"):
            out[last["trial_id"]] = checkpoint_index(name)
    return out


def is_state_file(name: str) -> bool:
    """Whether a file name is one of Ray's experiment snapshots (experiment_state-*.json)."""
    return name.startswith(STATE_PREFIX) and name.endswith(".json")


# ------------------------------------------------------------------------------------------------------------
# The trial config.

# Prefix of the keys that are not hyperparameters: search internals (the raw draws behind a simplex), the sweep's
# parents, test hooks. Ignored by training (stripped by training_config) and by the analysis.
INTERNAL_PREFIX = "_"
# The key whose value splits trials into groups that are never compared (different lambda = different loss).
LAMBDA_KEY = "lmbda"
# The fixed key that carries the sweep's parents to the trials: JSON {parent_key: parent directory}.
PARENTS_KEY = f"{INTERNAL_PREFIX}parents"
INIT_FROM_KEY = "init_from"
# One parent is trained per distinct value of these keys (a parent must match its trials in them).
PARENT_MATCH_KEYS: tuple[str, ...] = (LAMBDA_KEY, "preset", "distortion")


def is_internal(key: Any) -> bool:
    """Whether a trial config key is a search internal or test hook (INTERNAL_PREFIX), not a hyperparameter."""
    return str(key).startswith(INTERNAL_PREFIX)


def parent_key(config: Mapping[str, Any]) -> str:
    """The parent a flat trial config starts from: JSON of its PARENT_MATCH_KEYS values (defaults filled in,
    lambda as a float), the same string in the driver and in the trial."""
    from hpcm_tune.config import flat_defaults

    defaults = flat_defaults()
    values = []
    for key in PARENT_MATCH_KEYS:
        value = config.get(key, defaults[key])
        values.append(float(value) if key == LAMBDA_KEY else str(value))
    return json.dumps(values)


def training_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat config the engine gets: the trial config without search internals and test hooks ('_...'),
    with ``init_from`` set to the trial's parent when the sweep has parents."""
    out = {k: v for k, v in config.items() if not is_internal(k)}
    table = config.get(PARENTS_KEY)
    if table:
        parents = json.loads(table)
        key = parent_key(out)
        if key not in parents:
            raise ValueError(f"{PARENTS_KEY}: no parent for {key} (the sweep's parents: {', '.join(parents)})")
        out[INIT_FROM_KEY] = parents[key]
    return out


# ------------------------------------------------------------------------------------------------------------
# Storage paths: a local directory, or a URI (s3://, gs://, file://) whose pyarrow options may follow as a query,
# e.g. s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http; Ray Tune keeps the query when it joins paths,
# and so do these. String operations only (the file systems are the sweep's and the analysis's business).


def is_uri(storage: str) -> bool:
    return "://" in storage


def split_uri(uri: str) -> tuple[str, str]:
    """(``scheme://path``, ``?query`` or '') of a URI."""
    base, sep, query = uri.partition("?")
    return base, sep + query


def join(root: str, *parts: str) -> str:
    """``root/part/...``; a URI's query stays at its end (s3://b/p?endpoint_override=... + x -> s3://b/p/x?...)."""
    base, query = split_uri(root) if is_uri(root) else (root, "")
    return "/".join([base.rstrip("/"), *parts]) + query


def basename(path: str) -> str:
    """The last path component of a local path or a URI (its query left out)."""
    base = split_uri(path)[0] if is_uri(path) else path
    return base.rstrip("/").rsplit("/", 1)[-1]


def dirname(path: str) -> str:
    """``path`` less its last component; a URI keeps its query."""
    base, query = split_uri(path) if is_uri(path) else (path, "")
    return base.rstrip("/").rsplit("/", 1)[0] + query
