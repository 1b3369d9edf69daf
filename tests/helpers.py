"""Helpers for tests (import as `from helpers import ...`; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_tunesweep(*args, cwd: Path | None = None, timeout: int = 900, env: dict | None = None):
    """Run the console script as a user would; returns the CompletedProcess (text mode)."""
    return subprocess.run(
        [sys.executable, "-m", "tunesweep", *map(str, args)],
        cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def kill_when(cmd: list, ready, timeout: float, what: str, **popen_kwargs) -> None:
    """Start `cmd` in its own process group, wait until `ready()` is true, then SIGKILL the group
    (the command and everything it started: vLLM workers, engine cores), as a user's kill would."""
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=popen_kwargs.pop("cwd", REPO), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, **popen_kwargs)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"the run ended before {what}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
