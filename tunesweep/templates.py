"""Prompt templates: ONE definition shared by training and inference.

The course repositories trained on one prompt and generated from another, and never appended
EOS, so their models ran to the token cap. Here `build_prompt` is the only place a prompt is
made: training text is `build_prompt(r) + output + eos`, inference sends `build_prompt(r)`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    name: str
    with_input: str  # format string with {instruction} and {input}
    without_input: str  # format string with {instruction}
    # Section headers: generation stops at them, cleaning cuts at them.
    markers: tuple[str, ...]


ALPACA = Template(
    name="alpaca",
    with_input=(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    without_input=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    ),
    markers=("### Instruction:", "### Input:", "### Response:"),
)

TEMPLATES = {"alpaca": ALPACA}


def get_template(name: str = "alpaca") -> Template:
    return TEMPLATES[name]


def build_prompt(record: dict, template: str = "alpaca") -> str:
    """The inference prompt; also the exact prefix of the training text."""
    t = get_template(template)
    inp = (record.get("input") or "").strip()
    if inp:
        return t.with_input.format(instruction=record["instruction"].strip(), input=inp)
    return t.without_input.format(instruction=record["instruction"].strip())


def build_training_pair(record: dict, template: str = "alpaca") -> dict:
    """{"prompt", "completion"} for TRL's completion-only loss (TRL appends EOS to the completion)."""
    return {"prompt": build_prompt(record, template), "completion": record["output"].strip()}


def stop_strings(template: str = "alpaca") -> list[str]:
    """Strings at which generation stops: the start of the template's next section."""
    return list(get_template(template).markers)


def cut_at_first(text: str, markers) -> tuple[str, bool]:
    """The text before the earliest of `markers`, and whether one was found."""
    cut = min((i for m in markers if (i := text.find(m)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def decode_response(tokenizer, token_ids, stop) -> str:
    """Generated token ids -> response text, the same way for every backend: decode all of them
    (an incomplete UTF-8 byte sequence becomes U+FFFD, as transformers does; vLLM's incremental
    text would hold a trailing one back) and cut before the first stop string."""
    return cut_at_first(tokenizer.decode(token_ids, skip_special_tokens=True), stop)[0]
