"""Judge cost: judged pairs per second through vLLM and transformers, and one judge engine for the whole study
versus a fresh engine per config, side by side in one run.

The pairs are real Alpaca instructions (tests/data/alpaca_sample.json) with, per "config", each record's answer
cut short in a config-specific way against the full answer as the baseline: --configs x --rows pairs, each asked
in both orders. Every variant uses the judge stage's own pieces (tunesweep.judge.engine.start_engine,
verdict.judge_pairs; one engine call per config, as the stage makes them) on the same tiny judge:

  - vllm, one engine: ONE engine (a child process) judges every config: what `tunesweep judge` does;
  - vllm, engine per config: a fresh engine for each config, as a per-metric judge (lighteval) or a judge run per
    model (AlpacaEval) loads it;
  - hf, one model: transformers in this process, every config.

Both vLLM variants must give the same preferences (same engine settings, same prompts).

    .venv/bin/python bench/judge.py [--configs 3] [--rows 20] [--model DIR]
"""

from __future__ import annotations

import argparse
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
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

SAMPLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "alpaca_sample.json"


def study_pairs(n_configs: int, rows: int) -> list[list]:
    """Per config, `rows` pairs: an answer cut to a config-specific share of its words vs the full answer."""
    from tunesweep.judge.verdict import Pair

    records = json.loads(SAMPLE.read_text())[:rows]
    out = []
    for c in range(n_configs):
        keep = 0.3 + 0.6 * c / max(1, n_configs - 1)
        config = []
        for r in records:
            words = r["output"].split()[:60]
            config.append(Pair(r["instruction"], r["input"], " ".join(words[: max(1, int(len(words) * keep))]),
                               " ".join(words)))
        out.append(config)
    return out


def run_variant(backend: str, model: str, configs: list[list], per_config_engine: bool) -> dict:
    from tunesweep.config import JudgeConfig
    from tunesweep.judge.engine import EngineSpec, engine_settings, start_engine
    from tunesweep.judge.prompt import pick_labels
    from tunesweep.judge.verdict import judge_pairs
    from tunesweep.loading import load_tokenizer

    jc = JudgeConfig(model=model, backend=backend, engine={"max_model_len": 1024})
    spec = EngineSpec(backend, model, engine_settings(backend, model, jc, 0, False) if backend == "vllm" else {},
                      jc.hf_batch_size)
    tokenizer = load_tokenizer(model)
    labels = pick_labels(tokenizer)
    t0 = time.perf_counter()
    loads, build_s, judge_s, prefs = 0, 0.0, 0.0, []
    engine = None
    try:
        for pairs in configs:
            if engine is None:
                engine = start_engine(spec)
                loads += 1
                build_s += engine.build_s
            t = time.perf_counter()
            prefs.append([v.preference for v in judge_pairs(pairs, tokenizer, labels, engine.score)])
            judge_s += time.perf_counter() - t
            if per_config_engine:
                engine.close()
                engine = None
    finally:
        if engine is not None:
            engine.close()
    n = sum(len(p) for p in configs)
    return {"loads": loads, "build_s": build_s, "judge_s": judge_s, "wall_s": time.perf_counter() - t0,
            "pairs": n, "pairs_per_s": n / judge_s if judge_s else float("nan"), "prefs": prefs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=3)
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--model", help="judge checkpoint folder (default: a tiny model built here)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from tunesweep.tinymodel import make_tiny_model

            model = str(make_tiny_model(Path(tmp) / "tiny", seed=0))
        configs = study_pairs(args.configs, args.rows)
        one = run_variant("vllm", model, configs, per_config_engine=False)
        each = run_variant("vllm", model, configs, per_config_engine=True)
        hf = run_variant("hf", model, configs, per_config_engine=False)
    import numpy as np

    same = np.allclose(np.array(one["prefs"]), np.array(each["prefs"]), atol=1e-6)
    print(f"judge bench: {args.configs} configs x {args.rows} rows = {one['pairs']} pairs "
          f"({2 * one['pairs']} requests), tiny judge, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    for name, r in (("vllm, one engine for the study", one), ("vllm, a fresh engine per config", each),
                    ("hf, one model for the study", hf)):
        print(f"  {name:34s} engine loads {r['loads']:2d}  build {r['build_s']:6.1f} s  judging {r['judge_s']:6.2f} s "
              f"({r['pairs_per_s']:7.1f} pairs/s)  wall {r['wall_s']:6.1f} s")
    print(f"  engine per config / one engine: {each['wall_s'] / one['wall_s']:.2f}x wall, {each['loads']} vs "
          f"{one['loads']} loads; vllm / hf judging speed: {one['pairs_per_s'] / hf['pairs_per_s']:.1f}x; "
          f"the two vllm variants' preferences {'agree' if same else 'DIFFER'} (atol 1e-6)")
    print("  command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))


if __name__ == "__main__":  # the vLLM engine runs in a spawned child process: it must not rerun this
    main()
