"""Compress a photo with HPCM end to end and print its rate and quality.

    python -m hpcm_tune.demo                       # scikit-image's astronaut, tiny preset, CPU
    python -m hpcm_tune.demo --preset small --device cuda

The model is randomly initialised (no weights are downloaded), so the numbers show the pipeline working, not
HPCM's compression performance: an untrained model spends almost no bits and reconstructs a blur.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from hpcm_tune.models import PRESETS, build_model


def load_astronaut() -> torch.Tensor:
    """scikit-image's bundled astronaut (512x512 RGB) as a (1, 3, H, W) float tensor in [0, 1] (offline)."""
    import skimage.data

    return torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 255.0


def psnr(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    mse = torch.mean((x - x_hat) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def run(preset: str = "tiny", device: str = "cpu", seed: int = 0) -> dict[str, float]:
    torch.manual_seed(seed)
    model = build_model(preset).to(device).eval()
    model.update(force=True)
    x = load_astronaut().to(device)
    pixels = x.shape[2] * x.shape[3]
    with torch.no_grad():
        out = model(x)
    est_bits = {k: float(-torch.log2(v).sum()) for k, v in out["likelihoods"].items()}
    start = time.perf_counter()
    enc = model.compress(x)
    t_enc = time.perf_counter() - start
    start = time.perf_counter()
    dec = model.decompress(enc["strings"], enc["shape"])
    t_dec = time.perf_counter() - start
    stream_bytes = [len(s[0]) for s in enc["strings"]]
    return {
        "bpp_estimated": sum(est_bits.values()) / pixels,
        "bpp_actual": sum(stream_bytes) * 8 / pixels,
        **{f"bpp_{k}": v / pixels for k, v in est_bits.items()},
        "psnr_db": psnr(x, dec["x_hat"]),
        "psnr_forward_db": psnr(x, out["x_hat"]),
        "encode_s": t_enc,
        "decode_s": t_dec,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "bit_exact": float(torch.equal(enc["y_hat"], dec["y_hat"])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=list(PRESETS))
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    r = run(args.preset, args.device, args.seed)
    print(f"HPCM {args.preset} ({r['parameters_m']:.2f} M parameters, randomly initialised) on astronaut 512x512")
    print(f"  bpp estimated {r['bpp_estimated']:.4f}  (y_s1 {r['bpp_y_s1']:.4f}, y_s2 {r['bpp_y_s2']:.4f}, "
          f"y_s3 {r['bpp_y_s3']:.4f}, z {r['bpp_z']:.4f})")
    print(f"  bpp actual    {r['bpp_actual']:.4f}  (rANS bitstream, 4 streams)")
    print(f"  PSNR          {r['psnr_db']:.2f} dB  (decoded; eval forward {r['psnr_forward_db']:.2f} dB)")
    print(f"  encode {r['encode_s']:.2f} s, decode {r['decode_s']:.2f} s, "
          f"y_hat bit-exact: {'yes' if r['bit_exact'] else 'NO'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
