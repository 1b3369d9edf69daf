"""The report stage on a small synthetic study written in the contract formats of DESIGN.md.

`build_study` (also used by test_human_eval.py) writes a config, a real split, and
llm_responses/ files; `write_scores` adds eval_results/ files with known numbers, so every
number the report shows can be checked against its source.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from pathlib import Path

import pytest
from helpers import run_tunesweep

from tunesweep.config import expand_sweep, load_config
from tunesweep.errors import UserError
from tunesweep.files import derive_seed, write_json, write_jsonl
from tunesweep.templates import build_prompt

METRIC_COLS = ["bleu", "rougeL", "bertscore"]
CLEAN_KEYS = ("echo", "cut", "special", "empty", "length_capped")


def build_study(root: Path, metrics=("bleu", "rougeL"), test_rows: int = 8) -> Path:
    """A 2-model study (alpha with its base rows, beta) x 5 decoding configs; returns the config path."""
    from tunesweep.data import load_split, split_dataset

    work = root / "study"
    cfg_path = root / "study.yaml"
    cfg_path.write_text(f"""
name: synthetic-study
workdir: {work}
seed: 7
dataset: {{source: "builtin:tasks", builtin_rows: 200, test_size: {test_rows}}}
models:
  - {{name: alpha, base: {root}/bases/alpha, evaluate_base: true}}
  - {{name: beta, base: {root}/bases/beta}}
generation:
  max_new_tokens: 16
  defaults: {{top_k: 50, num_beams: 1, temperature: 0.8}}
  sweep: {{top_k: [10], num_beams: [2], temperature: [0.0, 1.0]}}
evaluation:
  metrics: [{", ".join(metrics)}]
  bootstrap: 50
  human: {{rows_per_config: 3, scale_min: 1, scale_max: 5}}
""")
    cfg = load_config(cfg_path)
    split_dataset(cfg.dataset.source, work, cfg.dataset.test_size, seed=cfg.seed, builtin_rows=cfg.dataset.builtin_rows)
    test = load_split(work, "test")
    for t in cfg.run_targets():
        folder = work / "llm_responses" / t.name
        manifest = {"model": t.name, "checkpoint": t.checkpoint(work), "checkpoint_hash": "0" * 64, "backend": "vllm",
                    "versions": {"vllm": "0.32.0", "transformers": "5.17.0"}, "test_rows": len(test), "limit": None,
                    "configs": {}}
        cleaning = {"rules": {"cut_at": ["### Instruction:"], "strip_special": True}, "configs": {}}
        for dc in expand_sweep(cfg.generation):
            rng = random.Random(derive_seed("fixture", t.name, dc.name))
            records = []
            for row in test:
                words = row["output"].split()
                # Keep a random share of the reference, so scores differ between targets and configs.
                kept = " ".join(w for w in words if rng.random() < 0.7) or "nothing"
                prompt = build_prompt(row)
                records.append({"id": row["id"], "prompt": prompt, "reference": row["output"],
                                "response_raw": kept + " </s>", "response": kept,
                                "finish_reason": rng.choice(["stop", "stop", "length"]),
                                "num_tokens": len(kept.split()) + 1, "config": dc.name, "model": t.name})
            write_jsonl(folder / f"{dc.name}.jsonl", records)
            wall = round(0.5 + rng.random(), 3)
            tokens = sum(r["num_tokens"] for r in records)
            manifest["configs"][dc.name] = {
                "top_k": dc.top_k, "num_beams": dc.num_beams, "temperature": dc.temperature, "mode": dc.mode,
                "ignored": list(dc.ignored), "effective": {"beam_width": dc.num_beams} if dc.mode == "beam" else
                {"top_k": dc.top_k, "temperature": dc.temperature}, "note": "vLLM beam search ignores top_k and "
                "temperature" if dc.mode == "beam" else "", "seed": {"base": 7}, "max_new_tokens": 16,
                "rows": len(records), "wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
                "inputs": "abc", "file_sha256": "0" * 64}
            cleaning["configs"][dc.name] = {"rows": len(records), **{k: rng.randrange(0, 4) for k in CLEAN_KEYS}}
        write_json(folder / "manifest.json", manifest)
        write_json(folder / "cleaning.json", cleaning)
    return cfg_path


def write_scores(cfg_path: Path, human: dict | None = None) -> dict:
    """eval_results/ in the contract formats with seeded numbers; returns {target: [row dicts]}."""
    cfg = load_config(cfg_path)
    out = cfg.path / "eval_results"
    out.mkdir(parents=True, exist_ok=True)
    tables, tidy = {}, []
    for t in cfg.run_targets():
        rng = random.Random(derive_seed("scores", t.name))
        rows = []
        for dc in expand_sweep(cfg.generation):
            row = {"config": dc.name, "mode": dc.mode}
            for m in METRIC_COLS:
                score, half = rng.uniform(0.1, 0.7), rng.uniform(0.01, 0.08)
                row.update({m: score, f"{m}_ci_low": score - half, f"{m}_ci_high": score + half})
                tidy.append({"model": t.name, "config": dc.name, "parameter": dc.varied or "centre",
                             "value": getattr(dc, dc.varied) if dc.varied else "", "metric": m, "score": score,
                             "ci_low": score - half, "ci_high": score + half})
            row["human"] = (human or {}).get((t.name, dc.name), "")
            rows.append(row)
        tables[t.name] = rows
        with open(out / f"{t.name}.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        (out / f"{t.name}.md").write_text(f"# {t.name}\n")
    with open(out / "all.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(tidy[0]))
        w.writeheader()
        w.writerows(tidy)
    with open(out / "perplexity.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "perplexity", "nll", "tokens", "checkpoint"])
        for i, t in enumerate(cfg.run_targets()):
            w.writerow([t.name, 10.0 + 5 * i, math.log(10.0 + 5 * i), 400, t.checkpoint(cfg.path)])
    # The shape tunesweep.scoring writes: per-metric settings under "metrics", scored targets under "targets".
    write_json(out / "metrics.json", {"metrics": {
        "bleu": {"library": "sacrebleu", "version": "2.6.0",
                 "signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"},
        "rougeL": {"library": "rouge-score", "version": "0.1.2", "rouge_type": "rougeL", "use_stemmer": True},
        "bertscore": {"library": "bert-score", "version": "0.3.13", "model": "sentence-transformers/all-MiniLM-L6-v2",
                      "model_path": "/venv/minilm", "num_layers": 6, "rescale_with_baseline": False},
        "bootstrap": {"resamples": 50, "seed": 7, "level": 0.95},
        "perplexity": {"scope": "test references, response tokens only"},
    }, "targets": {t.name: {"rows": 8} for t in cfg.run_targets()}})
    return tables


def section(text: str, heading: str) -> str:
    """The text under a markdown heading, up to the next heading of any level."""
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1:]
    nxt = re.search(r"^#{1,6} ", rest, flags=re.M)
    return rest[: nxt.start()] if nxt else rest


def table_rows(block: str) -> list[list[str]]:
    """Data rows of the first markdown table in `block`, cells stripped of backticks."""
    rows = [line for line in block.splitlines() if line.startswith("|")]
    return [[c.strip().strip("`") for c in r.strip("|").split(" | ")] for r in rows[2:]]


CELL = re.compile(r"^(-?\d+\.\d+)(?: \[(-?\d+\.\d+), (-?\d+\.\d+)\])?$")


@pytest.fixture(scope="module")
def scored_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    cfg_path = build_study(root)
    human = {("alpha", "top_k_50_num_beams_1_temp_0.8"): 3.5, ("alpha", "top_k_10_num_beams_1_temp_0.8"): 4.25}
    tables = write_scores(cfg_path, human=human)
    from tunesweep.report import report

    out = report(load_config(cfg_path))
    return cfg_path, tables, out, out.read_text()


def test_report_tables_match_the_csv_numbers(scored_study):
    cfg_path, tables, out, text = scored_study
    assert out == load_config(cfg_path).path / "eval_results" / "report.md"
    for target, rows in tables.items():
        heading = f"### {target} (base, not fine-tuned)" if target.endswith("-base") else f"### {target}"
        parsed = table_rows(section(text, heading))
        assert [r[0] for r in parsed] == [r["config"] for r in rows]  # every row, in sweep order
        for cells, row in zip(parsed, rows):
            assert cells[1] == row["mode"]
            for cell, m in zip(cells[3:6], METRIC_COLS):
                score, lo, hi = map(float, CELL.match(cell).groups())
                assert score == pytest.approx(row[m], abs=5e-5)
                assert lo == pytest.approx(row[f"{m}_ci_low"], abs=5e-5)
                assert hi == pytest.approx(row[f"{m}_ci_high"], abs=5e-5)
            human = cells[6]
            if row["human"] == "":
                assert human == "–"
            else:
                assert float(human) == pytest.approx(row["human"])


def test_report_best_config_and_finetuning_gain(scored_study):
    cfg_path, tables, _, text = scored_study
    best = {(r[0], r[1]): r for r in table_rows(section(text, "## Best config per model and metric"))}
    for target, rows in tables.items():
        label = f"{target} (base, not fine-tuned)" if target.endswith("-base") else target
        for m, name in zip(METRIC_COLS, ["BLEU", "ROUGE-L", "BERTScore"]):
            top = max(rows, key=lambda r: r[m])
            cells = best[(label, name)]
            assert cells[2] == top["config"]
            others = sum(1 for r in rows if r is not top and r[f"{m}_ci_high"] >= top[m])
            assert cells[4] == str(others)
    # Fine-tuned minus base at the centre config; beta has no base rows, so it is not in the table.
    centre = "top_k_50_num_beams_1_temp_0.8"
    gain = table_rows(section(text, "## What fine-tuning bought"))
    assert {r[0] for r in gain} == {"alpha"}
    by_metric = {r[1]: r for r in gain}
    ft = next(r for r in tables["alpha"] if r["config"] == centre)
    base = next(r for r in tables["alpha-base"] if r["config"] == centre)
    for m, name in zip(METRIC_COLS, ["BLEU", "ROUGE-L", "BERTScore"]):
        assert float(by_metric[name][4]) == pytest.approx(ft[m] - base[m], abs=1e-4)
    assert float(by_metric["perplexity"][4]) == pytest.approx(10.0 - 15.0)  # alpha 10, alpha-base 15


def test_report_plots_are_pngs_for_every_factor_and_metric(scored_study):
    from PIL import Image

    cfg_path, _, out, text = scored_study
    plots = out.parent / "plots"
    expected = {f"{f}_{m}.png" for f in ("top_k", "num_beams", "temperature") for m in METRIC_COLS + ["human"]}
    assert {p.name for p in plots.glob("*.png")} == expected
    for name in expected:
        path = plots / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()
        assert f"(plots/{name})" in text  # embedded in the report


def test_report_factor_lines_include_the_centre():
    from tunesweep.report import factor_slice

    cfg = load_config(Path(__file__).parent.parent / "configs" / "tiny.yaml")
    names = {f: [dc.name for dc in factor_slice(cfg, f)] for f in ("top_k", "num_beams", "temperature")}
    assert names["top_k"] == [f"top_k_{k}_num_beams_1_temp_0.8" for k in (10, 25, 40, 50, 75)]
    assert names["num_beams"] == [f"top_k_50_num_beams_{b}_temp_0.8" for b in (1, 2, 3, 5, 10)]
    assert names["temperature"] == [f"top_k_50_num_beams_1_temp_{t}" for t in ("0.0", "0.25", "0.5", "0.8", "1.0")]


def test_report_cleaning_throughput_and_settings(scored_study):
    cfg_path, _, _, text = scored_study
    cfg = load_config(cfg_path)
    cleaning = table_rows(section(text, "## Cleaning statistics"))
    throughput = table_rows(section(text, "## Generation throughput"))
    for t in cfg.run_targets():
        folder = cfg.path / "llm_responses" / t.name
        per = json.loads((folder / "cleaning.json").read_text())["configs"]
        row = next(r for r in cleaning if r[0].split(" ")[0] == t.name)
        assert int(row[1]) == sum(c["rows"] for c in per.values())
        for cell, k in zip(row[2:], CLEAN_KEYS):
            assert int(cell.split(" ")[0]) == sum(c[k] for c in per.values())
        manifest = json.loads((folder / "manifest.json").read_text())["configs"]
        wall = sum(c["wall_s"] for c in manifest.values())
        tokens = sum(c["tokens"] for c in manifest.values())
        row = next(r for r in throughput if r[0].split(" ")[0] == t.name)
        assert row[1] == "vllm"
        assert float(row[4]) == pytest.approx(wall, abs=0.05)
        assert int(row[5]) == tokens
        assert float(row[6]) == pytest.approx(tokens / wall, abs=0.05)
    # The BERTScore model is named, with the comparability warning; every metric setting is shown.
    assert "BERTScore model: **sentence-transformers/all-MiniLM-L6-v2**, layer 6" in text
    assert "NOT comparable to roberta-large" in text
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0" in text
    assert "vLLM beam search ignores top_k and temperature" in text
    versions = {r[0]: r for r in table_rows(section(text, "### Library versions"))}
    assert versions["vllm"][1] == "0.32.0" and versions["sacrebleu"][2] == "2.6.0"
    assert "name: synthetic-study" in section(text, "### The experiment config")


def test_report_before_scoring_is_a_one_line_error(tmp_path):
    from tunesweep.report import report

    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"name: x\nworkdir: {tmp_path / 'w'}\nmodels: [{{name: m, base: b}}]\n")
    with pytest.raises(UserError, match="not been scored yet"):
        report(load_config(cfg_path))
    (tmp_path / "w" / "eval_results").mkdir(parents=True)  # the folder alone is not a scored study
    proc = run_tunesweep("report", "--config", cfg_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not been scored yet" in lines[0] and "tunesweep score" in lines[0]
