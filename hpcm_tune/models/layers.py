"""Building blocks of HPCM's transforms and context model (Li et al., "Learned Image Compression with
Hierarchical Progressive Context Modeling", ICCV 2025, arXiv 2507.19125, §3 and Fig. 2).

The transforms use no GDN and no attention: only partial-convolution residual blocks (PConvRB). The context
model uses depthwise residual blocks (DWConvRB) and a windowed cross-attention cell that fuses the entropy
parameters of the current step (the query) into the progressive context C (keys and values).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1)


def conv4x4_down(in_ch: int, out_ch: int) -> nn.Conv2d:
    """Stride-2 4x4 convolution (the first layer of g_a)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)


def conv2x2_down(in_ch: int, out_ch: int) -> nn.Conv2d:
    """Stride-2 2x2 convolution (patch merging)."""
    return nn.Conv2d(in_ch, out_ch, kernel_size=2, stride=2)


def deconv2x2_up(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)


def deconv4x4_up(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    """Stride-2 4x4 transposed convolution (the last layer of g_s)."""
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)


class PConvRB(nn.Module):
    """Partial-convolution residual block: x + W2 · LeakyReLU(W1 · [conv3x3(x[:C/r]), x[C/r:]]).

    Only the first C/r channels see a spatial 3x3 kernel (FasterNet-style partial convolution); the two
    1x1 convolutions form an MLP with expansion ``mlp_ratio``.
    """

    def __init__(self, channels: int, mlp_ratio: int = 4, partial_ratio: int = 4) -> None:
        super().__init__()
        self.partial = channels // partial_ratio
        if self.partial < 1:
            raise ValueError(f"PConvRB channels={channels} is smaller than partial_ratio={partial_ratio}")
        self.spatial = nn.Conv2d(self.partial, self.partial, kernel_size=3, padding=1)
        self.expand = conv1x1(channels, channels * mlp_ratio)
        self.act = nn.LeakyReLU(inplace=True)
        self.project = conv1x1(channels * mlp_ratio, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head, tail = x[:, : self.partial], x[:, self.partial :]
        out = torch.cat((self.spatial(head), tail), dim=1)
        return x + self.project(self.act(self.expand(out)))


class DWConvRB(nn.Module):
    """Depthwise residual block: x + W2 · LeakyReLU(W1 · dwconv3x3(x)), expansion 2."""

    def __init__(self, channels: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels)
        self.expand = conv1x1(channels, channels * mlp_ratio)
        self.act = nn.LeakyReLU(inplace=True)
        self.project = conv1x1(channels * mlp_ratio, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.act(self.expand(self.depthwise(x))))


def _blocks(block: type[nn.Module], channels: int, count: int) -> list[nn.Module]:
    return [block(channels) for _ in range(count)]


class SpatialPrior(nn.Module):
    """The entropy-parameter network of a step: psi = branch_2(branch_1(u) * a_k), u = adaptor_k(...).

    ``a_k`` is the step's learned channel-wise scaling vector (a registered parameter of the model), which
    lets one shared network serve several coding steps.
    """

    def __init__(self, channels: int, out_channels: int, depth_1: int, depth_2: int) -> None:
        super().__init__()
        self.branch_1 = nn.Sequential(*_blocks(DWConvRB, channels, depth_1))
        self.branch_2 = nn.Sequential(*_blocks(DWConvRB, channels, depth_2), conv1x1(channels, out_channels))

    def forward(self, u: torch.Tensor, a_k: torch.Tensor) -> torch.Tensor:
        return self.branch_2(self.branch_1(u) * a_k)


class WindowCrossAttention(nn.Module):
    """Progressive context fusion: C_next = WindowAttn(q = W_q psi, k = W_k C, v = W_v C) + W_o psi.

    Attention runs inside non-overlapping ``window`` x ``window`` windows of the current grid. A grid that is
    not a multiple of the window (small images) is zero-padded to one and the padded keys are masked out, so
    any grid size works and the result on the real positions does not depend on the padding.
    """

    def __init__(self, channels: int, heads: int, window: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention channels={channels} must be divisible by heads={heads}")
        self.heads = heads
        self.window = window
        self.q = conv1x1(channels, channels)
        self.k = conv1x1(channels, channels)
        self.v = conv1x1(channels, channels)
        self.out = conv1x1(channels, channels)

    def _windows(self, t: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
        # (B, C, H, W) -> (B * nH * nW, heads, wh * ww, C / heads)
        b, c, h, w = t.shape
        t = t.reshape(b, self.heads, c // self.heads, h // wh, wh, w // ww, ww)
        t = t.permute(0, 3, 5, 1, 4, 6, 2)
        return t.reshape(b * (h // wh) * (w // ww), self.heads, wh * ww, c // self.heads)

    def forward(self, psi: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = psi.shape
        wh, ww = min(self.window, h), min(self.window, w)
        ph, pw = -h % wh, -w % ww
        q, k, v = self.q(psi), self.k(context), self.v(context)
        mask = None
        if ph or pw:
            q, k, v = (F.pad(t, (0, pw, 0, ph)) for t in (q, k, v))
            # Keys at padded positions take no part (coordinate test, no stored mask).
            valid = torch.zeros(1, 1, h + ph, w + pw, dtype=torch.bool, device=psi.device)
            valid[..., :h, :w] = True
            mask = self._windows(valid.expand(1, self.heads, -1, -1).float(), wh, ww)[..., 0] > 0.5
            mask = mask[:, :1, None, :].repeat(b, 1, 1, 1)  # (B*nW, 1, 1, keys)
        hp, wp = h + ph, w + pw
        qw, kw, vw = (self._windows(t, wh, ww) for t in (q, k, v))
        attn = F.scaled_dot_product_attention(qw, kw, vw, attn_mask=mask, scale=1.0 / math.sqrt(c // self.heads))
        d = c // self.heads
        attn = attn.reshape(b, hp // wh, wp // ww, self.heads, wh, ww, d).permute(0, 3, 6, 1, 4, 2, 5)
        attn = attn.reshape(b, c, hp, wp)[..., :h, :w]
        return attn + self.out(psi)
