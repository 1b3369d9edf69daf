"""The peft training backend: transformers + PEFT + TRL's SFTTrainer, on a CPU or CUDA.

LoRA from the config; QLoRA (bitsandbytes nf4) when load_in_4bit; full fine-tuning when lora is
null. A LoRA adapter is never folded into quantized weights: the merge reloads the base in 16-bit
(32-bit on a CPU), applies the saved adapter, merge_and_unload()s and saves.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from ..errors import UserError
from .job import TrainJob, TrainResult
from ..loading import compute_dtype
from .toolkit import ensure_distinct_pad, run_training, set_generation_ids, sft_config, training_dataset

log = logging.getLogger(__name__)


def load_causal_lm(base: str, dtype, quantize_4bit: bool = False, name: str = "?"):
    """The base model in `dtype` (nf4 when quantize_4bit), on the GPU when there is one."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": dtype}
    if quantize_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype,
        )
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": 0}
    try:
        return AutoModelForCausalLM.from_pretrained(base, **kwargs)
    except OSError as exc:
        raise UserError(f"models.{name}.base = {base!r}: cannot load it ({str(exc).splitlines()[0][:200]})") from None


def load_tokenizer(base: str, name: str = "?"):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base)
    except OSError as exc:
        raise UserError(f"models.{name}.base = {base!r}: cannot load its tokenizer "
                        f"({str(exc).splitlines()[0][:200]})") from None


def is_quantized(model) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def merge_adapter(base: str, adapter_dir: Path, tokenizer, dtype, name: str = "?"):
    """Base reloaded unquantized + saved adapter, merged: the weights vLLM will serve."""
    from peft import PeftModel

    model = load_causal_lm(base, dtype, quantize_4bit=False, name=name)
    if is_quantized(model):
        # A pre-quantized base (e.g. unsloth/*-bnb-4bit): dequantize before folding the adapter in.
        model = model.dequantize()
    if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    return model.merge_and_unload()


def train(job: TrainJob) -> TrainResult:
    import torch
    from transformers import set_seed
    from trl import SFTTrainer

    m = job.model
    # Seed before the LoRA weights are initialised: otherwise their init depends on whatever
    # used the global RNG earlier in the process (e.g. another model trained before this one).
    set_seed(job.seed)
    cuda = torch.cuda.is_available()
    dtype = compute_dtype()
    tokenizer = load_tokenizer(m.base_checkpoint, m.name)
    model = load_causal_lm(m.base_checkpoint, dtype, quantize_4bit=m.load_in_4bit, name=m.name)
    job.notes.append(ensure_distinct_pad(tokenizer, model))
    quantized = is_quantized(model)
    # Gradient checkpointing: on CUDA by default (memory); on a CPU the tiny models gain nothing from it
    # and it costs a second forward pass. A speed comparison sets it explicitly.
    checkpointing = cuda if job.speed.gradient_checkpointing is None else job.speed.gradient_checkpointing
    if m.lora is not None:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if quantized:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
        lora = LoraConfig(
            r=m.lora.r, lora_alpha=m.lora.alpha, lora_dropout=m.lora.dropout,
            target_modules=list(m.lora.target_modules), modules_to_save=list(m.lora.modules_to_save) or None,
            bias="none", task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        trainable, total = model.get_nb_trainable_parameters()
        log.info("%s: LoRA r=%d on %s: %d of %d parameters trainable (%.2f%%)", job.name, m.lora.r,
                 ",".join(m.lora.target_modules), trainable, total, 100 * trainable / max(total, 1))
    args = sft_config(
        job,
        bf16=cuda and dtype == torch.bfloat16,
        fp16=cuda and dtype == torch.float16,
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=training_dataset(job, tokenizer), processing_class=tokenizer)
    result = run_training(trainer, job, tokenizer, dtype=str(dtype).split(".")[-1] + (" (nf4 base)" if quantized else ""),
                          gradient_checkpointing="transformers (non-reentrant)" if checkpointing else "off")
    if not job.merge:
        return result

    job.output_dir.mkdir(parents=True, exist_ok=True)
    if m.lora is not None:
        trainer.model.save_pretrained(str(job.adapter_dir))
        tokenizer.save_pretrained(str(job.adapter_dir))
        del trainer, model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        merged = merge_adapter(m.base_checkpoint, job.adapter_dir, tokenizer, dtype, m.name)
        if quantized:
            job.notes.append(f"trained on nf4 weights; merged into the base reloaded in {str(dtype).split('.')[-1]}")
    else:
        merged = trainer.model
    set_generation_ids(merged, tokenizer)
    merged.save_pretrained(str(job.output_dir))
    tokenizer.save_pretrained(str(job.output_dir))
    return result
