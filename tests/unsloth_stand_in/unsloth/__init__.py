"""A STAND-IN for the real `unsloth` package, for the tests' contract and isolation tests only.

The real unsloth cannot be imported without a GPU (`NotImplementedError: Unsloth cannot find any
torch accelerator`), so the unsloth backend is checked against this module: it exposes the three
entry points tunesweep uses, with the signatures Unsloth documents, records every call (as JSON
lines in the file $UNSLOTH_STAND_IN_CALLS, since tunesweep calls it from a training process of its
own), and does the equivalent work with transformers + PEFT on the CPU, so that TRL training and
the post-merge check run for real.

Like the real one, importing it patches transformers for the whole process: Unsloth replaces
`LlamaForCausalLM.forward` on the class with a fast path that reads `self.max_seq_length`, which
only models loaded through FastLanguageModel carry (measured on an H100: the post-merge check's
reload then died with AttributeError; unslothai/unsloth#1907, #896). The stand-in does the same,
so any transformers Llama used in a process that imported it fails the same way. Nothing outside
the tests puts it on sys.path.
"""

from __future__ import annotations

import json
import os
import types

IS_STAND_IN = True


def _record(entry: str, args: dict) -> None:
    path = os.environ.get("UNSLOTH_STAND_IN_CALLS")
    if path:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps([entry, args], default=_describe) + "\n")


def _describe(obj):
    if hasattr(obj, "pad_token_id") and hasattr(obj, "eos_token_id"):  # a tokenizer
        return {"tokenizer": True, "pad_token_id": obj.pad_token_id, "eos_token_id": obj.eos_token_id}
    return repr(obj)


def _patch_llama_forward() -> None:
    from transformers.models.llama import modeling_llama

    original = modeling_llama.LlamaForCausalLM.forward

    def forward(self, *args, **kwargs):
        if not hasattr(self, "max_seq_length"):
            raise AttributeError("'LlamaForCausalLM' object has no attribute 'max_seq_length'")
        return original(self, *args, **kwargs)

    modeling_llama.LlamaForCausalLM.forward = forward


# Unsloth must be imported before transformers / peft / trl to apply all its patches: record the order.
_record("import", {"imported_before": sorted(m for m in ("transformers", "peft", "trl") if m in __import__("sys").modules)})
_patch_llama_forward()


class FastLanguageModel:
    @staticmethod
    def from_pretrained(model_name, max_seq_length=2048, dtype=None, load_in_4bit=True, **kwargs):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _record("from_pretrained", dict(model_name=model_name, max_seq_length=max_seq_length, dtype=dtype,
                                        load_in_4bit=load_in_4bit, **kwargs))
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32)
        model.max_seq_length = max_seq_length  # what Unsloth's patched forward reads
        return model, tokenizer

    @staticmethod
    def get_peft_model(model, r=16, target_modules=None, lora_alpha=16, lora_dropout=0.0, bias="none",
                       use_gradient_checkpointing="unsloth", random_state=3407, modules_to_save=None, **kwargs):
        from peft import LoraConfig, get_peft_model

        _record("get_peft_model", dict(r=r, target_modules=target_modules, lora_alpha=lora_alpha,
                                       lora_dropout=lora_dropout, bias=bias,
                                       use_gradient_checkpointing=use_gradient_checkpointing,
                                       random_state=random_state, modules_to_save=modules_to_save, **kwargs))
        peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                                      target_modules=target_modules, modules_to_save=modules_to_save,
                                                      bias=bias, task_type="CAUSAL_LM"))
        # Unsloth attaches save_pretrained_merged to the model it returns.
        peft_model.save_pretrained_merged = types.MethodType(_save_pretrained_merged, peft_model)
        return peft_model


def _save_pretrained_merged(self, save_directory, tokenizer=None, save_method="merged_16bit", **kwargs):
    _record("save_pretrained_merged", dict(save_directory=save_directory, tokenizer=tokenizer,
                                           save_method=save_method, **kwargs))
    if save_method not in ("lora", "merged_16bit", "merged_4bit"):
        raise ValueError(f"Unsloth: save_method = {save_method!r} is not supported")
    merged = self.merge_and_unload()
    merged.save_pretrained(save_directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(save_directory)
