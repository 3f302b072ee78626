"""A console progress bar for runs by hand: an ``on_epoch`` callback (the same hook the Ray trainable uses)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from hpcm_tune import metrics as M


class ConsoleProgress:
    """tqdm bar over epochs with the headline metrics; ``ConsoleProgress(total_epochs)(metrics, checkpoint_dir)``.

    ``start``: epochs already done (a resumed run). Use as a context manager, or call ``close()``.
    """

    SHOWN = ((M.TRAIN_LOSS, "loss"), (M.EVAL_PSNR, "psnr"), (M.EVAL_BPP, "bpp"), (M.EVAL_ACTUAL_BPP, "actual"))

    def __init__(self, total_epochs: int, start: int = 0, stream: TextIO | None = None) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total_epochs, initial=start, unit="epoch", file=stream or sys.stderr,
                        dynamic_ncols=True)

    def __call__(self, metrics: dict[str, float], checkpoint_dir: Path) -> None:
        shown = {label: f"{metrics[key]:.4g}" for key, label in self.SHOWN if key in metrics}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> ConsoleProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
