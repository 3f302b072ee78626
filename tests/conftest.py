"""Suite-wide settings: one torch thread per test process (the tiny models are overhead-bound, and on a
2-core CI machine two spinning threads per process only fight Ray's workers), no Ray usage stats, W&B offline,
a cache folder of the suite's own."""

import os
import tempfile

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Reference-codec points (hpcm_tune.reference) are cached here, never in the user's ~/.cache.
os.environ.setdefault("HPCM_TUNE_CACHE", tempfile.mkdtemp(prefix="hpcm-tune-test-cache-"))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
