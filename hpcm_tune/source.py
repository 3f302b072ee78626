"""Which code ran: the git commit of the checkout hpcm_tune is imported from (no Ray, no torch).

The sweep records it in the experiment's header (hpcm_tune.json ``commit``) when it starts and on every
``--resume``; analyze.py records the commit it analysed with. So every published figure names the code that
made it, not only the code that drew it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

UNKNOWN = "unknown"
PACKAGE_DIR = Path(__file__).resolve().parent


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def code_commit(package_dir: Path = PACKAGE_DIR) -> str:
    """``git rev-parse HEAD`` of the checkout the package is imported from, ``+dirty`` when a tracked file
    differs from it; ``unknown`` when the package is not in a git checkout (e.g. installed into site-packages,
    even inside some other repository: the package's own __init__.py must be tracked there)."""
    if not package_dir.is_dir():
        return UNKNOWN
    top = _git(["rev-parse", "--show-toplevel"], package_dir)
    if not top:
        return UNKNOWN
    init = package_dir / "__init__.py"
    try:
        relative = init.resolve().relative_to(Path(top).resolve())
    except ValueError:
        return UNKNOWN
    if _git(["ls-files", "--error-unmatch", str(relative)], Path(top)) is None:
        return UNKNOWN
    head = _git(["rev-parse", "HEAD"], Path(top))
    if not head:
        return UNKNOWN
    status = _git(["status", "--porcelain", "--untracked-files=no"], Path(top))
    return head + ("+dirty" if status else "") if status is not None else head + " (dirty state unknown)"
