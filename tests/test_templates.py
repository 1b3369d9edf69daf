"""The Alpaca template: exact strings, and training text that starts with the inference prompt."""

from tunesweep.templates import build_prompt, build_training_pair, build_training_text, stop_strings

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


def test_training_text_prefix_is_the_inference_prompt():
    for rec in (WITH_INPUT, NO_INPUT):
        text = build_training_text(rec, eos_token="</s>")
        assert text == build_prompt(rec) + rec["output"] + "</s>"
        pair = build_training_pair(rec)
        assert pair == {"prompt": build_prompt(rec), "completion": rec["output"]}


def test_stop_strings_are_the_section_markers():
    assert stop_strings() == ["### Instruction:", "### Input:", "### Response:"]
