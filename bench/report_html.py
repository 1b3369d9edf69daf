"""report.html at full study size: file size, time to write it, and time for Chromium to open it.

Synthesizes the files a 3-model x 13-config x 300-row study leaves behind (in the DESIGN.md contract
formats: alpaca_data/test.jsonl, llm_responses/<model>/<config>.jsonl + manifest.json,
eval_results/<model>.csv, rows/<model>.csv, perplexity.csv, metrics.json, comparisons.csv), with real
Alpaca text (../shared/data/alpaca_en_demo.json; each response is another record's answer, perturbed
per config and cut at 100 words, as a 128-new-token budget cuts them), runs the report stage on them,
and opens the page in headless Chromium from disk, side by side with an empty page:

    .venv/bin/python bench/report_html.py [--models 3] [--rows 300] [--repeats 3] [--keep DIR]

Printed: the size of report.html and of its parts, the report stage's wall time, and per page the
median wall time of `chromium --headless --dump-dom` (process start to DOM dump: includes Chromium's
own start-up, hence the empty page beside it) and the page's own figure, performance.now() when its
script has drawn everything (navigation start -> explorer drawn), for the explorer opened on a row
and opened with the rows ordered by how much the configs disagree (that order compares every
config's answer with every other's for every row).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEMO = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "alpaca_en_demo.json"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def perturb(text: str, rng: random.Random) -> str:
    words = text.split()
    return " ".join(w for w in words if rng.random() < 0.8) or text


def synthesize(root: Path, records: list[dict], n_models: int, n_rows: int) -> Path:
    from tunesweep.config import expand_sweep, load_config
    from tunesweep import metric_registry
    from tunesweep.files import sha256_bytes, write_json, write_jsonl
    from tunesweep.layout import (COMPARISON_COLUMNS, csv_text, read_target_responses, response_settings,
                                  responses_fingerprint, test_set_sha256, vouch_files)
    from tunesweep.records import cleaned_digest, generated_digest

    names = ["llama2", "mistral", "phi2", "qwen", "gemma", "olmo"][:n_models]
    cfg_path = root / "study.yaml"
    models = "\n".join(f"  - {{name: {n}, base: org/{n}-7b}}" for n in names)
    cfg_path.write_text(f"name: bench-study\nworkdir: {root / 'work'}\nseed: 42\n"
                        f"dataset: {{source: tatsu-lab/alpaca, test_size: {n_rows}}}\nmodels:\n{models}\n"
                        "generation:\n  max_new_tokens: 128\n"
                        "  sweep: {top_k: [10, 25, 40, 75], num_beams: [2, 3, 5, 10], temperature: [0.0, 0.25, 0.5, 1.0]}\n"
                        "evaluation: {bertscore: {model: null}, bootstrap: 1000}\n")
    cfg = load_config(cfg_path)
    work = cfg.path
    configs = expand_sweep(cfg.generation)
    centre = next(dc.name for dc in configs if dc.varied is None)
    test = []
    for i, r in enumerate(records[:n_rows]):
        test.append({"id": sha256_bytes(f"{i}:{json.dumps(r, sort_keys=True)}".encode())[:12], "instruction": r["instruction"],
                     "input": r.get("input", ""), "output": r["output"]})
    write_jsonl(work / "alpaca_data" / "test.jsonl", test)
    write_json(work / "alpaca_data" / "split.json", {"source": "tatsu-lab/alpaca", "seed": 42, "test_rows": n_rows,
                                                     "train_rows": 51_000})
    pool = [r["output"] for r in records]
    rng = random.Random(0)
    ev = work / "eval_results"
    comparisons = []
    for m in names:
        folder = work / "llm_responses" / m
        manifest = {"model": m, "checkpoint": str(work / "finetuned_models" / m), "checkpoint_hash": "ab" * 32,
                    "backend": "vllm", "versions": {"vllm": "0.33.0", "torch": "2.14.0", "transformers": "5.17.0"},
                    "test_rows": n_rows, "configs": {}, "runs": [{"started": "2026-11-26T10:00:00+00:00"}]}
        table, per_row, cleaning = [], [], {"configs": {}}
        for c, dc in enumerate(configs):
            recs = []
            for i, row in enumerate(test):
                text = " ".join(perturb(pool[(i + 7 * c + 101 * len(m)) % len(pool)], rng).split()[:100])
                ntok = int(len(text.split()) * 1.3) + 1
                recs.append({"id": row["id"], "prompt": "### Instruction:\n" + row["instruction"],
                             "reference": row["output"], "response_raw": text, "response": text,
                             "finish_reason": "length" if ntok >= 128 else "stop", "num_tokens": min(ntok, 128),
                             "config": dc.name, "model": m})
                per_row.append({"config": dc.name, "id": row["id"], "bleu": rng.random() * 0.4,
                                "rougeL": rng.random() * 0.6, "bertscore": 0.5 + rng.random() * 0.4})
            write_jsonl(folder / f"{dc.name}.jsonl", recs)
            # vouched for as generate would (report reads only responses the manifest vouches for)
            manifest["configs"][dc.name] = {"mode": dc.mode, "rows": n_rows, "wall_s": 10.0, "tokens": 20000,
                                            "checkpoint_hash": manifest["checkpoint_hash"],
                                            "test_set_sha256": test_set_sha256(work), "backend": "vllm",
                                            "settings": response_settings(cfg, "vllm"),
                                            "generated_sha256": generated_digest(folder / f"{dc.name}.jsonl")}
            cleaning["configs"][dc.name] = {"cleaned_sha256": cleaned_digest(recs)}
            row = {"config": dc.name, "mode": dc.mode}
            for metric, base in (("bleu", 0.15), ("rougeL", 0.35), ("bertscore", 0.85)):
                y = base + rng.uniform(-0.05, 0.05)
                row.update({metric: y, f"{metric}_ci_low": y - 0.02, f"{metric}_ci_high": y + 0.02})
                if dc.varied:
                    d = rng.uniform(-0.03, 0.03)
                    comparisons.append({"model": m, "metric": metric, "config": dc.name, "versus": "centre",
                                        "reference": centre, "score": y, "reference_score": y - d,
                                        "diff": d, "ci_low": d - 0.015, "ci_high": d + 0.015,
                                        "p": rng.random(), "p_holm": rng.random(), "resamples": 1000})
            table.append(row)
        write_json(folder / "manifest.json", manifest)
        write_json(folder / "cleaning.json", cleaning)  # what the clean stage vouches for
        (ev / "rows").mkdir(parents=True, exist_ok=True)
        (ev / f"{m}.csv").write_text(csv_text(metric_registry.table_columns(metric_registry.default_names()), table))
        (ev / "rows" / f"{m}.csv").write_text(csv_text(["config", "id", "bleu", "rougeL", "bertscore"], per_row))
    (ev / "perplexity.csv").write_text(csv_text(["model", "perplexity", "nll", "tokens", "checkpoint"], [
        {"model": m, "perplexity": 4.0 + i, "nll": 1.4, "tokens": 30000, "checkpoint": f"finetuned_models/{m}"}
        for i, m in enumerate(names)]))
    # What score records of the responses it read: report shows only tables still current with them.
    scored = {}
    for m in names:
        tr = read_target_responses(work, m, [dc.name for dc in configs], cfg=cfg)
        scored[m] = {"rows": n_rows, "configs": list(tr.records),
                     "scored_from": responses_fingerprint(work, m, list(tr.records))}
    with open(ev / "comparisons.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COMPARISON_COLUMNS)
        w.writeheader()
        w.writerows(comparisons)
    # and the eval_results files score would vouch for
    files = vouch_files(work, None, [p for p in ev.rglob("*.csv")])
    write_json(ev / "metrics.json", {"metrics": {"bleu": {"library": "sacrebleu", "version": "2.6.0"}},
                                     "targets": scored, "files": files})
    return cfg_path


def open_in_chromium(chromium: str, url: str) -> tuple[float, int | None]:
    """(wall seconds of `--dump-dom`, the page's data-ready-ms or None)."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        t0 = time.perf_counter()
        res = subprocess.run([chromium, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
                              "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
                              "--dump-dom", url], capture_output=True, text=True, timeout=300)
        wall = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"chromium failed: {res.stderr[-1000:]}")
    m = re.search(r'data-ready-ms="(\d+)"', res.stdout)
    return wall, int(m.group(1)) if m else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=3)
    p.add_argument("--rows", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3, help="Chromium opens per page; the median is shown")
    p.add_argument("--data", default=str(DEMO))
    p.add_argument("--keep", metavar="DIR", help="write the study here and keep it (default: a temporary folder)")
    args = p.parse_args()
    if not Path(args.data).is_file():
        sys.exit(f"{args.data}: not found (real Alpaca text; ../shared must sit beside the checkout)")
    records = json.loads(Path(args.data).read_text(encoding="utf-8"))
    if len(records) < args.rows:
        sys.exit(f"{args.data}: {len(records)} records, fewer than --rows {args.rows}")

    import logging

    from tunesweep.config import load_config
    from tunesweep.report import report

    logging.basicConfig(level=logging.WARNING)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-report-html-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    cfg = load_config(synthesize(root, records, args.models, args.rows))
    t0 = time.perf_counter()
    report(cfg)
    report_s = time.perf_counter() - t0
    page = cfg.path / "eval_results" / "report.html"
    text = page.read_text(encoding="utf-8")
    data = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', text, re.S).group(1)
    pngs = re.findall(r'src="data:image/png;base64,[^"]*"', text)
    images = sum(len(m) for m in pngs)
    n_resp = sum(len(v) for t in json.loads(data)["resp"].values() for v in t.values())
    print(f"\nstudy: {args.models} models x 13 configs x {args.rows} rows = {n_resp} responses "
          f"(real Alpaca answers, up to 100 words)")
    print(f"report stage (report.md, {len(pngs)} plots, report.html): {report_s:.1f} s wall")
    print(f"report.html: {len(text.encode()) / 1e6:.2f} MB  (explorer JSON {len(data.encode()) / 1e6:.2f} MB, "
          f"plots {images / 1e6:.2f} MB, the rest {(len(text.encode()) - len(data.encode()) - images) / 1e6:.2f} MB)")
    print(f"'http' in the file: {len(re.findall('http', text, re.I))} times")

    chromium = os.environ.get("TUNESWEEP_CHROMIUM") or next((b for b in map(shutil.which, BROWSERS) if b), None)
    if chromium is None:
        print("\nno Chromium found: open times not measured")
        return 0
    version = subprocess.run([chromium, "--version"], capture_output=True, text=True).stdout.strip()
    blank = root / "blank.html"
    blank.write_text("<!DOCTYPE html><html data-ready-ms=0><body>empty</body></html>")
    first = json.loads(data)["rows"][0]["id"]
    pages = [("empty page", blank.as_uri()),
             ("report.html, explorer on a row", page.as_uri() + f"#row={first}"),
             ("report.html, rows by disagreement", page.as_uri() + f"#row={first}&order=disagree")]
    print(f"\n{version}, headless; median of {args.repeats} opens (each a fresh Chromium process):")
    results = {label: [] for label, _ in pages}
    for _ in range(args.repeats):
        for label, url in pages:  # alternated, so a busy moment of a shared machine hits all pages alike
            results[label].append(open_in_chromium(chromium, url))
    for label, _ in pages:
        walls = [w for w, _ in results[label]]
        ready = [r for _, r in results[label] if r is not None]
        print(f"  {label:36s} dump-dom wall {statistics.median(walls):5.2f} s"
              + (f"   page ready after {statistics.median(ready):6.0f} ms" if label != "empty page" else ""))
    base = statistics.median(w for w, _ in results["empty page"])
    full = statistics.median(w for w, _ in results["report.html, explorer on a row"])
    print(f"  the report costs {full - base:.2f} s more than an empty page to open")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"\nkept: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
