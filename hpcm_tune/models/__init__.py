"""HPCM models: the one preset table and the constructor the rest of the project uses.

    from hpcm_tune.models import PRESETS, build_model
    model = build_model("tiny")                      # any preset; overrides are HPCM constructor arguments
    out = model(x)                                   # {"x_hat", "likelihoods": {"y_s1", "y_s2", "y_s3", "z"}}
    model.update(force=True); enc = model.compress(x); model.decompress(enc["strings"], enc["shape"])
"""

from __future__ import annotations

import inspect
import warnings

# CompressAI 1.2.8 scripts a helper with torch.jit.script at import, and torch 2.14 warns that it is deprecated:
# one FutureWarning in every process (each sweep trial) that users cannot act on. Silenced exactly there.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    import compressai.entropy_models  # noqa: F401  (the import that raises it)

from hpcm_tune.models.hpcm import HPCM, BitstreamError, check_image  # noqa: E402

# The one table of model sizes: name -> HPCM constructor arguments. base and large are the paper's models
# (68.50 M and 89.71 M parameters, Table 1); tiny and small are ours, for CPU tests and quick sweeps.
PRESETS: dict[str, dict] = {
    "tiny": dict(widths=(16, 32, 48), transform_blocks=(1, 1, 1), M=32, N=32, hyper_blocks=1,
                 prior_s12=(1, 0), prior_s3=(1, 0), heads=4, windows=(4, 8, 8)),
    "small": dict(widths=(64, 128, 192), transform_blocks=(1, 2, 2), M=160, N=128, hyper_blocks=2,
                  prior_s12=(1, 1), prior_s3=(2, 1), heads=16, windows=(4, 8, 8)),
    "base": dict(widths=(96, 192, 384), transform_blocks=(2, 2, 4), M=320, N=256, hyper_blocks=3,
                 prior_s12=(2, 1), prior_s3=(3, 2), heads=32, windows=(4, 8, 8)),
    "large": dict(widths=(96, 192, 384), transform_blocks=(2, 2, 8), M=320, N=256, hyper_blocks=3,
                  prior_s12=(2, 2), prior_s3=(4, 3), heads=32, windows=(4, 8, 8)),
}

_ARGS = tuple(p for p in inspect.signature(HPCM.__init__).parameters if p not in ("self", "preset"))


def build_model(preset: str, **overrides) -> HPCM:
    """Construct HPCM from a preset name; ``overrides`` replace individual constructor arguments."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; valid: {', '.join(PRESETS)}")
    unknown = sorted(set(overrides) - set(_ARGS))
    if unknown:
        raise ValueError(f"unknown model override(s) {', '.join(unknown)}; valid: {', '.join(_ARGS)}")
    return HPCM(**{**PRESETS[preset], **overrides}, preset=preset)


__all__ = ["PRESETS", "HPCM", "BitstreamError", "build_model", "check_image"]
