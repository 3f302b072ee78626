"""A compact copy of an experiment directory that analyze.py reads as it reads the original.

Studies are published with their raw per-trial results so that anyone can rerun ``analyze.py`` on them, but an
experiment directory is mostly checkpoints, Ray's pickles and a copy of the trial config in every result line.
``write_archive`` keeps what the analysis reads (results.py's layout):

- ``hpcm_tune.json``, the sweep's header (study, search space, metric, epochs);
- per trial folder: ``params.json``, ``result.json`` (one line per epoch, without Ray's ``config`` copy and
  per-process fields; the host name stays, for the provenance block) and ``error.txt``;
- ``experiment_state-archive.json``: Ray's trial states reduced to ``trial_id``, ``status`` and
  ``relative_logdir`` (plus the config of trials that never wrote a folder), so finished, stopped, errored and
  unfinished trials keep their status.

Checkpoints, W&B runs, ``progress.csv`` (the same rows as ``result.json``) and the searcher's state are left out.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from hpcm_tune.analysis.results import (
    ERROR_FILE,
    HEADER_FILE,
    PARAMS_FILE,
    RESULT_FILE,
    _is_trial_dir,
    _read_result_lines,
    _read_state,
)
from hpcm_tune.experiment import STATE_PREFIX

ARCHIVE_STATE_FILE = f"{STATE_PREFIX}archive.json"
# Fields of Ray's result lines left out: the config copy (params.json has it) and per-process bookkeeping. The host
# name and node address stay: the report's provenance block names the machine the trials ran on from them.
MACHINE_FIELDS = ("config", "pid", "date", "timestamp", "time_this_iter_s", "time_since_restore",
                  "iterations_since_restore", "checkpoint_dir_name")
STATE_FIELDS = ("trial_id", "status", "relative_logdir")


def write_archive(experiment: str | Path, out: str | Path) -> list[Path]:
    """Write the compact copy of ``experiment`` to ``out`` (created; refused if it exists and is not empty, so a
    published archive is never mixed with another). Returns the files written."""
    src, dst = Path(experiment), Path(out)
    if not (src / HEADER_FILE).is_file():
        raise FileNotFoundError(f"{src} is not an experiment directory written by tune.py (no {HEADER_FILE})")
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"{dst} exists and is not empty: choose a new folder for the archive")
    dst.mkdir(parents=True, exist_ok=True)
    written = [Path(shutil.copyfile(src / HEADER_FILE, dst / HEADER_FILE))]
    folders = set()
    for trial in sorted(p for p in src.iterdir() if _is_trial_dir(p)):
        folders.add(trial.name)
        (dst / trial.name).mkdir()
        for name in (PARAMS_FILE, ERROR_FILE):
            if (trial / name).is_file():
                written.append(Path(shutil.copyfile(trial / name, dst / trial.name / name)))
        if (trial / RESULT_FILE).is_file():
            rows = [{k: v for k, v in row.items() if k not in MACHINE_FIELDS}
                    for row in _read_result_lines(trial / RESULT_FILE)]
            path = dst / trial.name / RESULT_FILE
            path.write_text("".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows))
            written.append(path)
    entries = []
    for logdir, trial in sorted(_read_state(src).items()):
        kept = {k: trial[k] for k in STATE_FIELDS if k in trial}
        if logdir not in folders and isinstance(trial.get("config"), dict):
            kept["config"] = trial["config"]  # a trial that never started: its config is all there is
        entries.append([json.dumps(kept), "{}"])
    if entries:
        path = dst / ARCHIVE_STATE_FILE
        path.write_text(json.dumps({"trial_data": entries}, indent=0) + "\n")
        written.append(path)
    return written
