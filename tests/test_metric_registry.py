"""The metric registry (tunesweep/metric_registry.py): a metric registered in one place is accepted by the
config, scored into <model>.csv, all.csv, rows/<model>.csv and comparisons.csv, and shown in report.md and
report.html, with no other module touched; bumping one metric's version rescores that metric alone."""

from __future__ import annotations

import csv
import dataclasses
import re

import numpy as np
import pytest

from tunesweep import metric_registry
from tunesweep.config import expand_sweep, load_config
from tunesweep.errors import UserError
from tunesweep.evaluate.metrics import MeanOfRows, build_metric
from tunesweep.files import read_jsonl
from tunesweep.layout import Workdir


class WordCount(MeanOfRows):
    """Response length in words: a metric where shorter counts as better."""

    name = "words"

    def settings(self) -> dict:
        return {"statistic": "mean number of whitespace-separated words per response"}

    def rows(self, hyps, refs, groups=None) -> np.ndarray:
        return np.array([len(h.split()) for h in hyps], dtype=float)


WORDS = metric_registry.Metric("words", "Words", "references", version=1, scorer=lambda evaluation: WordCount(),
                               higher_is_better=False, default=False)


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_builtin_metrics_resolve_and_derive_the_table():
    """Every built-in scorer path names a factory of the evaluate stage whose scorer carries the metric's name;
    the table's columns are the DESIGN.md contract."""
    for m in metric_registry.all_metrics():
        if m.per_row:
            assert m.scorer.startswith("tunesweep.evaluate.")
            assert build_metric(m.name).name == m.name
    assert metric_registry.table_columns(metric_registry.default_names()) == [
        "config", "mode", "bleu", "bleu_ci_low", "bleu_ci_high", "rougeL", "rougeL_ci_low", "rougeL_ci_high",
        "bertscore", "bertscore_ci_low", "bertscore_ci_high", "human"]
    assert [m.name for m in metric_registry.scored_per_row(["perplexity", "bertscore", "bleu"])] == ["bleu", "bertscore"]
    with pytest.raises(ValueError, match="registered already"):
        metric_registry.register(metric_registry.get("bleu"))


def test_score_rows_scores_the_first_rows_of_a_config_in_one_call():
    """Checked against sacrebleu's corpus_bleu and rouge-score on the same first rows."""
    import sacrebleu
    from rouge_score import rouge_scorer

    from tunesweep.evaluate.metrics import score_rows

    refs = ["The cat sat on the mat.", "Paris is the capital of France.", "Water boils at 100 degrees.", "Blue."]
    hyps = ["The cat sat on a mat.", "Paris is France's capital.", "Water boils at one hundred degrees.", "Red."]
    bleu, rows = score_rows(build_metric("bleu"), hyps, refs, first=3)
    assert len(rows) == 3
    assert bleu == pytest.approx(sacrebleu.corpus_bleu(hyps[:3], [refs[:3]]).score / 100)
    rouge, _ = score_rows(build_metric("rougeL"), hyps, refs, first=2)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    assert rouge == pytest.approx(np.mean([scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps[:2], refs[:2])]))


def test_a_registered_metric_reaches_tables_comparisons_and_reports(study, tmp_path):
    from tunesweep.evaluate.scoring import score
    from tunesweep.report import report

    copy = study.copy_to(tmp_path)
    text = copy.config.read_text()
    assert "metrics: [bleu, rougeL, bertscore, perplexity]" in text
    copy.config.write_text(text.replace("metrics: [bleu, rougeL, bertscore, perplexity]",
                                        "metrics: [bleu, rougeL, bertscore, perplexity, words]"))
    with pytest.raises(UserError, match=r"evaluation\.metrics\[4\] = 'words': unknown metric"):
        load_config(copy.config)

    metric_registry.register(WORDS)
    bleu = metric_registry.get("bleu")
    try:
        cfg = load_config(copy.config)
        paths = Workdir(cfg.path)
        configs = [dc.name for dc in expand_sweep(cfg.generation)]
        summary = score(cfg)
        # Only the new metric is computed: the other text metrics' cached rows are still valid. (Perplexity's
        # key holds the checkpoint's path, which the copy changed: it may be recomputed here.)
        for target, info in summary["targets"].items():
            assert info["computed"]["words"] == configs, (target, info["computed"])
            assert all(info["computed"][m] == [] for m in ("bleu", "rougeL", "bertscore"))

        # The table: the registered columns, and the mean word count of each config's responses.
        table = read_csv(paths.table("tiny"))
        assert list(table[0])[-4:] == ["words", "words_ci_low", "words_ci_high", "human"]  # imported ratings last
        means = {}
        for row in table:
            recs = read_jsonl(paths.response_file("tiny", row["config"]))
            means[row["config"]] = np.mean([len(r["response"].split()) for r in recs])
            assert float(row["words"]) == pytest.approx(means[row["config"]])
            assert float(row["words_ci_low"]) <= float(row["words"]) <= float(row["words_ci_high"])
        assert "words" in paths.table("tiny", "md").read_text()
        assert {"words"} <= {r["metric"] for r in read_csv(paths.tidy_table)}
        assert "words" in read_csv(paths.row_scores("tiny"))[0]

        # comparisons.csv: lower is better, so the best config is the one with the fewest words.
        cmp = [r for r in read_csv(paths.comparisons) if r["metric"] == "words" and r["model"] == "tiny"]
        assert {r["versus"] for r in cmp} >= {"centre", "best"}
        shortest = min(means, key=lambda c: (means[c], configs.index(c)))
        assert {r["reference"] for r in cmp if r["versus"] == "best"} == {shortest}
        assert all(float(r["diff"]) >= 0 for r in cmp if r["versus"] == "best")

        report(cfg)
        md = (paths.eval_dir / "report.md").read_text()
        html = (paths.eval_dir / "report.html").read_text()
        header = next(line for line in md.splitlines() if line.startswith("| config | mode | varies"))
        assert header.rstrip(" |").endswith("| Words")
        assert re.search(r"Words: (best config|lowest score|no config)", md)
        assert 'data-metric="words"' in html and ">Words<" in html
        assert (paths.eval_dir / "plots" / "temperature_words.png").is_file()

        # Bumping one metric's version rescores that metric alone, to the same numbers.
        before = read_csv(paths.table("tiny"))
        metric_registry.replace(dataclasses.replace(bleu, version=bleu.version + 1))
        summary = score(cfg)
        for info in summary["targets"].values():
            assert info["computed"]["bleu"] == configs
            assert all(info["computed"][m] == [] for m in ("rougeL", "bertscore", "words", "perplexity"))
        assert read_csv(paths.table("tiny")) == before
    finally:
        metric_registry.replace(bleu)
        metric_registry.unregister("words")
    assert "words" not in metric_registry.selectable()
