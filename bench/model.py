"""HPCM model benchmark: training-step throughput and codec times on the current device.

    python bench/model.py                          # tiny @64, small and base @256 (batch 8); codec @512
    python bench/model.py --train tiny:64 --codec tiny --steps 3
    python bench/model.py --device cuda            # adds base fp32 vs bf16 autocast, eager vs torch.compile

A training step is forward + backward + Adam step on the plain R-D loss lambda*255^2*MSE + bpp (random
crops-like inputs; the model is randomly initialised, which does not change the cost). Codec times are for
scikit-image's astronaut (512x512) through compress / decompress (real rANS bitstreams), after update().
Figures vary with the load of the machine: on a shared machine, read them as rough.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcm_tune.demo import load_astronaut  # noqa: E402
from hpcm_tune.models import PRESETS, build_model  # noqa: E402

LMBDA = 0.0067


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rd_loss(out: dict, x: torch.Tensor) -> torch.Tensor:
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    bpp = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) / pixels
    mse = torch.mean((out["x_hat"].float() - x) ** 2)
    return LMBDA * 255**2 * mse + bpp


def bench_train(preset: str, size: int, batch: int, steps: int, warmup: int, device: torch.device,
                amp: bool = False, compile_model: bool = False) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(preset).to(device).train()
    step_model = torch.compile(model) if compile_model else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 3, size, size, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()
    times = []
    for i in range(warmup + steps):
        _sync(device)
        start = time.perf_counter()
        with autocast:
            out = step_model(x)
        loss = _rd_loss(out, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {"step_s": step_s, "images_per_s": batch / step_s, "peak_gib": peak}


def bench_codec(preset: str, device: torch.device, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(preset).to(device).eval()
    start = time.perf_counter()
    model.update(force=True)
    model.fingerprint()
    update_s = time.perf_counter() - start
    x = load_astronaut().to(device)
    enc_t, dec_t = [], []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        enc = model.compress(x)
        _sync(device)
        enc_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        dec = model.decompress(enc["strings"], enc["shape"])
        _sync(device)
        dec_t.append(time.perf_counter() - start)
    pixels = x.shape[2] * x.shape[3]
    return {
        "update_s": update_s,
        "compress_s": min(enc_t),
        "decompress_s": min(dec_t),
        "bpp": sum(len(s[0]) for s in enc["strings"]) * 8 / pixels,
        "bit_exact": float(torch.equal(enc["y_hat"], dec["y_hat"])),
    }


def _pair(text: str) -> tuple[str, int]:
    name, _, size = text.partition(":")
    if name not in PRESETS or not size.isdigit():
        raise argparse.ArgumentTypeError(f"expected PRESET:SIZE with PRESET in {', '.join(PRESETS)}, got {text!r}")
    return name, int(size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train", nargs="*", type=_pair, default=[("tiny", 64), ("small", 256), ("base", 256)],
                        metavar="PRESET:SIZE", help="training-step benchmarks (default: tiny:64 small:256 base:256)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--codec", nargs="*", default=["tiny", "small", "base"], choices=list(PRESETS),
                        help="presets whose compress/decompress of a 512x512 photo is timed")
    parser.add_argument("--repeats", type=int, default=1, help="codec repetitions (fastest reported)")
    parser.add_argument("--amp", action="store_true", help="also time base with bf16 autocast (default on CUDA)")
    parser.add_argument("--compile", action="store_true", help="also time base under torch.compile (default on CUDA)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    print("\ntraining step (forward + backward + Adam), median of timed steps")
    variants = [(False, False)]
    if device.type == "cuda" or args.amp:
        variants.append((True, False))
    if device.type == "cuda" or args.compile:
        variants += [(False, True), (True, True)] if len(variants) == 2 else [(False, True)]
    for preset, size in args.train:
        for amp, comp in variants if preset == "base" else [(False, False)]:
            r = bench_train(preset, size, args.batch, args.steps, args.warmup, device, amp=amp, compile_model=comp)
            mode = f"{'bf16' if amp else 'fp32'} {'compile' if comp else 'eager'}"
            mem = "" if r["peak_gib"] != r["peak_gib"] else f", peak {r['peak_gib']:.1f} GiB"
            print(f"  {preset:<6} {size}x{size} batch {args.batch} {mode:<13}: {r['images_per_s']:8.2f} images/s "
                  f"({r['step_s'] * 1000:.0f} ms/step{mem})", flush=True)

    print("\ncodec on astronaut 512x512 (randomly initialised weights)")
    for preset in args.codec:
        r = bench_codec(preset, device, args.repeats)
        print(f"  {preset:<6}: compress {r['compress_s']:.2f} s, decompress {r['decompress_s']:.2f} s, "
              f"update {r['update_s']:.2f} s, {r['bpp']:.4f} bpp, bit-exact {'yes' if r['bit_exact'] else 'NO'}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
