"""`make-tiny-model`: a checkpoint that transformers and vLLM both load and generate from, offline."""

import json
import subprocess
import sys
import textwrap

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


def test_cli_builds_from_a_data_file(tmp_path, alpaca_demo_path):
    r = run_tunesweep("make-tiny-model", tmp_path / "m", "--data", alpaca_demo_path, "--seed", "3")
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "m" / "tunesweep_tiny.json").read_text())
    assert meta["data"] == str(alpaca_demo_path) and meta["seed"] == 3
    assert (tmp_path / "m" / "model.safetensors").stat().st_size < 10_000_000


def test_vllm_loads_and_generates_offline(tiny_model_dir, tmp_path):
    # The engine core runs in subprocesses (spawn), so vLLM runs from a script with a main guard.
    script = tmp_path / "run_vllm.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys
        from vllm import LLM, SamplingParams

        if __name__ == "__main__":
            llm = LLM(model={str(tiny_model_dir)!r}, dtype="float32", max_model_len=256, seed=0)
            params = SamplingParams(temperature=0.0, max_tokens=8, min_tokens=8, seed=1)
            out = llm.generate(["### Instruction:\\nSay whether the number is odd or even."], params)
            print("RESULT " + json.dumps({{"ids": list(out[0].outputs[0].token_ids), "text": out[0].outputs[0].text}}))
            llm.llm_engine.engine_core.shutdown()
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(l for l in r.stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert len(result["ids"]) == 8

    # The same greedy tokens from transformers: both backends read the checkpoint the same way.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = tok("### Instruction:\nSay whether the number is odd or even.", return_tensors="pt").input_ids
    hf = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)[0, ids.shape[1]:].tolist()
    assert hf == result["ids"]
