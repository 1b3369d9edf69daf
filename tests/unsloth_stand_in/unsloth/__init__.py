"""A STAND-IN for the real `unsloth` package, for tests/test_train.py's contract tests only.

The real unsloth cannot be imported without a GPU (`NotImplementedError: Unsloth cannot find any
torch accelerator`), so the unsloth backend's call sequence is checked against this module: it
exposes the three entry points tunesweep uses, with the signatures Unsloth documents, records
every call in `CALLS`, and does the equivalent work with transformers + PEFT on the CPU so that
the rest of the pipeline (TRL training, post-merge check) runs for real. It is not unsloth: it
does none of unsloth's kernel patching, and nothing outside the tests puts it on sys.path.
"""

from __future__ import annotations

import types

IS_STAND_IN = True
CALLS: list[tuple[str, dict]] = []  # (entry point, the arguments it was called with)


class FastLanguageModel:
    @staticmethod
    def from_pretrained(model_name, max_seq_length=2048, dtype=None, load_in_4bit=True, **kwargs):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        CALLS.append(("from_pretrained", dict(model_name=model_name, max_seq_length=max_seq_length, dtype=dtype,
                                              load_in_4bit=load_in_4bit, **kwargs)))
        tokenizer = AutoTokenizer.from_pretrained(model_name)
        model = AutoModelForCausalLM.from_pretrained(model_name, dtype=torch.float32)
        return model, tokenizer

    @staticmethod
    def get_peft_model(model, r=16, target_modules=None, lora_alpha=16, lora_dropout=0.0, bias="none",
                       use_gradient_checkpointing="unsloth", random_state=3407, modules_to_save=None, **kwargs):
        from peft import LoraConfig, get_peft_model

        CALLS.append(("get_peft_model", dict(r=r, target_modules=target_modules, lora_alpha=lora_alpha,
                                             lora_dropout=lora_dropout, bias=bias,
                                             use_gradient_checkpointing=use_gradient_checkpointing,
                                             random_state=random_state, modules_to_save=modules_to_save, **kwargs)))
        peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                                                      target_modules=target_modules, modules_to_save=modules_to_save,
                                                      bias=bias, task_type="CAUSAL_LM"))
        # Unsloth attaches save_pretrained_merged to the model it returns.
        peft_model.save_pretrained_merged = types.MethodType(_save_pretrained_merged, peft_model)
        return peft_model


def _save_pretrained_merged(self, save_directory, tokenizer=None, save_method="merged_16bit", **kwargs):
    CALLS.append(("save_pretrained_merged", dict(save_directory=save_directory, tokenizer=tokenizer,
                                                 save_method=save_method, **kwargs)))
    if save_method not in ("lora", "merged_16bit", "merged_4bit"):
        raise ValueError(f"Unsloth: save_method = {save_method!r} is not supported")
    merged = self.merge_and_unload()
    merged.save_pretrained(save_directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(save_directory)
