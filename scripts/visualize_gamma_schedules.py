"""Plot the five gamma strategies for the three scales: writes scale_gamma_strategies.png.

    python scripts/visualize_gamma_schedules.py [--epochs 3000] [--output scale_gamma_strategies.png]

Each panel shows gamma_s(epoch) = gamma0_s * m_s(epoch) (hpcm_tune.schedules) with the default base gammas
s1 0.008, s2 0.006, s3 0.004. ``adaptive`` depends on the training losses; it is drawn on synthetic losses (an
s1 that settles early, a noisy s2, a slowly falling s3), so its panel is an illustration, not a prediction.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hpcm_tune.config import WeightingConfig  # noqa: E402
from hpcm_tune.metrics import SCALES  # noqa: E402
from hpcm_tune.schedules import HIERARCHICAL_PHASES, AdaptiveGamma, gamma_multipliers  # noqa: E402

DEFAULT_SCALE_GAMMAS = WeightingConfig().gammas  # the run config's defaults
ORDER = ("fixed", "linear", "cosine", "adaptive", "hierarchical")
COLORS = {"s1": "tab:blue", "s2": "tab:orange", "s3": "tab:green"}
LABELS = {"s1": "s1 (coarse, 1/16 of y)", "s2": "s2 (3/16 of y)", "s3": "s3 (fine, 12/16 of y, + z)"}


def synthetic_losses(epoch: int, rng: np.random.Generator) -> dict[str, float]:
    """Stand-in per-scale losses for the adaptive panel."""
    return {
        "s1": 1.0 + 0.5 * math.exp(-epoch / 150),
        "s2": 1.0 + 0.3 * math.exp(-epoch / 800) + 0.08 * rng.standard_normal(),
        "s3": 2.0 - epoch / 4000 + 0.02 * rng.standard_normal(),
    }


def curves(epochs: int, gammas0: tuple[float, float, float], seed: int = 0) -> dict[str, np.ndarray]:
    """gamma per epoch, shape (epochs + 1, 3), for each strategy."""
    out: dict[str, np.ndarray] = {}
    rng = np.random.default_rng(seed)
    for strategy in ORDER:
        state = AdaptiveGamma() if strategy == "adaptive" else None
        rows = []
        for epoch in range(epochs + 1):
            if state is not None and epoch > 0:
                state.record(synthetic_losses(epoch, rng))
            rows.append(gamma_multipliers(strategy, epoch, epochs, state=state))
        out[strategy] = np.asarray(rows) * np.asarray(gammas0)
    return out


def plot(epochs: int, output: Path, gammas0: tuple[float, float, float] = DEFAULT_SCALE_GAMMAS) -> Path:
    data = curves(epochs, gammas0)
    x = np.arange(epochs + 1)
    ymax = max(float(v.max()) for v in data.values()) * 1.12
    fig, axes = plt.subplots(1, len(ORDER), figsize=(22, 5.2), sharey=True)
    for ax, strategy in zip(axes, ORDER):
        for i, scale in enumerate(SCALES):
            ax.plot(x, data[strategy][:, i], color=COLORS[scale], lw=2.2, label=LABELS[scale])
        if strategy == "hierarchical":
            begin = 0.0
            for name, end, _start, _change in HIERARCHICAL_PHASES:
                ax.axvline(end * epochs, color="0.6", ls="--", lw=1)
                # Phase name at the bottom, inside its phase, clear of the curves (all >= 0.3 gamma0 there).
                ax.text(begin * epochs + 0.012 * epochs, ymax * 0.02, name, rotation=90, ha="left", va="bottom",
                        fontsize=10, color="0.3")
                begin = end
        title = strategy + (" (synthetic losses)" if strategy == "adaptive" else "")
        ax.set_title(title, fontsize=15)
        ax.set_xlabel("epoch", fontsize=13)
        ax.set_xlim(0, epochs)
        ax.set_ylim(0, ymax)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=11)
    axes[0].set_ylabel("gamma (L2 on the task logits)", fontsize=13)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=13, frameon=False)
    fig.suptitle(f"Scale gamma strategies over {epochs} epochs (base gammas s1 {gammas0[0]:g}, "
                 f"s2 {gammas0[1]:g}, s3 {gammas0[2]:g})", fontsize=17)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(output)  # never leave a half-written figure where a good one was
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3000, help="training length (the original: 3000)")
    parser.add_argument("--gammas", type=float, nargs=3, default=DEFAULT_SCALE_GAMMAS, metavar=("S1", "S2", "S3"))
    parser.add_argument("--output", type=Path, default=Path("scale_gamma_strategies.png"))
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs: got {args.epochs}; must be >= 1")
    print(plot(args.epochs, args.output, tuple(args.gammas)))


if __name__ == "__main__":
    main()
