"""`make-tiny-model`: a checkpoint that transformers (and vLLM, see below) load and generate from, offline."""

import json

import pytest

from helpers import run_tunesweep


def test_tiny_model_ids_and_transformers_generate(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    assert model.dtype == torch.float32
    assert model.generation_config.eos_token_id == tok.eos_token_id
    text = "### Instruction:\nSay whether the number is odd or even."
    ids = tok(text, return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id
    assert tok.decode(ids[0], skip_special_tokens=True) == text  # byte-level BPE round-trips
    out = model.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert out.shape[1] == ids.shape[1] + 6


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_cli_builds_from_a_data_file(tmp_path, alpaca_demo_path):
    r = run_tunesweep("make-tiny-model", tmp_path / "m", "--data", alpaca_demo_path, "--seed", "3")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "m" / "tunesweep_tiny.json").read_text())
    assert meta["data"] == str(alpaca_demo_path) and meta["seed"] == 3
    assert (tmp_path / "m" / "model.safetensors").stat().st_size < 10_000_000


# vLLM loading the tiny model offline, and its greedy tokens equalling transformers', is checked on the
# study of conftest.py (test_generate.test_hf_backend_matches_vllm_greedy_and_beam): no engine of its own here.
