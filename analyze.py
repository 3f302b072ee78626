"""Analyze sweep results: `python analyze.py [EXPERIMENT_DIR ...] [--out DIR] [--baseline LABEL|KEY=VALUE]`.

Thin entry point; the work is in hpcm_tune.analysis (see `python analyze.py --help`).
"""

from hpcm_tune.analysis.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
