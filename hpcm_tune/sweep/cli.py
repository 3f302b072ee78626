"""Command line of the sweep service (``python tune.py`` / ``hpcm-tune``).

Every flag is checked, and the search space validated, before Ray starts; errors name the flag or the file,
the key and the value.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from hpcm_tune.sweep.space import SearchSpace, SpaceError
from hpcm_tune.sweep_settings import SCHEDULER_NAMES, SEARCHER_NAMES

EPILOG = """examples:
  python tune.py                                   # the default sweep (search_spaces/default.yaml), ~10 min
  python tune.py --space ablation_scale_weights --gpus-per-trial 0.5
  python tune.py --space default --epochs 3 --num-samples 4 --name quick
  python tune.py --resume quick                    # continue an interrupted sweep
  python tune.py --address auto --storage /shared/results --space objectives --set preset=base
"""


def _number(convert: Callable[[str], float], ok: Callable[[float], bool], allowed: str) -> Callable[[str], Any]:
    """An argparse type: ``convert`` the text, then refuse values that are not ``ok``, saying what is allowed."""

    def parse(text: str) -> Any:
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}; allowed: {allowed}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"got {v}; allowed: {allowed}")
        return v

    return parse


_positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
_nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: v > 0, "a number > 0")


def _gpus(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: 0, a fraction such as 0.25/0.5, or N") from None
    if v < 0 or (v > 1 and not v.is_integer()):
        raise argparse.ArgumentTypeError(f"got {v}; allowed: 0, a fraction in (0, 1] or a whole number of GPUs")
    return v


def _optuna_url(text: str) -> str:
    from hpcm_tune.sweep.searchers import mask_url, optuna_url_problem

    problem = optuna_url_problem(text)
    if problem:
        raise argparse.ArgumentTypeError(f"got {mask_url(text)!r}: {problem}")
    return text


def _assignment(text: str) -> tuple[str, Any]:
    from hpcm_tune import safe_yaml
    from hpcm_tune.safe_yaml import excerpt

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"got {excerpt(text)}; allowed: KEY=VALUE (VALUE read as YAML: 3, 0.5, "
                                         f"[1, 2])")
    try:
        return key.strip(), safe_yaml.load(value, f"--set {key.strip()}")
    except (yaml.YAMLError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{key.strip()}: {excerpt(value)} is not a YAML value: "
                                         f"{str(exc).splitlines()[0][:200]}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tune.py",
        description="Hyperparameter sweeps of HPCM training runs on Ray Tune: search space from a YAML file, "
                    "ASHA early stopping per lambda, Optuna TPE, GPU packing, clusters, resume, W&B.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--space", default="default",
                   help="search-space file, or a preset name in search_spaces/ (default: default). "
                        "Format: search_spaces/README.md")
    p.add_argument("--name", help="experiment name, a directory under --storage (default: STUDY-YYYYmmdd-HHMMSS). "
                                  "An existing name is refused: use --resume to continue it")
    p.add_argument("--storage", default="results",
                   help="where experiments are written: a local directory (default: ./results), a shared file "
                        "system path, or s3:// / gs:// for multi-node clusters (credentials and endpoint from "
                        "AWS_* variables, or s3://BUCKET/PREFIX?endpoint_override=HOST:PORT&scheme=http; README)")
    p.add_argument("--address", help="an existing Ray cluster ('auto' or HOST:PORT of `ray start --head`); "
                                     "default: a local Ray on 127.0.0.1 only")
    p.add_argument("--num-samples", type=_positive_int, dest="samples",
                   help="trials to sample (optuna), draws per grid point (random) or grid repetitions (grid)")
    p.add_argument("--max-concurrent", type=_positive_int, help="trials running at once (file default: 2)")
    p.add_argument("--cpus-per-trial", type=_positive_float, dest="cpus", help="CPUs reserved per trial")
    p.add_argument("--gpus-per-trial", type=_gpus, dest="gpus",
                   help="GPUs per trial; 0.25/0.5 pack 4/2 trials on one GPU and cap each trial's CUDA memory "
                        "to that fraction")
    p.add_argument("--scheduler", choices=SCHEDULER_NAMES,
                   help="asha: early stopping, one ASHA per lambda; fifo: every trial to the end; pbt: population "
                        "based training (one lambda)")
    p.add_argument("--searcher", choices=SEARCHER_NAMES,
                   help="optuna: TPE (early-stopped trials told as pruned); random: random draws; grid: every "
                        "grid/choice value")
    p.add_argument("--optuna-storage", type=_optuna_url, metavar="URL",
                   help="with the optuna searcher: the Optuna database (RDB URL: sqlite:///PATH, postgresql://..., "
                        "mysql://...) holding the study, named as the experiment, for optuna.load_study and "
                        "optuna-dashboard while the sweep runs and after; default: sqlite:///EXPERIMENT/optuna.db "
                        "(on s3:// / gs:// storage a local file of the driver, uploaded to EXPERIMENT/optuna.db)")
    p.add_argument("--epochs", type=_positive_int, help="epochs per trial (the full budget; ASHA's max)")
    p.add_argument("--seed", type=_nonneg_int, help="first training seed and the searcher's seed")
    p.add_argument("--repeats", type=_positive_int, help="seeds per configuration (random/grid searchers)")
    p.add_argument("--max-failures", type=_nonneg_int, help="retries of a crashed trial from its last checkpoint")
    p.add_argument("--checkpoints-to-keep", type=_positive_int, help="checkpoints kept per trial (default 2)")
    p.add_argument("--delete-stopped-checkpoints", action="store_true", default=None,
                   help="delete the checkpoints of trials stopped early, at the end of the sweep")
    p.add_argument("--set", type=_assignment, action="append", default=[], metavar="KEY=VALUE",
                   help="set a fixed config key, e.g. --set preset=base --set steps_per_epoch=500, or a key of "
                        "the parent section, e.g. --set parent.epochs=60 (repeatable)")
    p.add_argument("--wandb", action="store_true",
                   help="log every trial to Weights & Biases (one run per trial, grouped by sweep); offline when "
                        "no API key is configured (then `wandb sync` the runs later)")
    p.add_argument("--wandb-project", default="hpcm-tune", help="W&B project (default: hpcm-tune)")
    p.add_argument("--wandb-upload-timeout", type=_nonneg_int, default=60,
                   help="seconds the end of the sweep waits for W&B uploads (default: 60)")
    p.add_argument("--resume", metavar="EXPERIMENT",
                   help="continue an interrupted sweep (a name under --storage or a path): finished trials kept, "
                        "unfinished ones continue from their last checkpoint")
    p.add_argument("--retry-errored", action="store_true",
                   help="with --resume: retry errored trials from their last checkpoint")
    p.add_argument("--restart-errored", action="store_true",
                   help="with --resume: restart errored trials from scratch")
    p.add_argument("--trust-storage", action="store_true",
                   help="with --resume: continue even if other users can write the experiment directory (Ray "
                        "unpickles its state, so they could run code on this machine)")
    p.add_argument("--num-cpus", type=_positive_int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--top", type=_positive_int, default=3, help="best trials listed per lambda (default: 3)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the space and flags, print the trial configs, start nothing")
    p.add_argument("-q", "--quiet", action="store_true", help="no Tune progress table")
    return p


# Flags whose effect Tuner.restore takes from the experiment's saved state, never from the command line.
RESTORED_WITH_THE_SWEEP = ("space", "name", "wandb", "wandb_project", "wandb_upload_timeout", "optuna_storage")
OVERRIDES = ("samples", "max_concurrent", "cpus", "gpus", "scheduler", "searcher", "epochs", "seed", "repeats",
             "max_failures", "checkpoints_to_keep", "delete_stopped_checkpoints")


def space_from_args(args: argparse.Namespace) -> SearchSpace:
    import dataclasses

    from hpcm_tune.sweep.space import load_space, resolve_space_path

    space = load_space(resolve_space_path(args.space))
    if args.set:
        fixed, parent = dict(space.fixed), None if space.parent is None else dict(space.parent)
        for key, value in args.set:
            if key.startswith("parent."):  # --set parent.epochs=60: a key of the parent section
                if parent is None:
                    raise SpaceError("command line", f"--set {key}", value, f"{space.source} has no parent section")
                parent[key.removeprefix("parent.")] = value
                continue
            if key in space.params:
                raise SpaceError("command line", f"--set {key}", value, f"{key} is searched in {space.source}")
            fixed[key] = value
        try:
            space = dataclasses.replace(space, fixed=fixed, parent=parent)
        except SpaceError as exc:
            raise SpaceError("command line (--set)", exc.key, exc.value, exc.allowed) from None
    try:
        return space.with_overrides(**{k: getattr(args, k) for k in OVERRIDES})
    except SpaceError as exc:
        if exc.source == space.source:  # an override made the space invalid: say it came from the flags
            raise SpaceError("command line", exc.key, exc.value, exc.allowed) from None
        raise


def _resume_dry_run(experiment: str, opts: Any) -> int:
    """What --resume would continue, without starting anything."""
    from pathlib import Path

    from hpcm_tune.experiment import PARAMS_FILE
    from hpcm_tune.sweep.launcher import read_experiment_for_resume
    from hpcm_tune.sweep.parents import status

    path, meta, space, parents = read_experiment_for_resume(experiment, opts, write=False)
    trials = sorted(p.name for p in Path(path).iterdir() if (p / PARAMS_FILE).exists()) \
        if "://" not in path else []
    print(f"{path}: study {space.study}, {space.total_trials()} trials planned, {len(trials)} started, scheduler "
          f"{space.scheduler}, searcher {space.searcher}, metric {space.metric} ({space.mode}), epochs "
          f"{space.max_epochs}; created {meta.get('created')}, resumed {len(meta.get('resumed', []))} time(s)")
    for parent in parents:
        print(f"   parent {parent.name}: {status(parent)}")
    print("--resume would continue it: finished trials kept, unfinished ones from their last checkpoint"
          + ("; errored ones retried" if opts.retry_errored or opts.restart_errored else ""))
    return 0


def main(argv: Sequence[str] | None = None, engine: str = "hpcm") -> int:
    """tune.py: parse ``argv`` (default sys.argv), run or resume the sweep, print its summary; the exit status.
    ``engine``: the registered engine (hpcm_tune.sweep.trainable.ENGINES) a new sweep's trials and parents
    train. Users have the real one; a test or benchmark that registered a stand-in names it here (no flag
    offers it). A resumed sweep trains the engine it recorded."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from hpcm_tune.sweep.launcher import SweepOptions, format_summary, resume_sweep, run_sweep
    from hpcm_tune.sweep.parents import ParentError

    if (args.retry_errored or args.restart_errored or args.trust_storage) and not args.resume:
        parser.error("--retry-errored/--restart-errored/--trust-storage need --resume EXPERIMENT")
    if args.resume:
        # A resumed sweep keeps its search space and settings (hpcm_tune.json): flags that would change them
        # are refused instead of being ignored.
        changing = [f"--{k.replace('_', '-')}" for k in (*OVERRIDES, *RESTORED_WITH_THE_SWEEP)
                    if getattr(args, k) != parser.get_default(k)] + (["--set"] if args.set else [])
        if changing:
            parser.error(f"--resume continues a sweep as it was started (Ray restores its settings and callbacks); "
                         f"{', '.join(changing)} would not take effect (allowed with --resume: --storage, "
                         f"--address, --num-cpus, --retry-errored, --restart-errored, --trust-storage, --top, "
                         f"--dry-run, -q)")
    if args.retry_errored and args.restart_errored:
        parser.error("choose one of --retry-errored and --restart-errored")
    try:
        opts = SweepOptions(
            name=args.name, storage=args.storage, address=args.address, engine=engine, wandb=args.wandb,
            wandb_project=args.wandb_project, wandb_upload_timeout_s=args.wandb_upload_timeout,
            retry_errored=args.retry_errored, restart_errored=args.restart_errored, num_cpus=args.num_cpus,
            trust_storage=args.trust_storage, optuna_storage=args.optuna_storage,
            top=args.top, verbose=0 if args.quiet else 1,
        )
        if args.resume and args.dry_run:
            return _resume_dry_run(args.resume, opts)
        if args.resume:
            summary = resume_sweep(args.resume, opts)
        else:
            space = space_from_args(args)
            if args.dry_run:
                from hpcm_tune.sweep.launcher import check_storage, storage_root
                from hpcm_tune.sweep.parents import check_environment, check_init_from, plan_parents, status
                from hpcm_tune.sweep.space import trial_configs

                check_storage(args.storage, write=False)
                check_environment(space, local=args.address is None)
                check_init_from(space)
                print(f"{space.source}: {space.study}, {space.total_trials()} trials, scheduler {space.scheduler}, "
                      f"searcher {space.searcher}, metric {space.metric} ({space.mode}), epochs {space.max_epochs}")
                parents = plan_parents(space, storage_root(args.storage), engine)
                if parents:
                    print(f"{len(parents)} parent(s), trained before the trials and cached under "
                          f"{storage_root(args.storage)}/parents:")
                    for parent in parents:
                        print(f"   {parent.name}: {status(parent)}; {parent.epochs} epochs, objective "
                              f"{parent.config['objective']}, lr {parent.config['lr']:g}")
                print("trial configs:")
                for cfg in trial_configs(space):
                    print("  ", cfg)
                return 0
            summary = run_sweep(space, opts)
    except (SpaceError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ParentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        from ray.tune import TuneError

        if not isinstance(exc, TuneError):
            raise
        # The sweep itself failed (e.g. the engine never reports the watched metric): say so, keep the state.
        print(f"error: the sweep stopped: {exc}\nIts state is kept; fix the cause and continue with "
              f"--resume {args.resume or args.name or '<name>'}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 130 if summary["unfinished"] else 0  # interrupted (Ctrl-C): the shell's code for SIGINT


if __name__ == "__main__":
    sys.exit(main())
