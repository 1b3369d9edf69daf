"""The built-in pairwise prompt: an instruction (with its input), answer A, answer B, and a request to
name the better one with a single label.

The verdict is read from the judge's probabilities for the NEXT token, so each label must be exactly one
token of the judge's tokenizer: `pick_labels` tries label pairs in order and refuses the judge (one line)
when none fits. A tokenizer with a chat template gets the prompt as one user turn followed by the
assistant's opening, so the label is the first token of the reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError

# Bump when the wording changes: it is part of every judgment's identity.
PROMPT_VERSION = 1

# Tried in order; both labels of a pair must be single, distinct tokens.
LABEL_CHOICES = (("A", "B"), ("1", "2"))

PAIRWISE_TEMPLATE = """You are judging two answers to the same instruction. Decide which answer follows the \
instruction better: it should be correct, helpful, complete and clear. Do not prefer an answer for being \
longer, and do not let the order in which the answers are shown sway you.

### Instruction:
{instruction}
{input_block}
### Answer {label_a}:
{answer_a}

### Answer {label_b}:
{answer_b}

### Verdict:
Which answer is better? Reply with one character, {label_a} or {label_b}.
Better answer:"""

INPUT_BLOCK = "\n### Input:\n{input}\n"

# evaluation.judge.template: a file of the user's in PAIRWISE_TEMPLATE's format (str.format fields): these must
# all appear, {input_block} may (the input section, empty when the row has no input).
TEMPLATE_FIELDS = ("instruction", "answer_a", "answer_b", "label_a", "label_b")
OPTIONAL_FIELDS = ("input_block",)


def check_template(text: str, where: str) -> str:
    """`text` as a pairwise template, or one line naming what is wrong with it: an unknown field, a missing one,
    or braces str.format cannot read (a literal brace is written {{ or }})."""
    import string

    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(text) if name is not None}
    except ValueError as exc:
        raise UserError(f"{where}: not a template str.format can read ({exc}; write a literal brace as {{{{ or }}}})") \
            from None
    unknown = sorted(fields - set(TEMPLATE_FIELDS) - set(OPTIONAL_FIELDS))
    missing = [f for f in TEMPLATE_FIELDS if f not in fields]
    if unknown or missing:
        problem = f"unknown field(s) {', '.join('{' + f + '}' for f in unknown)}" if unknown else \
            f"no {', '.join('{' + f + '}' for f in missing)}"
        raise UserError(f"{where}: {problem}; a judge template uses {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}"
                        f" and optionally {{input_block}}")
    return text


@dataclass(frozen=True)
class Labels:
    """The two answer labels as text and as the judge tokenizer's token ids."""

    first: str
    second: str
    first_id: int
    second_id: int

    @property
    def ids(self) -> list[int]:
        return [self.first_id, self.second_id]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def single_token_id(tokenizer, text: str):
    """The one token id `text` encodes to on its own, or None when it takes several tokens."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def pick_labels(tokenizer, judge: str = "judge") -> Labels:
    """The first label pair of LABEL_CHOICES whose labels are single, distinct tokens of `tokenizer`.

    Without a chat template the label follows "Better answer:" in running text, where a BPE tokenizer
    writes it with its leading space (" A"): that spelling is tried first. With a template the label opens
    the assistant's reply, so it is the bare label."""
    spellings = ("{}",) if has_chat_template(tokenizer) else (" {}", "{}")
    for first, second in LABEL_CHOICES:
        for spelling in spellings:
            a = single_token_id(tokenizer, spelling.format(first))
            b = single_token_id(tokenizer, spelling.format(second))
            if a is not None and b is not None and a != b:
                return Labels(first, second, a, b)
    tried = ", ".join("/".join(pair) for pair in LABEL_CHOICES)
    raise UserError(f"{judge}: its tokenizer has no single-token answer labels (tried {tried}); "
                    "choose another evaluation.judge.model")


def pairwise_text(instruction: str, input_text: str, answer_a: str, answer_b: str, labels: Labels,
                  template: str = PAIRWISE_TEMPLATE) -> str:
    """The prompt text, before any chat template (`template`: the built-in one or a checked user file)."""
    input_block = INPUT_BLOCK.format(input=input_text) if input_text and input_text.strip() else ""
    return template.format(instruction=instruction, input_block=input_block, answer_a=answer_a,
                           answer_b=answer_b, label_a=labels.first, label_b=labels.second)


def prompt_token_ids(tokenizer, text: str) -> list[int]:
    """The token ids the judge reads: the chat template's user turn plus the assistant's opening when the
    tokenizer has a template, else the plain text with the tokenizer's special tokens (BOS)."""
    if has_chat_template(tokenizer):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True,
                                            add_generation_prompt=True, return_dict=False)
        return list(ids)
    return list(tokenizer(text)["input_ids"])
