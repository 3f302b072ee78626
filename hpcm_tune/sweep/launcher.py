"""Start, resume and summarise a sweep: the one place that calls ``ray.init`` and ``Tuner``.

Experiment directory (docs/architecture.md): ``<storage>/<name>/`` as Ray Tune writes it, plus
``hpcm_tune.json`` at its root (study, search-space file and parsed content, metric, mode, max epochs, engine,
resources) written before the first trial, and ``hpcm_tune_summary.json`` (best trials per lambda, early
stops, errored trials and why) written at the end of each run of the driver.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcm_tune import metrics
from hpcm_tune.experiment import (  # the experiment directory's names and storage paths, shared with the analysis
    DEFAULT_STORAGE,
    DONE,
    META_FILE,
    SUMMARY_FILE,
    basename,
    delete_checkpoints,
    dirname,
    is_uri,
    join,
    split_uri,
)
from hpcm_tune.source import code_commit
from hpcm_tune.sweep.space import LAMBDA_KEY, SearchSpace, SpaceError, parse_space
from hpcm_tune.sweep_settings import SEARCHER_SPECS

OPTUNA_DB = "optuna.db"  # the Optuna study of an optuna sweep without --optuna-storage (SQLite)


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
    optuna_storage: str | None = None  # an Optuna RDB URL; default: SQLite <experiment>/optuna.db (optuna only)

    def __post_init__(self) -> None:
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ValueError(f"name: got {self.name!r}; allowed: a directory name (no '/', not starting with '.')")
        if self.top < 1:
            raise ValueError(f"top: got {self.top!r}; allowed: an integer >= 1")
        if self.wandb_upload_timeout_s < 0:
            raise ValueError(f"wandb_upload_timeout_s: got {self.wandb_upload_timeout_s!r}; allowed: >= 0")
        if self.optuna_storage is not None:
            from hpcm_tune.sweep.searchers import mask_url, optuna_url_problem

            problem = optuna_url_problem(self.optuna_storage)
            if problem:
                raise SpaceError("command line", "--optuna-storage", mask_url(self.optuna_storage), problem)


# ------------------------------------------------------------------------------------------------------------
# Storage: a local directory, or a URI (s3://, gs://, a shared file system) through pyarrow.
#
# A URI may carry pyarrow's options as a query, e.g. s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http
# (an S3-compatible server); Ray Tune keeps the query when it joins paths, and so do join() and basename()
# (hpcm_tune.experiment).
# Credentials and endpoint otherwise come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_DEFAULT_REGION, AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3; README.md, "Storage on S3").

# The URI schemes of pyarrow's file systems (pyarrow.fs.FileSystem.from_uri), which Ray Tune also uses.
STORAGE_SCHEMES = ("file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
ALLOWED_STORAGE = ("a local directory, or a URI of pyarrow's file systems: s3://BUCKET/PREFIX, gs://BUCKET/PREFIX, "
                   "file:///PATH, hdfs://, abfs://")
S3_VARIABLES = ("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), AWS_DEFAULT_REGION, and for an "
                "S3-compatible server AWS_ENDPOINT_URL (or ?endpoint_override=HOST:PORT&scheme=http in the URI)")


def storage_root(storage: str) -> str:
    """Absolute local path (Ray needs one) or the URI unchanged (less a trailing '/')."""
    if not is_uri(storage):
        return str(Path(storage).expanduser().resolve())
    base, query = split_uri(storage)
    return base.rstrip("/") + query


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
    with _atomic_output(path) as f:
        f.write(text.encode())


@contextlib.contextmanager
def _atomic_output(path: str):
    """An output stream to ``path`` (local or a URI) that appears under its name only when the block completes:
    written to a temporary name beside it, then moved; removed when the block fails. The storage counterpart of
    hpcm_tune.files.atomic_write (pyarrow file systems, so it works on object storage too)."""
    fs, p = _fs(path)
    fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    tmp = f"{p}.tmp"
    try:
        with fs.open_output_stream(tmp) as stream:
            yield stream
        fs.move(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            fs.delete_file(tmp)
        raise


def read_json(path: str) -> dict[str, Any]:
    fs, p = _fs(path)
    with fs.open_input_stream(p) as f:
        return json.loads(f.read().decode())


def check_storage(storage: str, flag: str = "--storage", write: bool = True) -> None:
    """Before anything is written or Ray starts: ``storage`` names a file system pyarrow knows, can be reached
    with the credentials at hand, its bucket exists, and (``write``) a file can be written there. A SpaceError
    naming the flag, the value and what is allowed otherwise."""
    import uuid

    import pyarrow
    import pyarrow.fs

    def fail(why: str) -> SpaceError:
        return SpaceError("command line", flag, storage, why)

    if not is_uri(storage):
        root = Path(storage_root(storage))
        existing = next((p for p in (root, *root.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise fail(f"{existing} is a file, not a directory; allowed: {ALLOWED_STORAGE}")
        if write and existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            raise fail(f"{existing} is not writable by this user; allowed: {ALLOWED_STORAGE}")
        return
    scheme = storage.split("://", 1)[0].lower()
    if scheme not in STORAGE_SCHEMES:
        raise fail(f"unknown URI scheme {scheme}://; allowed: {ALLOWED_STORAGE}")
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(storage)
    except (pyarrow.ArrowInvalid, pyarrow.ArrowNotImplementedError, ValueError) as error:
        raise fail(f"pyarrow cannot open it ({_one_line(error)}); allowed: {ALLOWED_STORAGE}") from None
    except OSError as error:  # s3:// without a region or endpoint asks AWS where the bucket is
        raise fail(f"cannot reach it ({_one_line(error)}){_hint(scheme)}") from None
    hint = _hint(scheme)
    bucket = path.strip("/").split("/", 1)[0]
    try:
        if scheme in ("s3", "gs", "gcs"):
            if not bucket:
                raise fail(f"no bucket; allowed: {scheme}://BUCKET/PREFIX")
            if fs.get_file_info(bucket).type == pyarrow.fs.FileType.NotFound:
                raise fail(f"the bucket {bucket!r} does not exist (or these credentials cannot see it); create it "
                           f"first{hint}")
        info = fs.get_file_info(path)
        if info.type == pyarrow.fs.FileType.File:
            raise fail(f"{path} is a file, not a directory; allowed: {ALLOWED_STORAGE}")
        if write:
            if scheme not in ("s3", "gs", "gcs"):  # a file system with real folders: create the storage root, as
                fs.create_dir(path, recursive=True)  # a local --storage is created (object stores need none)
            probe = f"{path.rstrip('/')}/.hpcm-tune-write-test-{uuid.uuid4().hex[:12]}"
            with fs.open_output_stream(probe) as f:
                f.write(b"ok\n")
            with contextlib.suppress(OSError):
                fs.delete_file(probe)
    except OSError as error:  # connection refused, unknown host, access denied, wrong key or signature
        raise fail(f"cannot {'write to' if write else 'read'} it ({_one_line(error)}){hint}") from None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


def _hint(scheme: str) -> str:
    if scheme != "s3":
        return ""
    return f"; check the endpoint and credentials: {S3_VARIABLES}"


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
        "commit": code_commit(),  # the code the trials run (analyze.py shows it beside its own)
    }


def space_from_meta(meta: Mapping[str, Any]) -> SearchSpace:
    """The SearchSpace a sweep was started with (its parsed content, overrides included)."""
    from hpcm_tune.sweep.space import parse_domain

    s = dict(meta["space"])
    params = {k: parse_domain(s["source"], k, v) for k, v in s.pop("params").items()}
    return SearchSpace(params=params, raw=dict(meta.get("space_raw", {})), **s)


# ------------------------------------------------------------------------------------------------------------
# Optuna's study in a database. Local experiments: SQLite <experiment>/optuna.db unless --optuna-storage.
# Object storage (s3://, gs://): SQLite cannot live there, so the study is a local file of the driver
# (local_optuna_file), uploaded to <experiment>/optuna.db at the end of every run of the driver and downloaded
# by --resume when the local file is missing; for a study readable while the sweep runs on a cluster, give a
# database server with --optuna-storage.


def local_optuna_file(experiment: str) -> Path:
    """The driver's SQLite file of an experiment on object storage (one per experiment URI)."""
    import hashlib

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hpcm-tune" / "optuna"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", experiment.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1])[:80]
    return cache / f"{name}-{hashlib.sha1(experiment.encode()).hexdigest()[:10]}.db"


def optuna_study(space: SearchSpace, opts: SweepOptions, name: str, path: str) -> dict[str, Any] | None:
    """Where a new sweep keeps its Optuna study ({"url", "study", "upload_to"}; None for other searchers),
    checked before anything starts: a URL of the flag that is refused, unreachable or holds a study of this
    name with trials is a SpaceError naming --optuna-storage and the value."""
    from hpcm_tune.sweep.searchers import mask_url, new_study_storage

    if not space.searcher_spec.keeps_optuna_study:
        if opts.optuna_storage:
            keeping = [n for n, spec in SEARCHER_SPECS.items() if spec.keeps_optuna_study]
            raise SpaceError("command line", "--optuna-storage", mask_url(opts.optuna_storage),
                             f"a study database needs the {' or '.join(keeping)} searcher; this sweep's is "
                             f"{space.searcher!r}")
        return None
    if opts.optuna_storage:
        try:
            new_study_storage(opts.optuna_storage, name)
        except ValueError as exc:
            raise SpaceError("command line", "--optuna-storage", mask_url(opts.optuna_storage), str(exc)) from None
        return {"url": opts.optuna_storage, "study": name, "upload_to": None}
    if is_uri(path):
        local = local_optuna_file(path)
        local.parent.mkdir(parents=True, exist_ok=True)
        return {"url": f"sqlite:///{local}", "study": name, "upload_to": join(path, OPTUNA_DB)}
    return {"url": f"sqlite:///{join(path, OPTUNA_DB)}", "study": name, "upload_to": None}


def _copy(src: str, dst: str) -> None:
    """Copy one file between the local disk and storage (either side a URI), through a temporary name."""
    fs_in, p_in = _fs(src)
    with fs_in.open_input_stream(p_in) as f, _atomic_output(dst) as g:
        while chunk := f.read(1 << 22):
            g.write(chunk)


def upload_optuna(optuna: Mapping[str, Any] | None) -> None:
    """After a run of the driver: the local study file of an experiment on object storage, to the experiment."""
    if optuna and optuna.get("upload_to"):
        try:
            _copy(optuna["url"].removeprefix("sqlite:///"), optuna["upload_to"])
        except OSError as exc:  # the sweep's own outcome matters more; the local file stays
            import sys

            print(f"warning: the Optuna study was not uploaded to {optuna['upload_to']} ({type(exc).__name__}: "
                  f"{exc}); it stays in {optuna['url']}", file=sys.stderr)


def prepare_optuna_for_resume(optuna: Mapping[str, Any] | None, experiment: str) -> None:
    """Before --resume starts Ray: the study's database must be reachable (the searcher's state points at it);
    on object storage a missing local file is first downloaded from the experiment."""
    from hpcm_tune.sweep.searchers import optuna_storage

    if not optuna:
        return
    if optuna.get("upload_to"):
        local = Path(optuna["url"].removeprefix("sqlite:///"))
        if not local.exists() and exists(optuna["upload_to"]):
            local.parent.mkdir(parents=True, exist_ok=True)
            _copy(optuna["upload_to"], str(local))
    try:
        optuna_storage(optuna["url"])
    except ValueError as exc:
        raise SpaceError(join(experiment, META_FILE), "optuna storage (--optuna-storage when started)",
                         optuna["url"], f"{exc}; make the database reachable, then resume again") from None


# ------------------------------------------------------------------------------------------------------------


def _build(space: SearchSpace, opts: SweepOptions, name: str, storage: str,
           optuna: Mapping[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """(trainable with resources, TuneConfig, RunConfig) of a sweep."""
    from ray import tune

    from hpcm_tune.sweep.callbacks import KeepRestorableCheckpoints, SchedulerStateCallback, wandb_callback
    from hpcm_tune.sweep.schedulers import PerGroupASHA, build_scheduler
    from hpcm_tune.sweep.searchers import build_searcher
    from hpcm_tune.sweep.trainable import KeepResultsOfRetriedTrials, make_trainable

    scheduler = build_scheduler(space)
    search_alg, param_space, num_samples = build_searcher(
        space, optuna_storage_url=optuna["url"] if optuna else None, study_name=optuna["study"] if optuna else None,
        experiment=join(storage, name))
    callbacks: list[Any] = []
    if isinstance(scheduler, PerGroupASHA):  # first, as in experiments written before the next one existed
        callbacks.append(SchedulerStateCallback(scheduler))
    callbacks.append(KeepResultsOfRetriedTrials())
    if opts.wandb:
        callbacks.append(wandb_callback(opts.wandb_project, group=name, upload_timeout_s=opts.wandb_upload_timeout_s))
    # Ray keeps every checkpoint (num_to_keep=None below): its own pruning deletes the checkpoint a stored snapshot
    # still names (KeepRestorableCheckpoints' docstring). Under PBT nothing is deleted while trials run: a paused
    # trial restarts from another trial's newest checkpoint once a slot frees, epochs later (Ray warns that a
    # bounded num_to_keep breaks this; seen here as 'Could not recover from checkpoint'). finish() keeps the newest
    # checkpoints_to_keep once no trial can restore any more.
    if not space.scheduler_spec.copies_weights:
        callbacks.append(KeepRestorableCheckpoints(space.checkpoints_to_keep))
    trainable = tune.with_resources(make_trainable(opts.engine, space.metric), {"cpu": space.cpus, "gpu": space.gpus})
    tune_config = tune.TuneConfig(
        metric=space.metric, mode=space.mode, scheduler=scheduler, search_alg=search_alg, num_samples=num_samples,
        max_concurrent_trials=space.max_concurrent, reuse_actors=True, trial_dirname_creator=trial_dirname,
    )
    run_config = tune.RunConfig(
        name=name, storage_path=storage, callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
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
    from hpcm_tune.sweep.trainable import ENGINES

    ENGINES.get(opts.engine)  # an engine this process has not registered fails here, naming the registered ones
    name = opts.name or default_name(space)
    check_storage(opts.storage)
    storage = storage_root(opts.storage)
    path = join(storage, name)
    if exists(path):
        raise SpaceError("command line", "--name", name,
                         f"an experiment already exists at {path}; continue it with --resume {name} "
                         f"(same --storage) or choose a new --name")
    check_environment(space, local=opts.address is None)
    check_init_from(space)
    optuna = optuna_study(space, opts, name, path)
    parents = plan_parents(space, storage, opts.engine)
    meta = experiment_meta(space, opts, name)
    meta["parents"] = [p.to_json() for p in parents]
    if optuna:
        meta["optuna"] = {**optuna, "url": _masked(optuna["url"])}
    write_json(join(path, META_FILE), meta)
    init_ray(opts.address, opts.num_cpus)
    return _fit_new(space, opts, name, storage, parents, optuna)


def _fit_new(space: SearchSpace, opts: SweepOptions, name: str, storage: str, parents: list[Any],
             optuna: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The parent stage (if any), then a fresh Tuner under ``name``."""
    from ray import tune

    from hpcm_tune.sweep.parents import ensure_parents, with_parents

    parent_rows = ensure_parents(parents) if parents else []
    space = with_parents(space, parents)
    trainable, param_space, (tune_config, run_config) = _build(space, opts, name, storage, optuna)
    tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    try:
        results = tuner.fit()
    finally:
        upload_optuna(optuna)
    return finish(results, space, join(storage, name), tuner_scheduler(tune_config), top=opts.top,
                  parents=parent_rows, optuna=optuna)


def tuner_scheduler(tune_config: Any) -> Any:
    return tune_config.scheduler


def resolve_experiment(resume: str, storage: str) -> str:
    """``--resume`` takes an experiment path/URI or a name under ``--storage``."""
    if is_uri(resume):
        return storage_root(resume)
    if Path(resume).expanduser().is_dir():
        return str(Path(resume).expanduser().resolve())
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


def read_experiment_for_resume(experiment: str, opts: SweepOptions, write: bool = True) -> tuple[
        str, dict[str, Any], SearchSpace, list[Any]]:
    """(path, hpcm_tune.json content, the sweep's space, its parents) of an experiment to resume, every
    problem a SpaceError naming the path before Ray starts (object storage: reachable, the bucket there, and
    with ``write`` writable)."""
    from hpcm_tune.sweep.parents import Parent

    path = resolve_experiment(experiment, opts.storage)
    if is_uri(experiment):
        check_storage(experiment, "--resume", write=write)
    elif is_uri(path):
        check_storage(opts.storage, write=write)
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


def check_recorded_engines(experiment: str, engines: list[str]) -> None:
    """The engines a sweep recorded (its trials' and its parents') are registered in this process, before Ray
    starts: a sweep started by a program that registered its own engine (a test's stand-in) resumes from that
    program, since tune.py registers only the real one. SpaceError naming the engine and the registered ones."""
    from hpcm_tune.sweep.trainable import ENGINES

    for name in dict.fromkeys(engines):
        if name not in ENGINES:
            raise SpaceError("command line", "--resume", experiment,
                             f"the sweep was started with engine {name!r}, which this program has not registered "
                             f"(registered: {', '.join(sorted(ENGINES))}); resume it with the program that "
                             f"started it")


def resume_sweep(experiment: str, opts: SweepOptions) -> dict[str, Any]:
    """Continue an interrupted sweep: finished trials kept, unfinished ones from their last checkpoint,
    errored ones retried (from their checkpoint) with ``retry_errored`` or from scratch with
    ``restart_errored``; ASHA's rung records come back with the experiment snapshot."""
    from ray import tune

    from hpcm_tune.sweep.parents import ensure_parents, with_parents
    from hpcm_tune.sweep.trainable import make_trainable

    path, meta, space, parents = read_experiment_for_resume(experiment, opts)
    engine = meta.get("engine", opts.engine)
    check_recorded_engines(experiment, [engine, *(p.engine for p in parents)])
    optuna = meta.get("optuna")
    prepare_optuna_for_resume(optuna, path)
    init_ray(opts.address, opts.num_cpus)
    if not tune.Tuner.can_restore(path):
        if parents:  # killed during the parent stage: finish it, then start the trials (the recorded engine's)
            import dataclasses

            return _fit_new(space, dataclasses.replace(opts, engine=engine), basename(path), dirname(path), parents,
                            optuna)
        raise SpaceError("command line", "--resume", experiment,
                         f"{path} has no Tune experiment state to resume (was the driver killed before the "
                         f"first snapshot?); start a new sweep with a new --name")
    parent_rows = ensure_parents(parents) if parents else []  # a trial restarted from scratch needs its parent
    space = with_parents(space, parents)
    trainable = tune.with_resources(make_trainable(engine, meta["metric"]),
                                    {"cpu": meta["resources"]["cpus"], "gpu": meta["resources"]["gpus"]})
    tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=opts.retry_errored,
                               restart_errored=opts.restart_errored)
    meta.setdefault("resumed", []).append(_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    meta.setdefault("resumed_commits", []).append(code_commit())
    write_json(join(path, META_FILE), meta)
    try:
        results = tuner.fit()
    finally:
        upload_optuna(optuna)
    scheduler = tuner._local_tuner._tune_config.scheduler if hasattr(tuner, "_local_tuner") else None
    return finish(results, space, path, scheduler, top=opts.top, parents=parent_rows, optuna=optuna)


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
            "filesystem": r.filesystem,  # the storage's (local or object storage): r.path is relative to it
            "label": cfg.get("label"),
            LAMBDA_KEY: cfg.get(LAMBDA_KEY),
            "seed": cfg.get("seed"),
            "epochs": m.get(metrics.EPOCH),
            "done": bool(m.get(DONE)),
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
           delete_stopped: bool | None = None, parents: list[dict[str, Any]] | None = None,
           optuna: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from hpcm_tune.sweep.callbacks import offline_runs

    rows = _rows(results, space)
    collapsed = [r for r in rows if r["error"] is None and r["collapsed"] == 1.0]
    stopped = [r for r in rows if r["error"] is None and (r["epochs"] or 0) < space.max_epochs]
    errored = [r for r in rows if r["error"] is not None]
    # Ray's fit() also returns when the sweep is interrupted (Ctrl-C): a trial cut off (its last result not done)
    # looks stopped early but resumes from its checkpoints, so then none is deleted.
    unfinished = sum(r["error"] is None and not r["done"] for r in rows)
    delete = space.delete_stopped_checkpoints if delete_stopped is None else delete_stopped
    deleted = pruned = 0
    if not unfinished:
        for r in rows:
            if not r["path"]:
                continue
            if delete and r in stopped:
                deleted += delete_checkpoints(r["filesystem"], r["path"], keep=0)
            # What was kept while trials could still restore it (see _build) goes now, but the newest few.
            pruned += delete_checkpoints(r["filesystem"], r["path"], keep=space.checkpoints_to_keep)
    summary = {
        "experiment": path,
        "metric": space.metric,
        "mode": space.mode,
        "max_epochs": space.max_epochs,
        "trials": len(rows),
        "unfinished": unfinished,
        "finished": len(rows) - len(stopped) - len(errored),
        "stopped_early": [{k: r[k] for k in ("trial", "label", LAMBDA_KEY, "epochs", space.metric)} for r in stopped],
        "errored": [{k: r[k] for k in ("trial", "label", LAMBDA_KEY, "epochs", "error")} for r in errored],
        "best": best_per_lambda(rows, space, top),
        "collapsed": [{k: r[k] for k in ("trial", "label", LAMBDA_KEY, "epochs", "lambda_eff")} for r in collapsed],
        "parents": list(parents or []),
        "wandb_offline_runs": offline_runs(path),
        "epochs_run": sum(r["epochs"] or 0 for r in rows),
        "checkpoints_deleted": deleted,
        "checkpoints_pruned": pruned,
        "checkpoints_to_keep": space.checkpoints_to_keep,
        "optuna": None if not optuna else {"url": _masked(optuna["url"]), "study": optuna["study"],
                                           "uploaded_to": optuna.get("upload_to")},
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
    if summary.get("unfinished"):
        lines = [f"Sweep interrupted: {summary['unfinished']} of {summary['trials']} trials unfinished (counted "
                 f"below as stopped early; their checkpoints are kept), {summary['epochs_run']} epochs so far. "
                 f"Continue it with --resume {summary['experiment']}"]
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
    if summary.get("checkpoints_pruned"):
        lines.append(f"\nDeleted {summary['checkpoints_pruned']} older checkpoints kept while trials could restore "
                     f"them; each trial keeps its newest {summary['checkpoints_to_keep']}.")
    runs = summary.get("wandb_offline_runs") or []
    if runs:
        lines.append(f"\nW&B: {len(runs)} offline run(s), one in each trial's folder of the experiment; upload "
                     f"them (now or any time later) with\n  wandb sync {summary['experiment']}/*/wandb/offline-run-*")
    study = summary.get("optuna")
    if study:
        lines.append(f"\nOptuna study {study['study']!r} in {study['url']}"
                     + (f" (a copy in {study['uploaded_to']})" if study.get("uploaded_to") else "")
                     + f"; browse it with: pip install optuna-dashboard; optuna-dashboard {study['url']}")
    lines.append(f"\nResults: {summary['experiment']}")
    lines.append(f"Tables: python analyze.py {shlex.quote(summary['experiment'])}")  # a URI's query has '&'
    return "\n".join(lines)


def _masked(url: str) -> str:
    from hpcm_tune.sweep.searchers import mask_url

    return mask_url(url)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


__all__ = ["SweepOptions", "run_sweep", "resume_sweep", "format_summary", "parse_space"]
