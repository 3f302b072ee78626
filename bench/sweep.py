"""Benchmark of the sweep service (issue 5). Prints:

1. Overhead: wall time of N trials through ``tune.py`` (a subprocess: Python start, Ray start, Tune, checkpoints
   every epoch, one trial at a time with all the CPUs it is given) over the same N trainings run directly, one
   after the other, in one process with the same thread count. Target <= 1.10 for trials of 60 s or more.
2. ASHA on the default sweep: the share of epochs ASHA ran against running every trial to the end, and whether
   ASHA's winner is in the top 2 of the full-budget ranking (the same configurations rerun with FIFO). The
   default sweep fine-tunes from a parent (trained once, then cached under --storage); ``--from-scratch`` runs
   it without the parent as before (trials at the parent's lr, no warm start).
3. ``--warm-start``: the compute a warm-started sweep needs to reach the best R-D loss of the from-scratch
   sweep (the default sweep without its parent, lr 1e-3): parent steps and trial epochs, in training pixels
   (crops x crop area) and seconds, counted in the order they were spent until eval/loss first reaches it.

    python bench/sweep.py                       # real engine, default sizes (~25 min on 2 busy cores)
    python bench/sweep.py --engine fake         # the sweep machinery only, seconds per trial (the tests' fake
                                                # engine, tests/sweep/fake_engine.py; tune.py offers only hpcm)
    python bench/sweep.py --trials 2 --steps 20 --asha-samples 6 --asha-epochs 4
    python bench/sweep.py --skip-overhead --warm-start --storage /tmp/bench   # issue 10's figures

Timings depend on the machine and on its load: say which machine and how busy when quoting them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from hpcm_tune.experiment import PARAMS_FILE, RESULT_FILE  # noqa: E402 (plain Python: no Ray or torch)

TEST_SUPPORT = ROOT / "tests" / "sweep"  # the fake engine and fake_tune.py (tune.py's command line with it)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("WANDB_MODE", "offline")


def register_fake_engine() -> None:
    """Make the tests' fake engine available as engine "fake": importing it registers it and puts its folder on
    PYTHONPATH, so the Ray workers started afterwards import it too."""
    if str(TEST_SUPPORT) not in sys.path:
        sys.path.insert(0, str(TEST_SUPPORT))
    import fake_engine  # noqa: F401


def _cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def overhead(args: argparse.Namespace, storage: Path) -> None:
    import torch
    import yaml

    from hpcm_tune.sweep import space as sp
    from hpcm_tune.sweep.trainable import resolve_engine

    base = sp.load_space(sp.resolve_space_path("default"))
    fixed = {**base.fixed, "epochs": args.epochs, "steps_per_epoch": args.steps}
    if args.engine == "fake":
        fixed["_fake_epoch_seconds"] = args.fake_epoch_seconds
    torch.set_num_threads(args.cpus)  # as many threads as the Tune trial gets (Ray sets OMP_NUM_THREADS)
    factory = resolve_engine(args.engine)
    space = {"study": "bench_overhead", "scheduler": "fifo", "searcher": "grid", "repeats": args.trials,
             "max_concurrent": 1, "resources": {"cpus": args.cpus}, "fixed": fixed}
    space_file = storage / "bench_overhead.yaml"
    space_file.write_text(yaml.safe_dump(space))

    def direct() -> tuple[float, float]:
        """The N trainings one after the other in this process: (wall s, CPU s)."""
        wall, cpu = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
        for seed in range(args.trials):
            with tempfile.TemporaryDirectory() as work:
                factory({**fixed, "seed": seed, "study": "bench", "label": "bench"}, work).run(lambda m, d: None)
        return time.perf_counter() - wall, _cpu(resource.RUSAGE_SELF) - cpu

    def through_tune(i: int) -> tuple[float, float]:
        tune_py = TEST_SUPPORT / "fake_tune.py" if args.engine == "fake" else ROOT / "tune.py"
        cmd = [sys.executable, str(tune_py), "--space", str(space_file), "--storage", str(storage), "--name",
               f"overhead{i}", "--num-cpus", str(args.cpus), "-q"]
        wall, cpu = time.perf_counter(), _cpu(resource.RUSAGE_CHILDREN)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall, cpu = time.perf_counter() - wall, _cpu(resource.RUSAGE_CHILDREN) - cpu
        if proc.returncode != 0:
            raise SystemExit(f"tune.py failed:\n{proc.stderr[-3000:]}")
        return wall, cpu

    print("== overhead: N trials through tune.py vs the same N trainings in one process ==")
    print(f"engine {args.engine}, {args.trials} trials x {args.epochs} epochs x {args.steps} steps, "
          f"{args.cpus} CPU threads each, one trial at a time; rounds alternate to share the machine's load drift")
    directs, tunes = [], []
    for i in range(args.rounds):
        directs.append(direct())
        load_d = os.getloadavg()[0]
        tunes.append(through_tune(i))
        load_t = os.getloadavg()[0]
        (dw, dc), (tw, tc) = directs[-1], tunes[-1]
        print(f"round {i + 1}: direct {dw:7.1f} s wall {dc:7.1f} s CPU (load {load_d:.1f}) | tune.py {tw:7.1f} s wall "
              f"{tc:7.1f} s CPU (load {load_t:.1f}) | ratio wall {tw / dw:.3f}")
    dw, tw = min(d[0] for d in directs), min(t[0] for t in tunes)
    print(f"best of {args.rounds}: direct {dw:.1f} s ({dw / args.trials:.1f} s per training), tune.py {tw:.1f} s; "
          f"ratio {tw / dw:.3f} (target <= 1.10 for trials of >= 60 s); overhead per trial "
          f"{(tw - dw) / args.trials:.1f} s")


def default_space(args: argparse.Namespace, from_scratch: bool) -> Any:
    """The default sweep at the bench's sizes; from scratch: without its parent, at the parent's lr."""
    import dataclasses

    from hpcm_tune.sweep import space as sp

    over = {"epochs": args.asha_epochs, "samples": args.asha_samples}
    base = sp.load_space(sp.resolve_space_path("default")).with_overrides(**over)
    fixed = {**base.fixed, "steps_per_epoch": args.steps}
    if args.engine == "fake":
        fixed["_fake_epoch_seconds"] = args.fake_epoch_seconds
    if from_scratch:
        parent = base.parent or {}
        fixed.update({k: parent[k] for k in ("lr", "lr_schedule") if k in parent})
        return dataclasses.replace(base, fixed=fixed, parent=None, parent_resources={})
    return dataclasses.replace(base, fixed=fixed)


def trial_pixels(config: dict[str, Any]) -> int:
    """Training pixels of one epoch of a trial or parent config (steps x batch x crop area)."""
    from hpcm_tune.config import RunConfig
    from hpcm_tune.experiment import training_config

    c = RunConfig.from_dict(training_config(config))
    return int(c.run.steps_per_epoch or 0) * c.data.batch_size * c.data.patch_size**2


def asha_vs_full(args: argparse.Namespace, storage: Path, from_scratch: bool = False, name: str = "asha") -> dict:
    """The ASHA sweep and (unless --skip-full) the same configurations every one to the end; returns the ASHA
    summary and its wall time."""
    import dataclasses

    from hpcm_tune.sweep import launcher

    base = default_space(args, from_scratch)
    opts = launcher.SweepOptions(engine=args.engine, storage=str(storage), verbose=0, num_cpus=args.num_cpus)
    t0 = time.perf_counter()
    asha = launcher.run_sweep(base, dataclasses.replace(opts, name=name))
    t_asha = time.perf_counter() - t0
    asha["wall_s"] = t_asha
    mode = "from scratch" if from_scratch else "fine-tuned from the parent"
    for p in asha.get("parents", []):
        how = "cached" if p["cached"] else f"trained in {p['train_s']} s"
        print(f"parent {p['name']}: {how}, {p['psnr']:.2f} dB at {p['bpp']:.4f} bpp, lambda*D {p['lambda_d']:.3g}")
    print(f"ASHA sweep ({mode}): {t_asha:.1f} s wall (parent stage included), {len(asha['collapsed'])} of "
          f"{asha['trials']} trials collapsed")
    if args.skip_full:
        return asha
    # The same configurations, every one run to the end.
    configs = {}
    for d in (storage / name).iterdir():
        if (d / PARAMS_FILE).exists():
            p = json.loads((d / PARAMS_FILE).read_text())
            configs[d.name] = {k: p[k] for k in base.params}
    full_space = dataclasses.replace(base, params={}, configurations=configs, scheduler="fifo",
                                     scheduler_options={}, searcher="grid", searcher_options={}, samples=1)
    t0 = time.perf_counter()
    full = launcher.run_sweep(full_space, dataclasses.replace(opts, name=f"{name}-full", top=len(configs)))
    t_full = time.perf_counter() - t0
    n, max_epochs = len(configs), base.max_epochs
    share = asha["epochs_run"] / (n * max_epochs)
    lam = next(iter(asha["best"]))
    winner = asha["best"][lam][0]["trial"]
    ranking = [r["label"] for r in full["best"][lam]]
    rank = ranking.index(winner) + 1 if winner in ranking else None
    print(f"== ASHA on the default sweep ({mode}) vs every trial to the end ==")
    print(f"engine {args.engine}, {n} trials (Optuna TPE), {max_epochs} epochs x {args.steps} steps, "
          f"grace {base.scheduler_options.get('grace_period')}, eta {base.scheduler_options.get('reduction_factor')}")
    print(f"epochs run by ASHA:            {asha['epochs_run']} of {n * max_epochs}  (share {share:.2f}; "
          f"{len(asha['stopped_early'])} trials stopped early)")
    print(f"wall time ASHA / full:         {t_asha:.1f} s / {t_full:.1f} s")
    print(f"ASHA's winner {winner[:30]}: rank {rank} of {n} in the full-budget ranking "
          f"({'in' if rank is not None and rank <= 2 else 'NOT in'} the top 2)")
    asha_rows = {r["trial"]: r for rows in asha["best"].values() for r in rows}
    full_rows = {r["label"]: r for r in full["best"][lam]}
    if winner in full_rows:
        print(f"ASHA's winner {base.metric}: {asha_rows[winner][base.metric]:.4g} in the ASHA sweep, "
              f"{full_rows[winner][base.metric]:.4g} rerun to the end (equal when training is deterministic)")
    stopped = {r["trial"]: r for r in asha["stopped_early"]}
    best_full = full["best"][lam][0]["label"]
    if best_full in stopped:
        print(f"the full-budget best was stopped by ASHA at epoch {stopped[best_full]['epochs']} "
              f"({base.metric} {stopped[best_full][base.metric]:.4g} then)")
    print(f"full-budget {base.metric}: " + ", ".join(f"{r['label'][:19]}={r[base.metric]:.4g}"
                                                     for r in full["best"][lam][:4]))
    return asha


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def warm_start_compute(args: argparse.Namespace, storage: Path, warm: dict) -> None:
    """Compute a warm-started sweep spends before its eval/loss first reaches the from-scratch sweep's best."""
    from hpcm_tune import metrics
    from hpcm_tune.sweep import parents as pa

    scratch = asha_vs_full(args, storage, from_scratch=True, name="scratch")
    lam = next(iter(scratch["best"]))
    target = scratch["best"][lam][0][metrics.EVAL_LOSS]
    print("== compute to reach the from-scratch best with a warm start ==")
    print(f"from-scratch sweep: best eval/loss {target:.4g} at lambda {lam} after {scratch['epochs_run']} trial "
          f"epochs, {scratch['wall_s']:.0f} s wall")
    spent_px, reached = 0, None
    (parent_dir,) = sorted((storage / pa.PARENTS_DIR).iterdir())
    done = json.loads((parent_dir / pa.DONE_FILE).read_text())
    per_epoch = trial_pixels(done["config"])
    for row in _lines(parent_dir / pa.RESULT_FILE):
        spent_px += per_epoch
        if row.get(metrics.EVAL_LOSS, float("inf")) <= target and reached is None:
            reached = f"the parent at its epoch {row[metrics.EPOCH]} of {done['epochs']}"
            break
    parent_px = per_epoch * done["epochs"]
    if reached is None:  # then trial epochs, in the order the trials reported them
        rows = []
        for d in (storage / "asha").iterdir():
            if (d / PARAMS_FILE).exists():
                px = trial_pixels(json.loads((d / PARAMS_FILE).read_text()))
                rows += [(r.get("timestamp", 0), px, r) for r in _lines(d / RESULT_FILE)]
        for _, px, r in sorted(rows, key=lambda t: t[0]):
            spent_px += px
            if r.get(metrics.EVAL_LOSS, float("inf")) <= target:
                reached = f"trial epoch {r[metrics.EPOCH]} of a fine-tuned trial"
                break
    scratch_px = sum(trial_pixels(json.loads((d / PARAMS_FILE).read_text())) * len(_lines(d / RESULT_FILE))
                     for d in (storage / "scratch").iterdir() if (d / PARAMS_FILE).exists())
    if reached is None:
        print("the warm-started sweep never reached the from-scratch best")
    else:
        print(f"reached by {reached}: {spent_px / 1e6:.1f} M training pixels (parent {parent_px / 1e6:.1f} M in all; "
              f"the from-scratch sweep spent {scratch_px / 1e6:.1f} M); parent training {done['train_s']} s wall")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engine", default="hpcm", choices=("hpcm", "fake"),
                   help="hpcm (the real engine) or fake (the tests' stand-in, tests/sweep/fake_engine.py: the sweep "
                        "machinery alone)")
    p.add_argument("--trials", type=int, default=3, help="overhead: trials (seeds)")
    p.add_argument("--epochs", type=int, default=3, help="overhead: epochs per trial")
    p.add_argument("--steps", type=int, default=40, help="steps per epoch (both parts)")
    p.add_argument("--cpus", type=int, default=2, help="overhead: CPU threads per training")
    p.add_argument("--rounds", type=int, default=2, help="overhead: alternating direct/tune.py measurements")
    p.add_argument("--asha-samples", type=int, default=8)
    p.add_argument("--asha-epochs", type=int, default=6)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray for the ASHA part")
    p.add_argument("--fake-epoch-seconds", type=float, default=2.0)
    p.add_argument("--skip-overhead", action="store_true")
    p.add_argument("--skip-asha", action="store_true")
    p.add_argument("--skip-full", action="store_true", help="ASHA part: no full-budget rerun")
    p.add_argument("--warm-start", action="store_true",
                   help="also: compute a warm-started sweep needs to reach the from-scratch sweep's best loss")
    p.add_argument("--from-scratch", action="store_true", help="ASHA part: the default sweep without its parent")
    p.add_argument("--storage", type=Path, help="where experiments and the cached parent go (default: a "
                   "temporary folder); reusing one reuses its parent")
    args = p.parse_args()
    if args.engine == "fake":
        register_fake_engine()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        storage = args.storage or Path(tmp)
        storage.mkdir(parents=True, exist_ok=True)
        if not args.skip_overhead:
            overhead(args, storage)
        if not args.skip_asha:
            warm = asha_vs_full(args, storage, from_scratch=args.from_scratch)
            if args.warm_start and not args.from_scratch:
                warm_start_compute(args, storage, warm)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
