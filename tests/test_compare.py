"""Paired comparisons (evaluate/compare.py) on numbers with known answers, and comparisons.csv as the
score stage writes it (BLEU and ROUGE-L only: no model is loaded)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from tunesweep.config import expand_sweep, load_config
from tunesweep.evaluate import compare, metrics
from tunesweep.evaluate.scoring import score
from tunesweep.layout import COMPARISON_COLUMNS

from test_scoring import demo_records, perturb, write_responses, write_study  # noqa: F401 (fixture)


def test_paired_ci_excludes_zero_while_the_marginal_cis_overlap():
    """Per-row scores with large noise shared by both configs and a known shift of +0.05: each
    config's own interval is wide (row difficulty), the paired difference's is narrow."""
    rng = np.random.default_rng(0)
    n = 200
    difficulty = rng.uniform(0.0, 1.0, n)             # per-row noise, sd ~0.29, the same row in both configs
    a = difficulty + 0.05 + rng.normal(0, 0.02, n)
    b = difficulty
    m = metrics.Rouge()                               # mean of rows
    idx = metrics.bootstrap_indices(n, 2000, seed=1)
    ci_a, ci_b = metrics.bootstrap_ci(m, a, idx), metrics.bootstrap_ci(m, b, idx)
    assert ci_a[0] < ci_b[1] and ci_b[0] < ci_a[1], "the marginal intervals overlap"
    d = compare.paired_difference(m, a, b, idx)
    assert d["diff"] == pytest.approx(np.mean(a - b))
    assert 0 < d["ci_low"] < 0.05 < d["ci_high"]      # excludes 0, contains the true shift
    assert d["p"] < 0.001 and d["resamples"] == 2000
    # Unpaired (each config resampled on its own rows), the same shift would not be found:
    other = metrics.bootstrap_indices(n, 2000, seed=2)
    unpaired = m.aggregate_resamples(a, idx) - m.aggregate_resamples(b, other)
    assert compare.bootstrap_p(unpaired) > 0.05


def test_bleu_difference_is_resampled_from_summed_statistics():
    bleu = metrics.Bleu()
    refs = ["the cat sat on the mat today", "a quick brown fox jumps", "rain falls on the plain", "it is cold"] * 5
    hyp_a = ["the cat sat on the mat", "a quick brown fox", "rain falls on the plain", "it is cold"] * 5
    hyp_b = ["the cat sat", "a brown fox jumps", "rain on a plain", "cold it is"] * 5
    ra, rb = bleu.rows(hyp_a, refs), bleu.rows(hyp_b, refs)
    idx = metrics.bootstrap_indices(len(refs), 50, seed=3)
    d = compare.paired_difference(bleu, ra, rb, idx)
    import sacrebleu

    assert d["diff"] == pytest.approx((sacrebleu.corpus_bleu(hyp_a, [refs]).score
                                       - sacrebleu.corpus_bleu(hyp_b, [refs]).score) / 100)
    # The first resample recomputed from its text.
    i = idx[0]
    by_text = (sacrebleu.corpus_bleu([hyp_a[k] for k in i], [[refs[k] for k in i]]).score
               - sacrebleu.corpus_bleu([hyp_b[k] for k in i], [[refs[k] for k in i]]).score) / 100
    diffs = bleu.aggregate_resamples(ra, idx) - bleu.aggregate_resamples(rb, idx)
    assert diffs[0] == pytest.approx(by_text, abs=1e-9)


def test_holm_against_a_worked_example():
    # p sorted: 0.01, 0.02, 0.03, 0.04, 0.20 (m = 5), given out of order.
    # step i: (m - i + 1) * p_(i) = 0.05, 0.08, 0.09, 0.08, 0.20; running maximum: 0.05, 0.08, 0.09, 0.09, 0.20.
    p = [0.04, 0.01, 0.20, 0.03, 0.02]
    assert compare.holm(p) == pytest.approx([0.09, 0.05, 0.20, 0.09, 0.08])
    # Capped at 1; missing p-values neither count in m nor get one.
    out = compare.holm([0.5, None, 0.3])
    assert out[1] is None and out[0] == pytest.approx(0.6) and out[2] == pytest.approx(0.6)
    assert compare.holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_bootstrap_p_is_two_sided():
    assert compare.bootstrap_p(np.array([1.0, 2.0, 3.0, -1.0])) == pytest.approx(0.5)   # 2 * 1/4
    assert compare.bootstrap_p(np.array([-1.0, -2.0])) == 0.0
    assert compare.bootstrap_p(np.zeros(7)) == 1.0


@pytest.mark.parametrize("metric", [metrics.Rouge(), metrics.Bleu()], ids=["rougeL", "bleu"])
def test_a_config_identical_to_the_centre_gets_p_1_and_a_zero_width_interval(metric):
    refs = ["one two three four", "five six seven", "eight nine ten eleven twelve"] * 4
    hyps = ["one two three", "five six", "eight nine ten"] * 4
    rows = metric.rows(hyps, refs)
    idx = metrics.bootstrap_indices(len(refs), 100, seed=4)
    out = compare.compare_to_centre(metric, "m", {"centre": rows, "same": rows.copy()}, "centre", idx)
    assert len(out) == 1
    r = out[0]
    assert (r["diff"], r["ci_low"], r["ci_high"], r["p"], r["p_holm"]) == (0.0, 0.0, 0.0, 1.0, 1.0)
    assert (r["versus"], r["reference"], r["config"]) == ("centre", "centre", "same")


def test_no_resamples_gives_the_difference_without_interval_or_p():
    d = compare.paired_difference(metrics.Rouge(), np.array([0.5, 0.7]), np.array([0.5, 0.5]), None)
    assert d["diff"] == pytest.approx(0.1) and d["ci_low"] is None and d["p"] is None and d["resamples"] == 0
    assert compare.holm([None, None]) == [None, None]


def test_score_writes_comparisons_csv_to_the_centre_and_to_the_base(tmp_path, demo_records):
    records = demo_records[:25]
    base = tmp_path / "base"  # a local stand-in (a hub id would be resolved to a cached commit)
    base.mkdir()
    (base / "config.json").write_text("{}\n")
    cfg = load_config(write_study(tmp_path, base=str(base), metrics="[bleu, rougeL]", bootstrap=60,
                                  sweep="{top_k: [10, 20]}", evaluate_base=True))
    names = [dc.name for dc in expand_sweep(cfg.generation)]
    centre = names[0]
    write_responses(cfg, "tiny", records, {centre: [perturb(r["output"], 3) for r in records],
                                                names[1]: [perturb(r["output"], 3) for r in records],
                                                names[2]: [perturb(r["output"], 2) for r in records]})
    write_responses(cfg, "tiny-base", records, {n: ["no idea"] * len(records) for n in names},
                    checkpoint=str(base))  # a base row is generated from the base itself
    score(cfg)
    path = cfg.path / "eval_results" / "comparisons.csv"
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COMPARISON_COLUMNS
        rows = list(reader)
    key = {(r["model"], r["metric"], r["config"], r["versus"]): r for r in rows}
    # Per target and metric: every non-centre config vs the centre and every non-best config vs the best;
    # per fine-tuned target: every config vs base.
    assert len(rows) == 2 * 2 * (2 + 2) + 2 * 3
    # The centre ties with its copy; the first in sweep order is the best, so names[2] vs best = vs centre.
    best = key[("tiny", "rougeL", names[2], "best")]
    assert best["reference"] == centre and best["diff"] == key[("tiny", "rougeL", names[2], "centre")]["diff"]
    same = key[("tiny", "bleu", names[1], "centre")]
    assert (float(same["diff"]), float(same["p"]), float(same["ci_low"]), float(same["ci_high"])) == (0, 1, 0, 0)
    worse = key[("tiny", "rougeL", names[2], "centre")]
    assert worse["reference"] == centre and float(worse["diff"]) < 0 and int(worse["resamples"]) == 60
    ft = key[("tiny", "bleu", centre, "base")]
    assert ft["reference"] == "tiny-base" and float(ft["ci_low"]) > 0 and float(ft["p_holm"]) < 0.05
    table = {r["config"]: r for r in csv.DictReader(open(cfg.path / "eval_results" / "tiny.csv"))}
    assert float(ft["score"]) == pytest.approx(float(table[centre]["bleu"]), abs=1e-6)
    # Rescoring only the base keeps the fine-tuned target's centre rows and drops its stale base rows.
    score(cfg, model="tiny-base")
    rows2 = list(csv.DictReader(open(path)))
    assert {(r["model"], r["versus"]) for r in rows2} == {(t, v) for t in ("tiny", "tiny-base") for v in ("centre", "best")}
