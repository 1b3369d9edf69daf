"""The unsloth training backend (CUDA only): Unsloth's FastLanguageModel + TRL's SFTTrainer.

`import unsloth` raises on a machine without a GPU, so it is imported here, inside `train`, and
only when this backend was picked; and it must come before transformers, peft and trl are imported
(it patches them at import; measured on an H100: imported after them, Unsloth warns that its
optimizations are not all applied), so the toolkit, which imports transformers, is imported after it. The call sequence is the one Unsloth documents:
FastLanguageModel.from_pretrained -> FastLanguageModel.get_peft_model -> SFTTrainer.train ->
model.save_pretrained_merged(dir, tokenizer, save_method="merged_16bit") (the format vLLM loads).
"""

from __future__ import annotations

import logging

from ..errors import UserError
from .job import TrainJob, TrainResult

log = logging.getLogger(__name__)


def import_unsloth():
    try:
        import unsloth  # noqa: F401  (patches transformers/TRL on import; must come before using them)
        from unsloth import FastLanguageModel
    except Exception as exc:  # NotImplementedError without a GPU, ImportError when missing
        raise UserError(f"backend 'unsloth': cannot import unsloth ({exc.__class__.__name__}: "
                        f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); it needs a CUDA GPU and "
                        "`pip install unsloth`; use backend: peft (or --backend peft) otherwise") from None
    return FastLanguageModel


def train(job: TrainJob) -> TrainResult:
    FastLanguageModel = import_unsloth()
    import torch
    from transformers import set_seed
    from trl import SFTTrainer

    from ..loading import compute_dtype
    from .toolkit import ensure_distinct_pad, repair_saved_ids, run_training, sft_config, training_dataset

    # Unsloth's own offloaded checkpointing unless a speed comparison asks for plain on/off.
    checkpointing = "unsloth" if job.speed.gradient_checkpointing is None else job.speed.gradient_checkpointing

    m = job.model
    lora = m.lora
    set_seed(job.seed)  # get_peft_model's random_state seeds the LoRA init; this seeds the rest
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=m.base_checkpoint, max_seq_length=m.max_seq_length, load_in_4bit=m.load_in_4bit, dtype=None,
        )
    except OSError as exc:
        raise UserError(f"models.{m.name}.base = {m.base!r}: cannot load it ({str(exc).splitlines()[0][:200]})") from None
    job.notes.append(ensure_distinct_pad(tokenizer, model))
    peft_kwargs = dict(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(lora.target_modules),
        bias="none", use_gradient_checkpointing=checkpointing, random_state=job.seed,
    )
    if lora.modules_to_save:
        peft_kwargs["modules_to_save"] = list(lora.modules_to_save)
    model = FastLanguageModel.get_peft_model(model, **peft_kwargs)

    dtype = compute_dtype()
    cuda = torch.cuda.is_available()
    args = sft_config(
        job,
        bf16=cuda and dtype == torch.bfloat16,
        fp16=cuda and dtype == torch.float16,
        gradient_checkpointing=False,  # Unsloth does its own (use_gradient_checkpointing above)
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=training_dataset(job, tokenizer), processing_class=tokenizer)
    result = run_training(trainer, job, tokenizer, dtype=str(dtype).split(".")[-1] + (" (4-bit base)" if m.load_in_4bit else ""),
                          gradient_checkpointing={"unsloth": "unsloth (offloaded)", True: "unsloth (plain)",
                                                  False: "off"}[checkpointing])
    if not job.merge:
        return result

    job.output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(job.adapter_dir))
    tokenizer.save_pretrained(str(job.adapter_dir))
    model.save_pretrained_merged(str(job.output_dir), tokenizer, save_method="merged_16bit")
    for fix in repair_saved_ids(job.output_dir, tokenizer):
        log.warning("%s: %s", job.name, fix)
        job.notes.append(fix)
    return result
