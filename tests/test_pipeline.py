"""The whole pipeline through hyperparameter_experiments.sh on a small slice of a tiny study.

run_a: uninterrupted, with base rows: every output named in DESIGN.md must exist and agree.
run_b: the same study (no base rows) killed during generation, then rerun with the same
command: it finishes without redoing finished configs and ends with run_a's tables. It starts from a copy
of run_a's split and fine-tuned checkpoint (both stages find them current and skip), so the suite trains
the e2e model once.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from helpers import REPO, ROWS, kill_when, pipeline_cmd, pipeline_env
from tunesweep.files import read_jsonl
from tunesweep.config import expand_sweep, load_config
from tunesweep.stages import STAGES

def run_script(cfg: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "hyperparameter_experiments.sh"), "--config", str(cfg)], cwd=REPO,
                          env=pipeline_env(), capture_output=True, text=True, timeout=timeout)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def run_a(e2e_run):
    """The uninterrupted run with base rows (session-wide: conftest.e2e_run; test_report_html reads it too)."""
    return e2e_run


@pytest.fixture(scope="module")
def run_b(tmp_path_factory, e2e_run):
    import shutil

    work_a, cfg_a, _ = e2e_run
    root = tmp_path_factory.mktemp("pipe-b")
    for kept in ("alpaca_data", "finetuned_models"):
        shutil.copytree(work_a / kept, root / "work" / kept)
    text = cfg_a.read_text().replace(str(work_a), str(root / "work"))
    assert "evaluate_base: true" in text
    cfg = root / "study.yaml"
    cfg.write_text(text.replace("evaluate_base: true", "evaluate_base: false"))
    responses = root / "work" / "llm_responses" / "tiny"
    manifest = responses / "manifest.json"
    kill_when(pipeline_cmd(cfg), lambda: manifest.is_file() and bool(json.loads(manifest.read_text())["configs"]),
              timeout=900, what="a generated config", env=pipeline_env())
    before = json.loads(manifest.read_text())["configs"]  # what generate wrote before the kill
    res = subprocess.run(pipeline_cmd(cfg), cwd=REPO, env=pipeline_env(), capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-3000:])
    # The split and the fine-tune were current (the kill landed in generate, after them).
    assert json.loads((root / "work" / "finetuned_models" / "tiny" / "tunesweep.json").read_text()) == \
        json.loads((work_a / "finetuned_models" / "tiny" / "tunesweep.json").read_text())
    return root / "work", cfg, before, res


def test_every_design_output_exists_and_agrees(run_a):
    work, cfg_path, res = run_a
    cfg = load_config(cfg_path)
    configs = [c.name for c in expand_sweep(cfg.generation)]
    assert len(configs) == 13

    data = work / "alpaca_data"
    split = json.loads((data / "split.json").read_text())
    assert split["test_rows"] == 12 and split["train_rows"] == 388
    for name in ("train.jsonl", "test.jsonl"):
        assert (data / name).stat().st_size > 0
    test_rows = [json.loads(l) for l in (data / "test.jsonl").read_text().splitlines()]

    ft = work / "finetuned_models" / "tiny"
    assert (ft / "config.json").is_file() and list(ft.glob("*.safetensors"))
    meta = json.loads((ft / "tunesweep.json").read_text())
    assert meta["backend"] == "peft"

    for target in ("tiny", "tiny-base"):
        out = work / "llm_responses" / target
        manifest = json.loads((out / "manifest.json").read_text())
        assert set(manifest["configs"]) == set(configs)
        for name in configs:
            recs = [json.loads(l) for l in (out / f"{name}.jsonl").read_text().splitlines()]
            assert [r["id"] for r in recs] == [r["id"] for r in test_rows[:ROWS]]
            for r in recs:
                assert {"id", "prompt", "reference", "response_raw", "response", "finish_reason", "num_tokens"} <= set(r)
        cleaning = json.loads((out / "cleaning.json").read_text())
        assert set(cleaning["configs"]) == set(configs)

        rows = read_csv(work / "eval_results" / f"{target}.csv")
        assert [r["config"] for r in rows] == configs  # sweep order, none missing
        assert list(rows[0]) == ["config", "mode", "bleu", "bleu_ci_low", "bleu_ci_high", "rougeL", "rougeL_ci_low",
                                 "rougeL_ci_high", "bertscore", "bertscore_ci_low", "bertscore_ci_high", "human"]
        for r in rows:
            for metric in ("bleu", "rougeL", "bertscore"):
                assert float(r[f"{metric}_ci_low"]) <= float(r[metric]) <= float(r[f"{metric}_ci_high"])
        assert (work / "eval_results" / f"{target}.md").is_file()

    tidy = read_csv(work / "eval_results" / "all.csv")
    assert list(tidy[0]) == ["model", "config", "parameter", "value", "metric", "score", "ci_low", "ci_high"]
    assert {r["model"] for r in tidy} == {"tiny", "tiny-base"}
    assert {r["config"] for r in tidy} == set(configs)
    ppl = {r["model"]: float(r["perplexity"]) for r in read_csv(work / "eval_results" / "perplexity.csv")}
    assert set(ppl) == {"tiny", "tiny-base"}
    # Even 12 steps of full fine-tuning make the references more likely than under random weights.
    assert ppl["tiny"] < ppl["tiny-base"]
    cmp = read_csv(work / "eval_results" / "comparisons.csv")
    assert {(r["model"], r["versus"]) for r in cmp} == {("tiny", "centre"), ("tiny", "best"), ("tiny", "base"),
                                                         ("tiny-base", "centre"), ("tiny-base", "best")}

    report = (work / "eval_results" / "report.md").read_text()
    assert "tiny-base" in report and "top_k_50_num_beams_1_temp_0.8" in report
    # The fine-tuning section carries the run's own measured throughput and memory.
    speed = meta["throughput"]
    assert speed["tokens_per_s"] > 0 and speed["peak_memory_bytes"] > 0
    [row] = [line for line in report.splitlines() if line.startswith("| tiny | peft (")]
    assert f"{speed['tokens_per_s']:,.0f} (last {speed['measured_steps']} steps; " \
           f"{speed['warmup_steps_excluded']} warm-up excluded)" in row
    assert f"{speed['peak_memory_bytes'] / 2**30:.2f} GiB" in row
    assert "full fine-tuning: there is no adapter, so nothing to compare" in row  # merge fidelity
    plots = list((work / "eval_results" / "plots").glob("*.png"))
    assert plots and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    for stage in STAGES:
        assert (work / "logs" / f"{stage}.log").stat().st_size > 0
    assert "report:" in res.stdout and "report.md" in res.stdout


def test_killed_pipeline_resumes_and_ends_with_the_same_tables(run_a, run_b):
    """The pipeline SIGKILLed (whole process group: vLLM workers and engine core too) once generate has
    written its first configs, then rerun: generate resumes with only the missing configs, and every
    response equals the uninterrupted run's, sampling included (per-request seeds), although two other
    processes wrote them."""
    work_a = run_a[0]
    work_b, cfg_path, before, res = run_b
    configs = [c.name for c in expand_sweep(load_config(cfg_path).generation)]
    assert before and len(before) < len(configs), f"the kill landed outside generation: {sorted(before)}"
    responses_a, responses_b = work_a / "llm_responses" / "tiny", work_b / "llm_responses" / "tiny"
    manifest = json.loads((responses_b / "manifest.json").read_text())
    assert set(manifest["configs"]) == set(configs)
    # The rerun generated only the missing configs; the finished ones kept what generate wrote then
    # (the clean stage has filled their `response` since).
    assert sorted(manifest["runs"][-1]["written"]) == sorted(set(configs) - set(before))
    for name, entry in before.items():
        assert manifest["configs"][name] == entry, f"{name} was regenerated by the rerun"
    # one engine for the killed run, one for the rerun
    assert manifest["engine_builds"] == 2 and manifest["runs"][-1]["engine_builds"] == 1
    assert "tiny: " in res.stdout and "engine built 1x" in res.stdout
    assert not list(responses_b.glob(".*.tmp"))  # no half-written file survives a kill
    assert sorted(p.stem for p in responses_b.glob("*.jsonl")) == sorted(configs)
    manifest_a = json.loads((responses_a / "manifest.json").read_text())
    for name in configs:
        assert read_jsonl(responses_b / f"{name}.jsonl") == read_jsonl(responses_a / f"{name}.jsonl"), name
        assert manifest["configs"][name]["inputs"] == manifest_a["configs"][name]["inputs"], name
    assert read_csv(work_b / "eval_results" / "tiny.csv") == read_csv(work_a / "eval_results" / "tiny.csv")


def test_bad_config_stops_before_any_work(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"name: x\nworkdir: {tmp_path / 'work'}\nmodels:\n  - {{name: m, base: b}}\n"
                   "generation: {defaults: {num_beams: 0}}\n")
    res = run_script(cfg)
    assert res.returncode == 2
    assert "generation.defaults.num_beams = 0" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "work").exists()


def test_failed_stage_is_named_with_its_log(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: x\nworkdir: {tmp_path / 'work'}\ndataset: {{source: {tmp_path / 'missing.json'}}}\n"
                   "models:\n  - {name: m, base: b}\n")
    res = run_script(cfg)
    assert res.returncode == 1
    assert "stage 'split' failed" in res.stderr and str(tmp_path / "work" / "logs" / "split.log") in res.stderr
    assert "missing.json" in (tmp_path / "work" / "logs" / "split.log").read_text()
    assert not (tmp_path / "work" / "alpaca_data").exists()


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_python_entry_point_runs_the_same_stages(tmp_path):
    from helpers import run_tunesweep

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: x\nworkdir: {tmp_path / 'work'}\ndataset: {{source: 'builtin:tasks', builtin_rows: 50, "
                   "test_size: 5}\nmodels:\n  - {name: m, base: b}\n")
    res = run_tunesweep("run", "--config", cfg, "--only", "split")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "work" / "alpaca_data" / "split.json").read_text())["test_rows"] == 5
    assert "stage split" in (tmp_path / "work" / "logs" / "split.log").read_text()
    res = run_tunesweep("run", "--config", cfg, "--from", "finetune")
    assert res.returncode == 2 and "stage finetune failed" in res.stderr and "Traceback" not in res.stderr


def test_script_and_run_take_the_stage_list_from_one_place(tmp_path):
    from helpers import run_tunesweep
    from tunesweep.cli import build_parser

    assert STAGES == ("split", "finetune", "generate", "clean", "judge", "score", "report")
    listed = run_tunesweep("stages")
    assert listed.returncode == 0 and listed.stdout.split() == list(STAGES)
    # The shell pipeline knows its stages only through `tunesweep stages`: a stand-in that lists
    # other stages changes what it accepts.
    fake = tmp_path / "fake-tunesweep"
    fake.write_text("#!/bin/sh\n[ \"$1\" = stages ] && printf 'alpha\\nbeta\\n' && exit 0\nexit 9\n")
    fake.chmod(0o755)
    res = subprocess.run(["bash", str(REPO / "hyperparameter_experiments.sh"), "--only", "split"], cwd=REPO,
                         env={**pipeline_env(), "TUNESWEEP": str(fake)}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown stage 'split' (stages: alpha beta)" in res.stderr
    run = next(a for a in build_parser()._subparsers._group_actions[0].choices["run"]._actions if a.dest == "only")
    assert tuple(run.choices) == STAGES


def _bare_env(**extra: str) -> dict:
    """The environment of a new shell after `make setup`: nothing activated, PATH only the system's."""
    env = {k: v for k, v in pipeline_env().items() if k not in ("TUNESWEEP", "TUNESWEEP_VENV", "VIRTUAL_ENV")}
    return {**env, "PATH": "/usr/bin:/bin", **extra}


def test_script_finds_the_environment_when_tunesweep_is_not_on_path(study, tmp_path):
    """`bash hyperparameter_experiments.sh` right after `make setup`, with no venv activated: it runs the
    environment's tunesweep. Here that environment is the one running these tests (TUNESWEEP_VENV), standing
    in for the checkout's .venv that the script finds the same way when the variable is not set."""
    import shutil
    import sys

    assert shutil.which("tunesweep", path="/usr/bin:/bin") is None
    copy = study.copy_to(tmp_path)
    report = copy.root / "eval_results" / "report.md"
    assert not report.exists()
    venv = Path(sys.executable).parent.parent
    res = subprocess.run(["bash", str(REPO / "hyperparameter_experiments.sh"), "--config", str(copy.config),
                          "--only", "report"], cwd=tmp_path, env=_bare_env(TUNESWEEP_VENV=str(venv)),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-2000:])
    assert report.is_file() and "## Verdict" in report.read_text()
    assert "=== report" in res.stdout and "=== score" not in res.stdout


def test_script_without_an_environment_says_what_to_do(tmp_path):
    """A checkout without .venv and no tunesweep on PATH: one line naming `make setup`, exit 2."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    script = checkout / "hyperparameter_experiments.sh"
    script.write_text((REPO / "hyperparameter_experiments.sh").read_text())
    res = subprocess.run(["bash", str(script), "--config", "configs/tiny.yaml"], cwd=tmp_path, env=_bare_env(),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stdout == ""
    [line] = res.stderr.splitlines()
    assert "no `tunesweep` on PATH" in line and str(checkout / ".venv") in line and "make setup" in line
    # A TUNESWEEP_VENV that holds no tunesweep is named the same way.
    res = subprocess.run(["bash", str(script)], cwd=tmp_path, env=_bare_env(TUNESWEEP_VENV=str(tmp_path / "nope")),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and str(tmp_path / "nope") in res.stderr and len(res.stderr.splitlines()) == 1
