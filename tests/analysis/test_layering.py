"""The analysis reads experiment directories without Ray and without the sweep package: both take the directory's
names from hpcm_tune.experiment (docs/architecture.md, "Analysis"). Checked in a fresh interpreter, since this test
process may have imported Ray for other tests."""

import json
import subprocess
import sys

import pytest

ANALYSIS = ("hpcm_tune.analysis", "hpcm_tune.analysis.cli", "hpcm_tune.analysis.report", "hpcm_tune.analysis.search",
            "hpcm_tune.analysis.results")
# read by the sweep and the analysis alike
CONTRACTS = ("hpcm_tune.experiment", "hpcm_tune.sweep_settings", "hpcm_tune.domains")


def imported_after(module: str) -> list[str]:
    """The modules of Ray, torch and hpcm_tune.sweep that importing ``module`` loads, in a fresh interpreter."""
    probe = (f"import json, sys; import {module}; print(json.dumps(sorted(m for m in sys.modules if m in "
             f"('ray', 'torch', 'hpcm_tune.sweep') or m.startswith(('ray.', 'torch.', 'hpcm_tune.sweep.')))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ANALYSIS)
def test_importing_the_analysis_imports_neither_ray_nor_the_sweep(module):
    assert [m for m in imported_after(module) if m == "ray" or m.startswith(("ray.", "hpcm_tune.sweep"))] == []


@pytest.mark.parametrize("module", CONTRACTS)
def test_the_contract_modules_import_no_ray_torch_or_sweep(module):
    assert imported_after(module) == []
