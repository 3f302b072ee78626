"""tune.py's command line with the fake engine (fake_engine.FakeEngine) instead of the real one, for the tests
that run a sweep's driver as a subprocess (to kill it, or to see its exit) and for ``bench/sweep.py``:

    python tests/sweep/fake_tune.py --space FILE --storage DIR ...    # same flags as tune.py

A ``--resume`` continues with the engine the experiment recorded ("fake" for a sweep started here).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
for folder in (ROOT, HERE):  # fake_engine, and hpcm_tune where the project is not installed (as tune.py finds it)
    if folder not in sys.path:
        sys.path.insert(0, folder)

import fake_engine  # noqa: E402  (registers the engine and puts this folder on the Ray workers' PYTHONPATH)

from hpcm_tune.sweep import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli.main(engine=fake_engine.NAME))
