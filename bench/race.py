"""The full sweep and the race (generation.strategy race) on the same grid, side by side in one run.

Both go through the generate stage itself (tunesweep.race.generate_responses, as `tunesweep generate` runs it),
each in a workdir of its own with the same split and checkpoint, each with one engine. Printed: the tokens and
wall time of each (wall includes each one's engine build), their ratios, the full sweep's best config by the
race metric (scored here on its cleaned responses) and whether the race kept it, and the share of the rows
each config used in the race. Also checked: every survivor's file is the full sweep's, byte for byte.

Model: the demo's fine-tuned tiny-full (`make demo` builds demo_run/finetuned_models/tiny-full; it is copied,
never written). Data: builtin:tasks with --rows test rows (the demo's 60 are too few for rounds); the split
differs from the demo's, so some test rows may be ones the demo trained on: the tasks are templated, so a
decoding config's ranking is what this measures, not generalisation.
Grid (mode grid, 24 distinct configs): top_k 5-100 x temperature 0-1.5 x num_beams 1, 2, 4, 8 (greedy and
beam configs ignore top_k / temperature and are merged, as the generate stage does).

    .venv/bin/python bench/race.py --model demo_run/finetuned_models/tiny-full
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

CONFIG = """\
name: race-bench
workdir: {workdir}
seed: 42
dataset: {{source: builtin:tasks, builtin_rows: {builtin_rows}, test_size: {rows}}}
models:
  - name: tiny-full
    base: {model}
    lora: null
generation:
  backend: {backend}
  max_new_tokens: 32
  defaults: {{top_k: 50, num_beams: 1, temperature: 0.6}}
  sweep: {{top_k: [5, 10, 20, 50, 100], num_beams: [1, 2, 4, 8], temperature: [0.0, 0.3, 0.6, 1.0, 1.5]}}
  mode: grid
  engine: {{max_model_len: 512, dtype: float32}}
  strategy: {strategy}
  race: {{metric: {metric}, first_rows: {first_rows}, growth: {growth}, keep: {keep}, alpha: {alpha}}}
evaluation:
  metrics: [bleu, rougeL, bertscore]
  bertscore: {{model: null}}
"""


def run(root: Path, args, strategy: str):
    from tunesweep.config import load_config
    from tunesweep.data import split_for_config
    from tunesweep.race import generate_responses

    root.mkdir(parents=True)
    config = root / "study.yaml"
    config.write_text(CONFIG.format(workdir=root / "work", model=root / "base", rows=args.rows,
                                    builtin_rows=args.rows * 5, backend=args.backend, strategy=strategy,
                                    metric=args.metric, first_rows=args.first_rows, growth=args.growth, keep=args.keep,
                                    alpha=args.alpha))
    shutil.copytree(args.model, root / "base")
    cfg = load_config(config)
    split_for_config(cfg)
    shutil.copytree(args.model, root / "work" / "finetuned_models" / "tiny-full")
    t = time.perf_counter()
    [summary] = generate_responses(cfg)
    return cfg, summary, time.perf_counter() - t


def best_by_metric(cfg, workdir: Path) -> tuple[str, dict[str, float]]:
    """The full sweep's config with the highest race-metric score (its cleaned responses, every row)."""
    from tunesweep.config import expand_sweep
    from tunesweep.clean.stage import clean_response
    from tunesweep.evaluate.compare import best_config
    from tunesweep.evaluate.metrics import build_metric
    from tunesweep.files import read_jsonl

    metric = build_metric(cfg.generation.race.metric, cfg.evaluation)
    per_config = {}
    for dc in expand_sweep(cfg.generation):
        recs = read_jsonl(workdir / "llm_responses" / "tiny-full" / f"{dc.name}.jsonl")
        hyps = [clean_response(r["response_raw"], r["prompt"], template=cfg.template)[0] for r in recs]
        per_config[dc.name] = metric.rows(hyps, [r["reference"] for r in recs])
    return best_config(metric, per_config), {c: float(metric.aggregate(v)) for c, v in per_config.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo_run/finetuned_models/tiny-full")
    p.add_argument("--rows", type=int, default=2000, help="test rows (builtin:tasks, 5x as many rows in all)")
    p.add_argument("--backend", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--metric", default="rougeL", choices=["bleu", "rougeL", "bertscore"])
    p.add_argument("--first-rows", type=int, default=32)
    p.add_argument("--growth", type=float, default=1.5)
    p.add_argument("--keep", type=int, default=1)
    p.add_argument("--alpha", type=float, default=0.05)
    args = p.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        sys.exit(f"{args.model}: no fine-tuned checkpoint there (run `make demo`, or pass --model)")

    from tunesweep.config import expand_sweep

    with tempfile.TemporaryDirectory(prefix="tunesweep-race-bench-") as tmp:
        full_cfg, full, full_wall = run(Path(tmp) / "full", args, "full")
        race_cfg, race, race_wall = run(Path(tmp) / "race", args, "race")
        configs = [dc.name for dc in expand_sweep(full_cfg.generation)]
        best, scores = best_by_metric(full_cfg, full_cfg.path)
        state = json.loads((race_cfg.path / "llm_responses" / "tiny-full" / "race.json").read_text())
        survivors = state["survivors"]
        same = all((race_cfg.path / "llm_responses" / "tiny-full" / f"{c}.jsonl").read_bytes()
                   == (full_cfg.path / "llm_responses" / "tiny-full" / f"{c}.jsonl").read_bytes() for c in survivors)
        print(f"command: {shlex.join([sys.executable, *sys.argv])}")
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f} at the end (wall times are contaminated by other work)")
        print(f"grid: {len(configs)} distinct configs x {state['rows_total']} test rows, backend {race['backend']}, "
              f"race metric {state['metric']}, first_rows {args.first_rows}, growth {args.growth:g}, "
              f"keep {args.keep}, alpha {args.alpha:g} ({state['alpha_rule']}: {state['alpha_round']:.4g} per round "
              f"over {state['planned_rounds']} planned rounds)")
        print(f"full sweep: {full['tokens']} tokens, {full_wall:.1f} s wall (engine build "
              f"{full['engine_build_s']} s)")
        print(f"race:       {race['tokens']} tokens, {race_wall:.1f} s wall (engine build {race['engine_build_s']} s), "
              f"{len(state['rounds'])} rounds")
        print(f"ratio race / full: tokens {race['tokens'] / full['tokens']:.3f}, wall {race_wall / full_wall:.3f}")
        print(f"full sweep's best by {state['metric']}: {best} ({scores[best]:.4f}); "
              f"{'SURVIVED' if best in survivors else 'ELIMINATED'} the race; survivors: {', '.join(survivors)}")
        print(f"survivors' files byte-identical to the full sweep's: {same}")
        print("rows used per config (share of the test rows), full-sweep score:")
        for c in sorted(configs, key=lambda c: -scores[c]):
            gone = state["eliminated"].get(c)
            rows = gone["rows"] if gone else state["rows_total"]
            where = f"eliminated in round {gone['round']}" if gone else "survivor"
            print(f"  {c:36s} {rows:4d} rows ({rows / state['rows_total']:.0%})  {where:24s} "
                  f"{state['metric']} {scores[c]:.4f}")


if __name__ == "__main__":
    main()
