"""Scoring cost: a whole target's sweep in ONE pass versus config by config, side by side in one run.

The score stage hands every metric the pairs of all decoding configs of a model at once:
  - BERTScore: one BERTScorer.score call, so each reference (repeated once per config) is
    embedded once; config by config embeds it once per config;
  - ROUGE-L: one call over all pairs (tokens and stems memoised across configs, each distinct
    pair scored once).
Both variants call the same tunesweep.evaluate.metrics functions on the same real text (Alpaca answers of
../shared/data/alpaca_en_demo.json; each config's responses are perturbed answers of other
records; tests/data/alpaca_sample.json where ../shared is absent) and must give the same scores. The BERTScore model is loaded once, before either timing.
The plain rouge-score loop the course repositories ran (one RougeScorer per config, one pair at a
time) is printed for context.

    .venv/bin/python bench/scoring.py [--configs 13] [--rows 100] [--max-words 60] [--repeats 2]

The variants run alternately, --repeats rounds, and the fastest time of each is shown.

BERTScore uses answers of up to --max-words words (its cost grows with length: on a busy 2-core
CPU MiniLM embeds ~5 answers of 150 tokens a second); ROUGE-L uses the full length mix, with
responses cut at 100 words as a 128-new-token budget would cut them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DEMO = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "alpaca_en_demo.json"
if not DEMO.is_file():
    DEMO = Path(__file__).resolve().parent.parent / "tests" / "data" / "alpaca_sample.json"


def perturb(text: str, k: int) -> str:
    """Drop every k-th word: a near miss, as a decoding change tends to produce."""
    words = text.split()
    return " ".join(w for i, w in enumerate(words) if i % k != k - 1) or text


def build_texts(path: Path, n_configs: int, n_rows: int, max_words: Optional[int],
                cap_words: Optional[int] = None) -> tuple[list[str], dict[str, list[str]]]:
    """(references, {config: responses}): real answers; responses are other records' answers,
    perturbed per config, cut to `cap_words` words (what a max_new_tokens budget leaves)."""
    from tunesweep.config import GenerationConfig, Sweep, expand_sweep

    records = json.loads(path.read_text(encoding="utf-8"))
    pool = [r["output"] for r in records if 0 < len(r["output"].split()) <= (max_words or 10**9)]
    if len(pool) < 2 * n_rows:
        sys.exit(f"{path}: only {len(pool)} answers of <= {max_words} words; lower --rows or raise --max-words")
    refs = pool[:n_rows]
    gen = GenerationConfig(sweep=Sweep(top_k=[10, 25, 40, 75], num_beams=[2, 3, 5, 10], temperature=[0.0, 0.25, 0.5, 1.0]))
    names = [dc.name for dc in expand_sweep(gen)]
    while len(names) < n_configs:
        names.append(f"extra_{len(names)}")
    hyps = {}
    for c, name in enumerate(names[:n_configs]):
        # Every config answers differently: another record's answer, perturbed per config.
        texts = [perturb(pool[(n_rows + i + 37 * c) % len(pool)], 2 + c % 5) for i in range(n_rows)]
        hyps[name] = [" ".join(t.split()[:cap_words]) if cap_words else t for t in texts]
    return refs, hyps


def describe(refs: list[str], hyps: dict[str, list[str]]) -> str:
    import numpy as np

    flat = [h for texts in hyps.values() for h in texts]
    return (f"{len(hyps)} configs x {len(refs)} rows = {len(flat)} pairs; references {np.mean([len(r.split()) for r in refs]):.0f} "
            f"words on average, responses {np.mean([len(h.split()) for h in flat]):.0f} ({len(set(flat))} distinct texts)")


def timed(fn):
    """(wall seconds, CPU seconds of this process and its reaped children, result).

    CPU time is printed beside wall time because this machine may be shared: other processes
    stretch wall time, not the CPU time the work itself takes.
    """
    t0, c0 = time.perf_counter(), os.times()
    out = fn()
    c1, wall = os.times(), time.perf_counter() - t0
    cpu = sum(getattr(c1, k) - getattr(c0, k) for k in ("user", "system", "children_user", "children_system"))
    return wall, cpu, out


def alternate(repeats: int, variants: list, before=None) -> list[tuple]:
    """Run the variants in turn, `repeats` rounds; per variant the fastest wall and CPU times.

    Alternating rounds and keeping the fastest damp what other processes on a shared machine do to
    one variant but not the other."""
    best: list = [None] * len(variants)
    for _ in range(max(1, repeats)):
        for k, fn in enumerate(variants):
            if before:
                before()  # every variant starts cold
            wall, cpu, out = timed(fn)
            best[k] = (wall, cpu, out) if best[k] is None else (min(best[k][0], wall), min(best[k][1], cpu), out)
    return best


def show(label: str, per_config: tuple, one_pass: tuple, extra: str = "") -> None:
    print(f"  config by config ({label} calls): wall {per_config[0]:8.2f} s   CPU {per_config[1]:8.2f} s")
    print(f"  one pass (1 call)           : wall {one_pass[0]:8.2f} s   CPU {one_pass[1]:8.2f} s")
    print(f"  ratio config-by-config / one-pass: {per_config[0] / one_pass[0]:.2f}x wall, "
          f"{per_config[1] / max(one_pass[1], 1e-9):.2f}x CPU{extra}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", type=int, default=13)
    p.add_argument("--rows", type=int, default=100)
    p.add_argument("--max-words", type=int, default=60, help="longest reference answer used (words)")
    p.add_argument("--data", default=str(DEMO))
    p.add_argument("--repeats", type=int, default=2,
                   help="run the variants alternately this many times; the fastest of each is shown")
    args = p.parse_args()

    import numpy as np
    import torch
    from rouge_score import rouge_scorer

    from tunesweep.evaluate import metrics

    refs, hyps = build_texts(Path(args.data), args.configs, args.rows, args.max_words)
    flat_hyps = [h for texts in hyps.values() for h in texts]
    flat_refs = refs * len(hyps)
    groups = [len(refs)] * len(hyps)
    print(f"command: {shlex.join(['.venv/bin/python' if sys.executable.endswith('.venv/bin/python') else sys.executable, *sys.argv])}")
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores usable, torch threads "
          f"{torch.get_num_threads()}, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")

    # --- BERTScore ---
    bert = metrics.BertScore()
    load_s, _, _ = timed(bert.scorer)
    settings = bert.settings()
    print(f"\nBERTScore: {settings['model']}, layer {settings['num_layers']}, batch {bert.batch_size} "
          f"(model load {load_s:.1f} s, not counted)")
    print(f"  data: answers of <= {args.max_words} words (BERT cost grows with length): {describe(refs, hyps)}")
    bert.rows(flat_hyps[:8], flat_refs[:8])  # warm-up: first-call setup is paid by neither variant
    per_config, one_pass = alternate(args.repeats, [
        lambda: np.concatenate([bert.rows(h, refs) for h in hyps.values()]),
        lambda: bert.rows(flat_hyps, flat_refs, groups=groups)])
    diff = float(np.max(np.abs(one_pass[2] - per_config[2])))
    show(str(len(hyps)), per_config, one_pass, f"   (max |F1 difference| {diff:.1e})")

    # ROUGE on the real length mix: references as they are, responses cut at 100 words (128 new tokens).
    refs, hyps = build_texts(Path(args.data), args.configs, args.rows, None, cap_words=100)
    flat_hyps = [h for texts in hyps.values() for h in texts]
    flat_refs = refs * len(hyps)
    print("\nROUGE-L: rouge-score with the Porter stemmer, tokens and stems memoised, each distinct pair once")
    print(f"  data: all answers, responses cut at 100 words: {describe(refs, hyps)}")

    def course_loop():
        out = []
        for h in hyps.values():
            scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
            out.extend(scorer.score(r, x)["rougeL"].fmeasure for x, r in zip(h, refs))
        return np.array(out)

    per_config, one_pass, plain = alternate(args.repeats, [
        lambda: np.concatenate([metrics.rouge_rows(h, refs)[:, 2] for h in hyps.values()]),
        lambda: metrics.rouge_rows(flat_hyps, flat_refs)[:, 2],
        course_loop], before=metrics.clear_caches)
    assert per_config[2].tolist() == one_pass[2].tolist() == plain[2].tolist(), "ROUGE-L variants disagree"
    show(str(len(hyps)), per_config, one_pass, "   (identical scores)")
    print(f"  plain rouge-score loop      : wall {plain[0]:8.2f} s   CPU {plain[1]:8.2f} s   "
          f"(the course repositories' way; {plain[0] / one_pass[0]:.2f}x the one pass's wall time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
