"""The clean stage: derive the `response` field of every response record from `response_raw`.

`clean_response` is the one rule set. Generate leaves `response` null; this stage owns it and may be
rerun with other rules at any time: `response_raw` is never touched.
"""

from __future__ import annotations

import logging
import re
from typing import Iterable

from ..config import expand_sweep
from ..files import write_json, write_jsonl
from ..layout import Workdir, partial_configs, read_json_if_present, read_target_responses
from ..records import ResponseRecord, cleaning_config, cleaning_record
from ..provenance import logic
from ..templates import cut_at_first, get_template

log = logging.getLogger(__name__)

# Special tokens that can leak into decoded text when a model or tokenizer is misconfigured.
# Bump when clean derives another `response` from the same `response_raw` (tests/test_logic_versions.py pins it).
CLEAN_VERSION = 1

DEFAULT_SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "[PAD]")
# The ones that END a sequence: text after a leaked one was generated past the end (or is padding), so
# the response is cut there, not merely stripped of the token ("Hi there.</s>Extra" -> "Hi there.").
END_TOKENS = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>")


def clean_response(raw: str, prompt: str = "", template: str = "alpaca",
                   special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS) -> tuple[str, dict]:
    """Return (cleaned text, flags) where flags say what was done: echo, cut, special, empty.

    Order: drop an echoed prompt; cut at the next template section; cut at the first leaked
    end-of-sequence token (END_TOKENS: what follows it is not part of the answer); remove the other
    special tokens; trim. `special` is set when an end token was cut at or a special token removed."""
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
    text, flags["cut"] = cut_at_first(text, get_template(template).markers)
    ends = [i for i in (text.find(tok) for tok in END_TOKENS if tok in special_tokens) if i >= 0]
    if ends:
        text = text[:min(ends)]
        flags["special"] = True
    for tok in special_tokens:
        if tok in text:
            text = text.replace(tok, "")
            flags["special"] = True
    text = re.sub(r"[ \t]+\n", "\n", text).strip()
    flags["empty"] = not text
    return text, flags


# --- the clean stage ------------------------------------------------------------------------------

def cleaning_rules(template: str = "alpaca", special_tokens: Iterable[str] = DEFAULT_SPECIAL_TOKENS) -> dict:
    """The rules `clean_response` applies, recorded in cleaning.json next to the counts."""
    return {
        "source": "response_raw (never modified)",
        "echo": "drop a leading copy of the prompt",
        "cut_at": list(get_template(template).markers),
        "cut_at_end_token": [t for t in END_TOKENS if t in special_tokens],
        "special_tokens": list(special_tokens),
        "whitespace": "trailing spaces before newlines removed, then stripped",
        "template": template,
    }


def clean_records(records: list[ResponseRecord], template: str = "alpaca") -> dict:
    """Re-derive `response` in `records` (in place); the counts, and how many responses changed."""
    counts = {"rows": len(records), "echo": 0, "cut": 0, "special": 0, "empty": 0, "length_capped": 0, "changed": 0}
    for rec in records:
        text, flags = clean_response(rec.response_raw, rec.prompt or "", template=template)
        for key in ("echo", "cut", "special", "empty"):
            counts[key] += int(flags[key])
        counts["length_capped"] += int(rec.finish_reason == "length")
        if rec.response != text:
            rec.response = text
            counts["changed"] += 1
    return counts


def clean(cfg, model=None) -> dict:
    """Rewrite `response` from `response_raw` in every llm_responses/<target>/<config>.jsonl of the study.

    A file is rewritten (atomically) only when a response changes, so rerunning with the same rules
    touches nothing. Per target, llm_responses/<target>/cleaning.json records the rules and, per
    config, how many responses echoed the prompt, were cut at a template marker, held special
    tokens, came out empty, or hit the token cap (finish_reason "length").
    Returns {target: {config: counts}}, where counts also say how many responses this run changed.
    """
    configs = [dc.name for dc in expand_sweep(cfg.generation)]
    rules = cleaning_rules(cfg.template)
    paths = Workdir(cfg.path)
    summary: dict = {}
    for target in cfg.run_targets(model):
        # Configs a race eliminated hold some rows only: left out (the race scored them; race.csv has them).
        partial = partial_configs(cfg.path, target.name)
        responses = read_target_responses(cfg.path, target.name, [c for c in configs if c not in partial],
                                          fields=("response_raw",))
        per_config, with_changes = {}, {}
        for config, records in responses.records.items():
            counts = clean_records(records, cfg.template)
            if counts["changed"]:
                write_jsonl(responses.paths[config], [r.to_json() for r in records])
            # "changed" describes this run, not the files: keep it out of cleaning.json.
            per_config[config] = cleaning_config({k: v for k, v in counts.items() if k != "changed"}, records)
            with_changes[config] = counts
            log.info("clean %s %s: %d rows, %d echoed the prompt, %d cut at a template marker, %d held special "
                     "tokens, %d empty, %d hit the token cap; %d responses changed", target.name, config,
                     counts["rows"], counts["echo"], counts["cut"], counts["special"], counts["empty"],
                     counts["length_capped"], counts["changed"])
        # Score's fingerprint folds this in: a change of cleaning logic rescores what it cleaned.
        report = cleaning_record(rules, per_config, logic("clean", CLEAN_VERSION, responses.manifest.logic))
        if read_json_if_present(paths.cleaning(target.name)) != report:
            write_json(paths.cleaning(target.name), report)
        summary[target.name] = with_changes
    return summary
