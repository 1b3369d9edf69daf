"""The clean stage: `response` re-derived from `response_raw`, counts in cleaning.json, raw text untouched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers import vouch_for_responses, REPO
from tunesweep.clean.stage import clean, clean_response
from tunesweep.config import expand_sweep, load_config
from tunesweep.errors import UserError
from tunesweep.files import read_json, read_jsonl, write_json, write_jsonl
from tunesweep.templates import build_prompt
from tunesweep.records import cleaned_digest

PROMPT_A = build_prompt({"instruction": "Name a colour.", "input": ""})
PROMPT_B = build_prompt({"instruction": "Translate to French.", "input": "cat"})

# (response_raw, finish_reason, prompt, the response the rules must give)
CASES = [
    (PROMPT_A + "Blue.", "stop", PROMPT_A, "Blue."),                                    # echoed prompt
    ("Chat.\n\n### Instruction:\nTranslate dog.\n\n### Response:\nChien", "stop", PROMPT_B, "Chat."),  # cut
    ("Red</s><pad><pad>", "stop", PROMPT_A, "Red"),                                     # special tokens
    ("   \n  ", "stop", PROMPT_A, ""),                                                  # empty
    ("green green green green", "length", PROMPT_A, "green green green green"),         # hit the token cap
    ("  Le chat.  \n", "stop", PROMPT_B, "Le chat."),                                   # whitespace only
]


def write_study(tmp_path: Path) -> Path:
    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text(
        f"name: clean-test\nworkdir: {tmp_path / 'work'}\n"
        "models: [{name: m1, base: unused-base}]\n"
        "generation: {sweep: {temperature: [0.0]}}\n"
    )
    cfg = load_config(cfg_path)
    folder = cfg.path / "llm_responses" / "m1"
    for j, dc in enumerate(expand_sweep(cfg.generation)):
        rows = []
        for i, (raw, finish, prompt, _) in enumerate(CASES):
            # The second config's last row drops another echo to make the counts differ per config.
            if j == 1 and i == len(CASES) - 1:
                raw = PROMPT_B + "Un chat."
            rows.append({"id": f"row{i}", "prompt": prompt, "reference": "ref", "response_raw": raw,
                         "response": "STALE", "finish_reason": finish, "num_tokens": 4, "config": dc.name,
                         "model": "m1"})
        write_jsonl(folder / f"{dc.name}.jsonl", rows)
    vouch_for_responses(cfg.path, "m1", cfg=cfg)
    return cfg_path


def test_clean_rewrites_response_counts_and_keeps_raw(tmp_path):
    cfg = load_config(write_study(tmp_path))
    folder = cfg.path / "llm_responses" / "m1"
    names = [dc.name for dc in expand_sweep(cfg.generation)]
    before = {n: read_jsonl(folder / f"{n}.jsonl") for n in names}

    summary = clean(cfg)

    after = {n: read_jsonl(folder / f"{n}.jsonl") for n in names}
    for n in names:
        for old, new in zip(before[n], after[n]):
            # response_raw (and every other field) is exactly what generate wrote.
            assert {k: v for k, v in new.items() if k != "response"} == {k: v for k, v in old.items() if k != "response"}
    assert [r["response"] for r in after[names[0]]] == [c[3] for c in CASES]
    assert after[names[1]][-1]["response"] == "Un chat."

    report = read_json(folder / "cleaning.json")
    assert report["rules"]["cut_at"] == ["### Instruction:", "### Input:", "### Response:"]
    assert "</s>" in report["rules"]["special_tokens"]
    # and what it wrote: the digest score checks the `response` fields against
    assert report["configs"][names[0]] == {"rows": 6, "echo": 1, "cut": 1, "special": 1, "empty": 1, "length_capped": 1,
                                           "cleaned_sha256": cleaned_digest(after[names[0]])}
    assert report["configs"][names[1]] == {"rows": 6, "echo": 2, "cut": 1, "special": 1, "empty": 1, "length_capped": 1,
                                           "cleaned_sha256": cleaned_digest(after[names[1]])}
    assert summary["m1"][names[0]]["changed"] == 6  # every row held "STALE"


def test_clean_rerun_touches_nothing_and_follows_edits(tmp_path):
    cfg = load_config(write_study(tmp_path))
    folder = cfg.path / "llm_responses" / "m1"
    clean(cfg)
    paths = sorted(folder.glob("*.json*"))
    stamps = {p: p.stat().st_mtime_ns for p in paths}
    summary = clean(cfg)
    assert {p: p.stat().st_mtime_ns for p in paths} == stamps
    assert all(c["changed"] == 0 for c in summary["m1"].values())

    # A hand-edited `response` is re-derived from response_raw on the next run.
    name = expand_sweep(cfg.generation)[0].name
    rows = read_jsonl(folder / f"{name}.jsonl")
    rows[0]["response"] = "edited"
    write_jsonl(folder / f"{name}.jsonl", rows)
    summary = clean(cfg)
    assert summary["m1"][name]["changed"] == 1
    assert read_jsonl(folder / f"{name}.jsonl")[0]["response"] == "Blue."


def test_clean_response_flags_say_what_was_done():
    text, flags = clean_response(PROMPT_A + "Blue.</s>\n\n### Instruction:\nmore", PROMPT_A)
    assert text == "Blue." and flags == {"echo": True, "cut": True, "special": True, "empty": False}
    assert clean_response("Plain answer.", PROMPT_A) == ("Plain answer.", dict.fromkeys(flags, False))
    # An echo that differs only in surrounding whitespace is still an echo.
    assert clean_response("\n" + PROMPT_A.strip() + " Red", PROMPT_A)[0] == "Red"


@pytest.mark.parametrize("raw, expected", [
    ("Hi there.</s>Extra", "Hi there."),                       # the example: cut, not deleted
    ("Hi there.<|endoftext|>Extra</s>more", "Hi there."),      # the first end token wins
    ("Hi<pad> there.<|eot_id|><pad><pad>", "Hi there."),       # other special tokens are only removed
    ("<s>Hi there.<|im_end|>\n### Response:\nagain", "Hi there."),
    ("</s>Extra", ""),                                         # ended at once: nothing was answered
])
def test_clean_cuts_at_a_leaked_end_of_sequence_token(raw, expected):
    text, flags = clean_response(raw, PROMPT_A)
    assert text == expected and flags["special"] and flags["empty"] == (expected == "")


def test_clean_missing_config_file_names_it(tmp_path):
    cfg = load_config(write_study(tmp_path))
    missing = cfg.path / "llm_responses" / "m1" / f"{expand_sweep(cfg.generation)[1].name}.jsonl"
    missing.unlink()
    with pytest.raises(UserError, match=str(missing)):
        clean(cfg)


def test_clean_front_script_runs_the_stage(tmp_path):
    import subprocess

    cfg_path = write_study(tmp_path)
    proc = subprocess.run([sys.executable, str(REPO / "evaluation" / "clean_responses.py"), "--config", str(cfg_path),
                           "--model", "m1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    # One log line per config, with its counts.
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tunesweep: clean m1 ")]
    assert len(lines) == 2 and "1 cut at a template marker" in lines[0] and "1 hit the token cap" in lines[0]
    report = json.loads((tmp_path / "work" / "llm_responses" / "m1" / "cleaning.json").read_text())
    assert len(report["configs"]) == 2
