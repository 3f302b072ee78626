"""Training-engine throughput on the embedded samples: epochs per minute and the share of step time spent
waiting for data, per preset.

    .venv/bin/python bench/engine.py                       # tiny and small, 2 workers
    .venv/bin/python bench/engine.py --presets tiny --workers 0 2 --steps 8

An epoch here is ``--steps`` optimizer steps of ``--batch-size`` crops of ``--patch-size`` (plus, in the
"with eval" column, the evaluation of the two test photos and, every ``--codec-interval`` evaluations, the
real codec). The first epoch is a warm-up and is not counted. The data-wait share is the time the training
loop spent waiting for the next batch over the time of the whole loop (target < 10 % with 2 workers).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hpcm_tune.config import RunConfig  # noqa: E402
from hpcm_tune.engine import Engine  # noqa: E402


def measure(preset: str, workers: int, args: argparse.Namespace) -> dict[str, float]:
    config = RunConfig.from_dict(dict(
        preset=preset, data="samples", batch_size=args.batch_size, patch_size=args.patch_size,
        steps_per_epoch=args.steps, epochs=args.epochs + 1, num_workers=workers, codec_interval=args.codec_interval,
        eval_interval=1, lr_schedule="constant", device=args.device,
    ))
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as workdir:
        engine = Engine(config, workdir=workdir)
        times: list[tuple[float, float, float]] = []  # (train s, eval s, wait s) per epoch
        state = {"clock": time.perf_counter(), "train_done": 0.0, "wait": 0.0}
        real_evaluate = engine.evaluate

        def timed_evaluate(codec: bool = False) -> dict[str, float]:
            state["train_done"] = time.perf_counter()
            return real_evaluate(codec)

        engine.evaluate = timed_evaluate  # type: ignore[method-assign]

        def on_epoch(metrics: dict[str, float], checkpoint_dir: Path) -> None:
            now = time.perf_counter()
            wait = engine.data_wait_s - state["wait"]
            times.append((state["train_done"] - state["clock"], now - state["train_done"], wait))
            state["clock"], state["wait"] = time.perf_counter(), engine.data_wait_s

        loop_before = 0.0

        def first_epoch_done(metrics: dict[str, float], checkpoint_dir: Path) -> None:
            nonlocal loop_before
            on_epoch(metrics, checkpoint_dir)
            if len(times) == 1:
                loop_before = engine.data_wait_s + engine.step_s

        engine.run(first_epoch_done)
        measured = times[1:]  # the first epoch warms up workers, caches and allocators
        train_s = sum(t for t, _, _ in measured) / len(measured)
        eval_s = sum(e for _, e, _ in measured) / len(measured)
        wait_s = sum(w for _, _, w in measured)
        loop_s = engine.data_wait_s + engine.step_s - loop_before
        params = sum(p.numel() for p in engine.model.parameters())
    return {
        "params_M": params / 1e6,
        "train_epochs_per_min": 60.0 / train_s,
        "epochs_per_min_with_eval": 60.0 / (train_s + eval_s),
        "step_s": train_s / args.steps,
        "eval_s": eval_s,
        "data_wait_share": wait_s / loop_s if loop_s > 0 else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--workers", nargs="+", type=int, default=[2])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="measured epochs (after one warm-up epoch)")
    parser.add_argument("--codec-interval", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# bench/engine.py: samples, batch {args.batch_size} x {args.patch_size}^2, {args.steps} steps/epoch, "
          f"{args.epochs} measured epochs, codec every {args.codec_interval} eval; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    header = ("preset", "workers", "params M", "epochs/min", "epochs/min+eval", "s/step", "eval s", "data wait")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for preset in args.presets:
        for workers in args.workers:
            r = measure(preset, workers, args)
            print(f"| {preset} | {workers} | {r['params_M']:.2f} | {r['train_epochs_per_min']:.2f} | "
                  f"{r['epochs_per_min_with_eval']:.2f} | {r['step_s']:.3f} | {r['eval_s']:.2f} | "
                  f"{100 * r['data_wait_share']:.1f} % |", flush=True)


if __name__ == "__main__":
    main()
