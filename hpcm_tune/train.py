"""Train one configuration by hand, exactly as a sweep trial would (``hpcm-train``).

    python -m hpcm_tune.train --config run.yaml --set lmbda=0.013 --set epochs=20 --out runs/a
    python -m hpcm_tune.train --out runs/a --resume              # continue from runs/a/checkpoints
    python -m hpcm_tune.train --init-from runs/a --set objective=balanced --out runs/b   # fine-tune a's weights
    python -m hpcm_tune.train --use_hierarchical --scale_weights 0.2 0.3 0.5 --gamma_s1 0.008 \\
        --gamma_s2 0.006 --gamma_s3 0.004 --adaptive_gamma --gamma_strategy hierarchical   # the original flags

Values are taken, later winning: defaults, the YAML file (read with yaml.safe_load; flat keys or nested
sections, as RunConfig.from_dict), the original design's flags, then ``--set key=value`` (value parsed as YAML:
``--set scale_weights=[0.2,0.3,0.5]``). The run directory gets ``params.json`` (the flat config, as a sweep
trial's), ``result.json`` (one JSON line of metrics per epoch) and ``checkpoints/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from hpcm_tune import safe_yaml
from hpcm_tune.config import RunConfig, to_flat
from hpcm_tune.files import atomic_write

# The original design's flags, CompressAI's example names and --init-from -> our flat keys (store: value; const:
# fixed value).
ALIASES: tuple[tuple[tuple[str, ...], str, dict[str, Any]], ...] = (
    (("--use_hierarchical",), "objective", {"action": "store_const", "const": "hierarchical"}),
    (("--scale_weights",), "scale_weights", {"type": float, "nargs": 3, "metavar": ("S1", "S2", "S3")}),
    (("--gamma_s1",), "gamma_s1", {"type": float}),
    (("--gamma_s2",), "gamma_s2", {"type": float}),
    (("--gamma_s3",), "gamma_s3", {"type": float}),
    (("--w_lr",), "w_lr", {"type": float}),
    (("--gamma_strategy",), "gamma_strategy", {"type": str}),
    (("--clip_max_norm",), "clip_max_norm", {"type": float}),
    (("--lambda",), "lmbda", {"type": float}),
    (("--cuda",), "device", {"action": "store_const", "const": "cuda"}),
    (("-d", "--dataset"), "data", {"type": str}),
    (("-e", "--epochs"), "epochs", {"type": int}),
    (("-lr", "--learning-rate"), "lr", {"type": float}),
    (("--batch-size",), "batch_size", {"type": int}),
    (("--patch-size",), "patch_size", {"type": int}),
    (("--seed",), "seed", {"type": int}),
    (("-n", "--num-workers"), "num_workers", {"type": int}),
    (("--init-from",), "init_from", {"type": str, "metavar": "PATH"}),
)
# --adaptive_gamma turns the gamma schedule on; the original's default strategy was hierarchical.
ADAPTIVE_GAMMA_DEFAULT = "hierarchical"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcm-train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--config", type=Path, help="YAML run config (flat keys or nested sections)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key (repeatable; VALUE parsed as YAML)")
    parser.add_argument("--out", type=Path, help="run directory (default runs/<label or run>-<UTC time>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest readable checkpoint in OUT/checkpoints")
    parser.add_argument("--print-config", action="store_true", help="print the resolved flat config and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    aliases = parser.add_argument_group("the original design's flags (aliases of config keys)")
    for flags, key, options in ALIASES:
        aliases.add_argument(*flags, dest=f"alias_{key}", default=None, help=f"= --set {key}=...", **options)
    aliases.add_argument("--adaptive_gamma", action="store_true",
                         help=f"use a gamma schedule (--gamma_strategy, default {ADAPTIVE_GAMMA_DEFAULT})")
    return parser


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set: got {item!r}; expected KEY=VALUE")
        try:
            out[key.strip()] = safe_yaml.load(text, f"--set {key.strip()}") if text.strip() else ""
        except yaml.YAMLError as error:
            raise ValueError(f"--set {key.strip()}: {safe_yaml.excerpt(text)} is not a YAML value: "
                             f"{str(error).splitlines()[0][:200]}") from None
    return out


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        content = safe_yaml.load(path.read_text(), f"--config {path}")
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--config: cannot read {path}: {error}") from None
    except yaml.YAMLError as error:
        raise ValueError(f"--config: {path} is not valid YAML: {str(error)[:500]}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ValueError(f"--config: {path} holds a {type(content).__name__}; expected a mapping of keys")
    return content


def resolve_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> RunConfig:
    layers: dict[str, Any] = dict(base or {})
    if args.config is not None:
        layers.update(to_flat(read_config_file(args.config)))
    for _flags, key, _options in ALIASES:
        value = getattr(args, f"alias_{key}")
        if value is not None:
            layers[key] = value
    if args.adaptive_gamma and args.alias_gamma_strategy is None:
        layers["gamma_strategy"] = ADAPTIVE_GAMMA_DEFAULT
    layers.update(parse_overrides(args.overrides))
    return RunConfig.from_dict(layers)


def _default_out(config: RunConfig) -> Path:
    return Path("runs") / f"{config.meta.label or 'run'}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def _config_given(args: argparse.Namespace) -> bool:
    return (args.config is not None or bool(args.overrides) or args.adaptive_gamma
            or any(getattr(args, f"alias_{key}") is not None for _f, key, _o in ALIASES))


def run(args: argparse.Namespace) -> dict[str, float]:
    from hpcm_tune.checkpoint import list_checkpoints
    from hpcm_tune.engine import Engine
    from hpcm_tune.progress import ConsoleProgress

    base = None
    if args.resume:
        if args.out is None:
            raise ValueError("--resume needs --out (the run directory to continue)")
        params = args.out / "params.json"
        if params.is_file() and not _config_given(args):
            base = json.loads(params.read_text())  # continue exactly the recorded run
    config = resolve_config(args, base)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return {}
    out = args.out or _default_out(config)
    has_checkpoints = bool(list_checkpoints(out / "checkpoints"))
    held = [p.name for p in (out / "params.json", out / "result.json", out / "checkpoints") if p.exists()]
    held += sorted(p.name for p in out.glob("checkpoint_*"))[:1]  # a sweep trial's directory
    if held and not args.resume:
        raise ValueError(f"--out {out} already holds a run ({', '.join(held)}); nothing was changed. Pass --resume "
                         f"to continue it or choose another --out")
    # Data, model, checkpoint and init_from are checked before anything is written to the run directory.
    engine = Engine(config, workdir=out)
    if args.resume and has_checkpoints:
        used = engine.restore(out / "checkpoints")
        print(f"resumed from {used} (epoch {engine.epoch})", file=sys.stderr)
    elif config.model.init_from is not None:  # a resumed run never reads init_from again
        used = engine.warm_start()
        print(f"warm-started from {used} (model weights only)", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    params = out / "params.json"
    if params.is_file():
        recorded = json.loads(params.read_text())
        changed = sorted(k for k, v in config.to_dict().items() if recorded.get(k) != v)
        if changed:
            warnings.warn(f"{params} differs from this run's config in {', '.join(changed)}; rewriting it",
                          stacklevel=2)
    atomic_write(params, json.dumps(config.to_dict(), indent=2) + "\n")
    results = out / "result.json"
    # Keep the results of the epochs the checkpoint covers; later lines are redone. A line cut short by a kill
    # is skipped with a warning; the kept lines replace the file atomically.
    kept = []
    if results.is_file():
        for number, line in enumerate(results.read_text().splitlines(), start=1):
            try:
                if line.strip() and json.loads(line).get("epoch", 0) <= engine.epoch:
                    kept.append(line)
            except (json.JSONDecodeError, AttributeError):
                warnings.warn(f"{results}: line {number} is not a complete JSON record (a run killed while "
                              f"writing it?); skipped", stacklevel=2)
    atomic_write(results, "".join(line + "\n" for line in kept))

    progress = None if args.quiet else ConsoleProgress(config.run.epochs, start=engine.epoch)

    def on_epoch(metrics: dict[str, float], checkpoint_dir: Path) -> None:
        with results.open("a") as f:
            f.write(json.dumps(metrics) + "\n")
            f.flush()
            os.fsync(f.fileno())  # the line is on disk before the next epoch starts
        if progress is not None:
            progress(metrics, checkpoint_dir)

    try:
        last = engine.run(on_epoch)
    finally:
        if progress is not None:
            progress.close()
    print(f"run directory: {out}", file=sys.stderr)
    return last


def main(argv: list[str] | None = None) -> int:
    from hpcm_tune.engine import NonFiniteTrainingError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        last = run(args)
    except NonFiniteTrainingError as error:
        print(f"hpcm-train: training diverged: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # config, data and checkpoint errors name what is wrong
        parser.exit(2, f"hpcm-train: error: {error}\n")
    if last:
        print(json.dumps(last, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
