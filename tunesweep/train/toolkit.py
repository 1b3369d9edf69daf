"""What both training backends share: device, pad/EOS handling, TRL's SFTConfig, the loss
history, and the throughput meter (trained tokens per second after warm-up, peak memory).

Imported only inside the training process (it imports transformers); nothing here imports a backend.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Optional

from ..errors import UserError
from transformers import TrainerCallback

from .job import Throughput, TrainJob, TrainResult

log = logging.getLogger(__name__)


def ensure_distinct_pad(tokenizer, model=None) -> str:
    """Give the tokenizer a pad token that is not EOS; returns what was done.

    With pad == eos, the collator masks every EOS out of the loss as padding, and the model
    never learns to stop. Prefer an existing unk token; add `<pad>` only when there is none
    (that grows the vocabulary, so the embeddings are resized).
    """
    eos = tokenizer.eos_token
    if eos is None:
        raise UserError(f"the tokenizer of {getattr(tokenizer, 'name_or_path', '?')!r} has no eos_token, "
                        "so a fine-tuned model could not learn to stop")
    if tokenizer.pad_token is not None and tokenizer.pad_token != eos:
        note = f"pad token {tokenizer.pad_token!r} (the tokenizer's own)"
    elif tokenizer.unk_token is not None and tokenizer.unk_token != eos:
        tokenizer.pad_token = tokenizer.unk_token
        note = f"pad token set to the unk token {tokenizer.unk_token!r} (the tokenizer had none distinct from eos)"
    else:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
        note = "pad token '<pad>' added (the tokenizer had no pad or unk distinct from eos)"
        if model is not None and model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return note


def set_generation_ids(model, tokenizer) -> None:
    """generation_config must stop at this tokenizer's EOS and pad with its pad (vLLM reads it)."""
    gc = model.generation_config
    eos_ids = gc.eos_token_id if isinstance(gc.eos_token_id, list) else [gc.eos_token_id]
    eos_ids = [i for i in eos_ids if i is not None]
    if tokenizer.eos_token_id not in eos_ids:
        eos_ids = [tokenizer.eos_token_id, *eos_ids]
    gc.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    gc.pad_token_id = tokenizer.pad_token_id
    gc.bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else gc.bos_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id


def repair_saved_ids(checkpoint: Path, tokenizer) -> list[str]:
    """Make a saved checkpoint's tokenizer and generation_config agree with the training tokenizer.

    Some merge paths (Unsloth's among them) have been seen to rewrite eos_token or drop the pad;
    a checkpoint whose eos differs from the one it was trained to emit never stops.
    """
    from transformers import AutoTokenizer, GenerationConfig

    fixed = []
    saved = AutoTokenizer.from_pretrained(checkpoint)
    if saved.eos_token != tokenizer.eos_token or saved.pad_token != tokenizer.pad_token:
        fixed.append(f"saved tokenizer had eos {saved.eos_token!r} / pad {saved.pad_token!r}; rewrote it with eos "
                     f"{tokenizer.eos_token!r} / pad {tokenizer.pad_token!r}")
        tokenizer.save_pretrained(checkpoint)
    try:
        gc = GenerationConfig.from_pretrained(checkpoint)
    except OSError:
        gc = GenerationConfig()
    eos_ids = gc.eos_token_id if isinstance(gc.eos_token_id, list) else [gc.eos_token_id]
    if tokenizer.eos_token_id not in eos_ids or gc.pad_token_id != tokenizer.pad_token_id:
        fixed.append(f"generation_config eos {gc.eos_token_id} / pad {gc.pad_token_id} set to the tokenizer's "
                     f"{tokenizer.eos_token_id} / {tokenizer.pad_token_id}")
        gc.eos_token_id = tokenizer.eos_token_id
        gc.pad_token_id = tokenizer.pad_token_id
        gc.save_pretrained(checkpoint)
    return fixed


def sft_config(job: TrainJob, *, bf16: bool, fp16: bool, gradient_checkpointing: bool, **extra):
    """TRL SFTConfig from the job's train settings (TRL 1.15 and 1.16 take the same arguments).

    padding_free is always given explicitly (False unless the job asks for it): Unsloth treats an
    unset value as permission to switch it on, and a speed comparison needs the same batches in both."""
    from trl import SFTConfig

    t = job.train
    return SFTConfig(
        output_dir=str(job.training_dir),
        num_train_epochs=t["epochs"],
        max_steps=t["max_steps"] if t["max_steps"] is not None else -1,
        per_device_train_batch_size=t["batch_size"],
        gradient_accumulation_steps=t["grad_accum"],
        learning_rate=t["learning_rate"],
        warmup_steps=t["warmup_steps"],
        weight_decay=t["weight_decay"],
        lr_scheduler_type=t["lr_scheduler"],
        logging_steps=t["logging_steps"],
        logging_first_step=True,
        save_strategy="steps",
        save_steps=t["save_steps"],
        save_total_limit=2,
        report_to=[] if t["report_to"] == "none" else [t["report_to"]],
        seed=job.seed,
        data_seed=job.seed,
        max_length=job.model.max_seq_length,
        completion_only_loss=True,  # loss on the answer (and its EOS) only
        packing=False,
        bf16=bf16,
        fp16=fp16,
        gradient_checkpointing=gradient_checkpointing,
        dataloader_num_workers=0,
        padding_free=bool(job.speed.padding_free),
        # The trainer counts the non-padding input tokens of every micro-batch: tokens/s is built on it.
        include_num_input_tokens_seen="non_padding",
        **extra,
    )


# More than this share of the training rows too long for max_seq_length stops the stage: the
# max_seq_length is wrong for the data, not a few outliers.
MAX_DROP_FRACTION = 0.25


def rows_that_fit(pairs: list[dict], tokenizer, max_seq_length: int, name: str) -> tuple[list[dict], Optional[str]]:
    """The training rows whose prompt + answer + EOS fit max_seq_length, and a note on the ones dropped.

    TRL truncates a longer row from the end, so it loses its EOS (and the model learns not to stop);
    such rows are dropped with a warning. When more than MAX_DROP_FRACTION of them would go, a
    UserError says what max_seq_length the data needs."""
    eos = tokenizer.eos_token_id
    lengths = []
    for p in pairs:
        ids = tokenizer(p["prompt"] + p["completion"])["input_ids"]
        lengths.append(len(ids) + (0 if ids and ids[-1] == eos else 1))  # TRL appends EOS
    too_long = sorted(n for n in lengths if n > max_seq_length)
    if not too_long:
        return pairs, None
    need = max(lengths)
    what = (f"{len(too_long)} of {len(pairs)} training rows ({len(too_long) / len(pairs):.0%}) are longer than "
            f"max_seq_length {max_seq_length} (prompt + answer + EOS; the longest needs {need} tokens)")
    if len(too_long) > MAX_DROP_FRACTION * len(pairs):
        raise UserError(f"models.{name}.max_seq_length = {max_seq_length}: {what}; the data needs max_seq_length "
                        f"{need} (more than {MAX_DROP_FRACTION:.0%} of the rows would lose their EOS)")
    note = f"dropped {what}: they would lose their EOS"
    log.warning("%s: %s", name, note)
    return [p for p, n in zip(pairs, lengths) if n <= max_seq_length], note


def training_dataset(job: TrainJob, tokenizer=None):
    """The training rows as a datasets.Dataset; with the tokenizer, only those that fit max_seq_length."""
    from datasets import Dataset

    pairs = job.pairs
    if tokenizer is not None:
        pairs, note = rows_that_fit(pairs, tokenizer, job.model.max_seq_length, job.name)
        if note:
            job.notes.append(note)
    return Dataset.from_list(pairs)


def loss_history(trainer) -> list[dict]:
    """Logged training losses (a resumed run's history includes the steps before the kill)."""
    out = []
    for entry in trainer.state.log_history:
        if "loss" in entry:
            out.append({"step": entry.get("step"), "epoch": round(entry.get("epoch") or 0.0, 4),
                        "loss": entry["loss"], "learning_rate": entry.get("learning_rate")})
    return out


def finished_checkpoint(checkpoint: Optional[str]) -> bool:
    """Whether a TRL checkpoint already holds every planned optimizer step (global_step >= its max_steps,
    the total the trainer planned: train.max_steps, or the steps of the configured epochs)."""
    if not checkpoint:
        return False
    try:
        state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
        return int(state["max_steps"]) > 0 and int(state["global_step"]) >= int(state["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def run_training(trainer, job: TrainJob, tokenizer, *, dtype: str, gradient_checkpointing: str) -> TrainResult:
    """Train (resuming when the job says so) with the throughput meter attached; the backend's result."""
    meter = ThroughputMeter(job.speed.warmup_steps)
    trainer.add_callback(meter)
    if job.tracking is not None:
        trainer.add_callback(TrackingCallback(job.tracking))
    reset_peak_memory()
    padding_free = "on" if getattr(trainer.args, "padding_free", False) else "off"
    runtime = 0.0
    if finished_checkpoint(job.resume_from):
        # Killed after saving its last step: transformers would train one optimizer step before it checks
        # max_steps (global_step max_steps + 1), so load the finished state instead of training.
        from transformers.trainer_callback import TrainerState

        log.info("%s: %s holds every planned step; loading it, nothing left to train", job.name, job.resume_from)
        trainer._load_from_checkpoint(job.resume_from)
        trainer.state = TrainerState.load_from_json(str(Path(job.resume_from) / "trainer_state.json"))
    else:
        if job.resume_from:
            log.info("%s: resuming from %s", job.name, job.resume_from)
        out = trainer.train(resume_from_checkpoint=job.resume_from)
        runtime = round(float(out.metrics.get("train_runtime", 0.0)), 2)
    return TrainResult(
        loss_history=loss_history(trainer), global_step=trainer.state.global_step, train_runtime_s=runtime,
        device=describe_device(), dtype=dtype, pad_token=tokenizer.pad_token, eos_token=tokenizer.eos_token,
        throughput=meter.result(trainer.state.num_input_tokens_seen, gradient_checkpointing, padding_free),
    )


def reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> tuple[int, str]:
    """(bytes, what was measured): the accelerator's peak allocation, or the process's peak RSS on a CPU."""
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda max_memory_allocated"
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "peak RSS of the training process"


def warmup_to_exclude(steps: int, wanted: int) -> int:
    """Exclude `wanted` warm-up steps, but always keep at least half of the steps (at least one) measured."""
    return max(0, min(wanted, (steps - 1) // 2))


class ThroughputMeter(TrainerCallback):
    """Times every optimizer step of this process from the end of the previous one (or of the logging
    and checkpoint writing after it: those are not training), with the tokens the trainer counted in it."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = warmup_steps
        self.steps: list[tuple[float, int]] = []  # (seconds, non-padding tokens) per optimizer step
        self._mark = None
        self._tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._mark, self._tokens = time.perf_counter(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.steps.append((now - self._mark, state.num_input_tokens_seen - self._tokens))
        self._mark, self._tokens = now, state.num_input_tokens_seen

    def on_log(self, args, state, control, **kwargs):
        self._mark = time.perf_counter()

    on_save = on_log

    def result(self, tokens_seen: int, gradient_checkpointing: str, padding_free: str) -> Throughput:
        skip = warmup_to_exclude(len(self.steps), self.warmup_steps)
        measured = self.steps[skip:]
        seconds = sum(s for s, _ in measured)
        tokens = sum(t for _, t in measured)
        peak, kind = peak_memory()
        return Throughput(
            tokens_per_s=round(tokens / seconds, 1) if measured and seconds > 0 else None,
            warmup_steps_excluded=skip, measured_steps=len(measured), measured_tokens=int(tokens),
            measured_s=round(seconds, 3), tokens_seen=int(tokens_seen), peak_memory_bytes=peak, peak_memory_kind=kind,
            gradient_checkpointing=gradient_checkpointing, padding_free=padding_free,
        )


# What a step sends to MLflow while training: the fields of loss_history, so the push after training (from
# tunesweep.json) logs the same series a live run did.
STEP_METRICS = ("loss", "learning_rate")


class TrackingCallback(TrainerCallback):
    """Sends every logged step to the fine-tune's MLflow run from the training process, so the UI shows the loss
    while a long run trains. A store that cannot be reached costs one warning line, never the training."""

    def __init__(self, ref):
        from ..tracking import StepLogger

        self.logger = StepLogger(ref)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and "loss" in logs:
            self.logger.log({k: logs.get(k) for k in STEP_METRICS}, state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.logger.close()


def describe_device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return f"cpu ({torch.get_num_threads()} threads)"
