"""The generate stage: finetuned_models/<model>/ (or a base) -> llm_responses/<target>/<config>.jsonl.

stage.py plans, runs and records; backend.py is the interface every backend implements (typed jobs,
requests and results); vllm.py (one engine per model, in a child process) and hf.py (transformers
`generate`) are the backends.
"""

from .stage import generate, plan_target

__all__ = ["generate", "plan_target"]
