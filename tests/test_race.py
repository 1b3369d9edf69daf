"""generation.strategy race (tunesweep/race): rounds of rows, configs detectably worse than the leader dropped.

- the elimination rule and the rounds, checked by hand on worked examples (fast);
- transformers: the race and the full sweep of one study side by side (module fixture): survivors' files are the
  full sweep's byte for byte, an eliminated config's rows are the full sweep's same rows, temperature 6.0 is out
  in round 1, partial configs stay out of score's tables, and a later `strategy: full` run generates only them;
- a race SIGKILLed in its second round and rerun ends with the same race.csv and files (a subprocess, hf);
- vLLM: a race on the study fixture's rows, survivors' files equal to the study's full sweep byte for byte.

The model of the hf tests is the session's tiny random Llama made "wordy": its output layer favours a dozen
words the builtin:tasks references use, strongly enough that sampling at temperature <= 1 says them and
temperature 6.0 mostly does not, so one config is clearly worse than the others without any training. (Rows are
sampled with the same random numbers under every config, so at 3.0 most rows still start with the words 0.8 picks,
and 8 rows do not show it worse.)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, STUDY_ROWS, kill_when, run_tunesweep

from tunesweep.race.rule import judge_round, plan_rounds, round_targets, row_units


# --- the rule, by hand ----------------------------------------------------------------------------

class Mean:
    """A metric whose corpus score is the mean of its per-row values (as ROUGE-L's)."""

    def __init__(self, name: str = "race_mean"):
        self.name = name

    def aggregate(self, rows):
        return float(np.mean(rows))

    def aggregate_resamples(self, rows, idx):
        return np.asarray(rows)[idx].mean(axis=1)


@pytest.fixture
def mean_metrics():
    """`race_mean` (higher is better) and `race_loss` (lower is better) in the metric registry, for this test only."""
    from tunesweep import metric_registry
    from tunesweep.metric_registry import Metric

    metric_registry.register(Metric("race_mean", "Mean", "references", version=1, scorer=Mean))
    metric_registry.register(Metric("race_loss", "Loss", "references", version=1, scorer=Mean, higher_is_better=False))
    try:
        yield
    finally:
        metric_registry.unregister("race_mean")
        metric_registry.unregister("race_loss")


def test_judge_round_worked_example(mean_metrics):
    # Leader A (mean 1.0); B is 0 on every row; C misses row 1 (mean 0.75). Five fixed resamples of the 4 rows:
    idx = np.array([[0, 1, 2, 3], [1, 1, 1, 1], [0, 0, 0, 0], [2, 3, 2, 3], [1, 2, 3, 0]])
    rows = {"A": np.array([1.0, 1, 1, 1]), "B": np.zeros(4), "C": np.array([1.0, 0, 1, 1])}
    # B - A is -1 in every resample: P(d >= 0) = 0, p = 0. C - A per resample: -0.25, -1, 0, 0, -0.25:
    # P(d <= 0) = 1, P(d >= 0) = 2/5, p = min(1, 2 * 0.4) = 0.8. Holm over (0, 0.8): 2 * 0 = 0, then
    # max(0, 1 * 0.8) = 0.8. With alpha 0.05 over 3 planned rounds a round tests at 0.05 / 3: B is out.
    leader, verdicts = judge_round(Mean(), rows, idx, 0.05 / 3, keep=1)
    by = {v.config: v for v in verdicts}
    assert leader == "A" and [v.config for v in verdicts] == ["A", "B", "C"]
    assert by["B"].p == 0.0 and by["B"].p_holm == 0.0 and by["B"].eliminated
    assert by["B"].diff == -1.0 and by["B"].ci_low == by["B"].ci_high == -1.0
    assert by["C"].p == pytest.approx(0.8) and by["C"].p_holm == pytest.approx(0.8) and not by["C"].eliminated
    assert by["C"].diff == -0.25 and not by["A"].eliminated
    # keep = 3: nothing may leave; B stays, marked as kept by `keep` only.
    _, verdicts = judge_round(Mean(), rows, idx, 0.05 / 3, keep=3)
    assert not any(v.eliminated for v in verdicts) and [v.kept_by_keep for v in verdicts] == [False, True, False]
    # A lower-is-better metric on the same numbers: B (all 0) leads, A is 1 higher in every resample (p 0,
    # out), C's diff to B per resample is 0.75, 0, 1, 1, 0.75: P(d <= 0) = 1/5, p = 0.4, Holm 0.4: stays.
    leader, verdicts = judge_round(Mean("race_loss"), rows, idx, 0.05 / 3, keep=1)
    by = {v.config: v for v in verdicts}
    assert leader == "B" and by["A"].eliminated and by["A"].diff == 1.0 and by["A"].p_holm == 0.0
    assert by["C"].p == pytest.approx(0.4) and by["C"].p_holm == pytest.approx(0.4) and not by["C"].eliminated


def test_rounds_worked_examples():
    assert round_targets(200, 32, 1.5) == [32, 48, 72, 108, 162, 200]
    assert round_targets(20, 8, 2.0) == [8, 16, 20]
    assert round_targets(5, 8, 2.0) == [5]
    # Single rows: a prefix per round, in split order.
    assert plan_rounds(row_units(20, None), 8, 2.0) == [list(range(8)), list(range(8, 16)), list(range(16, 20))]
    # Batches (length-sorted, so rows interleave): taken whole, in the order of their first row, until a round
    # holds its target; every row in exactly one round.
    batches = [[5, 9, 2], [0, 7, 8], [1, 3, 4], [6]]
    units = row_units(10, batches)
    assert units == [[0, 7, 8], [1, 3, 4], [2, 5, 9], [6]]
    rounds = plan_rounds(units, 4, 2.0)  # targets 4, 8, 10
    assert rounds == [[0, 1, 3, 4, 7, 8], [2, 5, 9], [6]]
    assert sorted(i for r in rounds for i in r) == list(range(10))


# --- the studies ----------------------------------------------------------------------------------

WORDS = (" is", " the", " it", " a", " number", ".", " starts", " with", " vowel", " The", " It", " sentiment")


def make_wordy(src: Path, dst: Path) -> Path:
    """The tiny model whose output layer favours WORDS (see the module docstring). Embedding column 0 is a large
    constant, so after the final RMSNorm hidden column 0 is about sqrt(hidden) on every position; each word's
    output row reads that column: logits about 8 for the words, about 0 for the other 2,000 tokens."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    shutil.copytree(src, dst)
    tokenizer = AutoTokenizer.from_pretrained(dst)
    model = LlamaForCausalLM.from_pretrained(dst, dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight[:, 0] = 50.0
        head = model.get_output_embeddings().weight
        for k, word in enumerate(WORDS):
            head[tokenizer(word, add_special_tokens=False)["input_ids"][0], 0] = 0.7 - 0.01 * k
    model.save_pretrained(dst)
    return dst


HF_CONFIG = """\
name: race
workdir: {workdir}
seed: 42
dataset: {{source: builtin:tasks, builtin_rows: 300, test_size: 24}}
models:
  - name: tiny
    base: {model}
    lora: null
generation:
  backend: hf
  max_new_tokens: 8
  hf_batch_size: 8
  defaults: {{top_k: 50, num_beams: 1, temperature: 0.8}}
  sweep: {{top_k: [10], temperature: [0.0, 6.0]}}
  strategy: {strategy}
  race: {{metric: rougeL, first_rows: 8, growth: 2, keep: 1}}
evaluation:
  metrics: [bleu, rougeL]
  bootstrap: 50
"""
HOT = "top_k_50_num_beams_1_temp_6.0"


def hf_study(root: Path, model: Path, strategy: str) -> Path:
    from tunesweep.config import load_config
    from tunesweep.data import split_for_config

    root.mkdir(parents=True, exist_ok=True)
    config = root / f"{strategy}.yaml"
    config.write_text(HF_CONFIG.format(workdir=root / "work", model=model, strategy=strategy))
    split_for_config(load_config(config))
    shutil.copytree(model, root / "work" / "finetuned_models" / "tiny")
    return config


@pytest.fixture(scope="module")
def hf_race(tmp_path_factory, tiny_model_dir):
    """The same study generated by the full sweep and by the race, in two workdirs (hf backend)."""
    from tunesweep.config import load_config
    from tunesweep.race import generate_responses

    root = tmp_path_factory.mktemp("race-hf")
    model = make_wordy(tiny_model_dir, root / "wordy")
    out = {"model": model}
    for strategy in ("full", "race"):
        config = hf_study(root / strategy, model, strategy)
        [summary] = generate_responses(load_config(config))
        out[strategy] = (config, root / strategy / "work", summary)
    return out


def response_bytes(workdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((workdir / "llm_responses" / "tiny").glob("*.jsonl"))}


@pytest.mark.slow
def test_hf_race_survivors_are_the_full_sweep_and_the_hot_config_goes_first(hf_race, tmp_path):
    from tunesweep.config import load_config
    from tunesweep.clean.stage import clean
    from tunesweep.evaluate.scoring import score
    from tunesweep.generate.stage import plan_target
    from tunesweep.layout import load_split, read_rows
    from tunesweep.records import generated_digest
    from tunesweep.race import generate_responses
    from tunesweep.report import report

    full_cfg, full_dir, full = hf_race["full"]
    race_cfg, race_dir, race = hf_race["race"]
    table = {r["config"]: r for r in read_rows(race_dir / "eval_results" / "race.csv")}
    assert table[HOT]["status"] == "eliminated" and table[HOT]["round_eliminated"] == "1"
    assert table[HOT]["rows_used"] == "8" and float(table[HOT]["diff"]) < 0 and table[HOT]["rule"] == "bonferroni"
    state = json.loads((race_dir / "llm_responses" / "tiny" / "race.json").read_text())
    assert state["planned_rounds"] == 3 and state["alpha_round"] == pytest.approx(0.05 / 3)
    survivors = [c for c, r in table.items() if r["status"] == "survivor"]
    assert survivors and set(survivors) == set(state["survivors"])

    ours, theirs = response_bytes(race_dir), response_bytes(full_dir)
    for config in survivors:
        assert ours[f"{config}.jsonl"] == theirs[f"{config}.jsonl"], config
    manifest = json.loads((race_dir / "llm_responses" / "tiny" / "manifest.json").read_text())
    for config, row in table.items():
        entry = manifest["configs"][config]
        if row["status"] == "survivor":
            assert "partial" not in entry
            continue
        # An eliminated config's lines are the full sweep's lines of the same rows (whole hf batches).
        full_lines = {json.loads(line)["id"]: line for line in theirs[f"{config}.jsonl"].decode().splitlines()}
        lines = ours[f"{config}.jsonl"].decode().splitlines()
        assert len(lines) == int(row["rows_used"]) == entry["partial"]["rows"] < 24
        assert all(line == full_lines[json.loads(line)["id"]] for line in lines)
        assert entry["partial"]["round_eliminated"] == int(row["round_eliminated"])
    assert race["tokens"] < full["tokens"]
    # Nearly every row runs to the token cap here, so the extrapolation is close to the full sweep's count.
    assert race["race"]["full_sweep_tokens_estimate"] == pytest.approx(full["tokens"], rel=0.1)

    # Score leaves the eliminated configs out of every table; the md says which and with how many rows.
    # (On a copy: the resume test compares its files with the race's as generate wrote them, uncleaned.)
    shutil.copytree(race_dir, tmp_path / "work")
    (tmp_path / "race.yaml").write_text(race_cfg.read_text().replace(str(race_dir), str(tmp_path / "work")))
    race_cfg, race_dir = tmp_path / "race.yaml", tmp_path / "work"
    cfg = load_config(race_cfg)
    clean(cfg)
    score(cfg)
    scored = [r["config"] for r in read_rows(race_dir / "eval_results" / "tiny.csv")]
    assert sorted(scored) == sorted(survivors)
    assert {r["config"] for r in read_rows(race_dir / "eval_results" / "comparisons.csv")} <= set(survivors)
    assert f"{HOT} 8 rows" in (race_dir / "eval_results" / "tiny.md").read_text()
    # The report: a race section with the eliminated configs' scores and rows; no results table shows them.
    report(cfg)
    text = (race_dir / "eval_results" / "report.md").read_text()
    race_part = text[text.index("## Race"):text.index("\n## ", text.index("## Race") + 1)]
    results = text[text.index("## Results per model"):text.index("## Race")]
    assert f"| `{HOT}` | 1 | 8 of 24 |" in race_part and "(8 rows)" in race_part and "bonferroni" in race_part
    assert HOT not in results and (race_dir / "eval_results" / "plots" / "race_survivors.png").is_file()
    # report.html renders the same section from the same blocks: the same row, the plot inline.
    page = (race_dir / "eval_results" / "report.html").read_text()
    race_html = page[page.index('<section id="race">'):page.index("</section>", page.index('<section id="race">'))]
    assert f"<td><code>{HOT}</code></td><td>1</td><td>8 of 24</td>" in race_html and "(8 rows)" in race_html
    assert "data:image/png;base64," in race_html and '<a href="#race">' in page
    # A full sweep after the race takes the survivors as current: only the eliminated configs are pending.
    full_now = load_config(race_cfg, {"generation.strategy": "full"})
    plan = plan_target(full_now, full_now.run_targets()[0], "hf", load_split(race_dir, "test"), None)
    assert sorted(j.config for j in plan.pending) == sorted(c for c in table if c not in survivors)
    # ... and generating them gives the full sweep's files (what generate wrote: every field but the cleaned
    # `response`, which the survivors here have); the race's record and race.csv go.
    [summary] = generate_responses(full_now)
    assert sorted(summary["generated"]) == sorted(j.config for j in plan.pending)
    for name in theirs:
        assert generated_digest(race_dir / "llm_responses" / "tiny" / name) == \
            generated_digest(full_dir / "llm_responses" / "tiny" / name), name
    assert not (race_dir / "llm_responses" / "tiny" / "race.json").exists()
    assert not (race_dir / "eval_results" / "race.csv").exists()


@pytest.mark.slow
def test_a_race_killed_in_round_2_resumes_to_the_same_files(hf_race, tmp_path):
    _, race_dir, _ = hf_race["race"]
    config = hf_study(tmp_path, hf_race["model"], "race")
    state = tmp_path / "work" / "llm_responses" / "tiny" / "race.json"

    def in_round_2() -> bool:
        try:
            return len(json.loads(state.read_text())["rounds"]) == 1
        except (OSError, ValueError):
            return False

    cmd = [sys.executable, "-m", "tunesweep", "generate", "--config", str(config)]
    kill_when(cmd, in_round_2, 300, "the end of round 1", cwd=REPO)
    assert len(json.loads(state.read_text())["rounds"]) == 1
    res = run_tunesweep("generate", "--config", config, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming the race after round 1 of 3" in res.stderr
    assert (tmp_path / "work" / "eval_results" / "race.csv").read_bytes() == \
        (race_dir / "eval_results" / "race.csv").read_bytes()
    assert response_bytes(tmp_path / "work") == response_bytes(race_dir)
    # Finished: a third run generates nothing and loads no model.
    again = run_tunesweep("generate", "--config", config, timeout=120)
    assert again.returncode == 0 and "race finished earlier" in again.stderr


def test_race_settings_are_checked_at_load(tmp_path):
    from tunesweep.config import load_config
    from tunesweep.errors import UserError

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    text = HF_CONFIG.format(workdir=tmp_path / "w", model=tmp_path / "m", strategy="race")
    (tmp_path / "c.yaml").write_text(text.replace("metrics: [bleu, rougeL]", "metrics: [bleu]"))
    with pytest.raises(UserError, match="generation.race.metric = rougeL: the study does not score it"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text(text.replace("metric: rougeL", "metric: perplexity"))
    with pytest.raises(UserError, match="generation.race.metric.*not a metric a race can score per row"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "c.yaml").write_text(text.replace("growth: 2", "growth: 1"))
    with pytest.raises(UserError, match="generation.race.growth"):
        load_config(tmp_path / "c.yaml")
    # Ray replicas race too (tests/test_ray.py): not refused
    (tmp_path / "c.yaml").write_text(text + "execution: {backend: ray}\n")
    assert load_config(tmp_path / "c.yaml").execution.backend == "ray"


# --- vLLM -----------------------------------------------------------------------------------------

def test_vllm_race_survivors_equal_the_full_sweep(study, tmp_path):
    """A race over four of the study's configs on its rows, with an engine of its own: every file it writes holds
    exactly the study's (one-engine full sweep) lines for its rows, byte for byte."""
    from tunesweep.config import load_config
    from tunesweep.files import jsonl_dumps, read_jsonl
    from tunesweep.generate.stage import plan_target
    from tunesweep.layout import load_split
    from tunesweep.race import race_target

    copy = study.copy_to(tmp_path)
    text = copy.config.read_text()
    start = text.index("  sweep:")
    text = (text[:start] + "  sweep: {top_k: [10], num_beams: [2], temperature: [0.0]}\n  strategy: race\n"
            "  race: {metric: rougeL, first_rows: 8, growth: 2, keep: 1}\n" + text[text.index("\n", start) + 1:])
    copy.config.write_text(text)
    cfg = load_config(copy.config)
    target = cfg.run_targets()[0]
    # force: the copy's configs are current (the study's full sweep), which a race would leave as they are.
    plan = plan_target(cfg, target, "vllm", load_split(copy.root, "test")[:STUDY_ROWS], STUDY_ROWS, force=True)
    summary = race_target(cfg, plan, force=True)
    assert summary["engine_builds"] == 1 and summary["race"]["rounds"] >= 1
    ours = response_bytes(copy.root)
    state = json.loads((copy.root / "llm_responses" / "tiny" / "race.json").read_text())
    assert len(state["configs"]) == 4
    for config in state["configs"]:
        # The study's files were cleaned since (clean fills `response`): as generate wrote them, `response` null.
        originals = [{**rec, "response": None} for rec in read_jsonl(study.root / "llm_responses" / "tiny" /
                                                                      f"{config}.jsonl")]
        written = "".join(jsonl_dumps([rec]) for rec in originals).encode()
        if config in state["survivors"]:
            assert ours[f"{config}.jsonl"] == written, config
        full = {rec["id"]: jsonl_dumps([rec]) for rec in originals}
        lines = ours[f"{config}.jsonl"].decode().splitlines(keepends=True)
        assert lines and all(line == full[json.loads(line)["id"]] for line in lines), config
