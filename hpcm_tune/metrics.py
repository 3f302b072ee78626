"""The one module of metric and task names (docs/design.md §5; the original design's W&B names).

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


# --- Diagnostics of the balanced objectives (docs/architecture.md, "The effective lambda") -----------------
# FAMO with min losses m_i moves the model along sum_i a_i grad L_i with a_i = z_i / (L_i - m_i) (the weighting's
# own coefficients), i.e. along grad R + lambda_eff grad D. Far from lambda*D ~ 1 (a model trained from scratch)
# lambda_eff << lambda and the code collapses to one that spends almost no bits on y.
TRAIN_LAMBDA_EFF = "train/lambda_eff"
# Share of the estimated rate carried by y (the rest is z): (bpp - bpp_z) / bpp on the evaluation images.
EVAL_Y_SHARE = "eval/y_share"
# PSNR of the evaluation images replaced by their own mean colour (per image, then averaged): the quality a
# code with no information about the picture reaches.
EVAL_FLAT_PSNR = "eval/flat_psnr"
# 1.0 when the evaluated model is collapsed (is_collapsed), else 0.0.
EVAL_COLLAPSED = "eval/collapsed"
# y carrying less than this share of the rate counts as collapsed.
COLLAPSE_Y_SHARE = 0.05
# A PSNR within this many dB of the flat-colour reference (or below it) counts as reaching no more than it: a
# reconstruction that is the mean colour lands on the reference up to float rounding (~1e-8 dB), on either side.
COLLAPSE_PSNR_TOLERANCE_DB = 0.01

# Per evaluation image (analyze.py's per-image table): eval_image/<image>/psnr and eval_image/<image>/bpp.
EVAL_IMAGE_PREFIX = "eval_image/"
EVAL_IMAGE_QUANTITIES: tuple[str, ...] = ("psnr", "bpp")


def eval_image_metric(image: str, quantity: str) -> str:
    """'eval_image/<image>/<quantity>', the image name reduced to letters, digits and ._- (a file name such as
    'kodim01.png' stays as it is)."""
    if quantity not in EVAL_IMAGE_QUANTITIES:
        raise ValueError(f"quantity: got {quantity!r}; allowed: {', '.join(EVAL_IMAGE_QUANTITIES)}")
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in str(image)) or "_"
    return f"{EVAL_IMAGE_PREFIX}{safe}/{quantity}"


def parse_eval_image_metric(name: str) -> tuple[str, str] | None:
    """(image, quantity) of a per-image metric name, or None for any other name."""
    if not name.startswith(EVAL_IMAGE_PREFIX):
        return None
    image, _, quantity = name[len(EVAL_IMAGE_PREFIX):].rpartition("/")
    return (image, quantity) if image and quantity in EVAL_IMAGE_QUANTITIES else None


DISTORTION_SUFFIX = "distortion"
RATE_SUFFIX = "bpp"


def task_kind(task: str) -> str:
    """'distortion' for a task that is part of lambda*D, 'bpp' for a part of R (every objective's task names end
    so: s1_distortion, s2_bpp, distortion, bpp)."""
    for kind in (DISTORTION_SUFFIX, RATE_SUFFIX):
        if task == kind or task.endswith(f"_{kind}"):
            return kind
    raise ValueError(f"task {task!r}: not a distortion or rate task (names end in _distortion or _bpp)")


def effective_lambda(lmbda: float, coefficients: dict[str, float], task_losses: dict[str, float],
                     rd_distortion: float, rate: float) -> float:
    """lambda_eff such that the model's step follows grad R + lambda_eff * grad D.

    The weighted gradient is sum_i a_i grad L_i. Each distortion task is a part of lambda*D and each rate task a
    part of R, so the distortion tasks together weigh lambda*D by sum_d a_d L_d / (lambda D) and the rate tasks
    weigh R by sum_r a_r L_r / R; lambda_eff = lambda times their ratio. ``rd_distortion`` is lambda*D (the plain
    loss minus the rate). With every a_i equal (the standard weighting) this is lambda; for two FAMO tasks with
    m = -1 it is lambda (z_D / z_R) (1 + R) / (1 + lambda D). NaN when a side is empty or zero.
    """
    weighted = {DISTORTION_SUFFIX: 0.0, RATE_SUFFIX: 0.0}
    for task, loss in task_losses.items():
        weighted[task_kind(task)] += float(coefficients[task]) * float(loss)
    if rd_distortion <= 0 or rate <= 0 or weighted[RATE_SUFFIX] <= 0:
        return float("nan")
    return lmbda * (weighted[DISTORTION_SUFFIX] / rd_distortion) / (weighted[RATE_SUFFIX] / rate)


def y_rate_share(bpp: float, bpp_z: float) -> float:
    """Share of the total rate carried by y; NaN for a zero rate."""
    return (bpp - bpp_z) / bpp if bpp > 0 else float("nan")


def is_collapsed(y_share: float, psnr: float, flat_psnr: float) -> bool:
    """y carries under COLLAPSE_Y_SHARE of the rate, or the PSNR is no better than the flat-colour reference
    (below it, or above it by less than COLLAPSE_PSNR_TOLERANCE_DB)."""
    return bool(y_share < COLLAPSE_Y_SHARE or psnr < flat_psnr + COLLAPSE_PSNR_TOLERANCE_DB)
