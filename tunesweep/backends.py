"""Which backend `auto` picks, and why: shared by doctor, finetune and generate.

Training: unsloth when CUDA is visible and unsloth imports, else peft (transformers + PEFT + TRL).
Generation: vllm when it imports, else hf (transformers `generate`).
Nothing heavy is imported at module load: unsloth raises on import without a GPU, and where it does
import it patches transformers' model classes for the whole process. So whether unsloth imports is
asked of a separate Python process (about 40 s on a CUDA box), and the answer is cached on disk for
this interpreter and these torch / unsloth versions.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import json
import os
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

# Modules that must never be imported into a tunesweep process other than the one that trains with them.
IMPORT_IN_CHILD_ONLY = {"unsloth"}
PROBE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tunesweep" / "import_probes.json"


def cuda_visible() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _dist_version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "?"


def _probe_in_subprocess(name: str) -> tuple[bool, str]:
    key = f"{sys.executable}|{name}={_dist_version(name)}|torch={_dist_version('torch')}|{cuda_visible()}"
    try:
        cache = json.loads(PROBE_CACHE.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return tuple(cache[key])
    proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True)
    if proc.returncode == 0:
        answer = (True, f"{name} imports (checked in a separate process)")
    else:  # the traceback's last line names the exception
        said = (proc.stderr.strip().splitlines() or ["?"])[-1][:160]
        answer = (False, f"`import {name}` failed: {said}")
    try:
        PROBE_CACHE.parent.mkdir(parents=True, exist_ok=True)
        PROBE_CACHE.write_text(json.dumps({**cache, key: list(answer)}, indent=1))
    except OSError:  # a read-only home only costs the next run another probe
        pass
    return answer


@lru_cache(maxsize=None)
def try_import(name: str) -> tuple[bool, str]:
    """(importable, reason) without letting an import failure escape, or unsloth's patches in."""
    if importlib.util.find_spec(name) is None:
        return False, f"{name} is not installed"
    if name in IMPORT_IN_CHILD_ONLY:
        return _probe_in_subprocess(name)
    try:
        importlib.import_module(name)
    except Exception as exc:
        return False, f"`import {name}` failed: {exc.__class__.__name__}: {str(exc).splitlines()[0][:120]}"
    return True, f"{name} imports"


def pick_train_backend(requested: str = "auto") -> tuple[str, str]:
    if requested != "auto":
        return requested, f"asked for {requested}"
    if not cuda_visible():
        return "peft", "no CUDA device visible, so unsloth cannot run"
    ok, why = try_import("unsloth")
    if ok:
        return "unsloth", "CUDA is visible and unsloth imports"
    return "peft", why


def pick_generation_backend(requested: str = "auto") -> tuple[str, str]:
    if requested != "auto":
        return requested, f"asked for {requested}"
    ok, why = try_import("vllm")
    if ok:
        return "vllm", "vllm imports"
    return "hf", why
