"""Killing a sweep's driver the way a machine restart does: the driver, its local Ray and every worker Ray started.

The kill tests start the driver in a session of its own and SIGKILL that process group, but a Ray worker can
leave the group (Ray starts some of its processes in sessions of their own) and go on training after the kill: a
parent or trial it finishes alone makes the resume under test find work it should have had to redo. So each
kill test tags the driver's environment; Ray's processes inherit the environment, and :func:`kill_sweep` kills
the group, then every process whose environment carries the tag (Linux /proc), and waits until none is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

TAG_VARIABLE = "HPCM_TUNE_TEST_KILL_TAG"


def tagged(env: Mapping[str, str]) -> tuple[dict[str, str], str]:
    """``env`` with a fresh tag that the driver and every process it starts will carry, and the tag."""
    tag = uuid.uuid4().hex
    return {**env, TAG_VARIABLE: tag}, tag


def tagged_pids(tag: str) -> list[int]:
    """The live processes whose environment carries ``tag`` (empty where /proc cannot be read)."""
    needle = f"{TAG_VARIABLE}={tag}".encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
    return [pid for pid in pids if pid != os.getpid()]


def kill_sweep(driver: subprocess.Popen, tag: str, timeout: float = 30.0) -> list[int]:
    """SIGKILL the driver's process group and every process tagged ``tag``; return once none is left (or raise
    TimeoutError naming the survivors). Returns the tagged pids that were still alive after the group kill."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(driver.pid, signal.SIGKILL)
    driver.wait(timeout=timeout)
    stragglers = tagged_pids(tag)
    deadline = time.monotonic() + timeout
    left = stragglers
    while left:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes of the killed sweep still alive: {left}")
        time.sleep(0.05)
        left = tagged_pids(tag)  # a killed child lingers as a zombie until reaped; /proc/<pid>/environ is then empty
    return stragglers
