"""HPCM: Hierarchical Progressive Context Model for learned image compression (Li et al., ICCV 2025,
arXiv 2507.19125). Written from the paper and docs/design.md §2; the official code (lyq133/LIC-HPCM) was read for
structure and parameter counts only.

    y = g_a(x)            z = h_a(y)            z_hat = round(z - mu_z) + mu_z      (mu_z = means_hyper)
    (sigma_h, mu_h) = h_s(z_hat)
    for each of the 11 steps k (2 at s1, 3 at s2, 6 at s3):
        psi_k = prior(adaptor_k([C, y_hat_so_far]) * a_k)   (step 0 of s1: psi_0 = (sigma_h, mu_h))
        (sigma_k, mu_k) = psi_k;  y_hat[step k] = round(y - mu_k) + mu_k
        C = WindowCrossAttn(q = psi_k, kv = C) + W_o psi_k                (progressive context fusion)
    between scales C is scattered to the finer grid, the hyperprior (sigma_h, mu_h) fills the new positions
    (gathered at exactly those positions), then a 1x1 context_net.
    x_hat = g_s(y_hat)

Rates: -log2 P(y_hat - mu | sigma) under a zero-mean generalized Gaussian (beta = 1.5), and for z a per-channel
GG around the learnable means_hyper with learnable scales_hyper. The y likelihoods are returned split by the
scale whose steps coded them ("y_s1", "y_s2", "y_s3"), an exact partition of y.

One routine (:meth:`HPCM._hierarchy`) runs the 11 steps for the forward pass, the encoder and the decoder,
with only the per-step quantize/code action differing, so all three compute bit-identical entropy parameters.
"""

from __future__ import annotations

import contextlib
import operator
import zlib
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from compressai.ans import BufferedRansEncoder
from compressai.models import CompressionModel
from compressai.models.utils import update_registered_buffers
from compressai.ops import compute_padding
from torch import nn

from hpcm_tune.metrics import LIKELIHOOD_KEYS
from hpcm_tune.models import bitstream
from hpcm_tune.models import context as ctxmod
from hpcm_tune.models.entropy import ChannelGGConditional, GeneralizedGaussianConditional, default_scale_table
from hpcm_tune.models.layers import (
    PConvRB,
    SpatialPrior,
    WindowCrossAttention,
    conv1x1,
    conv2x2_down,
    conv4x4_down,
    deconv2x2_up,
    deconv4x4_up,
)
from hpcm_tune.models.rans import BitstreamError, RansStreamDecoder

StepFn = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_TABLE_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
# The largest image decompress() accepts, as hpcm_tune.data.MAX_IMAGE_PIXELS: the shape is the caller's (or a
# container's) claim, and the decoder allocates latents for it before reading a symbol.
MAX_IMAGE_PIXELS = 64 * 1024 * 1024


def ste_round(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity gradient (straight-through)."""
    return x + (torch.round(x) - x).detach()


def uniform_noise(x: torch.Tensor) -> torch.Tensor:
    # torch's global RNG on purpose: the engine replays a step's noise by restoring the RNG state.
    return x + torch.empty_like(x).uniform_(-0.5, 0.5)


def check_image(x: object) -> torch.Tensor:
    """Validate a model input: a finite float tensor (N, 3, H, W) with N, H, W >= 1."""
    expected = "a float tensor of shape (N, 3, H, W) with values in [0, 1]"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {expected}, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"expected {expected}, got a tensor of shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        raise ValueError(f"expected {expected}: 3 (RGB) channels, got {x.shape[1]} channels")
    if not x.is_floating_point():
        raise ValueError(f"expected {expected}, got dtype {x.dtype} (convert integer images with x.float() / 255)")
    if x.numel() == 0:
        raise ValueError(f"expected {expected}, got an empty tensor of shape {tuple(x.shape)}")
    # Data-dependent, so skipped inside torch.compile (it would split the graph); eager calls always check.
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"expected {expected}: the input contains NaN or inf")
    return x


@contextlib.contextmanager
def _deterministic_kernels():
    """Encoder and decoder must compute bit-identical entropy parameters, also in different processes: no
    cuDNN autotuning (it may pick another algorithm per process), deterministic algorithms, no TF32."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = False, True, False, False
    try:
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, matmul.allow_tf32 = saved


def _used_tables(indexes: torch.Tensor, tables: tuple[list, list, list]) -> tuple[list[int], tuple[list, ...]]:
    """Pass the coder only the CDF tables a step uses (re-indexed): converting all of them to C++ on every
    step would dominate the coding time. Encoder and decoder derive the same indexes, so both agree."""
    used, local = torch.unique(indexes, return_inverse=True)
    rows = used.tolist()
    return local.tolist(), tuple([table[r] for r in rows] for table in tables)


def _transform(layers: list[nn.Module]) -> nn.Sequential:
    return nn.Sequential(*layers)


class HPCM(CompressionModel):
    """HPCM with configurable widths (the presets in :data:`hpcm_tune.models.PRESETS` fix them).

    Args:
        widths: channels of g_a's three stages (g_s mirrors them); Base (96, 192, 384).
        transform_blocks: PConvRBs per stage of g_a (and g_s, mirrored); Base (2, 2, 4), Large (2, 2, 8).
        M: channels of y (a multiple of 8: the channel groups). N: channels of z.
        hyper_blocks: PConvRBs inside h_a and h_s (3 in the paper).
        prior_s12, prior_s3: (depth of branch_1, depth of branch_2) of the step prior networks.
        heads: attention heads of the context fusion (32); windows: window side at s1, s2, s3 (4, 8, 8).
        pad_multiple: inputs are padded to a multiple of this (64 suffices: the schedule works on latents that
            are multiples of 4, and attention windows adapt to small grids).
    """

    def __init__(
        self,
        widths: Sequence[int] = (96, 192, 384),
        transform_blocks: Sequence[int] = (2, 2, 4),
        M: int = 320,
        N: int = 256,
        hyper_blocks: int = 3,
        prior_s12: Sequence[int] = (2, 1),
        prior_s3: Sequence[int] = (3, 2),
        heads: int = 32,
        windows: Sequence[int] = (4, 8, 8),
        pad_multiple: int = 64,
        preset: str = "custom",
    ) -> None:
        super().__init__()
        self._validate(widths, transform_blocks, M, N, hyper_blocks, prior_s12, prior_s3, heads, windows, pad_multiple)
        self.preset = preset
        self.M, self.N = int(M), int(N)
        self.pad_multiple = int(pad_multiple)
        c1, c2, c3 = widths
        b1, b2, b3 = transform_blocks

        def blocks(ch: int, n: int) -> list[nn.Module]:
            return [PConvRB(ch) for _ in range(n)]

        self.g_a = _transform(
            [conv4x4_down(3, c1), *blocks(c1, b1), conv2x2_down(c1, c2), *blocks(c2, b2),
             conv2x2_down(c2, c3), *blocks(c3, b3), conv2x2_down(c3, M)]
        )
        self.g_s = _transform(
            [deconv2x2_up(M, c3), *blocks(c3, b3), deconv2x2_up(c3, c2), *blocks(c2, b2),
             deconv2x2_up(c2, c1), *blocks(c1, b1), deconv4x4_up(c1, 3)]
        )
        self.h_a = _transform([PConvRB(M), conv2x2_down(M, N), *blocks(N, hyper_blocks), conv2x2_down(N, N)])
        self.h_s = _transform(
            [deconv2x2_up(N, N), *blocks(N, hyper_blocks), deconv2x2_up(N, 2 * M), PConvRB(2 * M)]
        )

        # z - means_hyper ~ GG(scales_hyper) per channel: no EntropyBottleneck, no auxiliary loss.
        self.means_hyper = nn.Parameter(torch.zeros(1, N, 1, 1))
        self.scales_hyper = nn.Parameter(torch.ones(1, N, 1, 1))

        # 10 context steps (all but the first s1 step): an adaptor each, and a registered scaling vector a_k.
        steps = ctxmod.NUM_STEPS - 1
        self.adaptors = nn.ModuleList(conv1x1(3 * M, 3 * M) for _ in range(steps))
        self.step_scales = nn.ParameterList(nn.Parameter(torch.ones(1, 3 * M, 1, 1)) for _ in range(steps))
        self.prior_s12 = SpatialPrior(3 * M, 2 * M, *prior_s12)
        self.prior_s3 = SpatialPrior(3 * M, 2 * M, *prior_s3)
        self.attn = nn.ModuleList(WindowCrossAttention(2 * M, heads, w) for w in windows)
        self.context_net = nn.ModuleList(conv1x1(2 * M, 2 * M) for _ in range(2))

        self.y_conditional = GeneralizedGaussianConditional(None)
        self.z_conditional = ChannelGGConditional(None)
        self._fingerprint: int | None = None

    @staticmethod
    def _validate(widths, transform_blocks, M, N, hyper_blocks, prior_s12, prior_s3, heads, windows, pad_multiple):
        def bad(key, value, allowed):
            raise ValueError(f"HPCM {key}={value!r} is invalid: expected {allowed}")

        if len(tuple(widths)) != 3 or any(int(w) < 4 for w in widths):
            bad("widths", widths, "three channel counts >= 4")
        if len(tuple(transform_blocks)) != 3 or any(int(b) < 0 for b in transform_blocks):
            bad("transform_blocks", transform_blocks, "three block counts >= 0")
        if int(M) <= 0 or int(M) % ctxmod.GROUPS:
            bad("M", M, f"a positive multiple of {ctxmod.GROUPS}")
        if int(N) < 4:
            bad("N", N, "at least 4")
        if int(hyper_blocks) < 0:
            bad("hyper_blocks", hyper_blocks, "a count >= 0")
        for key, depths in (("prior_s12", prior_s12), ("prior_s3", prior_s3)):
            if len(tuple(depths)) != 2 or any(int(d) < 0 for d in depths):
                bad(key, depths, "two depths >= 0")
        if int(heads) <= 0 or (2 * int(M)) % int(heads):
            bad("heads", heads, f"a positive divisor of 2*M={2 * int(M)}")
        if len(tuple(windows)) != 3 or any(int(w) < 1 for w in windows):
            bad("windows", windows, "three window sizes >= 1")
        if int(pad_multiple) <= 0 or int(pad_multiple) % (16 * ctxmod.LATENT_MULTIPLE):
            bad("pad_multiple", pad_multiple, f"a positive multiple of {16 * ctxmod.LATENT_MULTIPLE}")

    # ------------------------------------------------------------------ the 11-step hierarchy
    def _hierarchy(self, params: torch.Tensor, step_fn: StepFn) -> tuple[torch.Tensor, ...]:
        """Run the 11 coding steps. ``step_fn(k, scales, means, mask)`` returns y_hat on step k's positions
        (zeros elsewhere) on the grid of k's scale. Returns y_hat, mu and sigma on the full latent grid."""
        b, _, h, w = params.shape
        sched = ctxmod.schedule_for(self.M, h, w, params.device)
        hyper = (None, ctxmod.to_s2_pair(params), params)
        hyper_s1 = ctxmod.to_s1_pair(hyper[1])
        context = hyper_s1
        y_hat = mu = sigma = params.new_zeros(b, self.M, h // 4, w // 4)
        priors = (self.prior_s12, self.prior_s12, self.prior_s3)
        for s in range(3):
            if s > 0:
                grow = ctxmod.from_s1 if s == 1 else ctxmod.from_s2
                grow_pair = ctxmod.from_s1_pair if s == 1 else ctxmod.from_s2_pair
                y_hat, mu, sigma = grow(y_hat), grow(mu), grow(sigma)
                # New positions of this scale take the hyperprior parameters gathered at those very positions.
                fresh = ~sched.coarser[s].repeat(1, 2, 1, 1)
                context = grow_pair(context) + torch.where(fresh, hyper[s], 0.0)
                context = self.context_net[s - 1](context)
            first = ctxmod.FIRST_STEP[s]
            for k in range(first, first + ctxmod.STEPS_PER_SCALE[s]):
                if k == 0:
                    psi = hyper_s1
                else:
                    u = self.adaptors[k - 1](torch.cat((context, y_hat), 1))
                    psi = priors[s](u, self.step_scales[k - 1])
                    if k < ctxmod.NUM_STEPS - 1:  # the last step's fused context would be unused
                        context = self.attn[s](psi, context)
                scales, means = psi.chunk(2, 1)
                mask = sched.masks[k]
                y_hat = y_hat + step_fn(k, scales, means, mask)
                mu = torch.where(mask, means, mu)
                sigma = torch.where(mask, scales, sigma)
        return y_hat, mu, sigma

    # ------------------------------------------------------------------ forward (training and evaluation)
    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        pad, unpad = compute_padding(x.shape[2], x.shape[3], min_div=self.pad_multiple)
        if any(pad):
            x = F.pad(x, pad, mode="replicate")
        return x, unpad

    def _quantize_z(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z_res = z - self.means_hyper
        scales = self.scales_hyper.expand_as(z_res)
        if self.training:
            z_hat = ste_round(z_res) + self.means_hyper
            like = self.z_conditional.likelihood(uniform_noise(z_res), scales)
        else:
            z_q = torch.round(z_res)
            z_hat = z_q + self.means_hyper
            like = self.z_conditional.likelihood(z_q, scales)
        return z_hat, like

    def forward(self, x: torch.Tensor) -> dict:
        check_image(x)
        x_pad, unpad = self._pad(x)
        y = self.g_a(x_pad)
        z = self.h_a(y)
        z_hat, z_like = self._quantize_z(z)
        params = self.h_s(z_hat)
        y2 = ctxmod.to_s2(y)
        grids = (ctxmod.to_s1(y2), y2, y)
        rounding = ste_round if self.training else torch.round

        def step(k: int, scales: torch.Tensor, means: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            y_k = grids[ctxmod.STEP_SCALE[k]]
            return torch.where(mask, rounding(y_k - means) + means, 0.0)

        y_hat, mu, sigma = self._hierarchy(params, step)
        y_res = y - mu
        y_res = uniform_noise(y_res) if self.training else torch.round(y_res)
        y_like = self.y_conditional.likelihood(y_res, sigma)
        sched = ctxmod.schedule_for(self.M, y.shape[2], y.shape[3], y.device)
        parts = (*sched.split(y_like), z_like)
        x_hat = F.pad(self.g_s(y_hat), unpad)
        if not self.training:
            x_hat = x_hat.clamp(0.0, 1.0)
        return {"x_hat": x_hat, "likelihoods": dict(zip(LIKELIHOOD_KEYS, parts, strict=True))}

    # ------------------------------------------------------------------ codec
    def update(self, scale_table=None, force: bool = False, update_quantiles: bool = False) -> bool:
        """Build the rANS CDF tables: y from a log-spaced alpha table, z from the current scales_hyper."""
        if not force and self.y_conditional._offset.numel() > 0:
            return False
        table = default_scale_table() if scale_table is None else scale_table
        self.y_conditional.update_scale_table(list(table), force=True)
        self.z_conditional.update_channels(self.scales_hyper)
        self._fingerprint = None
        return True

    def load_state_dict(self, state_dict, strict: bool = True):
        """Load weights and, whatever their sizes, the CDF tables (empty before update(), filled after)."""
        self._fingerprint = None
        for name in ("y_conditional", "z_conditional"):
            module = getattr(self, name)
            present = [b for b in _TABLE_BUFFERS if f"{name}.{b}" in state_dict]
            update_registered_buffers(module, name, present, state_dict, policy="resize")
        return super().load_state_dict(state_dict, strict=strict)

    def fingerprint(self) -> int:
        """CRC32 of every parameter and CDF table: a bitstream decodes only with the model that wrote it."""
        if self._fingerprint is None:
            crc = 0
            for t in (*self.parameters(), *self.y_conditional.buffers(), *self.z_conditional.buffers()):
                crc = zlib.crc32(t.detach().contiguous().view(torch.uint8).cpu().numpy(), crc)
            self._fingerprint = crc
        return self._fingerprint

    def _require_tables(self) -> None:
        for name, module in (("y", self.y_conditional), ("z", self.z_conditional)):
            if module._offset.numel() == 0:
                raise RuntimeError(f"the {name} entropy tables are not built: call model.update(force=True) first")

    def _tables(self, module: GeneralizedGaussianConditional) -> tuple[list, list, list]:
        return (
            module._quantized_cdf.tolist(),
            module._cdf_length.reshape(-1).int().tolist(),
            module._offset.reshape(-1).int().tolist(),
        )

    def compress(self, x: torch.Tensor) -> dict:
        """Encode each image to four byte strings: the y steps of s1, s2, s3 and z (z carries the header)."""
        with torch.no_grad(), _deterministic_kernels():
            return self._compress(x)

    def _compress(self, x: torch.Tensor) -> dict:
        check_image(x)
        self._require_tables()
        tables = self._tables(self.y_conditional)
        fp = self.fingerprint()
        out: list[list[bytes]] = [[], [], [], []]
        y_hats, z_hats = [], []
        for i in range(x.shape[0]):  # one image at a time: the decoder sees the same tensor shapes
            x_pad, _ = self._pad(x[i : i + 1])
            y = self.g_a(x_pad)
            z = self.h_a(y)
            z_q = torch.round(z - self.means_hyper)
            z_idx = self.z_conditional.channel_indexes(z_q.shape)
            z_payload = self.z_conditional.compress(z_q, z_idx)[0]
            z_hat = z_q + self.means_hyper
            params = self.h_s(z_hat)
            y2 = ctxmod.to_s2(y)
            grids = (ctxmod.to_s1(y2), y2, y)
            encoders = [BufferedRansEncoder() for _ in range(3)]

            def step(k, scales, means, mask, grids=grids, encoders=encoders):
                q = torch.round(grids[ctxmod.STEP_SCALE[k]] - means)
                symbols = q.masked_select(mask).int().tolist()
                idx = self.y_conditional.build_indexes(scales.masked_select(mask))
                indexes, step_tables = _used_tables(idx, tables)
                encoders[ctxmod.STEP_SCALE[k]].encode_with_indexes(symbols, indexes, *step_tables)
                return torch.where(mask, q + means, 0.0)

            y_hat, _, _ = self._hierarchy(params, step)
            payloads = [enc.flush() for enc in encoders]
            for s in range(3):
                out[s].append(payloads[s])
            out[3].append(bitstream.pack(fp, (int(x.shape[2]), int(x.shape[3])), z_payload, payloads))
            y_hats.append(y_hat)
            z_hats.append(z_hat)
        return {"strings": out, "shape": (int(x.shape[2]), int(x.shape[3])),
                "y_hat": torch.cat(y_hats), "z_hat": torch.cat(z_hats)}

    def _parse(self, strings, shape, i: int) -> tuple[bytes, list[bytes]]:
        """Image i's z payload and y payloads, checked by the container (hpcm_tune.models.bitstream)."""
        return bitstream.unpack(strings[3][i], [strings[s][i] for s in range(3)], self.fingerprint(), shape,
                                f"image {i}")

    def decompress(self, strings, shape) -> dict:
        """Decode the output of :meth:`compress`; ``shape`` is the original (H, W)."""
        with torch.no_grad(), _deterministic_kernels():
            return self._decompress(strings, shape)

    def _decompress(self, strings, shape) -> dict:
        # Structure and size first: nothing is allocated or decoded for a stream that fails these.
        if not isinstance(strings, list | tuple) or len(strings) != 4:
            raise BitstreamError("strings must be [s1_list, s2_list, s3_list, z_list] as compress() returns")
        if not all(isinstance(s, list | tuple) for s in strings) or len({len(s) for s in strings}) != 1:
            raise BitstreamError("the four stream lists must be lists of equal length (one entry per image)")
        if not strings[0]:
            raise BitstreamError("no image to decode: the stream lists are empty")
        try:
            h, w = (operator.index(v) for v in shape)  # ints (numpy's too), not floats or strings
        except (TypeError, ValueError):
            h = w = 0
        if h <= 0 or w <= 0:
            raise BitstreamError(f"shape must be the original (H, W) as two positive ints, got {shape!r}")
        if h * w > MAX_IMAGE_PIXELS:
            raise BitstreamError(f"shape {h}x{w} exceeds the {MAX_IMAGE_PIXELS}-pixel maximum this decoder accepts")
        self._require_tables()
        pad, unpad = compute_padding(h, w, min_div=self.pad_multiple)
        hp, wp = h + pad[2] + pad[3], w + pad[0] + pad[1]
        z_shape = (1, self.N, hp // 64, wp // 64)
        device = self.means_hyper.device
        tables = self._tables(self.y_conditional)
        z_tables = self._tables(self.z_conditional)
        x_hats, y_hats, z_hats = [], [], []
        for i in range(len(strings[0])):
            z_payload, y_payloads = self._parse(strings, (h, w), i)
            # The bounds-checked decoder, not CompressAI's: its C++ reads past the end of a forged stream.
            z_idx = self.z_conditional.channel_indexes(torch.Size(z_shape)).reshape(-1).tolist()
            z_dec = RansStreamDecoder(z_payload, f"image {i}: the z")
            z_q = torch.tensor(z_dec.decode_stream(z_idx, *z_tables), dtype=torch.float32).reshape(z_shape)
            z_dec.finish()
            z_hat = z_q.to(device) + self.means_hyper
            params = self.h_s(z_hat)
            decoders = [RansStreamDecoder(p, f"image {i}: the {name}")
                        for name, p in zip(("s1", "s2", "s3"), y_payloads, strict=True)]

            def step(k, scales, means, mask, decoders=decoders):
                idx = self.y_conditional.build_indexes(scales.masked_select(mask))
                indexes, step_tables = _used_tables(idx, tables)
                values = decoders[ctxmod.STEP_SCALE[k]].decode_stream(indexes, *step_tables)
                q = torch.zeros_like(means).masked_scatter(mask.expand_as(means),
                                                           torch.tensor(values, dtype=means.dtype, device=device))
                return torch.where(mask, q + means, 0.0)

            y_hat, _, _ = self._hierarchy(params, step)
            for dec in decoders:
                dec.finish()
            x_hats.append(F.pad(self.g_s(y_hat), unpad).clamp(0.0, 1.0))
            y_hats.append(y_hat)
            z_hats.append(z_hat)
        return {"x_hat": torch.cat(x_hats), "y_hat": torch.cat(y_hats), "z_hat": torch.cat(z_hats)}
