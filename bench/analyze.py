"""Benchmark: analyze a synthetic store of 1,000 trials (target under 5 s on 2 cores; issue 6 asked for 10 s).

Two experiments as a sweep leaves them: the balanced grid (12 configurations x 6 lambdas x 7 seeds) and a
random search (62 configurations x 4 lambdas x 2 seeds), 20 epochs each, with 10 % of trials stopped early,
2 % errored and 1 % with a truncated result.json. Prints the time of each phase and the total, wall and CPU
(on a shared machine the CPU time of this process is the steadier figure). The tables phase includes the
per-seed paired BDs and t-intervals against the baseline and the per-seed table (issue 11).

The trials name no data, so the reference codecs run on the default 'samples' test photos: computed on the
first run (a few seconds), then read from the cache ($HPCM_TUNE_CACHE/reference, default
~/.cache/hpcm-tune/reference); the phase says which. ``--no-reference`` skips them.

    .venv/bin/python bench/analyze.py [--trials-dir DIR] [--no-plots] [--no-reference]
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from hpcm_tune.analysis.report import build_report, write_outputs
from hpcm_tune.analysis.results import ResultsWarning, load_experiments
from hpcm_tune.analysis.tables import AnalysisOptions
from hpcm_tune.testing import write_experiment_dir

EPOCHS = 20
LAMBDAS = (0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483)


def _spec(rng: np.random.Generator, config: dict, offset: float) -> dict:
    spec = {"config": {**config, "epochs": EPOCHS}, "psnr_offset": offset, "noise": 0.05}
    draw = rng.random()
    if draw < 0.10:
        spec["epochs_run"] = int(rng.integers(2, EPOCHS // 2))
    elif draw < 0.12:
        spec.update(error=True, epochs_run=int(rng.integers(1, EPOCHS)))
    elif draw < 0.13:
        spec["corrupt"] = "truncated_result"
    return spec


def build_store(root: Path) -> int:
    rng = np.random.default_rng(0)
    grid = []
    for gamma in (0.001, 0.003, 0.005, 0.01):
        for w_lr in (0.01, 0.025, 0.05):
            for lmbda in LAMBDAS:
                for seed in range(7):
                    config = {"objective": "balanced", "gamma_s1": gamma, "w_lr": w_lr, "lmbda": lmbda,
                              "seed": seed, "study": "balanced_grid", "label": f"gamma {gamma:g}, w_lr {w_lr:g}"}
                    grid.append(_spec(rng, config, -20 * (gamma - 0.005) ** 2 * 1e3 - abs(w_lr - 0.025)))
    write_experiment_dir(root, "balanced_grid", grid, study="balanced_grid", max_epochs=EPOCHS)
    search = []
    for _ in range(62):
        weights = rng.dirichlet((3, 4, 3)).round(3).tolist()
        gammas = (10 ** rng.uniform(-3, -2, 3)).round(5).tolist()
        for lmbda in LAMBDAS[1:5]:
            for seed in range(2):
                config = {"objective": "hierarchical", "scale_weights": weights, "gamma_s1": gammas[0],
                          "gamma_s2": gammas[1], "gamma_s3": gammas[2], "lmbda": lmbda, "seed": seed,
                          "study": "random_search"}
                search.append(_spec(rng, config, float(rng.normal(0, 0.1))))
    write_experiment_dir(root, "random_search", search, study="random_search", max_epochs=EPOCHS)
    return len(grid) + len(search)


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the figures are drawn in forked ones)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials-dir", type=Path, default=None, help="where to write the store (default: temp)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference codecs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.trials_dir or Path(tmp) / "results"
        n = build_store(root)
        timings: dict[str, float] = {}
        cpu_start = _cpu()
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResultsWarning)
            experiments = load_experiments([root])
        timings["read experiment dirs"] = time.perf_counter() - start
        reference_phase = "reference codecs"
        if not args.no_reference:
            from hpcm_tune.analysis.references import load_references
            from hpcm_tune.analysis.tables import trial_table

            trials = trial_table(experiments)  # (timed again inside build_report)
            start = time.perf_counter()
            refs = load_references(trials)
            warm = all(r.points is not None and len(r.points.cached) == len(r.points.codecs) for r in refs.values())
            reference_phase += " (cached)" if warm else " (computed)"
            timings[reference_phase] = time.perf_counter() - start
        start = time.perf_counter()
        report = build_report(experiments, AnalysisOptions(reference=not args.no_reference))
        timings["tables and BD-rates"] = time.perf_counter() - start
        start = time.perf_counter()
        write_outputs(report, Path(tmp) / "out", plots=False)
        timings["CSV, LaTeX, Markdown"] = time.perf_counter() - start
        if not args.no_plots:
            from hpcm_tune.analysis import plots

            start = time.perf_counter()
            for name, png in plots.render_all(report).items():  # side by side on the cores, as analyze.py does
                (Path(tmp) / "out" / name).write_bytes(png)
            timings[f"figures ({', '.join(plots.FIGURES)})"] = time.perf_counter() - start
        cpu = _cpu() - cpu_start
        rows = sum(len(t.rows) for e in experiments for t in e.trials)
        print(f"trials: {n} in {len(experiments)} experiments ({rows} result lines, "
              f"{len(caught)} corrupted-file warnings)")
        for name, seconds in timings.items():
            print(f"  {name:<30} {seconds:6.2f} s")
        print(f"total time to analyze: {sum(timings.values()):.2f} s wall, {cpu:.2f} s CPU of this process and "
              f"its figure processes (target < 5 s wall on 2 cores; wall time grows when other jobs share them)")

if __name__ == "__main__":
    main()
