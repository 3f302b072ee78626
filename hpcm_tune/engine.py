"""One training run of HPCM: data, the R-D objective, the task weighting, Adam, evaluation, real bitstreams and
exact resume. Plain PyTorch; never imports Ray (the sweep's trainable wraps ``Engine``).

Per training step (HPCM official training, ICCV 2025; FAMO, NeurIPS 2023; Balanced-RD, CVPR 2025):

    out = model(x)                         # y_hat = y + u, u ~ U(-1/2, 1/2) from torch's global RNG
    L = objective(out, x)                  # named task losses, e.g. s1_distortion ... s3_bpp
    loss = weighting.loss(L); loss.backward()
    clip ||grad|| to clip_max_norm once; a non-finite loss or grad norm skips the step (counted)
    optimizer.step()
    weighting.update(L, reevaluate)        # reevaluate(): the same batch after the step, same noise u

Quantization noise and ``reevaluate``: FAMO's improvement signal delta_i = log L_i(before) - log L_i(after) must
measure the parameter step, not a new draw of u. The engine saves torch's RNG state (CPU and the current CUDA
device) before the forward pass; ``reevaluate`` restores it, so the re-run draws the same u, and afterwards the
RNG is set to where the first forward left it. The engine sets it there again after ``update`` whether or not
the weighting called ``reevaluate``, so the random stream of a run (noise of later steps) is the same for every
weighting method and update mode; only what they compute from it differs. With ``compile`` the re-evaluation
runs a separately compiled no-grad graph: the same noise, values equal up to float rounding (checked on CPU).

Epochs are numbered from 1 in metrics (``epoch`` = epochs completed); LR and gamma schedules see the 0-based
index of the epoch being trained. Evaluation runs at epoch 1, every ``eval_interval`` epochs and at the last
epoch; between evaluations the last eval/* values are repeated so that every report carries the metric a
scheduler watches. The real codec (actual bpp) runs every ``codec_interval`` evaluations (0: never).
"""

from __future__ import annotations

import contextlib
import math
import random
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hpcm_tune import metrics as M
from hpcm_tune.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    architecture_fingerprint,
    iter_checkpoints,
    load_model_weights,
    save_checkpoint,
)
from hpcm_tune.config import RunConfig
from hpcm_tune.data import DataError, crop_to, eval_images, open_data, pad_to_multiple, train_loader

OnEpoch = Callable[[dict[str, float], Path], Any]
ModelFactory = Callable[[str], nn.Module]


class NonFiniteTrainingError(RuntimeError):
    """Training keeps producing non-finite losses or gradients; stopping beats reporting garbage."""


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: got {name!r}; torch.cuda.is_available() is False here (allowed: auto, cpu)")
    return torch.device(name)


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of RGB in [0, 1]: -10 log10(MSE)."""
    return -10.0 * math.log10(mse) if mse > 0 else math.inf


def ms_ssim_db(value: float) -> float:
    """MS-SSIM in dB, -10 log10(1 - MS-SSIM) (docs/design.md §5)."""
    return -10.0 * math.log10(1.0 - value) if value < 1.0 else math.inf


def ms_ssim(x_hat: torch.Tensor, x: torch.Tensor) -> float:
    """MS-SSIM on RGB in [0, 1] (pytorch_msssim, CompressAI's dependency) of one whole image.

    Five scales need the short side > 16 (win_size - 1); small images get the largest odd window that fits
    (11 from 161 px up, 3 from 33 px). Below 33 px five scales are impossible and SSIM is used, with a warning.
    """
    from pytorch_msssim import ms_ssim as _ms_ssim
    from pytorch_msssim import ssim as _ssim

    side = min(x.shape[-2:])
    win = 11
    while win > 3 and side <= (win - 1) * 16:
        win -= 2
    if side <= (win - 1) * 16:
        warnings.warn(f"image of {side} px is too small for MS-SSIM; reporting SSIM", stacklevel=2)
        return float(_ssim(x_hat.float(), x.float(), data_range=1.0, win_size=min(win, side - (1 - side % 2))))
    return float(_ms_ssim(x_hat.float(), x.float(), data_range=1.0, win_size=win))


def flat_colour_psnr(x: torch.Tensor) -> float:
    """PSNR of an image (1x3xHxW in [0, 1]) against itself replaced by its mean colour: what a code that says
    nothing about the picture but its average colour reaches (hpcm_tune.metrics.is_collapsed)."""
    flat = x.mean(dim=(-2, -1), keepdim=True)
    return psnr_from_mse(float((x - flat).pow(2).mean()))


def _default_model_factory(preset: str) -> nn.Module:
    from hpcm_tune.models import build_model

    return build_model(preset)


# --- random state ------------------------------------------------------------------------------------------


def _torch_rng(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_torch_rng(state: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _rng_state(device: torch.device) -> dict[str, Any]:
    """Every global random state, as tensors and plain containers (loadable with weights_only=True)."""
    np_state = np.random.get_state(legacy=False)
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)), "pos": np_state["state"]["pos"],
                  "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]},
        "python": {"version": py_version, "internal": list(py_internal), "gauss": py_gauss},
    }


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": int(n["pos"])},
                         "has_gauss": int(n["has_gauss"]), "gauss": float(n["gauss"])})
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --- the engine --------------------------------------------------------------------------------------------


class Engine:
    """Trains one configuration. ``Engine(config)``; ``engine.restore(checkpoint_dir)`` (optional);
    ``engine.run(on_epoch)`` trains the remaining epochs and after each calls
    ``on_epoch(metrics, checkpoint_dir)`` with the metrics of hpcm_tune.metrics and the checkpoint just written.

    ``workdir``: where checkpoints go (``workdir/checkpoints/epoch_NNNNNN``; default a new temporary folder).
    ``model_factory``: preset name -> model (default hpcm_tune.models.build_model); tests may inject a fake.
    ``keep_checkpoints``: how many checkpoint directories to keep (the previous one is the fallback of a
    corrupt latest).
    """

    def __init__(self, config: RunConfig, workdir: str | Path | None = None,
                 model_factory: ModelFactory | None = None, keep_checkpoints: int = 2) -> None:
        from hpcm_tune.objectives import build_objective
        from hpcm_tune.optim import build_optimizer
        from hpcm_tune.schedules import make_state
        from hpcm_tune.weighting import build_weighting

        self.config = config
        self.device = resolve_device(config.run.device)
        cuda = self.device.type == "cuda"
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="hpcm-run-"))
        self.checkpoint_root = self.workdir / "checkpoints"
        self.keep_checkpoints = keep_checkpoints
        if config.run.amp and not cuda:
            warnings.warn("amp (bf16 autocast) is for CUDA; training in float32 on the CPU", stacklevel=2)
        self.amp = config.run.amp and cuda
        self.channels_last = config.run.channels_last and cuda

        # Data first: a missing or empty folder, or a test set none of whose images decodes, fails before a model
        # is built (not at the first evaluation, an epoch later).
        self.train_source, self.test_source = open_data(config.data.data)
        self.test_source = self.test_source.subset(config.data.eval_max_images)
        if not any(True for _ in eval_images(self.test_source)):
            raise DataError(f"data: {config.data.data!r}: none of the {len(self.test_source)} test image(s) can be "
                            f"read ({', '.join(map(str, self.test_source.names[:3]))}); evaluation needs at least one")

        seed_everything(config.run.seed)  # model initialisation is a function of the seed
        self.model = (model_factory or _default_model_factory)(config.model.preset).to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if config.run.compile else self.model
        self.pad_multiple = int(getattr(self.model, "pad_multiple", 64))

        o = config.objective
        # Every objective accepts decomposition (only hierarchical splits by it), so no branching on the name.
        self.objective = build_objective(o.name, o.lmbda, distortion=o.distortion, decomposition=o.decomposition)
        self.task_names = tuple(self.objective.task_names)
        self.weighting = build_weighting(config.weighting.name, self.task_names, config.weighting)
        self.gamma_state = make_state(config.schedule.gamma_strategy)
        self.optimizer = build_optimizer(config.optimizer.name, self.model.parameters(), config.optimizer.lr)
        self.architecture = architecture_fingerprint(self.model.state_dict())
        self.restored = False  # a run restored from its own checkpoint never reads init_from again
        self.warm_started_from: Path | None = None

        self.loader, self.sampler = train_loader(self.train_source, config.data, config.run.seed,
                                                 config.run.steps_per_epoch, pin_memory=cuda)
        self.epoch = 0  # epochs completed
        self.step = 0  # optimizer steps taken
        self.skipped_steps = 0
        self.consecutive_nonfinite = 0
        self.evaluations = 0
        self.last_eval: dict[str, float] = {}
        self.data_wait_s = 0.0  # time spent waiting for batches (bench/engine.py reads it)
        self.step_s = 0.0

    # --- one step ----------------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with self._autocast():
            out = self.forward(x)
        # The objective runs in float32: rates from bf16 likelihoods would be far too coarse.
        out = {"x_hat": out["x_hat"].float(),
               "likelihoods": {k: v.float() for k, v in out["likelihoods"].items()}}
        return self.objective(out, x)

    def train_step(self, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """One optimizer step on batch x; returns the detached objective terms, or None if skipped."""
        model, device = self.model, self.device
        model.train()
        before = _torch_rng(device)
        losses = self._losses(x)
        task_losses = {t: losses[t] for t in self.task_names}
        warming_up = self.weighting_warming_up
        # Weighting warm-up: the plain R-D loss; the weighting neither weighs nor adapts until it ends.
        if warming_up:
            loss = losses["loss"]
            with torch.no_grad():  # only records the losses behind scale_contributions(): same metrics every epoch
                self.weighting.loss(task_losses)
        else:
            loss = self.weighting.loss(task_losses)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.optimizer.clip_max_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else math.inf)
        if not bool(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)):  # the step's one host sync
            self.optimizer.zero_grad(set_to_none=True)
            self.skipped_steps += 1
            self.consecutive_nonfinite += 1
            if self.consecutive_nonfinite >= self.config.run.max_nonfinite:
                raise NonFiniteTrainingError(
                    f"{self.consecutive_nonfinite} consecutive steps with a non-finite loss or gradient norm "
                    f"(epoch {self.epoch + 1}, step {self.step}, loss {float(loss.detach()):g}, grad norm "
                    f"{float(grad_norm):g}); try a lower lr or lambda (max_nonfinite={self.config.run.max_nonfinite})"
                )
            return None
        self.consecutive_nonfinite = 0
        self.optimizer.step()
        self.step += 1
        after = _torch_rng(device)
        detached = {t: v.detach() for t, v in task_losses.items()}

        def reevaluate() -> dict[str, torch.Tensor]:
            # The same batch after the step with the same quantization noise (restore the RNG of the forward).
            _set_torch_rng(before, device)
            try:
                with torch.no_grad():
                    again = self._losses(x)
            finally:
                _set_torch_rng(after, device)
            return {t: again[t].detach() for t in self.task_names}

        if not warming_up:
            self.weighting.update(detached, reevaluate)
        _set_torch_rng(after, device)  # the run's random stream never depends on whether reevaluate ran
        return {k: v.detach() for k, v in losses.items()}

    @property
    def weighting_warming_up(self) -> bool:
        """True during the first ``weighting_warmup_epochs`` epochs (trained on the plain R-D loss)."""
        return self.epoch < self.config.weighting.warmup_epochs

    # --- warm start --------------------------------------------------------------------------------------

    def warm_start(self) -> Path:
        """Load the model weights of ``init_from`` (its newest readable checkpoint); the optimizer, the weighting
        and the schedules keep their fresh state. Returns the checkpoint directory used."""
        source = self.config.model.init_from
        if source is None:
            raise ValueError("init_from: not set; nothing to warm-start from")
        weights, used = load_model_weights(source, self.config.model.preset, self.architecture)
        self.model.load_state_dict(weights)
        self.warm_started_from = used
        return used

    # --- one epoch ---------------------------------------------------------------------------------------

    def _train_epoch(self, epoch_index: int) -> dict[str, float]:
        import time

        self.sampler.set_epoch(epoch_index)
        sums: dict[str, torch.Tensor] = {}
        keys = tuple(dict.fromkeys(("loss", "bpp", "mse", *M.TASKS, *self.task_names)))
        count = 0
        clock = time.perf_counter()
        for batch in self.loader:
            start = time.perf_counter()
            self.data_wait_s += start - clock
            x = batch.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            terms = self.train_step(x)
            if terms is not None:
                count += 1
                for key in keys:
                    if key in terms:
                        sums[key] = sums.get(key, 0.0) + terms[key].float()
                sums["psnr"] = sums.get("psnr", 0.0) - 10.0 * torch.log10(terms["mse"].float())
            clock = time.perf_counter()
            self.step_s += clock - start
        if count == 0:
            raise NonFiniteTrainingError(f"every step of epoch {epoch_index + 1} was skipped (non-finite loss or "
                                         f"gradient); stopping instead of reporting garbage")
        means = {k: float(v) / count for k, v in sums.items()}
        out = {M.TRAIN_LOSS: means["loss"], M.TRAIN_PSNR: means["psnr"], M.TRAIN_BPP: means["bpp"],
               M.TRAIN_SKIPPED_STEPS: float(self.skipped_steps)}
        for task in keys[3:]:
            if task in means:
                out[M.train_task_name(task)] = means[task]
        self._epoch_task_means = {t: means[t] for t in M.TASKS if t in means}
        out[M.TRAIN_LAMBDA_EFF] = self._lambda_eff({t: means[t] for t in self.task_names}, means["loss"],
                                                   means["bpp"])
        return out

    def _lambda_eff(self, task_means: Mapping[str, float], loss: float, bpp: float) -> float:
        """lambda_eff at the epoch's mean task losses (hpcm_tune.metrics.effective_lambda); lambda itself
        while the weighting warms up (the plain loss is trained then)."""
        lmbda = self.config.objective.lmbda
        if self.weighting_warming_up:
            return lmbda
        coefficients = self.weighting.coefficients(task_means)
        return M.effective_lambda(lmbda, coefficients, dict(task_means), loss - bpp, bpp)

    # --- evaluation --------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, codec: bool = False) -> dict[str, float]:
        """eval/* on the whole test images (padded to pad_multiple, cropped back); per image, then averaged."""
        from hpcm_tune.objectives import RATE_KEYS

        model = self.model
        model.eval()
        rows: list[dict[str, float]] = []
        per_image: dict[str, float] = {}
        images = list(eval_images(self.test_source))
        for name, x in images:
            x = x.to(self.device)
            padded, pad = pad_to_multiple(x, self.pad_multiple)
            with self._autocast():
                out = model(padded)  # not the compiled forward: every image size would recompile it
            x_hat = crop_to(out["x_hat"].float(), pad).clamp(0.0, 1.0)
            terms = self.objective({"x_hat": x_hat, "likelihoods": {k: v.float() for k, v in
                                                                     out["likelihoods"].items()}}, x)
            mse = float(terms["mse"])
            row = {M.EVAL_LOSS: float(terms["loss"]), M.EVAL_PSNR: psnr_from_mse(mse),
                   M.EVAL_MS_SSIM_DB: ms_ssim_db(ms_ssim(x_hat, x)), M.EVAL_BPP: float(terms["bpp"]),
                   M.EVAL_BPP_Z: float(terms[RATE_KEYS["z"]])}
            for scale in M.SCALES:
                row[M.EVAL_BPP_SCALE[scale]] = float(terms[RATE_KEYS[f"y_{scale}"]])
            row[M.EVAL_FLAT_PSNR] = flat_colour_psnr(x)
            rows.append(row)
            image = Path(name).name  # a file's name, not its folder: the same image in every experiment
            per_image[M.eval_image_metric(image, "psnr")] = row[M.EVAL_PSNR]
            per_image[M.eval_image_metric(image, "bpp")] = row[M.EVAL_BPP]
        if not rows:
            raise RuntimeError("no test image could be read for evaluation")
        result = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        if not math.isfinite(result[M.EVAL_LOSS]):
            raise NonFiniteTrainingError(f"evaluation loss is {result[M.EVAL_LOSS]} at epoch {self.epoch}")
        result.update(per_image)
        result[M.EVAL_Y_SHARE] = M.y_rate_share(result[M.EVAL_BPP], result[M.EVAL_BPP_Z])
        result[M.EVAL_COLLAPSED] = float(M.is_collapsed(result[M.EVAL_Y_SHARE], result[M.EVAL_PSNR],
                                                        result[M.EVAL_FLAT_PSNR]))
        if codec:
            result[M.EVAL_ACTUAL_BPP] = self.actual_bpp(x for _, x in images)
        model.train()
        return result

    @torch.no_grad()
    def actual_bpp(self, images: Iterable[torch.Tensor]) -> float:
        """Mean over images of (bitstream bytes * 8) / pixels from the real codec (model.compress)."""
        model = self.model
        model.eval()
        model.update(force=True)
        values = []
        for x in images:
            padded, _ = pad_to_multiple(x.to(self.device), self.pad_multiple)
            encoded = model.compress(padded)
            nbytes = sum(len(s) for part in encoded["strings"] for s in part)
            values.append(8.0 * nbytes / (x.shape[-2] * x.shape[-1]))
        return sum(values) / len(values)

    def _should_evaluate(self, epoch: int) -> bool:
        return epoch == 1 or epoch % self.config.run.eval_interval == 0 or epoch == self.config.run.epochs

    # --- the run -----------------------------------------------------------------------------------------

    def run(self, on_epoch: OnEpoch | None = None) -> dict[str, float]:
        """Train the remaining epochs; after each, checkpoint and call ``on_epoch(metrics, checkpoint_dir)``.
        Returns the last epoch's metrics (empty if nothing was left to train)."""
        from hpcm_tune.schedules import gamma_multipliers

        config = self.config
        total = config.run.epochs
        if config.model.init_from is not None and self.epoch == 0 and not self.restored \
                and self.warm_started_from is None:
            self.warm_start()
        metrics: dict[str, float] = {}
        while self.epoch < total:
            index = self.epoch  # 0-based index of the epoch being trained
            for group in self.optimizer.param_groups:
                group["lr"] = config.optimizer.lr_at(index, total)
            multipliers = gamma_multipliers(config.schedule.gamma_strategy, index, total, state=self.gamma_state)
            self.weighting.set_gamma_multipliers(multipliers)
            metrics = self._train_epoch(index)
            if self.gamma_state is not None:
                self.gamma_state.record(self._epoch_task_means)
            self.epoch = index + 1
            metrics[M.EPOCH] = self.epoch
            metrics.update({M.weight_name(t): float(v) for t, v in self.weighting.weights().items()})
            metrics.update({M.SCALE_CONTRIB[s]: float(v) for s, v in self.weighting.scale_contributions().items()})
            metrics.update({M.GAMMA[s]: float(v) for s, v in self.weighting.gammas().items()})
            if self._should_evaluate(self.epoch):
                interval = config.run.codec_interval
                codec = interval > 0 and self.evaluations % interval == 0
                self.evaluations += 1
                fresh = self.evaluate(codec=codec)
                if M.EVAL_ACTUAL_BPP not in fresh and M.EVAL_ACTUAL_BPP in self.last_eval:
                    fresh[M.EVAL_ACTUAL_BPP] = self.last_eval[M.EVAL_ACTUAL_BPP]
                self.last_eval = fresh
            metrics.update(self.last_eval)
            checkpoint_dir = self.save()
            if on_epoch is not None:
                on_epoch(dict(metrics), checkpoint_dir)
        return metrics

    # --- checkpoints -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        config = self.config
        return {
            "format": FORMAT_VERSION,
            "preset": config.model.preset,
            "architecture": self.architecture,
            "config": config.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_schedule": {"name": config.optimizer.lr_schedule, "epochs": config.run.epochs,
                            "last_lr": float(self.optimizer.param_groups[0]["lr"])},
            "weighting": self.weighting.state_dict(),
            "gamma_schedule": self.gamma_state.state_dict() if self.gamma_state is not None else None,
            "rng": {**_rng_state(self.device), "data": self.sampler.state_dict()},
            "counters": {"skipped_steps": self.skipped_steps, "consecutive_nonfinite": self.consecutive_nonfinite,
                         "evaluations": self.evaluations, "last_eval": dict(self.last_eval)},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.weighting.load_state_dict(state["weighting"])
        if self.gamma_state is not None and state.get("gamma_schedule") is not None:
            self.gamma_state.load_state_dict(state["gamma_schedule"])
        self.sampler.load_state_dict(state["rng"]["data"])
        _set_rng_state(state["rng"], self.device)
        counters = state["counters"]
        self.skipped_steps = int(counters["skipped_steps"])
        self.consecutive_nonfinite = int(counters["consecutive_nonfinite"])
        self.evaluations = int(counters["evaluations"])
        self.last_eval = {k: float(v) for k, v in counters["last_eval"].items()}
        self.epoch, self.step = int(state["epoch"]), int(state["step"])

    def save(self) -> Path:
        """Write this epoch's checkpoint (atomically) and return its directory."""
        return save_checkpoint(self.state_dict(), self.checkpoint_root, self.epoch, keep=self.keep_checkpoints)

    def restore(self, checkpoint_dir: str | Path) -> Path:
        """Continue from a checkpoint directory, or the newest readable one of a root of them (an unreadable
        one falls back to the previous with a warning). Returns the directory used."""
        problems: list[str] = []
        try:
            for state, used, _ in iter_checkpoints(checkpoint_dir, self.config.model.preset):
                try:
                    self.load_state_dict(state)
                except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as error:
                    # Readable but not a state of this run (keys missing, shapes of another model): an older
                    # checkpoint may still be good; the next candidate overwrites whatever this one half-loaded.
                    problem = f"{used}: {type(error).__name__}: {str(error).splitlines()[0][:300]}"
                    problems.append(problem)
                    warnings.warn(f"checkpoint {problem} does not load into this run; trying an older one",
                                  stacklevel=2)
                    continue
                self.restored = True
                return used
        except CheckpointError as error:
            if not problems:
                raise
            raise CheckpointError(f"{error}; and these do not load into this run: {'; '.join(problems)}") from None
        raise CheckpointError("no checkpoint loads into this run: " + "; ".join(problems))


__all__ = ["Engine", "NonFiniteTrainingError", "flat_colour_psnr", "ms_ssim", "ms_ssim_db", "psnr_from_mse",
           "resolve_device"]
