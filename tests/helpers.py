"""Helpers for tests (import as `from helpers import ...`; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_tunesweep(*args, cwd: Path | None = None, timeout: int = 900, env: dict | None = None):
    """Run the console script as a user would; returns the CompletedProcess (text mode)."""
    return subprocess.run(
        [sys.executable, "-m", "tunesweep", *map(str, args)],
        cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def kill_when(cmd: list, ready, timeout: float, what: str, **popen_kwargs) -> None:
    """Start `cmd` in its own process group, wait until `ready()` is true, then SIGKILL the group
    (the command and everything it started: vLLM workers, engine cores), as a user's kill would."""
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=popen_kwargs.pop("cwd", REPO), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, **popen_kwargs)
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"the run ended before {what}"
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def exit_at_once(*args) -> None:
    """A generation worker that dies without a word (as one killed by the OOM killer would)."""
    os._exit(3)


# --- the study the `study` fixture (conftest.py) produces ----------------------------------------

STUDY_ROWS = 20  # --limit: the first 20 of the 24 test rows
STUDY_MAX_NEW = 16
# 13 configs; beam width 4 is in the sweep so vLLM's beam search can be compared with transformers'.
STUDY_SWEEP = "{top_k: [10, 25, 40, 75], num_beams: [2, 4, 5, 10], temperature: [0.0, 0.25, 0.5, 1.0]}"
STUDY_CONFIG = """\
name: study
workdir: {workdir}
seed: 42
dataset: {{source: builtin:tasks, builtin_rows: 300, test_size: 24}}
models:
  - name: tiny
    base: {base}
    lora: null
    evaluate_base: {evaluate_base}
generation:
  backend: vllm
  max_new_tokens: {max_new}
  defaults: {{top_k: 50, num_beams: 1, temperature: 0.8}}
  sweep: {sweep}
  # bfloat16: the CPU path must use float32 anyway. enforce_eager: no torch.compile of the tiny model, which
  # costs more than the whole tiny sweep (an engine start 54 s compiled against 51 s eager with the compile
  # cache warm, 96 s with it cold, on a busy 2-core machine; the same tokens either way).
  engine: {{max_model_len: {max_len}, dtype: bfloat16, enforce_eager: true}}
evaluation:
  metrics: [bleu, rougeL, bertscore, perplexity]
  bertscore: {{model: null}}
  bootstrap: 50
  human: {{rows_per_config: 3, scale_min: 1, scale_max: 5}}
"""


def study_yaml(workdir: Path, base: Path, max_new: int = STUDY_MAX_NEW, sweep: str = STUDY_SWEEP,
               max_len: int = 512, evaluate_base: bool = True) -> str:
    """The study's config (conftest.study), or a variant of it (test_generate.py: other sweeps, no base rows)."""
    return STUDY_CONFIG.format(workdir=workdir, base=base, max_new=max_new, sweep=sweep, max_len=max_len,
                               evaluate_base=str(evaluate_base).lower())


@dataclass
class Study:
    root: Path  # the workdir
    config: Path  # the YAML file
    summaries: dict  # {target: what run_target returned}

    def copy_to(self, dest: Path) -> "Study":
        """An independent copy (tests that change files work on one): workdir and config, re-pointed."""
        shutil.copytree(self.root, dest / "work")
        config = dest / "study.yaml"
        config.write_text(self.config.read_text().replace(str(self.root), str(dest / "work")))
        return Study(dest / "work", config, self.summaries)



# --- the end-to-end study of test_pipeline.py (conftest.e2e_run runs it once per session) -------------

ROWS = 6
CONFIG = """\
name: e2e
workdir: {workdir}
seed: 7
dataset: {{source: "builtin:tasks", builtin_rows: 400, test_size: 12}}
models:
  - name: tiny
    base: {base}
    backend: peft
    max_seq_length: 128
    lora: null
    train: {{epochs: 1, max_steps: 12, batch_size: 8, grad_accum: 1, learning_rate: 3.0e-3, logging_steps: 4, save_steps: 6}}
    evaluate_base: {evaluate_base}
generation:
  max_new_tokens: 8
  defaults: {{top_k: 50, num_beams: 1, temperature: 0.8}}
  sweep: {{top_k: [10, 25, 40, 75], num_beams: [2, 3, 5, 10], temperature: [0.0, 0.25, 0.5, 1.0]}}
  engine: {{max_model_len: 256, dtype: float32, enforce_eager: true}}   # as the study's: no torch.compile
evaluation:
  bertscore: {{model: null}}
  bootstrap: 50
"""


def pipeline_cmd(cfg: Path, *extra: str) -> list[str]:
    return ["bash", str(REPO / "hyperparameter_experiments.sh"), "--config", str(cfg), "--limit", str(ROWS), *extra]


def pipeline_env() -> dict:
    # The script calls `tunesweep`: the console script of the interpreter running the tests.
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def make_study(root: Path, base_src: Path, evaluate_base: bool) -> Path:
    base = root / "bases" / "tiny"
    shutil.copytree(base_src, base)
    cfg = root / "study.yaml"
    cfg.write_text(CONFIG.format(workdir=root / "work", base=base, evaluate_base=str(evaluate_base).lower()))
    return cfg


def vouch_for_responses(workdir: Path, target: str, checkpoint: str | None = None, cfg=None) -> dict:
    """Make hand-written llm_responses/<target>/*.jsonl pass as the current run's, as generate and clean
    would: alpaca_data/test.jsonl holds their rows (id, reference as `output`) unless it exists, manifest.json
    an entry per file (checkpoint hash, test-set hash, generated_sha256, and with `cfg` the settings that
    shape responses, as a vLLM run of `cfg` records them), and cleaning.json the digest of every file's
    `response` fields where they are filled. `checkpoint` defaults to finetuned_models/<target>/, created
    with a stand-in config.json when missing."""
    from tunesweep.files import read_jsonl, write_json, write_jsonl
    from tunesweep.layout import Workdir, response_settings, test_set_sha256
    from tunesweep.records import cleaned_digest, generated_digest
    from tunesweep.provenance import checkpoint_identity

    paths = Workdir(workdir)
    if checkpoint is None:
        folder = paths.model_dir(target)
        if not folder.is_dir():
            folder.mkdir(parents=True)
            (folder / "config.json").write_text("{}\n")
        checkpoint = str(folder)
    files = sorted(p for p in paths.responses_dir(target).glob("*.jsonl"))
    first = read_jsonl(files[0])
    if not paths.split_file("test").is_file():
        write_jsonl(paths.split_file("test"), [{"id": r["id"], "instruction": "", "input": "",
                                                "output": r["reference"]} for r in first])
    ident = checkpoint_identity(checkpoint)
    test_sha = test_set_sha256(workdir)
    settings = {} if cfg is None else {"backend": "vllm", "settings": response_settings(cfg, "vllm")}
    configs = {p.stem: {"checkpoint_hash": ident["sha256"], "test_set_sha256": test_sha,
                        "generated_sha256": generated_digest(p), **settings} for p in files}
    manifest = {"model": target, "checkpoint": checkpoint, "checkpoint_hash": ident["sha256"],
                "checkpoint_stat": ident["stat"], "test_rows": len(first), "limit": None,
                "test_set_sha256": test_sha, "configs": configs}
    write_json(paths.manifest(target), manifest)
    written = {p.stem: read_jsonl(p) for p in files}
    cleaned = {c: {"cleaned_sha256": cleaned_digest(recs)} for c, recs in written.items()
               if any(isinstance(r.get("response"), str) for r in recs)}
    if cleaned:
        write_json(paths.cleaning(target), {"configs": cleaned})
    return manifest
