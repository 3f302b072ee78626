"""Analysis of sweep results on disk: BD-rate, tidy tables, ablation tables and figures (docs/design.md §7-§8).

Reads Ray Tune experiment directories as plain JSON/CSV files (no Ray cluster, nothing unpickled).
"""

from hpcm_tune.analysis.bd import BD_METHODS, BDError, BDOverlapWarning, bd_psnr, bd_rate

__all__ = ["BD_METHODS", "BDError", "BDOverlapWarning", "bd_psnr", "bd_rate"]
