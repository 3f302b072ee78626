"""Shared fakes for tests and benchmarks: a tiny compression model, a toy multi-task problem, a fake image folder.

They follow the real interfaces (CompressAI's model output, the objectives' named task losses, CompressAI's
ImageFolder layout) so a test written against a fake exercises the same code paths as the real thing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hpcm_tune.config import WeightingConfig
from hpcm_tune.experiment import TRAINING_ITERATION
from hpcm_tune.metrics import LIKELIHOOD_KEYS


class TinyCompressionModel(nn.Module):
    """A ~2k-parameter stand-in for HPCM with the same output contract.

    ``forward(x)`` returns ``{"x_hat", "likelihoods": {"y_s1", "y_s2", "y_s3", "z"}}``: y (stride 4) is split
    by channel into three "scales" and z is a global code, each with a Gaussian likelihood of a quantized
    (noisy in training) latent, so rates are differentiable and partition exactly as HPCM's do.
    """

    pad_multiple = 4

    def __init__(self, channels: int = 6) -> None:
        super().__init__()
        if channels % 3:
            raise ValueError(f"channels must be a multiple of 3, got {channels}")
        self.channels = channels
        self.g_a = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.LeakyReLU(),
                                 nn.Conv2d(8, channels, 3, stride=2, padding=1))
        self.g_s = nn.Sequential(nn.ConvTranspose2d(channels, 8, 4, stride=2, padding=1), nn.LeakyReLU(),
                                 nn.ConvTranspose2d(8, 3, 4, stride=2, padding=1))
        self.log_scales = nn.Parameter(torch.zeros(channels))
        self.z_log_scale = nn.Parameter(torch.zeros(1))

    @staticmethod
    def _quantize(v: torch.Tensor, training: bool) -> torch.Tensor:
        if training:
            return v + torch.empty_like(v).uniform_(-0.5, 0.5)
        return torch.round(v)

    @staticmethod
    def _likelihood(v_hat: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        normal = torch.distributions.Normal(torch.zeros_like(v_hat), scale.clamp_min(0.11))
        return (normal.cdf(v_hat + 0.5) - normal.cdf(v_hat - 0.5)).clamp_min(1e-9)

    def forward(self, x: torch.Tensor) -> dict:
        y = self.g_a(x)
        y_hat = self._quantize(y, self.training)
        scales = self.log_scales.exp().view(1, -1, 1, 1).expand_as(y_hat)
        likelihoods = self._likelihood(y_hat, scales)
        z = y.mean(dim=(2, 3), keepdim=True)
        z_hat = self._quantize(z, self.training)
        z_likelihoods = self._likelihood(z_hat, self.z_log_scale.exp().expand_as(z_hat))
        c = self.channels // 3
        parts = (likelihoods[:, :c], likelihoods[:, c : 2 * c], likelihoods[:, 2 * c :], z_likelihoods)
        x_hat = self.g_s(y_hat).clamp(0, 1) if not self.training else self.g_s(y_hat)
        return {"x_hat": x_hat, "likelihoods": dict(zip(LIKELIHOOD_KEYS, parts, strict=True))}


class ToyMultiTask(nn.Module):
    """Two (or more) quadratic tasks of very different scales sharing one parameter vector.

    L_i(theta) = scale_i * ||theta - target_i||^2. With scales (1, 100) plain summation is dominated by the
    large task; a balanced weighting should even out the tasks' relative improvement rates.
    """

    def __init__(self, scales: tuple[float, ...] = (1.0, 100.0), dim: int = 4, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.task_names = tuple(f"task{i}" for i in range(len(scales)))
        self.register_buffer("scales", torch.tensor(scales, dtype=torch.float64))
        self.register_buffer("targets", torch.randn(len(scales), dim, generator=gen, dtype=torch.float64))
        self.theta = nn.Parameter(torch.zeros(dim, dtype=torch.float64))

    def forward(self) -> dict[str, torch.Tensor]:
        return {
            name: self.scales[i] * (self.theta - self.targets[i]).pow(2).sum()
            for i, name in enumerate(self.task_names)
        }


class ToyRateDistortion(nn.Module):
    """A one-parameter rate-distortion toy: a 'step size' s trades rate R(s) = log2(1 + 1/s^2) against
    distortion D(s) = s^2 / 12 (uniform quantization). The R-D optimum moves to lower D as lambda grows."""

    def __init__(self, init_log_step: float = 0.0) -> None:
        super().__init__()
        self.log_step = nn.Parameter(torch.tensor(float(init_log_step), dtype=torch.float64))

    def forward(self) -> dict[str, torch.Tensor]:
        step = self.log_step.exp()
        return {"distortion": step.pow(2) / 12.0, "bpp": torch.log2(1.0 + 1.0 / step.pow(2))}


def random_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like uint8 RGB image (low-frequency waves plus a little noise), deterministic in seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width, 3))
    for c in range(3):
        for _ in range(4):
            fy, fx, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * math.pi)
            img[..., c] += np.sin(2 * math.pi * (fy * yy / height + fx * xx / width) + phase)
    img = (img - img.min()) / (np.ptp(img) + 1e-9) * 220 + 20 + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_image_folder(
    root: str | Path,
    n_train: int = 4,
    n_test: int = 2,
    size: tuple[int, int] = (96, 128),
    corrupt: int = 0,
    small: int = 0,
) -> Path:
    """Write a CompressAI ImageFolder tree (root/train, root/test) of PNG photos.

    ``corrupt`` extra unreadable files and ``small`` extra 16x16 images go into train/, for the data
    loader's warnings.
    """
    from PIL import Image

    root = Path(root)
    for split, count, offset in (("train", n_train, 0), ("test", n_test, 1000)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(random_photo(*size, seed=offset + i)).save(folder / f"img{i:03d}.png")
    for i in range(corrupt):
        (root / "train" / f"corrupt{i}.png").write_bytes(b"not a png at all")
    for i in range(small):
        Image.fromarray(random_photo(16, 16, seed=500 + i)).save(root / "train" / f"small{i}.png")
    return root


# --- Synthetic Ray Tune experiment directories (for hpcm_tune.analysis tests and bench/analyze.py) ---

# Ray Tune 2.60 keeps these fields in every result.json line besides the trainable's own metrics.
_RAY_RESULT_FIELDS = ("timestamp", "checkpoint_dir_name", "done", TRAINING_ITERATION, "trial_id", "date",
                      "time_this_iter_s", "time_total_s", "pid", "hostname", "node_ip", "time_since_restore",
                      "iterations_since_restore")


def image_psnr_offset(index: int, count: int) -> float:
    """PSNR offset (dB) of evaluation image ``index`` of ``count`` in :func:`fake_rd_metrics`: from -1 to +1,
    mean 0."""
    return 0.0 if count < 2 else 2.0 * index / (count - 1) - 1.0


def image_rate_factor(index: int, count: int) -> float:
    """Rate factor of evaluation image ``index`` of ``count`` in :func:`fake_rd_metrics`: from 1.2 down to 0.8,
    mean 1."""
    return 1.0 - 0.2 * image_psnr_offset(index, count)


def fake_rd_metrics(config: dict, epoch: int, psnr_offset: float = 0.0, rate_factor: float = 1.0,
                    noise: float = 0.0, ms_ssim: bool = True, images: tuple[str, ...] = ()) -> dict[str, float]:
    """Plausible per-epoch metrics of one HPCM trial (names from hpcm_tune.metrics), deterministic.

    The converged point follows the HPCM Base Kodak curve (docs/design.md §2) through lambda: bpp ~ lambda^0.58,
    PSNR linear in log lambda; ``psnr_offset`` (dB) and ``rate_factor`` make a better or worse codec, ``noise``
    (dB) a seed-dependent jitter. Quality rises towards the converged point as epochs pass; task weights
    drift from uniform and gammas follow a linear schedule. With ``images`` (evaluation image names; default
    none, as older engines reported) also eval_image/<image>/psnr and /bpp: image i of n gets the PSNR plus
    ``image_psnr_offset(i, n)`` dB and the bpp times ``image_rate_factor(i, n)``, spread evenly so that their
    means are eval/psnr and eval/bpp exactly (the engine averages over images the same way).
    """
    from hpcm_tune import metrics as m

    defaults = WeightingConfig()  # the run config's defaults, for keys the trial config leaves out
    lmbda = float(config.get("lmbda", 0.0067))
    epochs = max(int(config.get("epochs", 10)), 1)
    seed = int(config.get("seed", 0))
    progress = min(epoch / epochs, 1.0)
    jitter = noise * float(np.random.default_rng([seed, int(lmbda * 1e6)]).standard_normal())
    log_ratio = math.log(lmbda / 0.0018)
    bpp = 0.1211 * math.exp(0.582 * log_ratio) * rate_factor * (1.0 + 0.3 * math.exp(-4.0 * progress))
    psnr = 29.4022 + 2.539 * log_ratio + psnr_offset + jitter - 2.0 * math.exp(-4.0 * progress)
    mse = 10.0 ** (-psnr / 10.0)
    out = {
        m.EPOCH: epoch,
        m.TRAIN_LOSS: lmbda * 255**2 * mse * 1.1 + bpp * 1.05,
        m.TRAIN_PSNR: psnr - 0.3,
        m.TRAIN_BPP: bpp * 1.05,
        m.EVAL_LOSS: lmbda * 255**2 * mse + bpp,
        m.EVAL_PSNR: psnr,
        m.EVAL_BPP: bpp,
        m.EVAL_ACTUAL_BPP: bpp * 1.01 + 0.002,
        m.EVAL_BPP_Z: 0.05 * bpp,
    }
    for scale, share in zip(m.SCALES, (0.2, 0.3, 0.45), strict=True):
        out[m.EVAL_BPP_SCALE[scale]] = share * bpp
    if ms_ssim:
        out[m.EVAL_MS_SSIM_DB] = 0.55 * psnr - 3.0
    for i, image in enumerate(images):
        out[m.eval_image_metric(image, "psnr")] = psnr + image_psnr_offset(i, len(images))
        out[m.eval_image_metric(image, "bpp")] = bpp * image_rate_factor(i, len(images))
    # z = softmax(w + log p) with p from the scale weights (docs/design.md §3), logits w drifting with training.
    prior = np.array(config.get("scale_weights", defaults.scale_weights), dtype=np.float64)
    log_p = np.log([prior[m.SCALES.index(m.TASK_SCALE[t])] / sum(m.TASK_SCALE[u] == m.TASK_SCALE[t]
                                                                  for u in m.TASKS) for t in m.TASKS])
    logits = np.array([0.3, -0.2, 0.1, 0.0, -0.2]) * progress * (1.0 + 0.2 * (seed % 3)) + log_p
    weights = np.exp(logits) / np.exp(logits).sum()
    for task, w in zip(m.TASKS, weights, strict=True):
        out[m.WEIGHTS[task]] = float(w)
    for scale in m.SCALES:
        out[m.SCALE_CONTRIB[scale]] = float(sum(w for t, w in zip(m.TASKS, weights, strict=True)
                                                if m.TASK_SCALE[t] == scale))
        out[m.GAMMA[scale]] = float(config.get(f"gamma_{scale}", getattr(defaults, f"gamma_{scale}"))) \
            * (1.0 - 0.5 * progress)
    return out


def write_experiment_dir(
    storage: str | Path,
    name: str,
    trials: list[dict],
    study: str = "study",
    metric: str | None = None,
    mode: str = "min",
    max_epochs: int | None = None,
    search_space: dict | None = None,
    experiment_state: bool = True,
) -> Path:
    """Write a Ray Tune 2.60 experiment directory ``<storage>/<name>/`` as the sweep leaves it on disk.

    Layout: ``hpcm_tune.json`` at the root, ``experiment_state-<date>.json`` (``trial_data`` = pairs of JSON
    strings: the trial state with ``trial_id``, ``status``, ``relative_logdir``, ``config``, and its run
    metadata), ``tuner.pkl`` (dummy bytes: it must never be unpickled), and per trial
    ``<trainable>_<trial_id>_<index>_<tag>_<date>/`` holding ``params.json``, ``result.json`` (one JSON line
    per epoch with Ray's fields and ``config``), ``progress.csv`` and, for errored trials, ``error.txt``.

    Each entry of ``trials`` is a dict: ``config`` (the flat params, with lmbda, seed, epochs, label...),
    and optionally ``epochs_run`` (default: config epochs), ``error`` (bool: fails after epochs_run),
    ``status`` (Ray status in the experiment state; default from the above), ``psnr_offset``,
    ``rate_factor``, ``noise``, ``ms_ssim``, ``images`` (see :func:`fake_rd_metrics`; default no per-image
    metrics), ``drop`` (metric names left out),
    ``corrupt``: one of ``truncated_result`` (last line cut mid-way), ``garbage_result`` (a non-JSON line in
    the middle), ``garbage_params`` (params.json unreadable), ``empty_result``, ``no_result`` (no
    result.json, only progress.csv), ``no_dir`` (listed in the experiment state only, e.g. pending).
    """
    import csv
    import json
    import zlib

    from hpcm_tune import metrics as m
    from hpcm_tune.experiment import ERROR_FILE, META_FILE, PARAMS_FILE, PROGRESS_FILE, RESULT_FILE, STATE_PREFIX

    root = Path(storage) / name
    root.mkdir(parents=True, exist_ok=True)
    date = "2026-01-01_00-00-00"
    epochs_default = max_epochs or max((int(t["config"].get("epochs", 10)) for t in trials), default=10)
    header = {
        "study": study,
        "search_space_file": f"search_spaces/{study}.yaml",
        "search_space": search_space or {"study": study},
        "metric": metric or m.DEFAULT_METRIC,
        "mode": mode,
        "max_epochs": epochs_default,
    }
    (root / META_FILE).write_text(json.dumps(header, indent=2))
    (root / "tuner.pkl").write_bytes(b"\x80\x05 not to be unpickled")
    trial_data = []
    for index, spec in enumerate(trials):
        config = dict(spec["config"])
        trial_id = f"{zlib.crc32(name.encode()) % 100000:05d}_{index:05d}"
        tag = f"{index}_lmbda={config.get('lmbda')},seed={config.get('seed')}"
        dirname = f"train_hpcm_{trial_id}_{tag}_{date}"
        epochs = int(config.get("epochs", epochs_default))
        run = int(spec.get("epochs_run", epochs))
        errored = bool(spec.get("error", False))
        status = spec.get("status") or ("ERROR" if errored else "TERMINATED")
        corrupt = spec.get("corrupt")
        rows = []
        for epoch in range(1, run + 1):
            row = fake_rd_metrics(config, epoch, spec.get("psnr_offset", 0.0), spec.get("rate_factor", 1.0),
                                  spec.get("noise", 0.0), spec.get("ms_ssim", True), tuple(spec.get("images", ())))
            for key in spec.get("drop", ()):
                row.pop(key, None)
            ray_fields = (1_767_225_600 + epoch, None, epoch == epochs and not errored, epoch, trial_id, date,
                          1.5, 1.5 * epoch, 1234, "node", "127.0.0.1", 1.5 * epoch, epoch)
            row.update(zip(_RAY_RESULT_FIELDS, ray_fields, strict=True))
            rows.append(row)
        trial_data.append([
            json.dumps({"trainable_name": "train_hpcm", "trial_id": trial_id, "status": status,
                        "relative_logdir": dirname, "config": config, "experiment_tag": tag,
                        "storage": {"_type": "CLOUDPICKLE_FALLBACK", "value": "8005deadbeef"},
                        "results": "80054e2e"}),
            json.dumps({"num_failures": int(errored), "error_filename": ERROR_FILE if errored else None,
                        "last_result": rows[-1] if rows else {}}),
        ])
        if corrupt == "no_dir":
            continue
        trial_dir = root / dirname
        trial_dir.mkdir(exist_ok=True)
        if corrupt == "garbage_params":
            (trial_dir / PARAMS_FILE).write_text('{"lmbda": 0.00')
        else:
            (trial_dir / PARAMS_FILE).write_text(json.dumps(config, indent=2))
        lines = [json.dumps({**row, "config": config}) for row in rows]
        if corrupt == "truncated_result" and lines:
            lines[-1] = lines[-1][: len(lines[-1]) // 2]
        if corrupt == "garbage_result" and lines:
            lines.insert(len(lines) // 2, "\x00\x00 this is not json")
        if corrupt == "empty_result":
            lines = []
        if corrupt != "no_result":
            (trial_dir / RESULT_FILE).write_text("".join(line + "\n" for line in lines))
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open(trial_dir / PROGRESS_FILE, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        if errored:
            (trial_dir / ERROR_FILE).write_text(f"Failure # 1 (occurred at {date})\nRuntimeError: fake failure\n")
    if experiment_state:
        state = {"trial_data": trial_data, "runner_data": {"_session_str": date}, "stats": {"start_time": 0.0}}
        (root / f"{STATE_PREFIX}{date}.json").write_text(json.dumps(state))
    return root


# --- Driving an engine in tests ---


class StopRun(Exception):
    """Raised by run_engine's callback to stop a run after an epoch: a kill, as a test sees it."""


def run_engine(engine, stop_after: int | None = None, check=None) -> list[dict]:
    """Run ``engine`` (hpcm_tune.engine.Engine, or a stand-in with its ``run``) and return its per-epoch metrics;
    stop after epoch ``stop_after`` (its checkpoint written, as a killed run leaves it).
    ``check(metrics, checkpoint_dir)`` is called first at every epoch."""
    import contextlib

    from hpcm_tune.metrics import EPOCH

    reports: list[dict] = []

    def on_epoch(metrics: dict, checkpoint_dir) -> None:
        if check is not None:
            check(metrics, checkpoint_dir)
        reports.append(metrics)
        if metrics[EPOCH] == stop_after:
            raise StopRun

    with contextlib.suppress(StopRun):
        engine.run(on_epoch)
    return reports
