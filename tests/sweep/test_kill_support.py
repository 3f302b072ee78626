"""The kill tests' helper reaches a process that left the driver's process group, as a Ray worker can."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from kill_support import kill_sweep, tagged, tagged_pids

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the environment from /proc")


def test_kill_sweep_kills_a_tagged_process_in_a_session_of_its_own(tmp_path):
    pid_file = tmp_path / "escaped.pid"
    # The "driver" starts a child in a new session (out of the driver's group), writes its pid, then waits.
    script = ("import subprocess, sys, time\n"
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], start_new_session=True)\n"
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
              "time.sleep(120)\n")
    env, tag = tagged(os.environ)
    driver = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the driver never started its child"
        time.sleep(0.05)
    escaped = int(pid_file.read_text())
    assert escaped in tagged_pids(tag)

    stragglers = kill_sweep(driver, tag)

    assert escaped in stragglers  # the group kill alone missed it
    assert tagged_pids(tag) == []
    assert driver.returncode is not None
