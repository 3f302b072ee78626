"""Cost of the task weighting: time of one training step per method, as ratios to ``standard`` in the same run.

    python bench/weighting.py [--model small] [--size 256] [--batch 8] [--steps 10] [--warmup 3] [--device auto]

One step = forward, objective, weighting.loss, backward, clip (1.0), Adam step, weighting.update (which for
``same_batch`` re-runs the forward pass on the same batch without gradient and with the same quantization noise,
by restoring the RNG state of the first forward). Methods run round-robin, step by step, in a rotating order,
so drift of a shared machine hits all of them alike; each method trains its own copy of the same initial model.
Reported: median ms per step and the ratio to ``standard``.
Targets (issue 3): hierarchical same_batch <= 1.40x, next_batch <= 1.05x.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpcm_tune.objectives import build_objective  # noqa: E402
from hpcm_tune.weighting import build_weighting  # noqa: E402

# (label, objective, weighting, update_mode)
METHODS: tuple[tuple[str, str, str, str], ...] = (
    ("standard", "standard", "standard", "same_batch"),
    ("famo same_batch", "balanced", "famo", "same_batch"),
    ("famo next_batch", "balanced", "famo", "next_batch"),
    ("hierarchical same_batch", "hierarchical", "hierarchical", "same_batch"),
    ("hierarchical next_batch", "hierarchical", "hierarchical", "next_batch"),
)
TARGETS = {"hierarchical same_batch": 1.40, "hierarchical next_batch": 1.05}


def make_model(name: str) -> tuple[torch.nn.Module, str]:
    if name == "fake":
        from hpcm_tune.testing import TinyCompressionModel

        return TinyCompressionModel(), "TinyCompressionModel (hpcm_tune.testing)"
    from hpcm_tune.models import build_model

    model = build_model(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return model, f"HPCM {name} ({params:.2f} M parameters)"


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def make_step(model, objective, weighting, optimizer, clip: float, device: torch.device) -> Callable:
    """The mini training step (the engine has its own; this one only times the pieces)."""
    task_names = objective.task_names

    def step(x: torch.Tensor) -> None:
        noise_state = _rng_state(device)  # the quantization noise of this forward, for reevaluate()
        parts = objective(model(x), x)
        task_losses = {t: parts[t] for t in task_names}
        loss = weighting.loss(task_losses)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()

        def reevaluate() -> dict[str, torch.Tensor]:
            after_state = _rng_state(device)
            _set_rng_state(noise_state, device)
            with torch.no_grad():
                again = objective(model(x), x)
            _set_rng_state(after_state, device)  # training's RNG stream goes on as if nothing happened
            return {t: again[t] for t in task_names}

        weighting.update(task_losses, reevaluate)

    return step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", help="HPCM preset, or 'fake' for the tiny test model")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--lmbda", type=float, default=0.0067)
    args = parser.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(0)
    base, description = make_model(args.model)
    base = base.to(device).train()
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    steps = {}
    for label, objective_name, weighting_name, mode in METHODS:
        model = copy.deepcopy(base)
        objective = build_objective(objective_name, args.lmbda)
        weighting = build_weighting(weighting_name, objective.task_names, update_mode=mode)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        steps[label] = make_step(model, objective, weighting, optimizer, 1.0, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times: dict[str, list[float]] = {label: [] for label in steps}
    labels = list(steps)
    for i in range(args.warmup + args.steps):
        # Rotate the order every round so no method always runs first (after the others' memory churn).
        for label in labels[i % len(labels):] + labels[: i % len(labels)]:
            step = steps[label]
            sync()
            start = time.perf_counter()
            step(x)
            sync()
            if i >= args.warmup:
                times[label].append(time.perf_counter() - start)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"model: {description}; input {args.batch}x3x{args.size}x{args.size}; device: {name}; "
          f"{args.steps} timed steps after {args.warmup} warm-up, median")
    reference = statistics.median(times["standard"])
    print(f"{'method':<26}{'ms/step':>10}{'ratio':>8}  target")
    for label, values in times.items():
        median = statistics.median(values)
        target = TARGETS.get(label)
        verdict = "" if target is None else f"<= {target:.2f}x {'ok' if median / reference <= target else 'MISSED'}"
        print(f"{label:<26}{median * 1e3:>10.1f}{median / reference:>7.2f}x  {verdict}")
    weighting_overhead(device)


def weighting_overhead(device: torch.device, calls: int = 2000) -> None:
    """The weighting's own cost per step (loss() + backward through it + update(), next_batch), without a model."""
    from hpcm_tune.metrics import TASKS

    print(f"weighting alone, {calls} calls, us per step (loss + backward + update, next_batch):")
    for name in ("standard", "famo", "hierarchical"):
        weighting = build_weighting(name, TASKS, update_mode="next_batch")
        leaf = torch.rand(len(TASKS), device=device, requires_grad=True)
        start = time.perf_counter()
        for _ in range(calls):
            losses = dict(zip(TASKS, leaf * 2))
            weighting.loss(losses).backward()
            weighting.update(losses, None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        print(f"  {name:<14}{(time.perf_counter() - start) / calls * 1e6:>8.0f}")


if __name__ == "__main__":
    main()
