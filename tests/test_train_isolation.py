"""Each model trains in a process of its own: what Unsloth patches at import never reaches another
model, the post-merge check or a later stage; a training process that dies is one line naming the
model and its log, and the rerun resumes; every trained model records its measured throughput."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from helpers import REPO
from tunesweep.files import read_json

STAND_IN = Path(__file__).resolve().parent / "unsloth_stand_in"

STUDY = """\
name: isolation
workdir: {work}
seed: 3
dataset: {{source: "builtin:tasks", builtin_rows: 120, test_size: 6}}
models:
  - name: first-unsloth
    base: {base}
    backend: unsloth
    max_seq_length: 128
    lora: {{r: 8, alpha: 16, target_modules: [q_proj, v_proj]}}
    train: {{max_steps: 2, batch_size: 4, grad_accum: 1, learning_rate: 1.0e-3, logging_steps: 1, save_steps: 100}}
  - name: then-peft
    base: {base}
    backend: peft
    max_seq_length: 128
    lora: {{r: 8, alpha: 16, target_modules: [q_proj, v_proj]}}
    train: {{max_steps: {peft_steps}, batch_size: 2, grad_accum: 1, learning_rate: 1.0e-3, logging_steps: 5, save_steps: 5}}
generation:
  backend: hf
  max_new_tokens: 6
  sweep: {{temperature: [0.0]}}
evaluation:
  metrics: [bleu, perplexity]
  bootstrap: 0
"""


def write_study(root: Path, base: Path, peft_steps: int = 2) -> Path:
    cfg = root / "study.yaml"
    cfg.write_text(STUDY.format(work=root / "work", base=base, peft_steps=peft_steps))
    return cfg


def tunesweep(*args, env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunesweep", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, **kwargs)


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_unsloth_patches_reach_no_later_model_or_stage(tmp_path, tiny_model_dir):
    """The H100 failure, on a CPU: the stand-in patches LlamaForCausalLM.forward at import as Unsloth does.
    Trained in the stage's process, the post-merge check, the next (peft) model, hf generation and
    perplexity would all run the patched forward and die on `max_seq_length`."""
    calls = tmp_path / "calls.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STAND_IN), os.environ.get("PYTHONPATH", "")]),
           "UNSLOTH_STAND_IN_CALLS": str(calls)}
    res = tunesweep("run", "--config", write_study(tmp_path, tiny_model_dir), env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert [c[0] for c in map(json.loads, calls.read_text().splitlines())] == [
        "import", "from_pretrained", "get_peft_model", "save_pretrained_merged"]  # the stand-in trained model 1
    work = tmp_path / "work"
    first = read_json(work / "finetuned_models" / "first-unsloth" / "tunesweep.json")
    second = read_json(work / "finetuned_models" / "then-peft" / "tunesweep.json")
    assert (first["backend"], second["backend"]) == ("unsloth", "peft")
    assert first["post_merge_check"]["prompts"] == 4 and first["post_merge_check"]["problems"] == []
    ppl = (work / "eval_results" / "perplexity.csv").read_text()
    assert "first-unsloth" in ppl and "then-peft" in ppl
    for model in ("first-unsloth", "then-peft"):
        rows = (work / "llm_responses" / model / "top_k_50_num_beams_1_temp_0.0.jsonl").read_text().splitlines()
        assert len(rows) == 6


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_a_killed_training_process_is_one_line_and_the_rerun_resumes(tmp_path, tiny_model_dir):
    env = {**os.environ}
    cfg = write_study(tmp_path, tiny_model_dir, peft_steps=40)
    assert tunesweep("split", "--config", cfg, env=env, timeout=300).returncode == 0
    models = tmp_path / "work" / "finetuned_models"
    proc = subprocess.Popen([sys.executable, "-m", "tunesweep", "finetune", "--config", str(cfg), "--model", "then-peft"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((models / "then-peft.training").glob("checkpoint-*/trainer_state.json")):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    [child] = [p for p in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
    os.kill(child.pid, signal.SIGKILL)  # as the OOM killer would: the stage's process survives it
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    # One error line (multiprocessing's resource tracker may add its own note about the killed process).
    # (after the killed progress bar's last \r-drawn state, on the same terminal line)
    lines = [x[x.index("tunesweep: error:"):] for x in err.splitlines() if "tunesweep: error:" in x]
    assert len(lines) == 1, err[-3000:]
    line = lines[0]
    assert "finetune then-peft" in line and "SIGKILL" in line and "then-peft.training/train.log" in line
    assert "Traceback" not in err
    assert not (models / "then-peft").exists()  # nothing half-trained was renamed into place
    saved = max(int(p.parent.name.split("-")[1]) for p in (models / "then-peft.training").glob("checkpoint-*/trainer_state.json"))
    res = tunesweep("finetune", "--config", cfg, "--model", "then-peft", env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rec = read_json(models / "then-peft" / "tunesweep.json")
    assert rec["resumed_from_step"] == saved and rec["global_step"] == 40
    # The loss logged before the kill survives in the history: training did not restart at step 0.
    # (A kill of the whole process group, before and after the last checkpoint: test_train.py.)
    assert rec["loss_history"][0]["step"] <= saved
    steps = [e["step"] for e in rec["loss_history"]]
    assert steps == sorted(set(steps)) and steps[-1] == 40


# --- the process-group watchdog of a child that starts processes of its own (the vLLM engine child) ---

GROUP_CHILD = """
import os, subprocess, sys, time
from tunesweep.isolation import _die_with_parent
_die_with_parent(int(sys.argv[1]), group=True)
sleeper = subprocess.Popen(["sleep", "600"])
print(os.getpid(), sleeper.pid, flush=True)
if sys.argv[2] == "stay":
    time.sleep(600)
sys.stdin.readline()  # "leave": exit once the test has looked
"""


def _group_child(parent_pid: int, how: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", GROUP_CHILD, str(parent_pid), how], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, **popen)


def test_the_group_watchdog_kills_the_childs_processes_when_its_parent_is_sigkilled():
    """A stand-in parent starts the child (which starts `sleep 600`, as vLLM's worker starts EngineCore)
    and is SIGKILLed: the child and its sleep are gone within 10 s, with no thread of the child involved."""
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    child = _group_child(parent.pid, "stay")
    try:
        child_pid, sleeper_pid = map(int, child.stdout.readline().split())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        _, alive = psutil.wait_procs([psutil.Process(child_pid), psutil.Process(sleeper_pid)], timeout=10)
        assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        for proc in (parent, child):
            if proc.poll() is None:
                proc.kill()
        child.wait()


def test_the_group_watchdog_ends_with_a_child_that_ends_normally():
    """A child that returns leaves neither its processes nor the watchdog behind (a thread watching the
    parent, as before, died with the child and left `sleep` running)."""
    child = _group_child(os.getpid(), "leave")
    child_pid, sleeper_pid = map(int, child.stdout.readline().split())
    watchdogs = [p for p in psutil.Process(child_pid).children() if "-S" in p.cmdline()]
    assert len(watchdogs) == 1
    child.communicate("\n", timeout=30)
    _, alive = psutil.wait_procs([psutil.Process(sleeper_pid), *watchdogs], timeout=10)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
