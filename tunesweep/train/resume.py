"""What a trained model was trained from, and the on-disk states of a training: up to date (skip),
resumable (a complete TRL checkpoint from the same inputs), or to be trained from scratch."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Optional

from ..config import ExperimentConfig, ModelConfig
from ..files import read_json, write_json
from ..errors import UserError
from ..loading import check_checkpoint_folder
from ..provenance import checkpoint_identity

log = logging.getLogger(__name__)

RECORD_NAME = "tunesweep.json"
INPUTS_NAME = "inputs.json"


def effective_train(m: ModelConfig, max_steps: Optional[int], reserved_cpus: float) -> dict:
    """The train settings as they take effect: --max-steps applied, and `threads` resolved to a number
    (null = the CPUs reserved for the job), so the identity and the record hold what ran."""
    t = m.train.model_dump()
    if max_steps is not None:
        t["max_steps"] = max_steps
    if t["threads"] is None:
        t["threads"] = max(1, int(reserved_cpus))
    return t


def training_inputs(cfg: ExperimentConfig, m: ModelConfig, backend: str, train: dict, data_sha: str,
                    previous: Optional[dict] = None) -> dict:
    """Everything that changes the trained weights (evaluate_base does not, so it is left out).

    The base is identified as every stage identifies a checkpoint (provenance.checkpoint_identity; a hub
    base, pinned by ModelConfig.pin, as `<repo>@<commit>`, so upstream moving `main` retrains);
    `previous`, the base identity recorded by the last training, lets an unchanged 14 GB base skip
    rehashing; base_stat (names, sizes, mtimes) is that shortcut's key, not part of the fingerprint."""
    # revision is left out: the base identity holds the commit it resolved to (the same commit asked as `main` or
    # by its hash trains the same weights).
    section = m.model_dump(exclude={"evaluate_base", "train", "backend", "revision"})
    base = checkpoint_identity(m.base_checkpoint, previous)
    return {"model": section, "train": train, "backend": backend,
            "base": {"checkpoint": base["checkpoint"], "sha256": base["sha256"]}, "base_stat": base["stat"],
            "train_sha256": data_sha, "template": cfg.template, "seed": cfg.seed}


def is_current(out_dir: Path, inputs_fp: str) -> Optional[dict]:
    try:
        record = read_json(out_dir / RECORD_NAME)
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("inputs_fingerprint") != inputs_fp or not (out_dir / "config.json").is_file():
        return None
    try:
        check_checkpoint_folder(str(out_dir), "fine-tuned checkpoint")
    except UserError as exc:  # e.g. a truncated model.safetensors: not "up to date", train it again
        log.warning("%s; training it again", exc)
        return None
    return record


def last_complete_checkpoint(training_dir: Path) -> Optional[str]:
    """The newest checkpoint-* with trainer_state.json (written last, so its presence means complete)."""
    if not training_dir.is_dir():
        return None
    steps = []
    for p in training_dir.glob("checkpoint-*"):
        try:
            steps.append((int(p.name.split("-")[1]), p))
        except (IndexError, ValueError):
            continue
    for _, p in sorted(steps, reverse=True):
        if (p / "trainer_state.json").is_file():
            return str(p)
        log.warning("ignoring incomplete checkpoint %s (the run was killed while saving it)", p)
        shutil.rmtree(p, ignore_errors=True)
    return None


def prepare_training_dir(training_dir: Path, inputs: dict, force: bool) -> Optional[str]:
    """Return a checkpoint to resume from, or clear checkpoints trained from other inputs."""
    recorded = None
    try:
        recorded = read_json(training_dir / INPUTS_NAME)
    except (OSError, json.JSONDecodeError):
        pass
    resume = None
    if not force and recorded == json.loads(json.dumps(inputs)):
        resume = last_complete_checkpoint(training_dir)
    if resume is None:
        for p in training_dir.glob("checkpoint-*"):
            shutil.rmtree(p, ignore_errors=True)
    write_json(training_dir / INPUTS_NAME, inputs)
    return resume


def swap_into_place(staging: Path, out_dir: Path) -> None:
    """Replace out_dir by staging with two renames, so out_dir is never half-written."""
    old = out_dir.with_name(f".{out_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)
