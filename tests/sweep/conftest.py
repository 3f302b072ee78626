"""This folder on the import path of the test process and of the Ray workers it starts (PYTHONPATH is inherited
by the Ray processes a test launches, local or a simulated cluster), so a trial can import the engines the tests
register (``sweep_probes``' probe engine, ``fake_engine``'s fake one) by their ``module:attribute`` path."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)
_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
if HERE not in _paths:
    os.environ["PYTHONPATH"] = os.pathsep.join([HERE, *_paths])
