"""tracking.backend: mlflow, for real: the SQLite store in the workdir read back with MlflowClient, a real
`mlflow server` on 127.0.0.1 logged to over http and opened in headless Chromium, a server stopped mid-run,
the training process logging its loss while it trains, and backend none never importing mlflow.

No new pipeline run: the tracked study is a copy of conftest's e2e_run (split, a 12-step fine-tune, 13
configs of the fine-tuned model and its base, scores, report) rerun with tracking on, so every stage finds
its work current and only pushes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from helpers import REPO, ROWS, run_tunesweep
from test_report_html import find_chromium
from tunesweep.config import expand_sweep, load_config
from tunesweep.files import read_json
from tunesweep.layout import read_rows

TRACKING = "tracking: {backend: mlflow}\n"


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found: `make setup` installs Debian's chromium where it can run apt-get")
    return path


def needs_mlflow():
    return pytest.importorskip("mlflow", reason="mlflow is the optional `tracking` extra (make setup installs it)")


def copy_study(e2e_run, dest: Path, extra: str = "") -> tuple[Path, Path]:
    """An independent copy of the e2e run's workdir and config (re-pointed), `extra` appended to the config."""
    work, config, _ = e2e_run
    shutil.copytree(work, dest / "work", ignore=shutil.ignore_patterns(".tunesweep.lock"))
    new = dest / "study.yaml"
    new.write_text(config.read_text().replace(str(work), str(dest / "work")) + extra)
    return dest / "work", new


def store_snapshot(client, experiment: str) -> dict:
    """What a store holds for one experiment, without ids and times: {tunesweep.key: (name, kind, parent's key,
    params, latest metrics, history lengths, tags of tunesweep's, artifact paths)}."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    key_of = {r.info.run_id: r.data.tags.get("tunesweep.key") for r in runs}
    out = {}
    for r in runs:
        tags = r.data.tags
        histories = {m: len(client.get_metric_history(r.info.run_id, m)) for m in ("loss", "learning_rate")
                     if m in r.data.metrics}
        artifacts = sorted(a.path for a in client.list_artifacts(r.info.run_id))
        # Not compared: where the workdir is, and digests of report.html (it records when it was written).
        kept = {k: v for k, v in tags.items() if k.startswith("tunesweep.")
                and k not in ("tunesweep.workdir", "tunesweep.synced", "tunesweep.artifacts")}
        out[tags["tunesweep.key"]] = (r.info.run_name, tags.get("tunesweep.kind"),
                                      key_of.get(tags.get("mlflow.parentRunId")), r.data.params, r.data.metrics,
                                      histories, kept, artifacts, r.info.status)
    return out


# --- the study in the SQLite store of its workdir ------------------------------------------------------

@pytest.fixture(scope="module")
def tracked(tmp_path_factory, e2e_run):
    """The e2e study rerun (`tunesweep run`) with tracking: {backend: mlflow}: every stage is current, so this
    is the push of each stage into <workdir>/mlflow.db. Returns (workdir, config, first run, rerun)."""
    needs_mlflow()
    work, config = copy_study(e2e_run, tmp_path_factory.mktemp("tracked"), TRACKING)
    first = run_tunesweep("run", "--config", config, "--limit", ROWS, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_tunesweep("run", "--config", config, "--limit", ROWS, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    return work, config, first, second


def sqlite_client(work: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")


def test_a_study_reads_back_from_sqlite_one_run_per_finetune_and_config(tracked):
    work, config, first, second = tracked
    cfg = load_config(config)
    client = sqlite_client(work)
    exp = client.get_experiment_by_name("e2e")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    by_kind: dict = {}
    for r in runs:
        by_kind.setdefault(r.data.tags["tunesweep.kind"], []).append(r)
    [study] = by_kind["study"]
    assert "mlflow.parentRunId" not in study.data.tags
    assert all(r.data.tags["mlflow.parentRunId"] == study.info.run_id for r in runs if r is not study)
    split = read_json(work / "alpaca_data" / "split.json")
    assert study.data.params["split.test_sha256"] == split["test_sha256"]
    assert study.data.params["models.tiny.train.max_steps"] == "12"
    assert {"report.html", "report.md", "tables"} <= {a.path for a in client.list_artifacts(study.info.run_id)}
    assert "tables/all.csv" in {a.path for a in client.list_artifacts(study.info.run_id, "tables")}

    [tune] = by_kind["finetune"]
    record = read_json(work / "finetuned_models" / "tiny" / "tunesweep.json")
    history = client.get_metric_history(tune.info.run_id, "loss")
    assert [e["step"] for e in record["loss_history"]] == [1, 4, 8, 12]  # 12 steps, logged every 4 and the first
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (e["step"], e["loss"]) for e in record["loss_history"]]
    assert tune.data.params["train.learning_rate"] == "0.003" and tune.data.params["method"] == "full"
    assert tune.data.metrics["trained_tokens_per_s"] == record["throughput"]["tokens_per_s"]
    manifest = read_json(work / "llm_responses" / "tiny" / "manifest.json")
    assert tune.data.tags["tunesweep.checkpoint_sha256"] == manifest["checkpoint_hash"]

    configs = [dc.name for dc in expand_sweep(cfg.generation)]
    evals = {(r.data.params["model"], r.data.params["config"]): r for r in by_kind["eval"]}
    assert sorted(evals) == sorted((t, c) for t in ("tiny", "tiny-base") for c in configs)
    for target in ("tiny", "tiny-base"):
        for row in read_rows(work / "eval_results" / f"{target}.csv"):
            metrics = evals[(target, row["config"])].data.metrics
            assert metrics["bleu"] == float(row["bleu"])
            assert metrics["rougeL_ci_high"] == float(row["rougeL_ci_high"])
    # The paired difference to the centre, with its Holm p, as comparisons.csv has it.
    [cmp] = [r for r in read_rows(work / "eval_results" / "comparisons.csv")
             if r["model"] == "tiny" and r["metric"] == "bleu" and r["versus"] == "centre"
             and r["config"] == "top_k_10_num_beams_1_temp_0.8"]
    metrics = evals[("tiny", "top_k_10_num_beams_1_temp_0.8")].data.metrics
    assert metrics["bleu_diff_vs_centre"] == float(cmp["diff"])
    assert metrics["bleu_diff_vs_centre_p_holm"] == float(cmp["p_holm"])
    beam = evals[("tiny", "top_k_50_num_beams_5_temp_0.8")].data.params
    assert beam["mode"] == "beam" and json.loads(beam["ignored"]) == ["top_k", "temperature"]

    # The rerun found every run by its key: no run added, nothing changed, no warning.
    assert len(runs) == 1 + 1 + 2 * len(configs)
    assert "tracking: could not" not in first.stderr + second.stderr
    pushes = [line for line in second.stderr.splitlines() if "tracking:" in line]
    assert len(pushes) == 3 and all(f"tracking: {len(runs)} runs" in p and "(0 new," in p for p in pushes)
    again = client.search_runs([exp.experiment_id], max_results=1000)
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)
    assert len(client.get_metric_history(tune.info.run_id, "loss")) == 4


# --- a tracking server ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(store: Path, port: int):
    """A real `mlflow server` on 127.0.0.1:port (its own SQLite store and artifact folder under `store`)."""
    store.mkdir(parents=True, exist_ok=True)
    mlflow_cli = shutil.which("mlflow", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                             os.environ.get("PATH", "")]))
    cmd = ([mlflow_cli] if mlflow_cli else [sys.executable, "-m", "mlflow"]) + [
        "server", "--backend-store-uri", f"sqlite:///{store / 'server.db'}", "--artifacts-destination",
        str(store / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    log = open(store / f"server-{port}.log", "a")
    # No background job runner (its consumers are for GenAI jobs): a lighter server that starts sooner.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(cmd, cwd=store, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (store / f"server-{port}.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as res:
                    if res.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the MLflow server did not answer within 180 s"
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_a_tracking_server_gets_the_same_runs_and_chromium_shows_them(tracked, tmp_path, chromium):
    from mlflow import MlflowClient

    work, config, _, _ = tracked
    with mlflow_server(tmp_path / "server", free_port()) as uri:
        res = run_tunesweep("track", "--config", config, "--tracking-uri", uri)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "tracking: 28 runs" in res.stderr and "(28 new, 0 updated, 0 unchanged)" in res.stderr
        server = store_snapshot(MlflowClient(tracking_uri=uri), "e2e")
        assert server == store_snapshot(sqlite_client(work), "e2e")
        exp = MlflowClient(tracking_uri=uri).get_experiment_by_name("e2e").experiment_id
        # The runs tab sorted by BLEU, best first: sorted by anything but time, MLflow lists the runs flat
        # (by time it nests the children under the study's run, collapsed).
        page = f"{uri}/#/experiments/{exp}/runs?orderByKey=" + urllib.parse.quote("metrics.`bleu`") + "&orderByAsc=false"
        shot = Path(os.environ.get("TUNESWEEP_MLFLOW_SCREENSHOT", tmp_path / "mlflow-experiment.png"))
        dom = open_in_chromium(chromium, page, shot)
    names = sorted(v[0] for v in server.values())
    assert len(names) == 1 + 1 + 26 and "finetune tiny" in names and "tiny top_k_50_num_beams_5_temp_0.8" in names
    shown = set(re.findall(r">([^<>]+)<", dom))  # every text node of the rendered page
    assert [n for n in names if n not in shown] == [] and "28 matching runs" in " ".join(re.sub(r"<[^>]+>", " ", dom).split())
    assert shot.is_file() and shot.stat().st_size > 10_000


def open_in_chromium(chromium: str, page: str, screenshot: Path) -> str:
    """The DOM of `page` after its scripts ran (MLflow's UI loads its runs with fetch calls), and a screenshot."""
    common = ["--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
              "--disable-extensions", "--disable-dev-shm-usage", "--window-size=1600,1000",
              "--virtual-time-budget=20000", "--run-all-compositor-stages-before-draw"]
    out = {}
    for flag in ("--dump-dom", f"--screenshot={screenshot}"):
        with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
            res = subprocess.run([chromium, *common, f"--user-data-dir={profile}", flag, page], capture_output=True,
                                 text=True, timeout=180)
        assert res.returncode == 0, res.stderr[-2000:]
        out[flag] = res.stdout
    return out["--dump-dom"]


def test_a_server_stopped_mid_run_costs_one_warning_line_and_track_pushes_the_rest(tracked, e2e_run, tmp_path):
    from mlflow import MlflowClient

    work, config = copy_study(e2e_run, tmp_path)
    for p in list((work / "eval_results").glob("*.csv")) + list((work / "eval_results").glob("*.md")) + [
            work / "eval_results" / "metrics.json", work / "eval_results" / "report.html"]:
        p.unlink()
    port = free_port()
    store = tmp_path / "server"
    with mlflow_server(store, port) as uri:
        res = run_tunesweep("run", "--config", config, "--limit", ROWS, "--only", "finetune", "--tracking-uri", uri)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "tracking: 2 runs" in res.stderr  # the study and its fine-tune: nothing is scored yet
    # The server is gone: the rest of the run writes its tables and warns once per push, in one line each.
    res = run_tunesweep("run", "--config", config, "--limit", ROWS, "--from", "generate", "--tracking-uri", uri)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (work / "eval_results" / "all.csv").is_file() and (work / "eval_results" / "report.html").is_file()
    warnings = [line for line in res.stderr.splitlines() if "tracking:" in line]
    assert len(warnings) == 2 and all(f"could not log to {uri}" in w and "tunesweep track" in w for w in warnings)
    assert "Traceback" not in res.stderr and "Retrying" not in res.stderr
    with mlflow_server(store, port):
        res = run_tunesweep("track", "--config", config, "--tracking-uri", uri)
        assert res.returncode == 0, res.stderr[-3000:]
        server = store_snapshot(MlflowClient(tracking_uri=uri), "e2e")
    assert server == store_snapshot(sqlite_client(tracked[0]), "e2e")
    # Pushing to a server that is down is the `track` command's own error: one line, exit 2.
    res = run_tunesweep("track", "--config", config, "--tracking-uri", uri)
    assert res.returncode == 2 and res.stderr.strip().count("\n") == 0, res.stderr
    assert res.stderr.startswith(f"tunesweep: error: tracking: could not push to {uri}")


# --- live training curves -------------------------------------------------------------------------------

def test_the_training_process_logs_each_step_into_the_finetunes_run_while_it_trains(tmp_path, tiny_model_dir):
    needs_mlflow()
    from tunesweep.config import parse_config
    from tunesweep.data import split_dataset
    from tunesweep.track import sync
    from tunesweep.train import finetune

    split_dataset("builtin:tasks", tmp_path, 8, seed=0, builtin_rows=120)
    cfg = parse_config({"name": "live", "workdir": str(tmp_path), "seed": 0, "tracking": {"backend": "mlflow"},
                        "models": [{"name": "m", "base": str(tiny_model_dir), "backend": "peft",
                                    "max_seq_length": 256, "lora": {"r": 4, "alpha": 8},
                                    "train": {"max_steps": 4, "batch_size": 4, "grad_accum": 1,
                                              "learning_rate": 2e-3, "logging_steps": 1, "save_steps": 100}}]})
    [record] = finetune(cfg)
    # Nothing was pushed after training (that is the command line's job): what the run holds, the training
    # process logged, step by step, before it finished.
    client = sqlite_client(tmp_path)
    exp = client.get_experiment_by_name("live")
    [run] = client.search_runs([exp.experiment_id], filter_string="tags.`tunesweep.kind` = 'finetune'")
    assert run.info.status == "RUNNING" and run.data.tags["tunesweep.key"].startswith("finetune/m/")
    [study] = client.search_runs([exp.experiment_id], filter_string="tags.`tunesweep.kind` = 'study'")
    assert run.data.tags["mlflow.parentRunId"] == study.info.run_id
    live = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in live] == [(e["step"], e["loss"]) for e in record["loss_history"]]
    assert len(live) == 4
    finished = record["finished_at"]
    from datetime import datetime

    assert max(m.timestamp for m in live) <= datetime.fromisoformat(finished).timestamp() * 1000 + 1000
    sync(cfg)  # the push after training completes the run and adds no second copy of a step
    done = client.get_run(run.info.run_id)
    assert done.info.status == "FINISHED" and done.data.params["lora.r"] == "4"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4
    assert len(client.search_runs([exp.experiment_id])) == 2


# --- backend none ----------------------------------------------------------------------------------------

def test_backend_none_never_imports_mlflow(e2e_run, tmp_path):
    """The stages that push (finetune, score, report) on a copy of the e2e study with tracking left at
    none, in a fresh interpreter in which `import mlflow` fails."""
    work, config = copy_study(e2e_run, tmp_path)
    # Asking whether mlflow is installed is allowed (accelerate and transformers do, at import); importing it
    # fails.
    code = f"""
import importlib.abc, importlib.machinery, sys
class Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError("mlflow is imported although tracking.backend is none")
    def exec_module(self, module):
        pass
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mlflow" or name.startswith("mlflow."):
            return importlib.machinery.ModuleSpec(name, Refuse())
sys.meta_path.insert(0, Block())
from tunesweep.cli import main
for stage in ("finetune", "score", "report"):
    assert main([stage, "--config", {str(config)!r}]) == 0
import tunesweep.track, tunesweep.tracking
assert not [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]
print("no mlflow")
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "no mlflow" in res.stdout and "tracking" not in res.stderr


def test_tracking_settings_are_checked_and_the_default_store_is_in_the_workdir(tmp_path):
    from tunesweep.config import parse_config
    from tunesweep.errors import UserError
    from tunesweep.tracking import tracking_uri

    base = {"name": "x", "workdir": str(tmp_path), "models": [{"name": "m", "base": "b"}]}
    cfg = parse_config(base)
    assert cfg.tracking.backend == "none"
    assert tracking_uri(parse_config({**base, "tracking": {"backend": "mlflow"}})) == \
        f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    for bad, key in [({"backend": "wandb"}, "tracking.backend"), ({"uri": " "}, "tracking.uri")]:
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            parse_config({**base, "tracking": bad})
    with pytest.raises(UserError, match="unknown key 'tracking.url'"):
        parse_config({**base, "tracking": {"url": "http://x"}})
    config = tmp_path / "c.yaml"
    config.write_text(f"name: x\nworkdir: {tmp_path / 'w'}\nmodels: [{{name: m, base: b}}]\n")
    res = run_tunesweep("track", "--config", config)
    assert res.returncode == 2 and "tracking.backend is 'none'" in res.stderr and res.stderr.count("\n") == 1
