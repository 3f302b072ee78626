#!/usr/bin/env python
"""Run a hyperparameter sweep of HPCM training on Ray Tune: `python tune.py --help`.

With no arguments: the default sweep (search_spaces/default.yaml), then a table of the best trials and the path
of the results. The service lives in hpcm_tune.sweep; this file only hands the command line over.
"""

import sys

from hpcm_tune.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
