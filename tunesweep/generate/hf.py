"""The transformers generation backend: used where vLLM is not installed, and as a cross-check.

Batched `generate` with left padding over length-sorted batches, the same decoding parameters as
the vLLM backend, decoding only the new tokens. In-process (transformers frees its memory on `del`).
Seeds: one `torch.manual_seed` per batch (a batched `generate` has no per-row seeds), derived from
the run seed, the config and the batch index, so a rerun gives the same responses. A row's response
thus depends on its batch: replicas on Ray run whole batches of the full row list (`row_batches`,
`Request.batches`), each with its index, so their files are the one-process run's.
"""

from __future__ import annotations

import time
from typing import Iterator

from ..config import DecodingConfig, ExperimentConfig
from ..files import derive_seed
from ..loading import load_for_inference, load_tokenizer
from ..templates import decode_response
from .backend import (Backend, ConfigDone, EngineBuilt, InvarianceDone, Message, Request, RowResult, Session,
                      decoding_note)


def _load(checkpoint: str):
    from transformers import GenerationConfig

    model, tokenizer = load_for_inference(checkpoint)
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


def _prompt_batches(tokenizer, prompts: list[str], batch_size: int) -> list[list[int]]:
    return _batches([len(tokenizer(p)["input_ids"]) for p in prompts], batch_size)


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


def _generate(model, tokenizer, texts: list[str], params: dict, eos: list[int]) -> list[tuple[list[int], str]]:
    """(new token ids up to EOS or the stop, finish reason) of each prompt, generated in one left-padded batch."""
    import torch

    enc = tokenizer(texts, return_tensors="pt", padding=True)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    with torch.no_grad():
        out = model.generate(**enc, **params, tokenizer=tokenizer)
    done = []
    for ids in out[:, enc["input_ids"].shape[1]:].tolist():
        n, reason = _finish(ids, eos, tokenizer.pad_token_id, params["max_new_tokens"])
        done.append((ids[:n], reason))
    return done


class HfBackend(Backend):
    name = "hf"
    label = "transformers model"
    result_libraries = ("torch", "transformers")

    def identity(self, engine: dict, cfg: ExperimentConfig) -> dict:
        # Batches are padded together, and each batch draws from one seed: the batch size changes results.
        return {"engine": {"on_cuda": self.on_cuda}, "hf_batch_size": cfg.generation.hf_batch_size}

    def job_params(self, dc: DecodingConfig, max_new_tokens: int, stop: list[str]) -> tuple[str, dict, str]:
        if dc.mode == "beam":
            return "generate", {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": dc.num_beams,
                                "length_penalty": 1.0, "early_stopping": False, "num_return_sequences": 1,
                                "stop_strings": list(stop)}, "beam search ignores top_k and temperature"
        params = {"max_new_tokens": max_new_tokens, "do_sample": dc.mode == "sample", "num_beams": 1,
                  "stop_strings": list(stop)}
        if dc.mode == "sample":
            params.update({"temperature": dc.temperature, "top_k": dc.top_k, "top_p": 1.0})
        return "generate", params, decoding_note(dc)

    def row_batches(self, request: Request) -> list[list[int]]:
        # The tokenizer alone (the driver of a Ray run loads no model): the batches `run` would form.
        return _prompt_batches(load_tokenizer(request.checkpoint), request.prompts, request.batch_size)

    def seed_scheme(self, job_call: str, mode: str, run_seed: int) -> dict:
        return {"run_seed": run_seed, "scheme": "per batch: torch.manual_seed(derive_seed(run seed, 'batch', "
                "batch index)) over length-sorted batches, the same for every config"}

    def run(self, request: Request) -> Iterator[Message]:
        import torch

        t0 = time.perf_counter()
        model, tokenizer, eos = _load(request.checkpoint)
        yield EngineBuilt(time.perf_counter() - t0)
        try:
            yield from _run_loaded(model, tokenizer, eos, request)
        finally:
            del model
            if self.on_cuda:
                torch.cuda.empty_cache()

    def open(self, request: Request) -> "HfSession":
        return HfSession(request, self.on_cuda)


class HfSession(Session):
    """The model loaded once, for requests over rows of the opening request (generation.strategy race). A
    sub-request must carry its rows' batches of the whole row list, by index (sharded.rows_of with `batches`):
    a row's response depends on its batch."""

    def __init__(self, request: Request, on_cuda: bool):
        t0 = time.perf_counter()
        self.on_cuda = on_cuda
        self.model, self.tokenizer, self.eos = _load(request.checkpoint)
        self.build_s = time.perf_counter() - t0

    def run(self, request: Request) -> Iterator[Message]:
        if request.batches is None:
            raise ValueError("an hf session request needs the batches of the whole row list (rows_of(..., batches))")
        yield from _run_loaded(self.model, self.tokenizer, self.eos, request)

    def close(self) -> None:
        import torch

        self.model = None
        if self.on_cuda:
            torch.cuda.empty_cache()


def _run_loaded(model, tokenizer, eos, request: Request) -> Iterator[Message]:
    """A ConfigDone per job of `request` (and an InvarianceDone when it asks for the check) with a loaded model."""
    prompts = request.prompts
    batches = request.batches
    if batches is None:
        batches = list(enumerate(_prompt_batches(tokenizer, prompts, request.batch_size)))
    check = request.invariance
    greedy, reference = None, None
    for job in request.jobs:
        results: list = [None] * len(prompts)
        ids_of: list = [None] * len(prompts)
        t = time.perf_counter()
        for b, idx in batches:
            # One seed per batch for every config (common random numbers; see VllmBackend.request_seeds).
            torch_seed(derive_seed(request.seed, "batch", b))
            done = _generate(model, tokenizer, [prompts[i] for i in idx], job.params, eos)
            for row, (ids, reason) in zip(idx, done):
                # transformers keeps a stop string that vLLM would have cut: decode_response cuts it.
                results[row] = RowResult(decode_response(tokenizer, ids, request.stop), reason, len(ids))
                ids_of[row] = ids
        wall = time.perf_counter() - t
        yield ConfigDone(job.config, results, wall, [job.config], sum(r.num_tokens for r in results))
        if check is not None and job.config == check.config:
            greedy, reference = job, [ids_of[i] for i in check.rows]
    if greedy is not None:  # batch invariance: the sample alone (batch of 1), then reversed in one batch
        rows = list(check.rows)
        t = time.perf_counter()
        alone = [_generate(model, tokenizer, [prompts[i]], greedy.params, eos)[0][0] for i in rows]
        backwards = _generate(model, tokenizer, [prompts[i] for i in rows[::-1]], greedy.params, eos)[::-1]
        backwards = [ids for ids, _ in backwards]
        yield InvarianceDone(greedy.config, [request.row_ids[i] for i in rows], reference, alone, backwards,
                             time.perf_counter() - t, {
                                 "sweep": f"length-sorted left-padded batches of up to {request.batch_size} "
                                          f"rows ({len(prompts)} rows)",
                                 "alone": "a batch of 1 per row",
                                 "reversed": f"one left-padded batch of the {len(rows)} rows in reversed order",
                                 "engine": "the sweep's loaded model"})


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
