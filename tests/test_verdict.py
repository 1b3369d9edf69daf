"""The verdict report.md and report.html open with (report/tables.py `verdicts`), judged on comparisons that
evaluate/compare.py computes from per-row scores with a known answer; and p-values printed no finer than
the bootstrap resolves. No model and no engine: these run in a second."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import study_yaml
from tunesweep.config import ModelConfig, RunTarget, expand_sweep, load_config
from tunesweep.evaluate import compare, metrics
from tunesweep.report import html as html_page
from tunesweep.report import stage as md_page
from tunesweep.report.tables import Scored, fidelity_text, noise_note, p_floor, p_text, verdicts

ROWS = 60
ROUGE = [("rougeL", "ROUGE-L")]


def _scored(name: str, per_config: dict, is_base: bool = False) -> Scored:
    m = metrics.Rouge()
    table = pd.DataFrame({"config": list(per_config), "mode": ["sample"] * len(per_config),
                          "rougeL": [m.aggregate(v) for v in per_config.values()]})
    model = ModelConfig(name="m", base="b", evaluate_base=True)
    return Scored(RunTarget(name, model, is_base=is_base), table.set_index("config", drop=False), Path(f"{name}.csv"))


def _study(per_config: dict, base_per_config: dict | None = None, resamples: int = 2000):
    """Scored tables and comparisons.csv rows as the score stage builds them (compare.py), for model `m`
    (and its base `m-base`), centre `c0`, ROUGE-L (a mean of rows)."""
    m = metrics.Rouge()
    idx = metrics.bootstrap_indices(ROWS, resamples, seed=1)
    rows = compare.compare_to_centre(m, "m", per_config, "c0", idx) + compare.compare_to_best(m, "m", per_config, idx)
    scored = [_scored("m", per_config)]
    if base_per_config is not None:
        rows += compare.compare_to_base(m, "m", "m-base", per_config, base_per_config, idx)
        rows += compare.compare_to_centre(m, "m-base", base_per_config, "c0", idx)
        rows += compare.compare_to_best(m, "m-base", base_per_config, idx)
        scored.append(_scored("m-base", base_per_config, is_base=True))
    return scored, pd.DataFrame(rows)


def _rows(seed: int = 0):
    rng = np.random.default_rng(seed)
    difficulty = rng.uniform(0.0, 1.0, ROWS)  # shared by every config: the paired test sees through it
    return rng, difficulty


def _cfg(tmp_path):
    (tmp_path / "study.yaml").write_text(study_yaml(tmp_path / "work", tmp_path / "base"))
    return load_config(tmp_path / "study.yaml")


def test_the_verdict_names_a_known_winner_and_its_holm_p():
    """c1 is 0.2 above every other config on every row; the base model is far below: each comparison's
    bootstrap p is 0, which with 2,000 resamples and Holm over 2 comparisons is printed `< 0.002`, and over the
    3 configs with a base `< 0.003`."""
    rng, d = _rows()
    per = {"c0": d, "c1": d + 0.2 + rng.normal(0, 0.01, ROWS), "c2": d + rng.normal(0, 0.01, ROWS)}
    base = {c: v * 0.1 for c, v in per.items()}
    scored, cmp = _study(per, base)
    found = verdicts(scored, ROUGE, "c0", cmp)
    [v] = found["m"]
    assert v.best == "c1" and v.marked
    assert v.sentence.startswith("ROUGE-L: best config c1 (")
    assert "detectably better than 2 of the 2 other configs" in v.sentence
    assert re.search(r"detectably better than the centre c0 \(\+0\.2\d+ \[\+0\.\d+, \+0\.\d+\], Holm p < 0\.002\)",
                     v.sentence), v.sentence
    assert "detectably better than the base model m-base with the same config (" in v.sentence
    assert v.sentence.endswith("Holm p < 0.003).")
    # The base's own configs are scaled copies of each other: c1 is still detectably its best.
    [b] = found["m-base"]
    assert b.best == "c1" and b.marked and "base model" not in b.sentence

    # Both pages render these very sentences, first.
    md = "\n".join(md_page._verdict_section(scored, found))
    page = html_page._verdict_section(scored, found)
    for v in found["m"] + found["m-base"]:
        assert f"- {v.sentence}" in md
        assert html_page.esc(v.sentence) in page


def test_a_study_of_noise_says_no_config_is_better_and_marks_no_best(tmp_path):
    """Identical configs (every difference 0, every p 1): the verdict says so, no score is bold in
    report.html, and both pages put the same noise line under the table."""
    _, d = _rows(1)
    scored, cmp = _study({"c0": d, "c1": d.copy(), "c2": d.copy()})
    found = verdicts(scored, ROUGE, "c0", cmp)
    [v] = found["m"]
    assert not v.marked
    assert v.sentence.startswith("ROUGE-L: no config is detectably better than another")
    assert "smallest adjusted p 1)" in v.sentence and "best config" not in v.sentence
    note = noise_note(found["m"], dict(ROUGE))
    assert note.startswith("No config of this table is detectably better than another")

    cfg = _cfg(tmp_path)
    page = html_page._results_section(expand_sweep(cfg.generation), scored, ROUGE, None, None, found)
    assert "num best" not in page and html_page.esc(note) in page
    md = "\n".join(md_page._results_section(scored, ROUGE, [], None, found))
    assert note in md and "**" not in md

    # The same table with a real winner: its best cell is bold, and there is no noise line.
    rng, d = _rows(2)
    scored, cmp = _study({"c0": d, "c1": d + 0.3, "c2": d + rng.normal(0, 0.01, ROWS)})
    found = verdicts(scored, ROUGE, "c0", cmp)
    page = html_page._results_section(expand_sweep(cfg.generation), scored, ROUGE, None, None, found)
    assert page.count('class="num best"') == 1 and "No config of this table" not in page
    assert re.search(r'<tr data-config="c1">.*?class="num best"', page)


def test_without_paired_tests_the_verdict_judges_nothing():
    _, d = _rows(3)
    scored, cmp = _study({"c0": d, "c1": d + 0.3}, resamples=0)
    [v] = verdicts(scored, ROUGE, "c0", cmp)["m"]
    assert not v.marked and "no paired test" in v.sentence and v.best == "c1"
    [v] = verdicts(scored, ROUGE, "c0", None)["m"]
    assert not v.marked and "no paired test" in v.sentence


def test_the_smallest_printable_p_is_the_smallest_the_bootstrap_gives_times_holms_factor():
    """compare.bootstrap_p moves in steps of 2/B: one resample of B on the other side of 0 gives 2/B, none
    gives 0, which only says p < 2/B. Holm multiplies the smallest of m by m."""
    for b in (50, 200, 2000):
        one_crossing = np.r_[np.ones(b - 1), -1.0]
        assert compare.bootstrap_p(one_crossing) == pytest.approx(p_floor(b)) == pytest.approx(2 / b)
        assert compare.holm([0.0] * 3 + [2 / b]) == pytest.approx([0, 0, 0, 2 / b])  # estimates, not bounds
    assert p_text(0.0, 2000) == "< 0.001"
    assert p_text(0.0, 2000, family=12) == "< 0.012"   # the demo's 12 comparisons with the centre
    assert p_text(0.0, 3000, family=12) == "< 0.008"
    assert p_text(0.0, 1000, family=7) == "< 0.014"
    assert p_text(0.0, 50, family=12) == "< 0.48"
    assert p_text(0.012, 2000, family=12) == "0.012" and p_text(0.25, 2000, family=12) == "0.25"
    assert p_text(None, 2000) == "–" and p_text(0.3, 0) == "0.3"


def test_with_few_resamples_a_p_of_0_is_not_claimed_as_a_difference():
    """B = 50 and 2 configs besides the centre: a p of 0 is only `< 0.08` after Holm, not below 0.05."""
    rng, d = _rows(4)
    scored, cmp = _study({"c0": d, "c1": d + 0.3, "c2": d + rng.normal(0, 0.01, ROWS)}, resamples=50)
    assert (cmp[(cmp["versus"] == "centre") & (cmp["config"] == "c1")]["p_holm"] == 0).all()
    [v] = verdicts(scored, ROUGE, "c0", cmp)["m"]
    assert not v.marked and "no config is detectably better" in v.sentence and "< 0.08" in v.sentence
    text = "\n".join(md_page._comparisons_section(scored, ROUGE, cmp, "c0"))
    assert "no config differs detectably from the centre `c0` (smallest adjusted p < 0.08)" in text


PRINTED_P = re.compile(r"(?:Holm|adjusted) p (< )?(\d+(?:\.\d+)?(?:e-?\d+)?)")


def test_no_printed_p_is_finer_than_the_resampling():
    """Every p the pages print for comparisons whose bootstrap p is 0 (B = 200): as a bound no finer than
    m * 2 / B for a Holm family of m, never as a number below it."""
    rng, d = _rows(5)
    per = {"c0": d, "c1": d + 0.2, "c2": d - 0.2, "c3": d + rng.normal(0, 0.01, ROWS)}
    scored, cmp = _study(per, {c: v * 0.1 for c, v in per.items()}, resamples=200)
    assert (cmp["p_holm"] == 0).sum() >= 6
    floor_holm = 3 * 2 / 200  # every family here has 3 comparisons
    found = verdicts(scored, ROUGE, "c0", cmp)
    md = "\n".join(md_page._verdict_section(scored, found) + md_page._comparisons_section(scored, ROUGE, cmp, "c0"))
    printed = PRINTED_P.findall(md)
    assert len(printed) >= 6 and any(bound for bound, _ in printed)
    for bound, value in printed:
        assert float(value) >= floor_holm - 1e-12, (bound, value)

    # report.html's comparisons table: the p column no finer than 2 / B, p_holm no finer than 3 * 2 / B.
    page = html_page._comparisons_section(cmp)
    header = re.findall(r'<th scope="col"[^>]*>([^<]*)</th>', page)
    for tr in re.findall(r"<tr[^>]*>(<td.*?)</tr>", page):
        cells = dict(zip(header, re.findall(r"<td[^>]*>([^<]*)</td>", tr)))
        for column, floor in (("p", 2 / 200), ("p_holm", floor_holm)):
            text = cells[column].replace("&lt;", "<")
            assert float(text.lstrip("< ")) >= floor - 1e-12, (column, text)
    assert "&lt; 0.03" in page and "&lt; 0.01" in page


def test_merge_fidelity_never_prints_a_negative_kl():
    """Float rounding of two near-equal distributions gives a KL of -6.8e-9; a divergence is never below 0."""
    record = {"post_merge_check": {"merge_fidelity": {"compared": True, "greedy_agreement": 1.0, "mean_kl": -6.8e-9,
                                                      "max_abs_logit_diff": 2e-6}}}
    assert fidelity_text(record) == "greedy 1.00, KL 0.0e+00, max logit diff 2.0e-06"
    record["post_merge_check"]["merge_fidelity"]["mean_kl"] = 3.1e-7
    assert "KL 3.1e-07" in fidelity_text(record)
