"""Reading Ray Tune 2.60 experiment directories from disk, robustly, without Ray and without unpickling.

Layout (what ``Tuner.fit`` leaves under ``<storage>/<name>/``; see docs/architecture.md):

- ``hpcm_tune.json``: written by our sweep: study, search-space file and content, metric, mode, max epochs;
- ``experiment_state-<session>.json``: Ray's snapshot; ``trial_data`` is a list of pairs of JSON strings
  (the trial's state: ``trial_id``, ``status`` PENDING/RUNNING/PAUSED/TERMINATED/ERROR, ``relative_logdir``,
  ``config``...; and its run metadata). Some fields hold cloudpickle blobs as hex: they are never decoded;
- ``tuner.pkl``, ``params.pkl``, ``error.pkl``, ``*-state-*.json`` of searchers: never read;
- one folder per trial, ``<trainable>_<trial_id>_<index>_<tag>_<date>``, with ``params.json`` (the flat
  config), ``result.json`` (one JSON object per reported epoch, with Ray's ``training_iteration``,
  ``trial_id``, ``time_total_s``, ``done``, a ``config`` copy, and our metrics), ``progress.csv`` (the
  same rows as CSV) and ``error.txt`` when the trial failed.

Corrupted or truncated files are skipped with a :class:`ResultsWarning` naming the file; lines repeated
after a restore (an epoch reported again after resuming from an older checkpoint) keep their last copy.
"""

from __future__ import annotations

import csv
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from hpcm_tune import metrics as m
from hpcm_tune.experiment import (  # the experiment directory contract, shared with the sweep (plain Python)
    DEFAULT_STORAGE,
    ERROR_FILE,
    META_FILE,
    PARAMS_FILE,
    PARENTS_DIR,
    PROGRESS_FILE,
    RESULT_FILE,
    STATE_GLOB,
    TRAINING_ITERATION,
    TRIAL_FILES,
    is_state_file,
)

HEADER_FILE = META_FILE
# Ray's per-result bookkeeping field giving the report count (one report per epoch in our trainable).
ITERATION = TRAINING_ITERATION
TIME_TOTAL = "time_total_s"

# Config keys read by the analysis (names of docs/architecture.md's flat config).
LMBDA, SEED, EPOCHS, STUDY, LABEL, OBJECTIVE = "lmbda", "seed", "epochs", "study", "label", "objective"

# Trial status, as the tables show it.
FINISHED = "finished"
STOPPED = "stopped early"
ERRORED = "errored"
UNFINISHED = "unfinished"  # pending or running in a sweep still going (or killed): not a result yet
STATUSES = (FINISHED, STOPPED, ERRORED, UNFINISHED)
_RAY_UNFINISHED = {"PENDING", "RUNNING", "PAUSED"}



class ResultsWarning(UserWarning):
    """A file of an experiment directory was unreadable or inconsistent and was (partly) skipped."""


def _warn(message: str) -> None:
    warnings.warn(message, ResultsWarning, stacklevel=3)


@dataclass
class TrialRecord:
    """One trial as read from disk. ``rows`` are its per-epoch results in report order (``config`` removed)."""

    experiment: str
    trial_id: str
    dirname: str
    params: dict
    rows: list[dict] = field(default_factory=list)
    ray_status: str | None = None
    error: str | None = None
    max_epochs: int | None = None

    @property
    def study(self) -> str:
        return str(self.params.get(STUDY) or self.experiment)

    @property
    def epochs_run(self) -> int:
        if not self.rows:
            return 0
        its = [r.get(ITERATION) for r in self.rows if isinstance(r.get(ITERATION), int | float)]
        return int(max(its)) if its else len(self.rows)

    @property
    def epochs_planned(self) -> int | None:
        value = self.params.get(EPOCHS, self.max_epochs)
        try:
            return int(value) if value is not None else None
        except (TypeError, ValueError):
            return None

    @property
    def status(self) -> str:
        """finished (all planned epochs), errored, unfinished (Ray still had it pending/running), or stopped
        early (fewer epochs than planned without error: a scheduler such as ASHA stopped it)."""
        if self.error is not None or self.ray_status == "ERROR":
            return ERRORED
        planned = self.epochs_planned
        if planned is not None and self.epochs_run >= planned:
            return FINISHED
        if planned is None and self.rows and self.rows[-1].get("done") is True:
            return FINISHED
        if self.ray_status in _RAY_UNFINISHED:
            return UNFINISHED
        return STOPPED

    def image_metrics(self, point: str = "final", metric: str = m.DEFAULT_METRIC,
                      mode: str = m.DEFAULT_MODE) -> tuple[object, dict[str, dict[str, float]]]:
        """(epoch, {image: {"psnr": ..., "bpp": ...}}) of the per-image metrics (eval_image/<image>/...) at the
        trial's RD point: ``final``, the last report carrying any; ``best``, the report best in ``metric``
        (``mode`` min or max; the first of equals), as the trial table's "best" columns. (None, {}) when that
        report has none (an engine older than the per-image metrics, or no evaluation yet)."""
        if point == "best":
            scored = [r for r in self.rows if finite(r.get(metric))]
            pick = min if mode == "min" else max
            rows = [pick(scored, key=lambda r: r[metric])] if scored else []
        else:
            rows = [r for r in reversed(self.rows) if any(k.startswith(m.EVAL_IMAGE_PREFIX) for k in r)][:1]
        if not rows:
            return None, {}
        images: dict[str, dict[str, float]] = {}
        for key, value in rows[0].items():
            parsed = m.parse_eval_image_metric(key)
            if parsed is not None and finite(value):
                images.setdefault(parsed[0], {})[parsed[1]] = float(value)
        return (rows[0].get(m.EPOCH, rows[0].get(ITERATION)) if images else None), images


@dataclass
class Experiment:
    path: Path
    header: dict
    trials: list[TrialRecord]
    source: str | None = None  # the URI it was read from (then ``path`` is a local copy of its JSON/CSV files)

    @property
    def name(self) -> str:
        return self.path.name


# ---------------------------------------------------------------------------------------------- locating


def default_storage() -> Path:
    """``./results`` (the sweep's default storage); if absent, ``results/`` beside the project's package."""
    here = Path.cwd() / DEFAULT_STORAGE
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[2] / DEFAULT_STORAGE


def is_experiment_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    if (path / HEADER_FILE).is_file() or any(path.glob(STATE_GLOB)):
        return True
    return any(_is_trial_dir(p) for p in path.iterdir())


def _is_trial_dir(path: Path) -> bool:
    return path.is_dir() and not path.name.startswith(".") and any((path / f).is_file() for f in TRIAL_FILES)


def _last_modified(path: Path) -> float:
    marks = [path / HEADER_FILE, *path.glob(STATE_GLOB)]
    times = [p.stat().st_mtime for p in marks if p.is_file()]
    return max(times) if times else path.stat().st_mtime


def is_uri(path: str | Path) -> bool:
    return isinstance(path, str) and "://" in path


# Files of object storage that the analysis reads (checkpoints, pickles and Ray's other files are not fetched).
def _wanted(relative: str) -> bool:
    parts = relative.split("/")
    if len(parts) > 3 or parts[0] == PARENTS_DIR or any(p.startswith("checkpoint_") for p in parts):
        return False
    name = parts[-1]
    return name in (HEADER_FILE, *TRIAL_FILES) or is_state_file(name)


_DOWNLOADS: list[str] = []
_SOURCES: dict[Path, str] = {}  # local copy -> the URI it came from


def source_of(path: Path) -> str | None:
    """The URI a local copy (:func:`download`) came from: of the folder itself or of the storage above it."""
    from hpcm_tune.experiment import join

    path = Path(path).resolve()
    if path in _SOURCES:
        return _SOURCES[path]
    return join(_SOURCES[path.parent], path.name) if path.parent in _SOURCES else None


def download(uri: str) -> Path:
    """A local copy of the JSON/CSV files of the experiment (or storage of experiments) at ``uri`` (s3://, gs://,
    file://, with pyarrow's query options), with their modification times, in a temporary folder removed at exit.
    Credentials and endpoint as for the sweep (README.md, "Storage on S3"). FileNotFoundError when nothing is
    there or it cannot be read."""
    import atexit
    import os
    import shutil
    import tempfile

    import pyarrow
    import pyarrow.fs

    from hpcm_tune.experiment import basename

    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(uri)
        infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
    except (OSError, pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError) as err:
        raise FileNotFoundError(f"cannot read {uri}: {type(err).__name__}: {' '.join(str(err).split())[:300]}") \
            from None
    root = root.rstrip("/")
    files = [i for i in infos if i.type == pyarrow.fs.FileType.File and _wanted(i.path[len(root) + 1:])]
    if not files:
        raise FileNotFoundError(f"no experiment at {uri} (no {HEADER_FILE}, experiment state or trial results)")
    scratch = tempfile.mkdtemp(prefix="hpcm-analyze-")
    if not _DOWNLOADS:
        atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _DOWNLOADS])
    _DOWNLOADS.append(scratch)
    local = Path(scratch) / (basename(uri) or "storage")
    _SOURCES[local.resolve()] = uri
    for info in files:
        target = local / info.path[len(root) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as f:
            target.write_bytes(f.read())
        if info.mtime_ns is not None:
            os.utime(target, ns=(info.mtime_ns, info.mtime_ns))
    return local


def find_experiments(path: str | Path) -> list[Path]:
    """The experiment directories at ``path``: itself if it is one, else the ones directly inside it. A URI
    (s3://BUCKET/PREFIX/NAME) is read from a local copy of its JSON/CSV files (:func:`download`)."""
    path = download(path) if is_uri(path) else Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such experiment or storage directory: {path}")
    if (path / HEADER_FILE).is_file() or any(path.glob(STATE_GLOB)):
        return [path]
    found = sorted(p for p in path.iterdir() if not _is_trial_dir(p) and is_experiment_dir(p))
    if not found and is_experiment_dir(path):
        return [path]
    return found


def latest_experiment(storage: str | Path | None = None) -> Path:
    """The most recently written experiment directory in ``storage`` (default: :func:`default_storage`)."""
    if is_uri(storage):
        storage = download(storage)
    storage = Path(storage) if storage is not None else default_storage()
    if not storage.is_dir():
        raise FileNotFoundError(f"no sweep results: storage {storage} does not exist (run `python tune.py` first)")
    candidates = [p for p in storage.iterdir() if is_experiment_dir(p)]
    if not candidates:
        raise FileNotFoundError(f"no experiment directory in {storage} (run `python tune.py` first)")
    return max(candidates, key=_last_modified)


# ---------------------------------------------------------------------------------------------- reading


def _read_json_file(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        _warn(f"skipped {path}: unreadable ({type(err).__name__}: {err})")
        return None
    if not isinstance(value, dict):
        _warn(f"skipped {path}: not a JSON object")
        return None
    return value


def _read_result_lines(path: Path) -> list[dict]:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        _warn(f"skipped {path}: unreadable ({err})")
        return []
    rows, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad.append(number)
            continue
        if isinstance(row, dict):
            row.pop("config", None)
            rows.append(row)
        else:
            bad.append(number)
    if bad:
        _warn(f"skipped {len(bad)} corrupted line(s) of {path} (line {', '.join(map(str, bad[:5]))})")
    return rows


def _parse_csv_value(text: str):
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def _read_progress_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="", errors="replace") as f:
            rows = [
                {k: _parse_csv_value(v) for k, v in row.items() if k is not None and v is not None}
                for row in csv.DictReader(f)
            ]
    except (OSError, csv.Error) as err:
        _warn(f"skipped {path}: unreadable ({err})")
        return []
    return [r for r in rows if not r.get("config")]


def _dedupe(rows: list[dict]) -> list[dict]:
    """Keep the last report of each iteration (a resumed trial re-reports epochs after its checkpoint)."""
    by_key: dict = {}
    for index, row in enumerate(rows):
        key = row.get(ITERATION, row.get(m.EPOCH, ("row", index)))
        by_key.pop(key, None)
        by_key[key] = row
    out = list(by_key.values())
    if all(isinstance(r.get(ITERATION), int | float) for r in out):
        out.sort(key=lambda r: r[ITERATION])
    return out


def _read_state(path: Path) -> dict[str, dict]:
    """relative_logdir -> trial state (JSON fields only) from the newest readable experiment_state file."""
    files = sorted(path.glob(STATE_GLOB), key=lambda p: (p.stat().st_mtime, p.name), reverse=True)
    for state_file in files:
        state = _read_json_file(state_file)
        if state is None:
            continue
        trials: dict[str, dict] = {}
        for entry in state.get("trial_data") or []:
            try:
                trial = json.loads(entry[0]) if isinstance(entry, list | tuple) else None
            except (ValueError, TypeError, IndexError):
                trial = None
            if not isinstance(trial, dict) or not trial.get("relative_logdir"):
                _warn(f"skipped an unreadable trial entry of {state_file}")
                continue
            trials[str(trial["relative_logdir"])] = trial
        return trials
    return {}


def _first_error_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "error (error.txt unreadable)"
    # The exception itself is the last line of the traceback Ray writes.
    return lines[-1][:200] if lines else "error"


def read_trial(trial_dir: Path, experiment: str, state: dict | None = None,
               max_epochs: int | None = None) -> TrialRecord | None:
    """One trial folder; ``None`` (with a warning) when neither its params nor any copy of its config is
    readable."""
    state = state or {}
    rows: list[dict] = []
    result_path = trial_dir / RESULT_FILE
    config_copy = None
    if result_path.is_file():
        raw = _read_result_lines_with_config(result_path)
        rows, config_copy = raw
    if not rows and (trial_dir / PROGRESS_FILE).is_file():
        rows = _read_progress_csv(trial_dir / PROGRESS_FILE)
        if rows and result_path.exists():
            _warn(f"{result_path} had no readable result; used {trial_dir / PROGRESS_FILE}")
    rows = _dedupe(rows)
    params = None
    if (trial_dir / PARAMS_FILE).is_file():
        params = _read_json_file(trial_dir / PARAMS_FILE)
    if params is None:
        params = config_copy if isinstance(config_copy, dict) else state.get("config")
        if isinstance(params, dict):
            _warn(f"{trial_dir / PARAMS_FILE} missing or unreadable; used the config copy in Ray's records")
        else:
            _warn(f"skipped trial {trial_dir}: no readable {PARAMS_FILE} nor config copy")
            return None
    error = _first_error_line(trial_dir / ERROR_FILE) if (trial_dir / ERROR_FILE).is_file() else None
    trial_id = state.get("trial_id") or next((r["trial_id"] for r in rows if "trial_id" in r), trial_dir.name)
    return TrialRecord(experiment=experiment, trial_id=str(trial_id), dirname=trial_dir.name, params=params,
                       rows=rows, ray_status=state.get("status"), error=error, max_epochs=max_epochs)


def _read_result_lines_with_config(path: Path) -> tuple[list[dict], dict | None]:
    # The config copy Ray puts in every line is the fallback for an unreadable params.json.
    config = None
    try:
        with open(path, errors="replace") as f:
            first = f.readline()
        config = json.loads(first).get("config")
    except (OSError, ValueError, AttributeError):
        pass
    return _read_result_lines(path), config


def read_experiment(path: str | Path) -> Experiment:
    """Every trial of one experiment directory: its folders, plus trials only the experiment state lists
    (pending ones, or whose folder is gone)."""
    path = Path(path)
    header = {}
    if (path / HEADER_FILE).is_file():
        header = _read_json_file(path / HEADER_FILE) or {}
    max_epochs = header.get("max_epochs")
    if not isinstance(max_epochs, int):
        max_epochs = None
    state = _read_state(path)
    trials = []
    seen = set()
    for trial_dir in sorted(p for p in path.iterdir() if _is_trial_dir(p)):
        seen.add(trial_dir.name)
        record = read_trial(trial_dir, path.name, state.get(trial_dir.name), max_epochs)
        if record is not None:
            if header.get("study") and STUDY not in record.params:
                record.params = {**record.params, STUDY: header["study"]}
            trials.append(record)
    for logdir, trial in state.items():
        if logdir in seen or not isinstance(trial.get("config"), dict):
            continue
        params = dict(trial["config"])
        if header.get("study") and STUDY not in params:
            params[STUDY] = header["study"]
        trials.append(TrialRecord(experiment=path.name, trial_id=str(trial.get("trial_id", logdir)),
                                  dirname=logdir, params=params, ray_status=trial.get("status"),
                                  max_epochs=max_epochs))
    return Experiment(path=path, header=header, trials=trials, source=source_of(path))


def load_experiments(paths: list[str | Path] | None = None, storage: str | Path | None = None) -> list[Experiment]:
    """Experiments to analyze together: each path may be an experiment directory or a storage directory
    (then all experiments in it). No path: the most recent experiment in ``storage``."""
    if not paths:
        dirs = [latest_experiment(storage)]
    else:
        dirs = []
        for p in paths:
            found = find_experiments(p)
            if not found:
                raise FileNotFoundError(f"no experiment directory at {p}")
            dirs.extend(found)
    unique = list(dict.fromkeys(d.resolve() for d in dirs))
    return [read_experiment(d) for d in unique]


def finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

