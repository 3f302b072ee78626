"""The GPU check in one command (``make bench-gpu``), at most about 8 minutes on one GPU:

1. train-step throughput of the base preset on 256x256 crops, through ``Engine.train_step`` (the sweep's own
   step: objective, weighting, clipping, Adam), in fp32, bf16 autocast (``amp``) and bf16 + ``torch.compile``
   (``compile``), with ``channels_last`` as the engine does it on CUDA;
2. the real codec at 512x512 (``model.update``/``compress`` as ``Engine.actual_bpp`` runs it, and
   ``decompress``): times, bits per pixel and PSNR of the decoded image (untrained weights: the times count);
3. a packed sweep through ``tune.py --gpus-per-trial 0.25``: 4 trials of the small preset on one GPU for about
   2 minutes, the GPU's utilisation and memory sampled every 500 ms (nvidia-smi) meanwhile.

    .venv/bin/python bench/gpu.py                     # everything
    .venv/bin/python bench/gpu.py --skip-sweep --steps 10

Every part runs in its own process with a time limit (a hung compile or kernel costs its part, not the check),
every timing is bracketed by ``torch.cuda.synchronize()`` after warm-up steps, and the card is named first.
Without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULT = "BENCH-GPU-RESULT "
MODES = {  # name: (amp, compile)
    "fp32": (False, False),
    "bf16": (True, False),
    "bf16+compile": (True, True),
}


def cuda_or_none() -> str | None:
    """A one-line description of the first CUDA device, or None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return (f"{torch.cuda.get_device_name(0)} (compute {p.major}.{p.minor}, {p.total_memory / 2**30:.1f} GiB, "
            f"{torch.cuda.device_count()} visible); torch {torch.__version__}, CUDA {torch.version.cuda}")


# --- parts, each run in a child process ---------------------------------------------------------------------


def engine_for(preset: str, amp: bool, compile_: bool, batch: int, patch: int) -> Any:
    from hpcm_tune.config import RunConfig
    from hpcm_tune.engine import Engine

    config = RunConfig.from_dict(dict(
        preset=preset, data="samples", batch_size=batch, patch_size=patch, steps_per_epoch=1, epochs=1,
        num_workers=0, codec_interval=0, lr_schedule="constant", device="cuda", amp=amp, compile=compile_,
        channels_last=True,
    ))
    return Engine(config, workdir=tempfile.mkdtemp(prefix="bench-gpu-"))


def part_train(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    amp, compile_ = MODES[mode]
    engine = engine_for("base", amp, compile_, args.batch_size, 256)
    x = next(iter(engine.loader)).to("cuda")  # real crops of the bundled photos, the engine's loader
    x = x.contiguous(memory_format=torch.channels_last)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.warmup):  # with compile, the first steps compile the forward (and the no-grad re-run)
        engine.train_step(x)
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        engine.train_step(x)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"mode": mode, "batch": args.batch_size, "warmup_s": warmup_s, "step_ms": 1000 * med,
            "images_per_s": args.batch_size / med, "steps_per_s": 1 / med, "skipped": engine.skipped_steps,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "params_M": sum(p.numel() for p in engine.model.parameters()) / 1e6}


def part_codec(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from hpcm_tune.data import pad_to_multiple
    from hpcm_tune.testing import random_photo

    engine = engine_for("base", False, False, 1, 256)
    model = engine.model
    model.eval()
    size = args.codec_size
    x = torch.from_numpy(np.ascontiguousarray(random_photo(size, size, seed=1))).permute(2, 0, 1)
    x = (x.float() / 255.0).unsqueeze(0).to("cuda")
    with torch.no_grad():
        t0 = time.perf_counter()
        model.update(force=True)  # as Engine.actual_bpp: the entropy coders' tables
        torch.cuda.synchronize()
        update_s = time.perf_counter() - t0
        padded, _ = pad_to_multiple(x, engine.pad_multiple)
        enc_t, dec_t = [], []
        for i in range(args.codec_repeats + 1):  # the first round is a warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            encoded = model.compress(padded)
            torch.cuda.synchronize()
            t1 = time.perf_counter()
            decoded = model.decompress(encoded["strings"], encoded["shape"])
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            if i:
                enc_t.append(t1 - t0)
                dec_t.append(t2 - t1)
    nbytes = sum(len(s) for part in encoded["strings"] for s in part)
    x_hat = decoded["x_hat"][..., :size, :size].clamp(0, 1)
    mse = float(torch.mean((x_hat - padded[..., :size, :size]) ** 2))
    return {"size": size, "update_s": update_s, "compress_ms": 1000 * statistics.median(enc_t),
            "decompress_ms": 1000 * statistics.median(dec_t), "bpp": 8.0 * nbytes / (size * size),
            "psnr": -10 * np.log10(max(mse, 1e-12)), "repeats": args.codec_repeats}


def run_part(argv: list[str], timeout_s: float) -> dict[str, Any]:
    """One part in a child process, at most ``timeout_s``; its result, or {"error": why}."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", *argv]
    if timeout_s < 20:
        return {"error": "skipped: the 8-minute budget is spent"}
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()][-3:]
    return {"error": f"exit {done.returncode}: {' | '.join(tail)[-400:]}"}


# --- the packed sweep -----------------------------------------------------------------------------------------


class GpuSampler:
    """nvidia-smi every 500 ms in a subprocess: (utilisation %, memory MiB) per sample of GPU 0."""

    def __init__(self, index: int = 0) -> None:
        import shutil

        self.proc: subprocess.Popen | None = None
        fd, name = tempfile.mkstemp(suffix=".csv", prefix="bench-gpu-smi-")
        os.close(fd)
        self.path = Path(name)
        if shutil.which("nvidia-smi") is None:
            print("nvidia-smi not found: the sweep runs without GPU samples")
            return
        with open(self.path, "w") as out:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-lms", "500"], stdout=out, stderr=subprocess.DEVNULL)

    def stop(self) -> list[tuple[float, float]]:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        rows = []
        for line in self.path.read_text().splitlines():
            parts = [p.strip() for p in line.split(",")]
            try:
                rows.append((float(parts[0]), float(parts[1])))
            except (ValueError, IndexError):
                continue
        self.path.unlink(missing_ok=True)
        return rows


STEPS_PER_EPOCH = 25


def sweep_space() -> dict[str, Any]:
    """The packed sweep's search space: 4 trials of the small preset, short epochs, no evaluation in between."""
    return {
        "study": "gpu-packing", "samples": 4, "max_concurrent": 4, "searcher": "random",
        "scheduler": {"name": "fifo"},
        "fixed": {"preset": "small", "lmbda": 0.0067, "epochs": 1000, "steps_per_epoch": STEPS_PER_EPOCH,
                  "batch_size": 8, "patch_size": 256, "eval_interval": 1000, "codec_interval": 0, "num_workers": 2,
                  "lr_schedule": "constant", "device": "cuda"},
        "params": {"gamma_s1": {"type": "loguniform", "low": 0.001, "high": 0.02}},
    }


def packed_sweep(seconds: float, limit_s: float) -> dict[str, Any]:
    """4 trials of the small preset at 0.25 GPU each through tune.py, stopped after ``seconds`` (SIGINT: Tune
    saves its state and ends the trials), the GPU sampled meanwhile."""
    import shutil

    import yaml

    if limit_s < 60:
        return {"error": "skipped: the 8-minute budget is spent"}
    seconds = min(seconds, limit_s - 45)
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-sweep-"))
    space = sweep_space()
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    cmd = [sys.executable, "tune.py", "--space", str(work / "space.yaml"), "--storage", str(work / "results"),
           "--name", "packed", "--gpus-per-trial", "0.25", "--cpus-per-trial", "2", "-q"]
    sampler = GpuSampler()
    start = time.monotonic()
    with open(work / "driver.log", "w") as log:  # the driver keeps its own descriptor
        driver = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "WANDB_MODE": "disabled"})
    exp = work / "results" / "packed"
    first_epoch_at = None
    try:
        while time.monotonic() - start < seconds and driver.poll() is None:
            if first_epoch_at is None and any(p.stat().st_size for p in exp.glob("*/result.json")):
                first_epoch_at = time.monotonic() - start
            time.sleep(1)
        if driver.poll() is None:
            driver.send_signal(signal.SIGINT)  # Tune: save the experiment, stop the trials
            try:
                driver.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(timeout=10)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        samples = sampler.stop()
    wall = time.monotonic() - start
    trials = {}
    for result in exp.glob("*/result.json"):
        rows = [json.loads(x) for x in result.read_text().splitlines() if x.strip()]
        if rows:
            trials[result.parent.name] = rows
    epochs = sum(len(r) for r in trials.values())
    busy = [u for u, _ in samples]
    out = {"wall_s": wall, "first_epoch_s": first_epoch_at, "trials_reporting": len(trials), "epochs": epochs,
           "steps_per_s": epochs * STEPS_PER_EPOCH / max(wall - (first_epoch_at or 0.0), 1e-9) if epochs else 0.0,
           "samples": len(samples), "util_mean": statistics.fmean(busy) if busy else None,
           "util_median": statistics.median(busy) if busy else None, "util_max": max(busy) if busy else None,
           "mem_max_mib": max((m for _, m in samples), default=None), "log": str(work / "driver.log")}
    if not trials:
        tail = (work / "driver.log").read_text().splitlines()[-5:]
        out["error"] = "no trial reported an epoch: " + " | ".join(tail)[-500:]
    else:
        shutil.rmtree(exp, ignore_errors=True)  # the checkpoints; the driver log stays for a look
    return out


# --- report ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", nargs="+", help=argparse.SUPPRESS)  # internal: one part in a child process
    parser.add_argument("--budget-s", type=float, default=480, help="the whole check's limit (default 480 s)")
    parser.add_argument("--batch-size", type=int, default=8, help="train-step batch (default 8 crops of 256^2)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per mode (default 20)")
    parser.add_argument("--codec-size", type=int, default=512)
    parser.add_argument("--codec-repeats", type=int, default=2)
    parser.add_argument("--sweep-s", type=float, default=120, help="the packed sweep's length (default 120 s)")
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args(argv)

    card = cuda_or_none()
    if card is None:
        import torch

        print(f"bench/gpu.py: no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is "
              f"False); nothing to measure, skipping the GPU check.")
        return 0
    if args.part:
        kind = args.part[0]
        result = part_train(args.part[1], args) if kind == "train" else part_codec(args)
        print(RESULT + json.dumps(result), flush=True)
        return 0

    deadline = time.monotonic() + args.budget_s
    left = lambda: deadline - time.monotonic()  # noqa: E731
    common = ["--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps),
              "--codec-size", str(args.codec_size), "--codec-repeats", str(args.codec_repeats)]
    print(f"# bench/gpu.py on {card}")
    # Limits per part (s): what a healthy H100/H200 needs several times over; compile gets the most.
    sweep_reserve = 0 if args.skip_sweep else args.sweep_s + 45
    print(f"\n## Train step, base preset, batch {args.batch_size} x 256^2 ({args.warmup} warm-up + {args.steps} "
          f"timed steps, Engine.train_step, channels_last)\n")
    print("| mode | ms/step | images/s | steps/s | warm-up s | peak GiB | skipped |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for mode, limit in (("fp32", 60), ("bf16", 50), ("bf16+compile", 150)):
        r = run_part(["train", mode, *common], min(limit, left() - sweep_reserve - 40))
        rows[mode] = r
        if "error" in r:
            print(f"| {mode} | {r['error']} |||||")
        else:
            print(f"| {mode} | {r['step_ms']:.1f} | {r['images_per_s']:.1f} | {r['steps_per_s']:.2f} | "
                  f"{r['warmup_s']:.1f} | {r['peak_gib']:.2f} | {r['skipped']} |")
    if "error" not in rows["fp32"]:
        for mode in ("bf16", "bf16+compile"):
            if "error" not in rows[mode]:
                print(f"{mode}: {rows[mode]['images_per_s'] / rows['fp32']['images_per_s']:.2f}x fp32")

    print(f"\n## Real codec, base preset, {args.codec_size}x{args.codec_size} (untrained weights: times only)\n")
    r = run_part(["codec", *common], min(60, left() - sweep_reserve))
    if "error" in r:
        print(f"codec: {r['error']}")
    else:
        print(f"compress {r['compress_ms']:.0f} ms, decompress {r['decompress_ms']:.0f} ms (median of "
              f"{r['repeats']} after a warm-up); update() {r['update_s']:.1f} s; {r['bpp']:.3f} bpp, decoded "
              f"PSNR {r['psnr']:.2f} dB")

    if not args.skip_sweep:
        print(f"\n## Packed sweep: tune.py --gpus-per-trial 0.25, 4 trials of the small preset, "
              f"{args.sweep_s:.0f} s\n")
        s = packed_sweep(args.sweep_s, left())
        if s.get("samples") is not None and s.get("util_mean") is not None:
            print(f"GPU over {s['wall_s']:.0f} s ({s['samples']} samples): utilisation mean {s['util_mean']:.0f} %, "
                  f"median {s['util_median']:.0f} %, max {s['util_max']:.0f} %; memory max {s['mem_max_mib']:.0f} MiB")
        if "error" in s:
            print(f"sweep: {s['error']}")
        else:
            print(f"{s['trials_reporting']} of 4 trials reported, {s['epochs']} epochs of {STEPS_PER_EPOCH} steps "
                  f"({s['steps_per_s']:.2f} steps/s in all after the first epoch at {s['first_epoch_s'] or 0:.0f} s); "
                  f"driver log {s['log']}")
    print(f"\nTotal {args.budget_s - left():.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
