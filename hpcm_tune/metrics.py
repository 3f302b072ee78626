"""The one module of metric and task names (DESIGN.md §5; the original design's W&B names).

Everything that reports, watches or reads a metric (engine, Tune scheduler, W&B, analyze.py) takes its names
from here, so a renamed metric cannot silently leave a scheduler watching nothing.
"""

from __future__ import annotations

SCALES: tuple[str, ...] = ("s1", "s2", "s3")

# The five tasks of the hierarchical objective, in the order the original design lists them.
TASKS: tuple[str, ...] = ("s1_distortion", "s1_bpp", "s2_distortion", "s2_bpp", "s3_bpp")
# Which scale each task belongs to (s3 has no distortion task; z's rate is counted in s3).
TASK_SCALE: dict[str, str] = {
    "s1_distortion": "s1",
    "s1_bpp": "s1",
    "s2_distortion": "s2",
    "s2_bpp": "s2",
    "s3_bpp": "s3",
}
# The two tasks of the balanced (Balanced-RD) objective.
BALANCED_TASKS: tuple[str, ...] = ("distortion", "bpp")

# Likelihood keys of the model output, one per scale plus the hyper-latent.
LIKELIHOOD_KEYS: tuple[str, ...] = ("y_s1", "y_s2", "y_s3", "z")

EPOCH = "epoch"

# train/*
TRAIN_LOSS = "train/loss"
TRAIN_PSNR = "train/psnr"
TRAIN_BPP = "train/bpp"
TRAIN_TASKS: dict[str, str] = {task: f"train/{task}" for task in TASKS}
TRAIN_SKIPPED_STEPS = "train/skipped_steps"

# weights/*, scale_contrib/*, gamma/*
WEIGHTS: dict[str, str] = {task: f"weights/{task}" for task in TASKS}
SCALE_CONTRIB: dict[str, str] = {scale: f"scale_contrib/{scale}" for scale in SCALES}
GAMMA: dict[str, str] = {scale: f"gamma/{scale}" for scale in SCALES}

# eval/*
EVAL_LOSS = "eval/loss"
EVAL_PSNR = "eval/psnr"
EVAL_MS_SSIM_DB = "eval/ms_ssim_db"
EVAL_BPP = "eval/bpp"
EVAL_BPP_SCALE: dict[str, str] = {scale: f"eval/bpp_{scale}" for scale in SCALES}
EVAL_BPP_Z = "eval/bpp_z"
EVAL_ACTUAL_BPP = "eval/actual_bpp"

EVAL_METRICS: tuple[str, ...] = (
    EVAL_LOSS,
    EVAL_PSNR,
    EVAL_MS_SSIM_DB,
    EVAL_BPP,
    *EVAL_BPP_SCALE.values(),
    EVAL_BPP_Z,
    EVAL_ACTUAL_BPP,
)

# What the sweep watches by default (lower is better). Only comparable at equal lambda.
DEFAULT_METRIC = EVAL_LOSS
DEFAULT_MODE = "min"


def weight_name(task: str) -> str:
    """'weights/<task>' for a task of any objective (the two balanced tasks included)."""
    return f"weights/{task}"


def train_task_name(task: str) -> str:
    """'train/<task>' for a task of any objective."""
    return f"train/{task}"
