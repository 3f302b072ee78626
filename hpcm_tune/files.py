"""Small file helpers shared by the analysis and the reference-codec cache. Standard library only: importing it
must stay cheap (no torch, pandas or Ray), since the analysis and the cache are read without a training stack."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to a temporary file beside ``path`` and rename it into place, so a reader
    never sees half a file and an interrupted write leaves the old one (or none) there. The folder is created
    when missing; the temporary file is removed when the write fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
