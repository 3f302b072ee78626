"""Parents: pretrain once, fine-tune many.

A search space's ``parent`` section describes the run every trial starts from (typically the standard R-D loss
for more epochs at a higher lr). Fine-tuning from it puts the balanced objectives where lambda*D is near 1 and
their effective lambda near lambda (docs/architecture.md, "The effective lambda"); trained from scratch at small
budgets they collapse.

``plan_parents`` gives one ``Parent`` per distinct value of the match keys (space.PARENT_MATCH_KEYS: lambda,
preset, distortion) of the sweep's trials. Its config is the parent section over the defaults, with those match
keys and the sweep's data and machine keys (space.PARENT_INHERITED_KEYS). Each is cached under
``<storage>/parents/<name>/`` by a digest of its resolved config and the model's architecture fingerprint, so
every later sweep that asks for the same parent (on this machine, on a cluster's shared file system or in an
object store) reuses it. The directory is a run directory as
``hpcm-train --out`` writes it (``params.json``, ``result.json``, ``checkpoints/``) plus ``parent.json``,
written last: a parent without it is unfinished, and continues from its checkpoints the next time it is
asked for (an interrupted parent stage resumes with the sweep). A cached parent whose marker, digest or
checkpoint does not check out is retrained, never used.

Parents train as Ray tasks with the parent's resources (``parent: {resources: {cpus, gpus}}``, default the
trials'), so on a cluster they run where GPUs are; each prints one line per epoch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from hpcm_tune import metrics
from hpcm_tune.experiment import LAMBDA_KEY, PARAMS_FILE, PARENTS_DIR, PARENTS_KEY, RESULT_FILE, is_internal
from hpcm_tune.files import atomic_write
from hpcm_tune.sweep.space import SearchSpace, parent_configs

DONE_FILE = "parent.json"
# Keys that do not change what a parent learns (labels, loader processes, which device, how often it is
# evaluated: evaluation draws no random numbers).
NON_SEMANTIC_KEYS: frozenset[str] = frozenset({"study", "label", "num_workers", "device", "eval_interval",
                                               "codec_interval"})


@functools.cache
def model_fingerprint(preset: str) -> str:
    """The architecture fingerprint (hpcm_tune.checkpoint.architecture_fingerprint) of a preset's model."""
    import torch

    from hpcm_tune.checkpoint import architecture_fingerprint
    from hpcm_tune.models import build_model

    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = build_model(preset)
    except Exception:
        model = build_model(preset)
    return architecture_fingerprint(model.state_dict())


def resolved_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat config with every default filled in (RunConfig's view of it)."""
    from hpcm_tune.config import RunConfig

    return RunConfig.from_dict(dict(config)).to_dict()


def parent_digest(config: Mapping[str, Any], fingerprint: str, engine: str = "hpcm") -> str:
    """12 hex digits of the resolved config (NON_SEMANTIC_KEYS left out), the architecture fingerprint and the
    engine that trains it (hpcm_tune.sweep.trainable.ENGINES)."""
    semantic = {k: v for k, v in resolved_config(config).items() if k not in NON_SEMANTIC_KEYS}
    text = json.dumps({"config": semantic, "architecture": fingerprint, "engine": engine}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Parent:
    """One parent: its match key, flat config, where it lives and how it trains."""

    key: str
    config: dict[str, Any]
    fingerprint: str
    digest: str
    path: str
    cpus: float = 1.0
    gpus: float = 0.0
    engine: str = "hpcm"

    @property
    def name(self) -> str:
        from hpcm_tune.experiment import basename

        return basename(self.path)  # a URI's query (?endpoint_override=...) is no part of it

    @property
    def epochs(self) -> int:
        return int(resolved_config(self.config)["epochs"])

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Parent:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def plan_parents(space: SearchSpace, storage: str, engine: str = "hpcm") -> list[Parent]:
    """The parents a sweep needs, at their cache paths under ``storage`` (a local path or a URI), trained by
    ``engine`` (the sweep's)."""
    from hpcm_tune.experiment import join

    out = []
    for key, config in parent_configs(space).items():
        full = resolved_config(config)
        fingerprint = model_fingerprint(full["preset"])
        digest = parent_digest(full, fingerprint, engine)
        name = f"{full['preset']}-lmbda{full[LAMBDA_KEY]:g}-{full['distortion']}-{digest}"
        out.append(Parent(key=key, config=full, fingerprint=fingerprint, digest=digest,
                          path=join(storage, PARENTS_DIR, name),
                          cpus=float(space.parent_resources.get("cpus", space.cpus)),
                          gpus=float(space.parent_resources.get("gpus", space.gpus)), engine=engine))
    return out


def with_parents(space: SearchSpace, parents: Sequence[Parent]) -> SearchSpace:
    """The space whose trials start from their parents (the table travels in the fixed key PARENTS_KEY)."""
    import dataclasses

    if not parents:
        return space
    table = json.dumps({p.key: p.path for p in parents}, sort_keys=True)
    return dataclasses.replace(space, fixed={**space.fixed, PARENTS_KEY: table})


class ParentError(RuntimeError):
    """A parent could not be trained; the sweep's trials were not started."""


def check_environment(space: SearchSpace, local: bool) -> None:
    """What a trial would find out too late, checked in the driver before anything is written: every data
    folder the trials and parents use opens (hpcm_tune.data.open_data), and a CUDA device has GPUs to run on
    (a GPU share per trial; on a local Ray, a GPU on this machine). SpaceError naming the key otherwise."""
    from hpcm_tune.data import open_data
    from hpcm_tune.sweep.space import SpaceError, validation_configs

    configs = [("", cfg) for cfg in validation_configs(space, draws=0)]
    configs += [("parent.", cfg) for cfg in parent_configs(space).values()]
    seen: set[tuple[str, str]] = set()
    for prefix, cfg in configs:
        full = resolved_config({k: v for k, v in cfg.items() if not is_internal(k)})
        for key in ("data", "device"):
            if (key, str(full[key])) in seen:
                continue
            seen.add((key, str(full[key])))
            where = f"{prefix or 'fixed.'}{key}"
            if key == "data":
                try:
                    open_data(full["data"])
                except ValueError as error:
                    raise SpaceError(space.source, where, full["data"], str(error)) from None
            elif str(full["device"]).startswith("cuda"):
                gpus = space.parent_resources.get("gpus", space.gpus) if prefix else space.gpus
                if not gpus:
                    raise SpaceError(space.source, where, full["device"], "a CUDA device needs a GPU share per "
                                     "trial (resources.gpus > 0, or --gpus-per-trial); Ray gives this one none")
                if local:
                    import torch

                    if not torch.cuda.is_available():
                        raise SpaceError(space.source, where, full["device"], "this machine has no CUDA device "
                                         "(torch.cuda.is_available() is False); allowed here: auto, cpu")


def check_init_from(space: SearchSpace) -> None:
    """Every ``init_from`` the space names (in fixed, configurations or the parent section) exists, holds a
    readable checkpoint, and is of the run's preset and architecture: a SpaceError naming the file and key
    otherwise, before Ray starts."""
    from hpcm_tune.checkpoint import CheckpointError, load_model_weights
    from hpcm_tune.experiment import INIT_FROM_KEY
    from hpcm_tune.sweep.space import SpaceError, trial_configs

    places = [(f"parent.{INIT_FROM_KEY}", cfg) for cfg in parent_configs(space).values()]
    if space.parent is None:
        places += [(f"fixed.{INIT_FROM_KEY}" if INIT_FROM_KEY in space.fixed else
                    f"configurations.{cfg.get('label')}.{INIT_FROM_KEY}", cfg) for cfg in trial_configs(space)]
    seen = set()
    for where, cfg in places:
        source = cfg.get(INIT_FROM_KEY)
        if source is None:
            continue
        preset = resolved_config({k: v for k, v in cfg.items() if not is_internal(k)})["preset"]
        if (source, preset) in seen:
            continue
        seen.add((source, preset))
        try:
            load_model_weights(source, preset, model_fingerprint(preset))
        except CheckpointError as error:
            raise SpaceError(space.source, where, source, str(error)) from None


# ------------------------------------------------------------------------------------------------------------
# State of a cached parent.


def _local(path: str) -> Path | None:
    return None if "://" in path else Path(path)


def _fs(path: str) -> tuple[Any, str]:
    import pyarrow.fs

    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)  # the URI's query (?endpoint_override=...) configures it
    return pyarrow.fs.LocalFileSystem(), str(Path(path).resolve())


def copy_tree(source: str, destination: str, prune: str | None = None) -> None:
    """Copy a directory between a local path and a URI (s3://, gs://, file://) or between two of either. With
    ``prune`` (a sub-folder, e.g. "checkpoints"), the folders directly under ``destination/prune`` that the
    source no longer has are deleted: the upload mirrors a checkpoint folder the engine keeps short."""
    import pyarrow.fs

    (src_fs, src), (dst_fs, dst) = _fs(source), _fs(destination)
    dst_fs.create_dir(dst, recursive=True)
    pyarrow.fs.copy_files(src, dst, source_filesystem=src_fs, destination_filesystem=dst_fs)
    if prune is None:
        return
    keep = {i.base_name for i in src_fs.get_file_info(pyarrow.fs.FileSelector(f"{src}/{prune}", allow_not_found=True))}
    for info in dst_fs.get_file_info(pyarrow.fs.FileSelector(f"{dst}/{prune}", allow_not_found=True)):
        if info.type == pyarrow.fs.FileType.Directory and info.base_name not in keep:
            dst_fs.delete_dir(info.path)


def fetch(path: str, scratch: str | Path) -> str:
    """A local directory holding ``path``: the path itself, or a copy of a URI under ``scratch``."""
    from hpcm_tune.experiment import basename

    if _local(path) is not None:
        return path
    local = Path(scratch) / basename(path)
    copy_tree(path, str(local))
    return str(local)


def read_done(parent: Parent) -> dict[str, Any] | None:
    """The parent's finished marker, or None when it has none or it cannot be read."""
    from hpcm_tune.sweep.launcher import exists, join, read_json

    marker = join(parent.path, DONE_FILE)
    if not exists(marker):
        return None
    try:
        return read_json(marker)
    except Exception:
        return {}


def status(parent: Parent) -> str:
    """'cached', 'partial (epoch k of n)', 'missing' or 'corrupt: why' (cheap: no checkpoint is loaded)."""
    from hpcm_tune.checkpoint import list_checkpoints

    done = read_done(parent)
    if done is not None:
        if done.get("digest") != parent.digest or done.get("fingerprint") != parent.fingerprint:
            return "corrupt: its marker does not match this config"
        return "cached"
    local = _local(parent.path)
    if local is not None:
        found = list_checkpoints(local / "checkpoints")
        if found:
            return f"partial (epoch {int(found[-1].name.split('_')[1])} of {parent.epochs})"
    return "missing"


def verify(parent: Parent) -> str | None:
    """Why the cached parent cannot be used (None: it can): a marker that does not match, or a final
    checkpoint that cannot be read, is of another architecture, or is not at the last epoch."""
    from hpcm_tune.checkpoint import CheckpointError, load_model_weights, read_state

    done = read_done(parent)
    if done is None:
        return "no finished marker"
    if done.get("digest") != parent.digest or done.get("fingerprint") != parent.fingerprint:
        return f"{DONE_FILE} does not match this parent's config"
    if parent.engine != "hpcm":
        return None  # a stand-in engine (tests) has no weights to check
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hpcm-parent-") as scratch:
        try:
            local = fetch(parent.path, scratch)
            _, used = load_model_weights(local, parent.config["preset"], parent.fingerprint)
            epoch = int(read_state(used)["epoch"])
        except (CheckpointError, OSError, KeyError, ValueError) as error:
            return f"its checkpoint is unusable: {error}"
    if epoch != parent.epochs:
        return f"its newest readable checkpoint is at epoch {epoch}, not {parent.epochs}"
    return None


# ------------------------------------------------------------------------------------------------------------
# Training.


def _print(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def train_parent(parent: Parent, factory: str | None = None) -> dict[str, Any]:
    """Train (or continue) one parent in this process and write its marker; returns the marker's content.
    ``factory``: the engine factory's "module:attribute" path, looked up in the driver
    (``ENGINES.get(parent.engine)``), since a Ray worker's fresh ENGINES lacks the engines a test or plugin
    registered in the driver only; default: the parent's engine looked up here. What is recorded (the
    digest, hpcm_tune.json's parents) stays the registered name, ``parent.engine``."""
    import torch

    from hpcm_tune.checkpoint import list_checkpoints
    from hpcm_tune.sweep.trainable import quiet_exit_in_finalisers, resolve_engine

    quiet_exit_in_finalisers()  # a Ray task's worker, stopped with SIGTERM when the sweep ends
    torch.set_num_threads(max(1, int(parent.cpus)))
    remote = None if _local(parent.path) is not None else parent.path
    if remote is None:
        local = Path(parent.path)
    else:  # object storage: train in a scratch folder, continue from what the storage holds, upload each epoch
        import tempfile

        from hpcm_tune.sweep.launcher import exists

        local = Path(tempfile.gettempdir()) / "hpcm-tune-parents" / parent.name
        if local.exists():
            shutil.rmtree(local)
        if exists(remote):
            copy_tree(remote, str(local))
    local.mkdir(parents=True, exist_ok=True)
    (local / PARAMS_FILE).write_text(json.dumps(parent.config, indent=2) + "\n")
    engine = resolve_engine(factory or parent.engine)(dict(parent.config), local)
    results = local / RESULT_FILE
    if list_checkpoints(local / "checkpoints"):
        used = engine.restore(local / "checkpoints")
        _print(f"[parent {parent.name}] continuing from {used.name}")
    kept = []
    if results.is_file():
        for line in results.read_text().splitlines():
            try:
                if line.strip() and json.loads(line).get(metrics.EPOCH, 0) <= engine.epoch:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill: redone
    results.write_text("".join(line + "\n" for line in kept))
    start, resumed_from = time.monotonic(), engine.epoch
    total = parent.epochs

    def on_epoch(m: Mapping[str, float], _checkpoint: Path) -> None:
        with results.open("a") as f:
            f.write(json.dumps(dict(m)) + "\n")
        if remote is not None:
            copy_tree(str(local), remote, prune="checkpoints")
        psnr, bpp = m.get(metrics.EVAL_PSNR, float("nan")), m.get(metrics.EVAL_BPP, float("nan"))
        _print(f"[parent {parent.name}] epoch {int(m[metrics.EPOCH])}/{total}  loss {m[metrics.TRAIN_LOSS]:.4g}  "
               f"eval psnr {psnr:.2f} dB  bpp {bpp:.4f}  ({time.monotonic() - start:.0f} s)")

    last = engine.run(on_epoch)
    if not last:  # nothing was left to train: the last line of result.json is the final epoch
        lines = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
        last = lines[-1] if lines else {}
    lmbda = float(parent.config[LAMBDA_KEY])
    done = {
        "name": parent.name,
        "key": parent.key,
        "digest": parent.digest,
        "fingerprint": parent.fingerprint,
        "config": parent.config,
        "epochs": engine.epoch,
        "steps": getattr(engine, "step", None),
        "resumed_from_epoch": resumed_from,  # > 0: an interrupted parent stage continued from its checkpoint
        "train_s": round(time.monotonic() - start, 1),
        "final": {k: last.get(k) for k in (metrics.EVAL_PSNR, metrics.EVAL_BPP, metrics.EVAL_LOSS,
                                           metrics.EVAL_Y_SHARE, metrics.EVAL_COLLAPSED, metrics.EVAL_FLAT_PSNR)},
        # lambda*D at the parent's point (D = 255^2 MSE): near 1 is where FAMO's lambda_eff stays near lambda.
        "lambda_d": (last[metrics.EVAL_LOSS] - last[metrics.EVAL_BPP]) if metrics.EVAL_LOSS in last else None,
        "lmbda": lmbda,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if remote is not None:
        from hpcm_tune.sweep.launcher import join, write_json

        copy_tree(str(local), remote, prune="checkpoints")
        write_json(join(remote, DONE_FILE), done)  # last: the upload is complete
        shutil.rmtree(local, ignore_errors=True)
        return done
    atomic_write(local / DONE_FILE, json.dumps(done, indent=2) + "\n")
    return done


def _remove(parent: Parent) -> None:
    local = _local(parent.path)
    if local is not None and local.exists():
        shutil.rmtree(local)
    elif local is None:
        fs, path = _fs(parent.path)
        fs.delete_dir(path)


def ensure_parents(parents: Sequence[Parent], in_process: bool = False) -> list[dict[str, Any]]:
    """Reuse every cached parent that verifies, train (or continue) the others as Ray tasks (``in_process``:
    one after the other in this process, without Ray), and return one summary row per parent (name, whether
    it was cached, its final point)."""
    rows: dict[str, dict[str, Any]] = {}
    todo: list[Parent] = []
    for parent in parents:
        done = read_done(parent)
        if done is not None:
            problem = verify(parent)
            if problem is None:
                rows[parent.key] = _summary(parent, done, cached=True)
                continue
            _print(f"[parent {parent.name}] the cached parent is unusable ({problem}); retraining it")
            _remove(parent)
        todo.append(parent)
    if todo and in_process:
        for parent in todo:
            rows[parent.key] = _summary(parent, train_parent(parent), cached=False)
    elif todo:
        import ray

        from hpcm_tune.sweep.trainable import ENGINES

        targets = {p.key: ENGINES.get(p.engine) for p in todo}  # paths, not names: the workers import them
        _print(f"Parent stage: training {len(todo)} parent(s) ({', '.join(p.name for p in todo)}); "
               f"the trials start when they are done")
        remote = ray.remote(train_parent)
        futures = {p.key: remote.options(num_cpus=p.cpus, num_gpus=p.gpus, max_retries=0).remote(p, targets[p.key])
                   for p in todo}
        for parent in todo:
            try:
                done = ray.get(futures[parent.key])
            except Exception as error:
                cause = getattr(error, "cause", None) or error
                raise ParentError(f"parent {parent.name} failed: {type(cause).__name__}: {cause}; its checkpoints "
                                  f"are kept in {parent.path}, so fix the cause and run again (or --resume)") from None
            rows[parent.key] = _summary(parent, done, cached=False)
    return [rows[p.key] for p in parents]


def versus_jpeg(done: Mapping[str, Any]) -> dict[str, Any]:
    """The parent's final point against JPEG on the same evaluation images (hpcm_tune.reference): is it a
    codec worth fine-tuning? ``{"beats": bool | None, "how": text}``; n/a when it cannot be computed."""
    import warnings

    from hpcm_tune.reference import ANCHOR, CODECS, compare_point, reference_points

    final, config = done.get("final") or {}, done.get("config") or {}
    psnr, bpp = final.get(metrics.EVAL_PSNR), final.get(metrics.EVAL_BPP)
    if psnr is None or bpp is None:
        return {"beats": None, "how": "n/a (no evaluation)"}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = reference_points(config.get("data", "samples"), int(config.get("eval_max_images", 0)),
                                         codecs=(ANCHOR,))
        curve = reference.curve(ANCHOR)
    except Exception as error:  # a data folder that is gone, a Pillow without the codec: say so, go on
        return {"beats": None, "how": f"n/a ({type(error).__name__}: {error})"}
    return compare_point(float(bpp), float(psnr), curve, CODECS.get(ANCHOR).label)


def _row(done: Mapping[str, Any]) -> dict[str, Any]:
    final = done.get("final") or {}
    jpeg = versus_jpeg(done)
    return {"epochs": done.get("epochs"), "steps": done.get("steps"), "psnr": final.get(metrics.EVAL_PSNR),
            "bpp": final.get(metrics.EVAL_BPP), "lambda_d": done.get("lambda_d"), "lmbda": done.get("lmbda"),
            "collapsed": final.get(metrics.EVAL_COLLAPSED), "train_s": done.get("train_s"),
            "beats_jpeg": jpeg["beats"], "vs_jpeg": jpeg["how"]}


def _summary(parent: Parent, done: Mapping[str, Any], cached: bool) -> dict[str, Any]:
    """The summary row of a parent (its point compared with JPEG once), printed as the stage's line."""
    row = {"name": parent.name, "cached": cached, **_row(done)}
    _print(f"[parent {parent.name}] {'cached' if cached else 'done'}: {_point(row)}")
    return row


def _point(r: Mapping[str, Any]) -> str:
    if r["psnr"] is None:
        return f"{r['epochs']} epochs"
    return (f"{r['epochs']} epochs, {r['steps']} steps: {r['psnr']:.2f} dB at {r['bpp']:.4f} bpp, "
            f"lambda*D {r['lambda_d']:.3g}; {r['vs_jpeg']}")


__all__ = ["DONE_FILE", "PARENTS_DIR", "Parent", "ParentError", "check_environment", "check_init_from",
           "ensure_parents", "model_fingerprint", "parent_digest", "plan_parents", "status", "train_parent", "verify",
           "with_parents"]
