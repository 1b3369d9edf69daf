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
