"""The one way a checkpoint is loaded for inference (hf generation, perplexity, the post-merge check).

fp32 on a CPU (bf16 is emulated there and slow, and these CPUs have no AVX512), bf16 (fp16 where
the GPU lacks bf16) on CUDA; placed with device_map (a bitsandbytes 4-bit checkpoint cannot be
moved after loading); in eval mode; the tokenizer pads on the left, so that generated tokens
follow every prompt of a batch directly.
"""

from __future__ import annotations


def compute_dtype():
    """torch.float32 on a CPU; torch.bfloat16, or float16 where bf16 is unsupported, on CUDA."""
    import torch

    if not torch.cuda.is_available():
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_for_inference(checkpoint: str):
    """(model, tokenizer) of a local folder or hub id, ready to generate or score."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=compute_dtype(), device_map=device)
    model.eval()
    return model, tokenizer
