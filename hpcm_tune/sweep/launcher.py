"""Start, resume and summarise a sweep: the one place that calls ``ray.init`` and ``Tuner``.

Experiment directory (docs/architecture.md): ``<storage>/<name>/`` as Ray Tune writes it, plus
``hpcm_tune.json`` at its root (study, search-space file and parsed content, metric, mode, max epochs, engine,
resources) written before the first trial, and ``hpcm_tune_summary.json`` (best trials per lambda, early
stops, errored trials and why) written at the end of each run of the driver.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcm_tune import metrics
from hpcm_tune.sweep.space import LAMBDA_KEY, SearchSpace, SpaceError, parse_space

META_FILE = "hpcm_tune.json"
SUMMARY_FILE = "hpcm_tune_summary.json"
DEFAULT_STORAGE = "results"


@dataclass(frozen=True)
class SweepOptions:
    """Everything about a sweep that is not in the search-space file."""

    name: str | None = None
    storage: str = DEFAULT_STORAGE
    address: str | None = None
    engine: str = "hpcm"
    wandb: bool = False
    wandb_project: str = "hpcm-tune"
    wandb_upload_timeout_s: int = 60
    retry_errored: bool = False
    restart_errored: bool = False
    trust_storage: bool = False
    num_cpus: int | None = None  # local Ray only; default: all cores
    top: int = 3
    verbose: int = 1

    def __post_init__(self) -> None:
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ValueError(f"name: got {self.name!r}; allowed: a directory name (no '/', not starting with '.')")
        if self.top < 1:
            raise ValueError(f"top: got {self.top!r}; allowed: an integer >= 1")
        if self.wandb_upload_timeout_s < 0:
            raise ValueError(f"wandb_upload_timeout_s: got {self.wandb_upload_timeout_s!r}; allowed: >= 0")


# ------------------------------------------------------------------------------------------------------------
# Storage: a local directory, or a URI (s3://, gs://, a shared file system) through pyarrow.


def is_uri(storage: str) -> bool:
    return "://" in storage


def storage_root(storage: str) -> str:
    """Absolute local path (Ray needs one) or the URI unchanged."""
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def _fs(path: str) -> tuple[Any, str]:
    import pyarrow.fs

    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def exists(path: str) -> bool:
    import pyarrow.fs

    fs, p = _fs(path)
    return fs.get_file_info(p).type != pyarrow.fs.FileType.NotFound


def write_json(path: str, data: Mapping[str, Any]) -> None:
    """Write JSON via a temporary name and a rename, so a crash never leaves half a file."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    fs, p = _fs(path)
    parent = p.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{p}.tmp"
    with fs.open_output_stream(tmp) as f:
        f.write(text.encode())
    fs.move(tmp, p)


def read_json(path: str) -> dict[str, Any]:
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return json.loads(f.read().decode())


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts])


# ------------------------------------------------------------------------------------------------------------


def default_name(space: SearchSpace) -> str:
    """A fresh name per run (study and UTC time), so no sweep ever lands in another's directory."""
    return f"{space.study}-{_dt.datetime.now(_dt.UTC).strftime('%Y%m%d-%H%M%S')}"


def init_ray(address: str | None, num_cpus: int | None = None, num_gpus: float | None = None) -> None:
    """A local Ray bound to the loopback interface (no dashboard), or the user's cluster at ``address``."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Every epoch checkpoints, so snapshots are frequent by design (they make SIGKILL lose little): no warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    # Ray turns a node IP of 127.0.0.1 into the machine's address and listens on every interface, unless it
    # runs in its single-machine mode (the default on macOS/Windows): then node IP, GCS, raylet and agents all
    # bind to the loopback interface. The constant is read at call time; the variable reaches Ray's processes.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    # address="local": always a new instance of our own. Without it ray.init joins any cluster that
    # `ray start` (or another program's test cluster) left running on this machine, with its settings.
    kwargs: dict[str, Any] = {"address": "local", "include_dashboard": False, "configure_logging": True,
                              "logging_level": "WARNING"}
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    if num_gpus is not None:
        kwargs["num_gpus"] = num_gpus
    ray.init(**kwargs)


def experiment_meta(space: SearchSpace, opts: SweepOptions, name: str) -> dict[str, Any]:
    return {
        "format": 1,
        "name": name,
        "study": space.study,
        "space_file": space.source,
        "space": space.to_json(),
        "space_raw": space.raw,
        "metric": space.metric,
        "mode": space.mode,
        "max_epochs": space.max_epochs,
        "lambdas": list(space.lambdas()),
        "scheduler": space.scheduler,
        "searcher": space.searcher,
        "engine": opts.engine,
        "resources": {"cpus": space.cpus, "gpus": space.gpus},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def space_from_meta(meta: Mapping[str, Any]) -> SearchSpace:
    """The SearchSpace a sweep was started with (its parsed content, overrides included)."""
    from hpcm_tune.sweep.space import parse_domain

    s = dict(meta["space"])
    params = {k: parse_domain(s["source"], k, v) for k, v in s.pop("params").items()}
    return SearchSpace(params=params, raw=dict(meta.get("space_raw", {})), **s)


def _build(space: SearchSpace, opts: SweepOptions, name: str, storage: str) -> tuple[Any, Any, Any]:
    """(trainable with resources, TuneConfig, RunConfig) of a sweep."""
    from ray import tune

    from hpcm_tune.sweep.callbacks import SchedulerStateCallback, wandb_callback
    from hpcm_tune.sweep.schedulers import PerGroupASHA, build_scheduler
    from hpcm_tune.sweep.searchers import build_searcher
    from hpcm_tune.sweep.trainable import KeepResultsOfRetriedTrials, make_trainable

    scheduler = build_scheduler(space)
    search_alg, param_space, num_samples = build_searcher(space)
    callbacks: list[Any] = []
    if isinstance(scheduler, PerGroupASHA):  # first, as in experiments written before the next one existed
        callbacks.append(SchedulerStateCallback(scheduler))
    callbacks.append(KeepResultsOfRetriedTrials())
    if opts.wandb:
        callbacks.append(wandb_callback(opts.wandb_project, group=name, upload_timeout_s=opts.wandb_upload_timeout_s))
    trainable = tune.with_resources(make_trainable(opts.engine, space.metric), {"cpu": space.cpus, "gpu": space.gpus})
    tune_config = tune.TuneConfig(
        metric=space.metric, mode=space.mode, scheduler=scheduler, search_alg=search_alg, num_samples=num_samples,
        max_concurrent_trials=space.max_concurrent, reuse_actors=True, trial_dirname_creator=trial_dirname,
    )
    run_config = tune.RunConfig(
        name=name, storage_path=storage, callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=space.checkpoints_to_keep),
        failure_config=tune.FailureConfig(max_failures=space.max_failures),
        verbose=opts.verbose,
    )
    return trainable, param_space, (tune_config, run_config)


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (Ray's default packs every parameter into the name): id, label, lambda."""
    cfg = trial.config or {}
    label = re.sub(r"[^A-Za-z0-9.]+", "-", str(cfg.get("label", ""))).strip("-")[:40]
    return f"{trial.trainable_name}_{trial.trial_id}_{label}_lmbda{cfg.get(LAMBDA_KEY)}"


def run_sweep(space: SearchSpace, opts: SweepOptions) -> dict[str, Any]:
    """Start a new sweep; refuses an existing experiment name (use --resume or a new --name). With a parent
    section, the parents are trained (or taken from the cache) first, as their own stage."""
    from hpcm_tune.sweep.parents import check_environment, check_init_from, plan_parents

    name = opts.name or default_name(space)
    storage = storage_root(opts.storage)
    path = join(storage, name)
    if exists(path):
        raise SpaceError("command line", "--name", name,
                         f"an experiment already exists at {path}; continue it with --resume {name} "
                         f"(same --storage) or choose a new --name")
    check_environment(space, local=opts.address is None)
    check_init_from(space)
    parents = plan_parents(space, storage, opts.engine)
    meta = experiment_meta(space, opts, name)
    meta["parents"] = [p.to_json() for p in parents]
    write_json(join(path, META_FILE), meta)
    init_ray(opts.address, opts.num_cpus)
    return _fit_new(space, opts, name, storage, parents)


def _fit_new(space: SearchSpace, opts: SweepOptions, name: str, storage: str, parents: list[Any]) -> dict[str, Any]:
    """The parent stage (if any), then a fresh Tuner under ``name``."""
    from ray import tune

    from hpcm_tune.sweep.parents import ensure_parents, with_parents

    parent_rows = ensure_parents(parents) if parents else []
    space = with_parents(space, parents)
    trainable, param_space, (tune_config, run_config) = _build(space, opts, name, storage)
    tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    results = tuner.fit()
    return finish(results, space, join(storage, name), tuner_scheduler(tune_config), top=opts.top,
                  parents=parent_rows)


def tuner_scheduler(tune_config: Any) -> Any:
    return tune_config.scheduler


def resolve_experiment(resume: str, storage: str) -> str:
    """``--resume`` takes an experiment path/URI or a name under ``--storage``."""
    if is_uri(resume) or Path(resume).expanduser().is_dir():
        return resume if is_uri(resume) else str(Path(resume).expanduser().resolve())
    return join(storage_root(storage), resume)


# Files of an experiment directory that Ray unpickles on --resume (the Tuner, the searcher's state).
PICKLED_STATE = ("tuner.pkl", "searcher-state-*.pkl", "*.pkl")


def check_trusted(path: str, trust_storage: bool) -> None:
    """--resume lets Ray unpickle files of the experiment directory, so whoever can write them can run code on
    this driver: refuse a local experiment that users other than its owner may write (the directory or a
    pickle in it), unless ``trust_storage``. Object storage cannot be checked here: its access policy is the
    user's to keep."""
    import stat

    if trust_storage or is_uri(path):
        return
    root = Path(path)
    for candidate in [root, *sorted(root.glob("*.pkl"))]:
        mode = candidate.stat().st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise SpaceError("command line", "--resume", path,
                             f"{candidate} is writable by other users (mode {stat.filemode(mode)}); Ray unpickles "
                             f"the experiment's state on resume, so anyone who can write it could run code here. "
                             f"Make it writable by you only (chmod -R go-w {path}) or pass --trust-storage")


def read_experiment_for_resume(experiment: str, opts: SweepOptions) -> tuple[str, dict[str, Any], SearchSpace,
                                                                            list[Any]]:
    """(path, hpcm_tune.json content, the sweep's space, its parents) of an experiment to resume, every
    problem a SpaceError naming the path before Ray starts."""
    from hpcm_tune.sweep.parents import Parent

    path = resolve_experiment(experiment, opts.storage)
    if not exists(join(path, META_FILE)):
        raise SpaceError("command line", "--resume", experiment,
                         f"no hpcm-tune experiment at {path} (missing {META_FILE})")
    check_trusted(path, opts.trust_storage)
    try:
        meta = read_json(join(path, META_FILE))
        missing = [k for k in ("metric", "resources", "space") if k not in meta]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
        space = space_from_meta(meta)
        parents = [Parent.from_json(p) for p in meta.get("parents", [])]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise SpaceError("command line", "--resume", experiment,
                         f"{join(path, META_FILE)} is damaged ({type(error).__name__}: {str(error)[:200]}); it "
                         f"describes the sweep, so it cannot be resumed without it") from None
    return path, meta, space, parents


def resume_sweep(experiment: str, opts: SweepOptions) -> dict[str, Any]:
    """Continue an interrupted sweep: finished trials kept, unfinished ones from their last checkpoint,
    errored ones retried (from their checkpoint) with ``retry_errored`` or from scratch with
    ``restart_errored``; ASHA's rung records come back with the experiment snapshot."""
    from ray import tune

    from hpcm_tune.sweep.parents import ensure_parents, with_parents
    from hpcm_tune.sweep.trainable import make_trainable

    path, meta, space, parents = read_experiment_for_resume(experiment, opts)
    init_ray(opts.address, opts.num_cpus)
    if not tune.Tuner.can_restore(path):
        if parents:  # killed during the parent stage: finish it, then start the trials
            name = path.rstrip("/").rsplit("/", 1)[-1]
            storage = path.rstrip("/")[: -len(name) - 1]
            return _fit_new(space, opts, name, storage, parents)
        raise SpaceError("command line", "--resume", experiment,
                         f"{path} has no Tune experiment state to resume (was the driver killed before the "
                         f"first snapshot?); start a new sweep with a new --name")
    parent_rows = ensure_parents(parents) if parents else []  # a trial restarted from scratch needs its parent
    space = with_parents(space, parents)
    engine = meta.get("engine", opts.engine)
    trainable = tune.with_resources(make_trainable(engine, meta["metric"]),
                                    {"cpu": meta["resources"]["cpus"], "gpu": meta["resources"]["gpus"]})
    tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=opts.retry_errored,
                               restart_errored=opts.restart_errored)
    meta.setdefault("resumed", []).append(_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    write_json(join(path, META_FILE), meta)
    results = tuner.fit()
    scheduler = tuner._local_tuner._tune_config.scheduler if hasattr(tuner, "_local_tuner") else None
    return finish(results, space, path, scheduler, top=opts.top, parents=parent_rows)


# ------------------------------------------------------------------------------------------------------------
# End of sweep: summary table, early stops, errors, optional checkpoint clean-up.


def _rows(results: Any, space: SearchSpace) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        cfg = r.config or {}
        m = r.metrics or {}
        rows.append({
            "trial": Path(r.path).name if r.path else "?",
            "trial_id": m.get("trial_id") or cfg.get("trial_id"),
            "path": r.path,
            "label": cfg.get("label"),
            LAMBDA_KEY: cfg.get(LAMBDA_KEY),
            "seed": cfg.get("seed"),
            "epochs": m.get(metrics.EPOCH),
            space.metric: m.get(space.metric),
            "collapsed": m.get(metrics.EVAL_COLLAPSED),
            "lambda_eff": m.get(metrics.TRAIN_LAMBDA_EFF),
            "params": {k: cfg.get(k) for k in space.params if k in cfg},
            "error": None if r.error is None else f"{type(r.error).__name__}: {_first_line(r.error)}",
        })
    return rows


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    # Ray wraps the trial's exception; its last line names the original error.
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else type(err).__name__


def best_per_lambda(rows: list[dict[str, Any]], space: SearchSpace, top: int) -> dict[str, list[dict[str, Any]]]:
    """The best trials of each lambda (losses at different lambda are not comparable). Full-budget trials
    rank before early-stopped ones; then by the metric."""
    sign = 1.0 if space.mode == "min" else -1.0
    out: dict[str, list[dict[str, Any]]] = {}
    for lam in sorted({r[LAMBDA_KEY] for r in rows if r["error"] is None}, key=lambda v: (v is None, v)):
        group = [r for r in rows if r[LAMBDA_KEY] == lam and r["error"] is None
                 and isinstance(r[space.metric], int | float) and math.isfinite(r[space.metric])]
        group.sort(key=lambda r: ((r["epochs"] or 0) < space.max_epochs, sign * r[space.metric]))
        out[str(lam)] = group[:top]
    return out


def finish(results: Any, space: SearchSpace, path: str, scheduler: Any, top: int = 3,
           delete_stopped: bool | None = None, parents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    from hpcm_tune.sweep.callbacks import offline_runs

    rows = _rows(results, space)
    collapsed = [r for r in rows if r["error"] is None and r["collapsed"] == 1.0]
    stopped = [r for r in rows if r["error"] is None and (r["epochs"] or 0) < space.max_epochs]
    errored = [r for r in rows if r["error"] is not None]
    delete = space.delete_stopped_checkpoints if delete_stopped is None else delete_stopped
    deleted = 0
    if delete and not is_uri(path):
        for r in stopped:
            for ckpt in Path(r["path"]).glob("checkpoint_*"):
                shutil.rmtree(ckpt, ignore_errors=True)
                deleted += 1
    summary = {
        "experiment": path,
        "metric": space.metric,
        "mode": space.mode,
        "max_epochs": space.max_epochs,
        "trials": len(rows),
        "finished": len(rows) - len(stopped) - len(errored),
        "stopped_early": [{k: r[k] for k in ("trial", "label", LAMBDA_KEY, "epochs", space.metric)} for r in stopped],
        "errored": [{k: r[k] for k in ("trial", "label", LAMBDA_KEY, "epochs", "error")} for r in errored],
        "best": best_per_lambda(rows, space, top),
        "collapsed": [{k: r[k] for k in ("trial", "label", LAMBDA_KEY, "epochs", "lambda_eff")} for r in collapsed],
        "parents": list(parents or []),
        "wandb_offline_runs": offline_runs(path),
        "epochs_run": sum(r["epochs"] or 0 for r in rows),
        "checkpoints_deleted": deleted,
        "scheduler_state": scheduler.state_dict() if hasattr(scheduler, "state_dict") else None,
    }
    write_json(join(path, SUMMARY_FILE), summary)
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """The end-of-sweep report: best trials per lambda, early stops, errored trials and why, results path."""
    metric = summary["metric"]
    lines = [f"Sweep finished: {summary['trials']} trials, {summary['finished']} ran all {summary['max_epochs']} "
             f"epochs, {len(summary['stopped_early'])} stopped early, {len(summary['errored'])} errored; "
             f"{summary['epochs_run']} epochs in all."]
    for p in summary.get("parents", []):
        point = "" if p.get("psnr") is None else (f": {p['psnr']:.2f} dB at {p['bpp']:.4f} bpp, lambda*D "
                                                  f"{p['lambda_d']:.3g}; {p.get('vs_jpeg', 'vs JPEG n/a')}")
        lines.append(f"Parent {p['name']} ({'cached' if p['cached'] else 'trained now'}, {p['epochs']} epochs, "
                     f"{p['steps']} steps){point}")
    collapsed = summary.get("collapsed", [])
    if collapsed:
        lines.append(f"\nCollapsed: {len(collapsed)} of {summary['trials']} trials (y carries under "
                     f"{metrics.COLLAPSE_Y_SHARE:.0%} of the rate, or the PSNR is below the flat-colour reference "
                     f"of the evaluation images); their ranking says nothing about the settings:")
        for r in collapsed:
            lam_eff = r.get("lambda_eff")
            extra = f", lambda_eff {lam_eff:.3g}" if isinstance(lam_eff, int | float) else ""
            lines.append(f"  {r['trial']} (lambda {r[LAMBDA_KEY]}, label {r['label']}, epoch {r['epochs']}{extra})")
    elif summary.get("trials"):
        lines.append("No trial collapsed.")
    for lam, best in summary["best"].items():
        lines.append(f"\nBest at lambda = {lam} ({metric}, {summary['mode']}; full-budget trials first):")
        lines.append(f"  {'trial':<28} {'label':<18} {'epochs':>6} {metric:>12}  params")
        for r in best:
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items())
            lines.append(f"  {r['trial'][:28]:<28} {str(r['label'])[:18]:<18} {r['epochs'] or 0:>6} "
                         f"{_fmt(r[metric]):>12}  {params}")
    if summary["errored"]:
        lines.append("\nErrored trials:")
        for r in summary["errored"]:
            lines.append(f"  {r['trial']} (lambda {r[LAMBDA_KEY]}, label {r['label']}, epoch {r['epochs']}): "
                         f"{r['error']}")
        lines.append("  (retry them from their last checkpoint with --resume NAME --retry-errored)")
    if summary.get("checkpoints_deleted"):
        lines.append(f"\nDeleted {summary['checkpoints_deleted']} checkpoints of early-stopped trials.")
    runs = summary.get("wandb_offline_runs") or []
    if runs:
        lines.append(f"\nW&B: {len(runs)} offline run(s), one in each trial's folder of the experiment; upload "
                     f"them (now or any time later) with\n  wandb sync {summary['experiment']}/*/wandb/offline-run-*")
    lines.append(f"\nResults: {summary['experiment']}")
    lines.append(f"Tables: python analyze.py {summary['experiment']}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


__all__ = ["SweepOptions", "run_sweep", "resume_sweep", "format_summary", "parse_space"]
