"""Cleaning: derive the `response` field from `response_raw`.

`clean_response` is the one rule set; the generate stage applies it as it writes, and the clean
stage reapplies it (rules may change) without ever touching `response_raw`.
"""

from __future__ import annotations

import re
from typing import Iterable

from .templates import get_template

# Special tokens that can leak into decoded text when a model or tokenizer is misconfigured.
DEFAULT_SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "[PAD]")


def clean_response(raw: str, prompt: str = "", template: str = "alpaca",
                   special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS) -> tuple[str, dict]:
    """Return (cleaned text, flags) where flags say what was done: echo, cut, special, empty."""
    text = raw or ""
    flags = {"echo": False, "cut": False, "special": False, "empty": False}
    # An echoed prompt (HF decode of output[0], or a model that repeats its input).
    if prompt and text.startswith(prompt):
        text = text[len(prompt):]
        flags["echo"] = True
    elif prompt and text.lstrip().startswith(prompt.strip()) and prompt.strip():
        text = text.lstrip()[len(prompt.strip()):]
        flags["echo"] = True
    # Cut at the next template section: the model started a new turn.
    markers = get_template(template).markers
    cut_at = min((i for m in markers if (i := text.find(m)) >= 0), default=-1)
    if cut_at >= 0:
        text = text[:cut_at]
        flags["cut"] = True
    for tok in special_tokens:
        if tok in text:
            text = text.replace(tok, "")
            flags["special"] = True
    text = re.sub(r"[ \t]+\n", "\n", text).strip()
    flags["empty"] = not text
    return text, flags
