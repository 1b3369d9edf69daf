"""Which backend `auto` picks, and why: shared by doctor, finetune and generate.

Training: unsloth when CUDA is visible and unsloth imports, else peft (transformers + PEFT + TRL).
Generation: vllm when it imports, else hf (transformers `generate`).
Nothing heavy is imported at module load: unsloth raises on import without a GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import lru_cache


def cuda_visible() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


@lru_cache(maxsize=None)
def try_import(name: str) -> tuple[bool, str]:
    """(importable, reason) without letting an import failure escape."""
    if importlib.util.find_spec(name) is None:
        return False, f"{name} is not installed"
    try:
        importlib.import_module(name)
    except Exception as exc:  # unsloth raises NotImplementedError without a GPU
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
