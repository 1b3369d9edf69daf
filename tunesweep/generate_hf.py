"""The transformers generation backend: used where vLLM is not installed, and as a cross-check.

Batched `generate` with left padding over length-sorted batches, the same decoding parameters as
the vLLM backend, decoding only the new tokens. It yields the same messages as
tunesweep.generate_vllm.iter_results, in-process (transformers frees its memory on `del`).
"""

from __future__ import annotations

import time
from typing import Iterator

from .files import derive_seed
from .templates import decode_response


def _load(checkpoint: str, on_cuda: bool):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    tokenizer.padding_side = "left"  # new tokens must follow every prompt directly
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # device_map, not .to(): a bitsandbytes 4-bit checkpoint cannot be moved after loading.
    dtype = "auto" if on_cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype, device_map="cuda" if on_cuda else "cpu")
    model.eval()
    # Stop where vLLM stops: the tokenizer's EOS and any EOS the model's generation_config lists.
    eos = {tokenizer.eos_token_id}
    gen_eos = model.generation_config.eos_token_id
    eos.update(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
    eos.discard(None)
    # Replace the model's generation defaults so none of them (top_p, repetition_penalty, ...) leaks
    # into our decoding: only the special-token ids survive.
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=sorted(eos), pad_token_id=tokenizer.pad_token_id)
    return model, tokenizer, sorted(eos)


def _batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Row indices grouped longest first, so a batch pads little."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _finish(new_ids: list[int], eos: list[int], pad: int, max_new: int) -> tuple[int, str]:
    """(num_tokens, finish_reason) for one generated row, as vLLM reports them (EOS counted)."""
    for i, tok in enumerate(new_ids):
        if tok in eos:
            return i + 1, "stop"
    # A row that stopped early (at a stop string) is padded to the batch's length: drop the pads.
    n = len(new_ids)
    while n and new_ids[n - 1] == pad:
        n -= 1
    return n, ("length" if n >= max_new else "stop")


def iter_results(spec: dict) -> Iterator[dict]:
    import torch

    on_cuda = spec["on_cuda"]
    t0 = time.perf_counter()
    model, tokenizer, eos = _load(spec["checkpoint"], on_cuda)
    yield {"type": "engine", "build_s": time.perf_counter() - t0}
    prompts = [r["prompt"] for r in spec["rows"]]
    lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    pad = tokenizer.pad_token_id
    try:
        for job in spec["jobs"]:
            params = job["params"]
            max_new = params["max_new_tokens"]
            results: list = [None] * len(prompts)
            t = time.perf_counter()
            for b, idx in enumerate(_batches(lengths, spec["batch_size"])):
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True)
                enc = {k: v.to(model.device) for k, v in enc.items()}
                # One seed per batch (per-row seeds do not exist in a batched generate).
                torch.manual_seed(derive_seed(spec["seed"], job["config"], "batch", b))
                with torch.no_grad():
                    out = model.generate(**enc, **params, tokenizer=tokenizer)
                new = out[:, enc["input_ids"].shape[1]:].tolist()
                for row, ids in zip(idx, new):
                    n, reason = _finish(ids, eos, pad, max_new)
                    # transformers keeps a stop string that vLLM would have cut: decode_response cuts it.
                    results[row] = {"response_raw": decode_response(tokenizer, ids[:n], spec["stop"]),
                                    "finish_reason": reason, "num_tokens": n}
            wall = time.perf_counter() - t
            yield {"type": "config", "config": job["config"], "results": results,
                   "batch": {"wall_s": wall, "configs": [job["config"]],
                                                                 "tokens": sum(r["num_tokens"] for r in results)}}
    finally:
        del model
        if on_cuda:
            torch.cuda.empty_cache()
