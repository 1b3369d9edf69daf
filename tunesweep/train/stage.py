"""The fine-tuning stage: alpaca_data/train.jsonl -> finetuned_models/<model>/ (a merged checkpoint).

`finetune(cfg, ...)` runs every selected model through one of two backends behind the same small
interface (`peft_backend.train` / `unsloth_backend.train`, each given a `TrainJob`):
- peft: transformers + PEFT + TRL's SFTTrainer on a CPU or CUDA (LoRA, QLoRA, or full fine-tuning);
- unsloth: Unsloth's FastLanguageModel on CUDA, imported only when this backend runs.

Each model trains in a spawned process of its own (worker.py), so nothing Unsloth patches at import
reaches another model, the post-merge check or a later stage; a process that dies is reported as one
line naming the model and its log, finetuned_models/<model>.training/train.log, and its checkpoints
stay for the rerun to resume from.

Both train with TRL's completion-only loss on {"prompt", "completion"} rows (TRL masks the prompt
and appends EOS), with a pad token distinct from EOS, so the model learns to stop.

Layout under <workdir>/finetuned_models/:
  <model>/               the merged checkpoint (what vLLM and transformers load), adapter/ (LoRA
                         runs), tunesweep.json (settings, data hash, loss history, versions, checks)
  <model>.training/      TRL checkpoints while training (a killed run resumes from the newest),
                         inputs.json (what they were trained from), runs/ (tensorboard logs)
  .<model>.staging/      the next <model>/ while it is being written; renamed into place at the end

A model whose inputs (its config section, the base, the train-data hash, template, seed, backend)
match its tunesweep.json is skipped; `force=True` retrains it.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from ..backends import pick_train_backend
from ..config import ExperimentConfig, ModelConfig
from ..errors import UserError
from ..files import fingerprint, read_json, sha256_file, write_json
from ..isolation import run_isolated
from ..layout import Workdir, load_split
from ..loading import check_checkpoint_folder
from ..provenance import library_versions, logic, recorded_logic
from ..tracking import open_finetune_run
from ..templates import build_training_pair
from .check import CHECK_PROMPTS, post_merge_check, warn_on_check
from .job import TrainJob, TrainResult
from .resume import (RECORD_NAME, effective_train, is_current, prepare_training_dir, swap_into_place,
                     training_inputs)
from .worker import train_and_check

log = logging.getLogger(__name__)
LOG_NAME = "train.log"  # in finetuned_models/<model>.training/: the training process's own log
# Bump when training writes other weights (or another tunesweep.json) for the same inputs.
TRAIN_VERSION = 1


def train_logic(workdir) -> dict:
    """This stage's logic version over split.json's (the data it trains on)."""
    return logic("train", TRAIN_VERSION, recorded_logic(Workdir(workdir).split_meta))


def check_report_to(report_to: str) -> None:
    need = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}.get(report_to, ())
    if need:
        import importlib.util

        if not any(importlib.util.find_spec(m) for m in need):
            raise UserError(f"train.report_to = {report_to!r}: the {need[0]} package is not installed "
                            f"(pip install {need[0]}, or set report_to: none)")

# --- the stage ----------------------------------------------------------------------------------

def resolve_backend(m: ModelConfig, requested: Optional[str]) -> tuple[str, str, str]:
    """(backend, why, requested): `auto` means unsloth on CUDA when it imports, else peft."""
    requested = requested or m.backend
    if m.lora is None:
        if requested == "unsloth":
            raise UserError(f"models.{m.name}: backend 'unsloth' with lora: null (full fine-tuning) is not supported "
                            "here; use backend: peft or give a lora section")
        if requested == "auto":
            return "peft", "full fine-tuning (lora: null) runs on the peft backend", requested
    if m.load_in_4bit and m.lora is None:
        raise UserError(f"models.{m.name}: load_in_4bit: true needs a lora section (4-bit weights cannot be "
                        "fully fine-tuned)")
    backend, why = pick_train_backend(requested)
    return backend, why, requested


def finetune(cfg: ExperimentConfig, model: Optional[str] = None, backend: Optional[str] = None,
             max_steps: Optional[int] = None, force: bool = False) -> list[dict]:
    """Fine-tune the selected models; returns one record per model (its tunesweep.json + status)."""
    if model and model.endswith("-base"):
        log.info("%s is an un-tuned base model: nothing to fine-tune", model)
        return []
    cfg = cfg.for_execution()
    models = cfg.selected_models(model)
    cfg.pin_bases(models)  # hub bases: resolved to one commit's snapshot folder for this whole stage
    for m in models:  # a damaged local base is one line now, not a traceback from the training process
        check_checkpoint_folder(m.base_checkpoint, "base model")
    train_records = load_split(cfg.workdir, "train")
    test_records = load_split(cfg.workdir, "test")
    data_sha = sha256_file(Workdir(cfg.workdir).split_file("train"))
    pairs = [build_training_pair(r, cfg.template) for r in train_records]
    if cfg.execution.backend == "ray":
        return finetune_on_ray(cfg, models, pairs, test_records, data_sha, backend, max_steps, force)
    results = []
    for m in models:
        results.append(finetune_one(cfg, m, pairs, test_records, data_sha, backend, max_steps, force))
    return results


def finetune_on_ray(cfg: ExperimentConfig, models: list[ModelConfig], pairs: list[dict], test_records: list[dict],
                    data_sha: str, backend_override: Optional[str], max_steps: Optional[int], force: bool) -> list[dict]:
    """Each model's training job a Ray task on its own GPU(s) (execution.train_gpus), all at once; the
    task runs the same isolated training process as a local run, in the shared workdir. The records
    are written here, by the driver, as each job's result comes back."""
    from ..backends import cuda_visible
    from ..cluster import first_line, join, train_gpus

    gpus = train_gpus(cfg, cuda_visible())
    ray, shared = join(cfg, "train_gpus", gpus, "fine-tune job")
    from ray.exceptions import RayTaskError

    task = ray.remote(train_job).options(num_cpus=cfg.execution.cpus, num_gpus=gpus,
                                         max_retries=cfg.execution.retries)
    prepared, results, failures = [], {}, []
    for m in models:
        prep = prepare_one(cfg, m, pairs, test_records, data_sha, backend_override, max_steps, force)
        if isinstance(prep, dict):
            results[m.name] = prep
            continue
        log.info("%s: submitted as a Ray task (%g CPUs, %g GPUs)", m.name, cfg.execution.cpus, gpus)
        prepared.append((prep, task.remote(prep.job, prep.backend, prep.check_args, prep.log_file, shared)))
    for prep, ref in prepared:
        try:
            result, check, wall = ray.get(ref)
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            first = (str(cause or exc).strip().splitlines() or ["failed"])[0]
            failures.append(first if isinstance(cause, UserError) else f"finetune {prep.model.name}: {first}")
            continue
        except Exception as exc:  # the task's worker died more often than execution.retries allows
            failures.append(f"finetune {prep.model.name}: the Ray task failed {cfg.execution.retries + 1} time(s): "
                            f"{first_line(exc)}")
            continue
        results[prep.model.name] = finish_one(cfg, prep, result, check, wall)
    if failures:
        raise UserError(failures[0] + (f" (and {len(failures) - 1} more model(s) failed)" if len(failures) > 1 else ""))
    return [results[m.name] for m in models]


def recorded_base_identity(out_dir: Path) -> Optional[dict]:
    try:
        inputs = read_json(out_dir / RECORD_NAME)["inputs"]
        return {**inputs["base"], "stat": inputs["base_stat"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class Prepared:
    """One model's training job, ready to run here or in a Ray task, and what its record needs."""

    model: ModelConfig
    job: TrainJob
    backend: str
    why: str
    requested: str
    method: str
    train: dict
    inputs: dict
    inputs_fp: str
    resume: Optional[str]
    check_args: tuple
    log_file: Path
    out_dir: Path
    data_sha: str


def train_job(job: TrainJob, backend: str, check_args: tuple, log_file: Path,
              shared: Optional[tuple] = None) -> tuple[TrainResult, dict, float]:
    """(result, post-merge check, wall seconds) of one job: training in its own spawned process, the
    check in one that never imported unsloth. Runs in the stage's process, or in a Ray task (`shared`:
    the workdir probe every Ray worker must see)."""
    if shared is not None:
        from ..cluster import check_shared

        check_shared(*shared, f"finetune {job.name}")
    start = time.time()
    result: TrainResult = run_isolated(train_and_check, job, backend, check_args, name=f"finetune {job.name}",
                                       log_file=log_file)
    check = result.post_merge_check
    if check is None:  # the training process imported unsloth: check in one that never did
        check = run_isolated(post_merge_check, job.output_dir, *check_args, name=f"post-merge check {job.name}",
                             log_file=log_file)
    return result, check, time.time() - start


def finetune_one(cfg: ExperimentConfig, m: ModelConfig, pairs: list[dict], test_records: list[dict],
                 data_sha: str, backend_override: Optional[str], max_steps: Optional[int], force: bool) -> dict:
    prep = prepare_one(cfg, m, pairs, test_records, data_sha, backend_override, max_steps, force)
    if isinstance(prep, dict):
        return prep
    result, check, wall = train_job(prep.job, prep.backend, prep.check_args, prep.log_file)
    return finish_one(cfg, prep, result, check, wall)


def prepare_one(cfg: ExperimentConfig, m: ModelConfig, pairs: list[dict], test_records: list[dict],
                data_sha: str, backend_override: Optional[str], max_steps: Optional[int],
                force: bool) -> "Prepared | dict":
    """The job of one model, or its record with status "skipped" when it is current."""
    backend, why, requested = resolve_backend(m, backend_override)
    train = effective_train(m, max_steps, cfg.execution.cpus)
    paths = Workdir(cfg.workdir)
    out_dir = paths.model_dir(m.name)
    inputs = training_inputs(cfg, m, backend, train, data_sha, previous=recorded_base_identity(out_dir))
    inputs["logic"] = train_logic(cfg.workdir)
    identity = {k: v for k, v in inputs.items() if k != "base_stat"}  # what decides "same training"
    inputs_fp = fingerprint(identity)
    current = None if force else is_current(out_dir, inputs_fp)
    if current is not None:
        log.info("%s: up to date (%s), skipping; --force retrains", m.name, out_dir)
        versions = library_versions()
        changed = {k: (v, versions.get(k)) for k, v in current.get("versions", {}).items() if versions.get(k) != v}
        if changed:
            log.warning("%s: trained with other library versions %s; --force retrains with these", m.name, changed)
        return {**current, "status": "skipped"}

    check_report_to(train["report_to"])
    log.info("%s: backend %s (%s%s)", m.name, backend, why, "" if requested == backend else f"; asked for {requested}")
    training_dir, staging = paths.training_dir(m.name), paths.staging_dir(m.name)
    shutil.rmtree(staging, ignore_errors=True)
    resume = prepare_training_dir(training_dir, identity, force)
    job = TrainJob(name=m.name, model=m, train=train, seed=cfg.seed, template=cfg.template, pairs=pairs,
                   output_dir=staging, training_dir=training_dir, resume_from=resume,
                   tracking=open_finetune_run(cfg, m.name, inputs_fp))
    method = "full" if m.lora is None else ("qlora" if m.load_in_4bit else "lora")
    log.info("%s: %s fine-tuning of %s on %d rows%s", m.name, method, m.base, len(pairs),
             f", resuming from {Path(resume).name}" if resume else "")

    check_args = (test_records[:CHECK_PROMPTS], cfg.template, cfg.generation.max_new_tokens,
                  None if m.lora is None else m.base_checkpoint)
    return Prepared(model=m, job=job, backend=backend, why=why, requested=requested, method=method, train=train,
                    inputs=inputs, inputs_fp=inputs_fp, resume=resume, check_args=check_args,
                    log_file=training_dir / LOG_NAME, out_dir=out_dir, data_sha=data_sha)


def finish_one(cfg: ExperimentConfig, prep: Prepared, result: TrainResult, check: dict, wall: float) -> dict:
    """Write the record into the staging folder and rename it into place."""
    m, backend, why, requested, method = prep.model, prep.backend, prep.why, prep.requested, prep.method
    train, inputs, inputs_fp, resume, data_sha = prep.train, prep.inputs, prep.inputs_fp, prep.resume, prep.data_sha
    pairs, staging, out_dir = prep.job.pairs, prep.job.output_dir, prep.out_dir
    training_dir = prep.job.training_dir
    warn_on_check(m.name, check)
    losses = result.loss_history
    record = {
        "model": m.name,
        "base": m.base,
        "base_revision": m.revision,
        "base_identity": inputs["base"]["checkpoint"],  # <repo>@<commit> for a hub base, else the folder
        "backend": backend,
        "backend_reason": why,
        "backend_requested": requested,
        "method": method,
        "load_in_4bit": m.load_in_4bit,
        "max_seq_length": m.max_seq_length,
        "lora": m.lora.model_dump() if m.lora else None,
        "train": train,
        "template": cfg.template,
        "seed": cfg.seed,
        "data": {"train_file": "alpaca_data/train.jsonl", "train_rows": len(pairs), "train_sha256": data_sha},
        "inputs": inputs,
        "inputs_fingerprint": inputs_fp,
        "global_step": result.global_step,
        "resumed_from_step": int(Path(resume).name.split("-")[1]) if resume else None,
        "loss_history": losses,
        "first_loss": losses[0]["loss"] if losses else None,
        "final_loss": losses[-1]["loss"] if losses else None,
        "wall_s": round(wall, 2),
        "train_runtime_s": result.train_runtime_s,
        "device": result.device,
        "dtype": result.dtype,
        "pad_token": result.pad_token,
        "eos_token": result.eos_token,
        "throughput": result.throughput.as_dict(),
        "notes": result.notes,
        "post_merge_check": check,
        "versions": library_versions(),
        "logic": inputs["logic"],
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # Written last inside the staging folder, then the folder is renamed into place: a
    # finetuned_models/<model>/ with a tunesweep.json is always complete.
    write_json(staging / RECORD_NAME, record)
    swap_into_place(staging, out_dir)
    for p in training_dir.glob("checkpoint-*"):  # the merged model supersedes them
        shutil.rmtree(p, ignore_errors=True)
    final = f"{losses[-1]['loss']:.4f}" if losses else "n/a"
    first = f"{losses[0]['loss']:.4f}" if losses else "n/a"
    log.info("%s: trained %d steps in %.0f s (loss %s -> %s; %s), %d/%d check answers ended with EOS -> %s",
             m.name, result.global_step, wall, first, final, describe_throughput(result.throughput.as_dict()),
             check["ended_with_eos"], check["prompts"], out_dir)
    return {**record, "status": "trained"}



def describe_throughput(t: dict) -> str:
    """'812 tokens/s after 5 warm-up steps, peak 1.2 GiB (cuda max_memory_allocated)'."""
    speed = (f"{t['tokens_per_s']:,.0f} tokens/s over {t['measured_steps']} steps after {t['warmup_steps_excluded']} "
             "warm-up steps" if t.get("tokens_per_s") else "too few steps to measure tokens/s")
    return f"{speed}, peak {t['peak_memory_bytes'] / 2**30:.2f} GiB ({t['peak_memory_kind']})"
