"""The Alpaca template: exact strings, and training text that starts with the inference prompt."""

from tunesweep.templates import build_prompt, build_training_pair, stop_strings

WITH_INPUT = {"instruction": "Say whether the number is odd or even.", "input": "7", "output": "The number is odd."}
NO_INPUT = {"instruction": "Name a primary colour.", "input": "", "output": "Red."}


def test_prompt_with_input_exact():
    assert build_prompt(WITH_INPUT) == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nSay whether the number is odd or even.\n\n"
        "### Input:\n7\n\n"
        "### Response:\n"
    )


def test_prompt_without_input_exact():
    expected = (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\nName a primary colour.\n\n"
        "### Response:\n"
    )
    assert build_prompt(NO_INPUT) == expected
    # a missing or whitespace-only input is the same as none
    assert build_prompt({"instruction": "Name a primary colour.", "output": "Red."}) == expected
    assert build_prompt({**NO_INPUT, "input": "  \n"}) == expected


def test_training_pair_prompt_is_the_inference_prompt():
    for rec in (WITH_INPUT, NO_INPUT):
        assert build_training_pair(rec) == {"prompt": build_prompt(rec), "completion": rec["output"]}
    # the answer is stripped; TRL appends EOS to the completion itself
    assert build_training_pair({**NO_INPUT, "output": " Red.\n"})["completion"] == "Red."


def test_stop_strings_are_the_section_markers():
    assert stop_strings() == ["### Instruction:", "### Input:", "### Response:"]


def test_decode_response_cuts_at_stop_and_keeps_incomplete_bytes(tiny_model_dir):
    from transformers import AutoTokenizer

    from tunesweep.templates import decode_response

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok("The number is odd.\n\n### Instruction:\nmore", add_special_tokens=False).input_ids
    assert decode_response(tok, ids + [tok.eos_token_id], stop_strings()) == "The number is odd.\n\n"
    # A lone lead byte of a two-byte UTF-8 character (byte-level BPE symbol 'Ã' is byte 0xC3):
    # every backend renders it as U+FFFD, as transformers' decode does.
    lead_byte = tok.convert_tokens_to_ids("Ã")
    assert decode_response(tok, tok("ok", add_special_tokens=False).input_ids + [lead_byte], []) == "ok\ufffd"
