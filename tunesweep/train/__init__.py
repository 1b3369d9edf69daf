"""The fine-tuning stage: alpaca_data/train.jsonl -> finetuned_models/<model>/ (stage.py), with the
peft and unsloth backends (peft_backend.py, unsloth_backend.py) run in a process of their own (worker.py)."""

from .stage import finetune

__all__ = ["finetune"]
