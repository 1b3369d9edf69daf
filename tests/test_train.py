"""The fine-tuning stage on a CPU: peft backend for real (LoRA, QLoRA, full), the unsloth backend
against a stand-in module, skip / retrain / resume, and the merged checkpoint served by vLLM.

Expensive things are shared: one LoRA run on the real Alpaca demo records (module fixture) feeds
the loss, merge, perplexity and vLLM tests; small runs on builtin:tasks cover the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from helpers import kill_when
from tunesweep.config import parse_config
from tunesweep.data import load_split, split_dataset
from tunesweep.errors import UserError
from tunesweep.files import read_json, sha256_file
from tunesweep.templates import build_prompt, build_training_pair
from tunesweep.train import finetune
from tunesweep.train.check import warn_on_check

REPO = Path(__file__).resolve().parent.parent
STAND_IN = Path(__file__).resolve().parent / "unsloth_stand_in"
ON_CUDA = torch.cuda.is_available()  # these tests are written for the CPU; on CUDA a few adapt or skip
ALL_PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_config(workdir: Path, models: list[dict], max_new_tokens: int = 16, seed: int = 0):
    return parse_config({
        "name": "test", "workdir": str(workdir), "seed": seed,
        "models": models,
        "generation": {"max_new_tokens": max_new_tokens},
    })


def lora_model(name: str, base: Path, **train) -> dict:
    return {
        "name": name, "base": str(base), "backend": "auto", "max_seq_length": 256,
        "lora": {"r": 8, "alpha": 16, "target_modules": ALL_PROJ},
        "train": {"max_steps": 3, "batch_size": 4, "grad_accum": 1, "learning_rate": 2e-3, "logging_steps": 1,
                  "save_steps": 100, **train},
    }


def logits_of(model, tokenizer, prompts):
    tokenizer.padding_side = "right"
    enc = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


# --- one LoRA run on real Alpaca records, shared ------------------------------------------------

@pytest.fixture(scope="module")
def alpaca_run(tmp_path_factory, alpaca_demo_path, tiny_alpaca_model_dir):
    from transformers import AutoTokenizer

    work = tmp_path_factory.mktemp("alpaca-run")
    # The records whose prompt + answer + EOS fit max_seq_length 128 under the tiny tokenizer (about a third):
    # training drops longer ones, and stops when more than a quarter would go.
    tok = AutoTokenizer.from_pretrained(tiny_alpaca_model_dir)
    pairs = [(r, build_training_pair(r)) for r in json.loads(alpaca_demo_path.read_text())]
    short = [r for r, p in pairs if len(tok(p["prompt"] + p["completion"])["input_ids"]) + 1 <= 128]
    (work / "short.json").write_text(json.dumps(short))
    split_dataset(str(work / "short.json"), work, 40, seed=0)
    model = {
        "name": "tiny-alpaca", "base": str(tiny_alpaca_model_dir), "backend": "auto", "max_seq_length": 128,
        # A random base's frozen LM head caps what LoRA alone can learn in 30 steps: train it too.
        "lora": {"r": 16, "alpha": 32, "target_modules": ALL_PROJ, "modules_to_save": ["lm_head"]},
        "train": {"max_steps": 30, "batch_size": 8, "grad_accum": 1, "learning_rate": 3e-3, "warmup_steps": 2,
                  "logging_steps": 2, "save_steps": 100},
    }
    cfg = make_config(work, [model])
    [record] = finetune(cfg)
    return {"cfg": cfg, "work": work, "record": record, "base": tiny_alpaca_model_dir,
            "checkpoint": work / "finetuned_models" / "tiny-alpaca"}


def test_training_loss_falls_on_real_alpaca_records(alpaca_run):
    losses = [e["loss"] for e in alpaca_run["record"]["loss_history"]]
    assert alpaca_run["record"]["status"] == "trained"
    assert alpaca_run["record"]["global_step"] == 30
    assert len(losses) >= 10
    # An untrained 2k-vocabulary model starts near ln(2048) = 7.6 nats.
    assert sum(losses[-3:]) / 3 < losses[0] - 1.0, losses


def test_record_carries_backend_choice_settings_data_hash_and_versions(alpaca_run):
    out = alpaca_run["checkpoint"]
    record = read_json(out / "tunesweep.json")
    assert record["backend_requested"] == "auto"
    # The documented rule, decided here without tunesweep's own probe: unsloth only with CUDA and an
    # unsloth that imports (in a fresh interpreter), else peft, with the reason recorded.
    unsloth_imports = ON_CUDA and subprocess.run([sys.executable, "-c", "import unsloth"]).returncode == 0
    if unsloth_imports:
        assert record["backend"] == "unsloth" and record["backend_reason"] == "CUDA is visible and unsloth imports"
    else:
        assert record["backend"] == "peft"
        assert ("no CUDA" if not ON_CUDA else "unsloth") in record["backend_reason"]
    assert record["method"] == "lora" and record["lora"]["r"] == 16
    assert record["train"]["learning_rate"] == 3e-3
    assert record["data"]["train_sha256"] == sha256_file(alpaca_run["work"] / "alpaca_data" / "train.jsonl")
    assert {"torch", "transformers", "peft", "trl"} <= set(record["versions"])
    assert record["wall_s"] > 0
    assert record["dtype"] == "float32" or ON_CUDA  # fp32 on a CPU
    assert (out / "adapter" / "adapter_config.json").is_file()
    # TRL checkpoints are gone once the merged model exists; no staging folder is left behind.
    assert not list((out.parent / "tiny-alpaca.training").glob("checkpoint-*"))
    assert not (out.parent / ".tiny-alpaca.staging").exists()


def test_merged_checkpoint_has_no_lora_and_matches_the_peft_model(alpaca_run):
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = alpaca_run["checkpoint"]
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not [k for k in keys if "lora" in k.lower()]
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert not [n for n, _ in merged.named_modules() if "lora" in n.lower()]
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompts = [build_prompt(r) for r in load_split(alpaca_run["work"], "test")[:4]]
    peft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(alpaca_run["base"], dtype=torch.float32), str(out / "adapter"))
    got, want = logits_of(merged, tokenizer, prompts), logits_of(peft_model.eval(), tokenizer, prompts)
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    base_logits = logits_of(AutoModelForCausalLM.from_pretrained(alpaca_run["base"], dtype=torch.float32),
                            tokenizer, prompts)
    assert (got - base_logits).abs().max() > 1e-2  # the adapter did change the model


def test_post_merge_check_reloads_and_records_eos_and_pad(alpaca_run):
    check = alpaca_run["record"]["post_merge_check"]
    assert check["problems"] == []
    assert check["eos_token_id"] != check["pad_token_id"]
    eos_ids = check["generation_config_eos_token_id"]
    assert check["eos_token_id"] in (eos_ids if isinstance(eos_ids, list) else [eos_ids])
    assert check["prompts"] == 4 and len(check["samples"]) == 4
    assert all(s["num_tokens"] <= 16 for s in check["samples"])


def test_merge_fidelity_of_the_lora_merge_and_a_corrupted_weight(alpaca_run, tmp_path, caplog):
    fidelity = alpaca_run["record"]["post_merge_check"]["merge_fidelity"]
    # fp32 on a CPU: folding the adapter in is exact up to rounding, so greedy answers agree everywhere.
    assert fidelity["compared"] and fidelity["prompts"] == 4
    assert fidelity["greedy_agreement"] == 1.0 and fidelity["mean_kl"] < 1e-6
    assert fidelity["max_abs_logit_diff"] < 1e-3
    import shutil

    from safetensors.torch import load_file, save_file

    from tunesweep.train.check import post_merge_check

    broken = tmp_path / "merged"
    shutil.copytree(alpaca_run["checkpoint"], broken)
    weights = load_file(broken / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    weights[name] = weights[name] + torch.randn_like(weights[name])  # one corrupted matrix
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    cfg = alpaca_run["cfg"]
    check = post_merge_check(broken, load_split(alpaca_run["work"], "test"), cfg.template, 16,
                             base=str(alpaca_run["base"]))
    assert check["merge_fidelity"]["mean_kl"] > 1e-3
    with caplog.at_level("WARNING"):
        warn_on_check("tiny-alpaca", check)
    assert "tiny-alpaca: MERGE FIDELITY CHECK FAILED: THE MERGED CHECKPOINT IS NOT THE MODEL THAT WAS TRAINED" in caplog.text


def test_never_stopping_model_is_warned_about_in_capitals(caplog):
    check = {"problems": [], "prompts": 4, "ended_with_eos": 1, "max_new_tokens": 16}
    with caplog.at_level("WARNING"):
        warn_on_check("m", check)
    assert "ONLY 1 OF 4 GREEDY TEST ANSWERS ENDED WITH EOS" in caplog.text
    caplog.clear()
    warn_on_check("m", {**check, "ended_with_eos": 4})
    assert caplog.text == ""


def test_perplexity_of_test_references_is_lower_after_finetuning(alpaca_run):
    from tunesweep.evaluate.perplexity import corpus_perplexity

    test = load_split(alpaca_run["work"], "test")
    tuned = corpus_perplexity(str(alpaca_run["checkpoint"]), test)
    base = corpus_perplexity(str(alpaca_run["base"]), test)
    assert tuned["tokens"] == base["tokens"] > 0
    assert tuned["perplexity"] < 0.5 * base["perplexity"], (tuned, base)


def test_unchanged_inputs_train_nothing(alpaca_run):
    weights = alpaca_run["checkpoint"] / "model.safetensors"
    before = weights.stat().st_mtime_ns
    [again] = finetune(alpaca_run["cfg"])
    assert again["status"] == "skipped"
    assert again["inputs_fingerprint"] == alpaca_run["record"]["inputs_fingerprint"]
    assert weights.stat().st_mtime_ns == before


VLLM_SCRIPT = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams

    if __name__ == "__main__":
        checkpoint, prompts = sys.argv[1], json.loads(sys.argv[2])
        llm = LLM(model=checkpoint, dtype="float32", max_model_len=512, seed=0, enforce_eager=True)
        outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=12, seed=0))
        print("RESULT" + json.dumps([list(o.outputs[0].token_ids) for o in outs]))
        llm.llm_engine.engine_core.shutdown()
""")


@pytest.mark.slow
def test_vllm_loads_and_generates_from_the_merged_checkpoint(alpaca_run, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = alpaca_run["checkpoint"]
    prompts = [build_prompt(r) for r in load_split(alpaca_run["work"], "test")[:3]]
    script = tmp_path / "vllm_generate.py"
    script.write_text(VLLM_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(out), json.dumps(prompts)], capture_output=True,
                          text=True, timeout=400, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    vllm_ids = json.loads(line[len("RESULT"):])
    assert all(len(ids) > 0 for ids in vllm_ids)
    # vLLM serves the same weights transformers trained: greedy tokens agree with HF generate.
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for prompt, ids in zip(prompts, vllm_ids):
        enc = tokenizer(prompt, return_tensors="pt")
        hf = model.generate(**enc, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
        hf_ids = hf[0, enc["input_ids"].shape[1]:].tolist()
        assert ids == hf_ids[: len(ids)]


# --- small runs on builtin:tasks ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tasks_split(tmp_path_factory):
    work = tmp_path_factory.mktemp("tasks-split")
    split_dataset("builtin:tasks", work, 8, seed=0, builtin_rows=120)
    return work / "alpaca_data"


@pytest.fixture
def workdir(tmp_path, tasks_split):
    import shutil

    shutil.copytree(tasks_split, tmp_path / "alpaca_data")
    return tmp_path


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_changed_learning_rate_retrains_and_force_redoes(workdir, tiny_model_dir):
    cfg = make_config(workdir, [lora_model("m", tiny_model_dir)])
    [first] = finetune(cfg)
    assert first["status"] == "trained"
    assert finetune(cfg)[0]["status"] == "skipped"
    assert finetune(cfg, model="m-base") == []  # base rows are never fine-tuned
    changed = make_config(workdir, [lora_model("m", tiny_model_dir, learning_rate=1e-3)])
    [second] = finetune(changed)
    assert second["status"] == "trained"
    assert second["inputs_fingerprint"] != first["inputs_fingerprint"]
    assert read_json(workdir / "finetuned_models" / "m" / "tunesweep.json")["train"]["learning_rate"] == 1e-3
    from safetensors.torch import load_file

    weights = workdir / "finetuned_models" / "m" / "model.safetensors"
    before = load_file(weights)
    torch.rand(1000)  # use the global RNG, as any earlier work in the process would
    assert finetune(changed, force=True)[0]["status"] == "trained"
    after = load_file(weights)
    # Same inputs, same weights: the LoRA init is seeded, not left to the process's RNG state.
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_full_finetuning_without_lora(workdir, tiny_model_dir):
    model = {**lora_model("full", tiny_model_dir), "lora": None}
    [rec] = finetune(make_config(workdir, [model]))
    out = workdir / "finetuned_models" / "full"
    assert rec["method"] == "full" and rec["backend"] == "peft"
    assert not (out / "adapter").exists()
    assert rec["post_merge_check"]["merge_fidelity"] == {
        "compared": False, "why": "full fine-tuning: there is no adapter, so nothing to compare"}
    from safetensors.torch import load_file

    tuned, base = load_file(out / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    changed = [k for k in base if not torch.equal(tuned[k], base[k])]
    assert "model.embed_tokens.weight" in changed and len(changed) > len(base) // 2


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_qlora_trains_a_few_steps_on_the_cpu(workdir, tiny_model_dir):
    model = {**lora_model("q", tiny_model_dir), "load_in_4bit": True}
    [rec] = finetune(make_config(workdir, [model]), backend="peft")
    out = workdir / "finetuned_models" / "q"
    assert rec["method"] == "qlora"
    assert rec["dtype"].endswith("(nf4 base)")  # the model that trained was really 4-bit
    assert rec["global_step"] == 3 and all(e["loss"] > 0 for e in rec["loss_history"])
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # merged into a full-precision reload, not into nf4
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert merged.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_a_run_killed_after_its_last_checkpoint_resumes_to_exactly_max_steps(workdir, tmp_path_factory,
                                                                             tiny_model_dir, tasks_split):
    """Killed after saving checkpoint-<max_steps> but before the merge: the resumed run trains no step past
    max_steps (transformers would train one more), and its weights equal an uninterrupted run's."""
    import shutil

    import yaml
    from safetensors.torch import load_file

    model = lora_model("r", tiny_model_dir, max_steps=4, batch_size=2, save_steps=4, logging_steps=1,
                       lr_scheduler="constant")
    cfg = make_config(workdir, [model])
    cfg_file = workdir / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump()))
    last = workdir / "finetuned_models" / "r.training" / "checkpoint-4" / "trainer_state.json"
    kill_when([sys.executable, str(REPO / "finetuning_scripts" / "finetune.py"), "-c", str(cfg_file), "--model", "r"],
              last.is_file, timeout=240, what="the last checkpoint")
    assert not (workdir / "finetuned_models" / "r").exists()
    [resumed] = finetune(cfg)
    assert resumed["resumed_from_step"] == 4 and resumed["global_step"] == 4

    other = tmp_path_factory.mktemp("uninterrupted")
    shutil.copytree(tasks_split, other / "alpaca_data")
    [whole] = finetune(make_config(other, [model]))
    assert whole["global_step"] == 4
    a = load_file(str(workdir / "finetuned_models" / "r" / "model.safetensors"))
    b = load_file(str(other / "finetuned_models" / "r" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def alpaca_pairs_and_tokenizer(alpaca_demo_path, tiny_alpaca_model_dir):
    from transformers import AutoTokenizer

    pairs = [build_training_pair(r) for r in json.loads(alpaca_demo_path.read_text())]
    return pairs, AutoTokenizer.from_pretrained(tiny_alpaca_model_dir)


def test_rows_longer_than_max_seq_length_are_dropped_with_a_warning(alpaca_pairs_and_tokenizer, caplog):
    from tunesweep.train.toolkit import rows_that_fit

    pairs, tok = alpaca_pairs_and_tokenizer
    lengths = [len(tok(p["prompt"] + p["completion"])["input_ids"]) + 1 for p in pairs]
    short = [p for p, n in zip(pairs, lengths) if n <= 128][:18]
    long = sorted((n, i) for i, n in enumerate(lengths) if n > 128)[:2]  # 2 of 20 rows (10%) too long
    rows = short[:9] + [pairs[long[0][1]]] + short[9:] + [pairs[long[1][1]]]
    with caplog.at_level("WARNING"):
        kept, note = rows_that_fit(rows, tok, 128, "m")
    assert kept == short
    assert note == (f"dropped 2 of 20 training rows (10%) are longer than max_seq_length 128 (prompt + answer + EOS; "
                    f"the longest needs {long[1][0]} tokens): they would lose their EOS")
    assert note in caplog.text
    assert rows_that_fit(short, tok, 128, "m") == (short, None)  # everything fits: nothing said


@pytest.mark.parametrize("max_len", [16, 256])
def test_max_seq_length_too_short_for_the_data_is_one_line(alpaca_pairs_and_tokenizer, max_len):
    from tunesweep.train.toolkit import rows_that_fit

    pairs, tok = alpaca_pairs_and_tokenizer
    need = max(len(tok(p["prompt"] + p["completion"])["input_ids"]) + 1 for p in pairs)
    with pytest.raises(UserError) as err:
        rows_that_fit(pairs, tok, max_len, "m")
    msg = str(err.value)
    assert msg.startswith(f"models.m.max_seq_length = {max_len}: ") and "\n" not in msg
    assert f"the data needs max_seq_length {need}" in msg


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_checkpoints_from_other_inputs_are_not_resumed(workdir, tiny_model_dir):
    from tunesweep.train.resume import prepare_training_dir

    training = workdir / "t.training"
    (training / "checkpoint-5").mkdir(parents=True)
    (training / "checkpoint-5" / "trainer_state.json").write_text("{}")
    assert prepare_training_dir(training, {"lr": 1}, force=False) is None  # no inputs.json yet: unknown origin
    assert not (training / "checkpoint-5").exists()
    (training / "checkpoint-5").mkdir()
    (training / "checkpoint-5" / "trainer_state.json").write_text("{}")
    (training / "checkpoint-9").mkdir()  # killed while saving: no trainer_state.json
    assert prepare_training_dir(training, {"lr": 1}, force=False) == str(training / "checkpoint-5")
    assert not (training / "checkpoint-9").exists()
    assert prepare_training_dir(training, {"lr": 2}, force=False) is None


# --- the unsloth backend, against a stand-in module --------------------------------------------

@pytest.fixture
def unsloth_stand_in(monkeypatch, tmp_path):
    """Put tests/unsloth_stand_in (NOT the real unsloth) first on sys.path for one test: the training
    process tunesweep spawns inherits it. Never imported here: like Unsloth, it patches transformers
    for the whole process that imports it. Returns a function that reads the calls it recorded."""
    calls = tmp_path / "unsloth_calls.jsonl"
    monkeypatch.syspath_prepend(str(STAND_IN))
    monkeypatch.setenv("UNSLOTH_STAND_IN_CALLS", str(calls))
    assert "unsloth" not in sys.modules
    yield lambda: [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []
    assert "unsloth" not in sys.modules  # nothing imported it into the test process


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_unsloth_backend_call_sequence_against_stand_in(workdir, tiny_model_dir, unsloth_stand_in):
    model = lora_model("u", tiny_model_dir)
    model["lora"]["modules_to_save"] = ["lm_head"]
    cfg = make_config(workdir, [model], seed=7)
    [rec] = finetune(cfg, backend="unsloth")
    out = workdir / "finetuned_models" / "u"
    calls = unsloth_stand_in()
    assert calls[0] == ["import", {"imported_before": []}]  # unsloth first, as it asks: it patches the others
    calls = calls[1:]
    assert [name for name, _ in calls] == ["from_pretrained", "get_peft_model", "save_pretrained_merged"]
    assert calls[0][1] == {"model_name": str(tiny_model_dir), "max_seq_length": 256, "load_in_4bit": False,
                           "dtype": None}
    peft_args = calls[1][1]
    assert peft_args == {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ALL_PROJ, "bias": "none",
                         "use_gradient_checkpointing": "unsloth", "random_state": 7, "modules_to_save": ["lm_head"]}
    merged = calls[2][1]
    assert merged["save_method"] == "merged_16bit"
    assert Path(merged["save_directory"]).name == ".u.staging"  # written aside, renamed into place
    assert merged["tokenizer"]["pad_token_id"] != merged["tokenizer"]["eos_token_id"]
    assert rec["backend"] == "unsloth" and rec["backend_requested"] == "unsloth"
    # The stand-in patched LlamaForCausalLM in the training process: the check ran in another one.
    assert rec["post_merge_check"]["problems"] == [] and rec["post_merge_check"]["prompts"] > 0
    assert (out / "config.json").is_file() and (out / "adapter" / "adapter_config.json").is_file()


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
@pytest.mark.skipif(ON_CUDA, reason="on CUDA, auto rightly picks an importable unsloth")
def test_auto_picks_peft_without_cuda_even_when_unsloth_imports(workdir, tiny_model_dir, unsloth_stand_in):
    [rec] = finetune(make_config(workdir, [lora_model("a", tiny_model_dir, max_steps=1)]))
    assert rec["backend"] == "peft" and "no CUDA" in rec["backend_reason"]
    assert unsloth_stand_in() == []


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_unsloth_backend_without_unsloth_is_a_one_line_user_error(workdir, tiny_model_dir, monkeypatch):
    # An unsloth that raises on import as the real one does without a GPU, seen by the training process.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent / "unsloth_broken"))
    with pytest.raises(UserError) as err:
        finetune(make_config(workdir, [lora_model("x", tiny_model_dir)]), backend="unsloth")
    assert "backend 'unsloth'" in str(err.value) and "NotImplementedError" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (workdir / "finetuned_models" / "x").exists()


def test_per_model_front_defaults_to_its_model(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\nmodels: [{name: other, base: nowhere}]\n")
    proc = subprocess.run([sys.executable, str(REPO / "finetuning_scripts" / "finetune_mistral.py"), "-c", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "tunesweep: error: no model named 'mistral' in the config (models: other)")


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_throughput_is_measured_from_the_trainers_own_token_count(workdir, tiny_model_dir):
    model = lora_model("speed", tiny_model_dir, max_steps=None, epochs=1, batch_size=8)
    cfg = make_config(workdir, [model])
    [rec] = finetune(cfg)
    t = rec["throughput"]
    # One epoch: the trainer saw every training row once, EOS appended, no padding counted.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    pairs = [build_training_pair(r, cfg.template) for r in load_split(workdir, "train")]
    expected = sum(min(len(tok(p["prompt"] + p["completion"] + tok.eos_token)["input_ids"]), 256) for p in pairs)
    assert t["tokens_seen"] == pytest.approx(expected, rel=0.02)
    assert t["tokens_per_s"] > 0 and t["measured_s"] > 0
    assert t["tokens_per_s"] * t["measured_s"] == pytest.approx(t["measured_tokens"], rel=0.1)
    assert t["warmup_steps_excluded"] + t["measured_steps"] == rec["global_step"] == 14
    assert t["warmup_steps_excluded"] == 5 and 0 < t["measured_tokens"] < t["tokens_seen"]
    weights = (workdir / "finetuned_models" / "speed" / "model.safetensors").stat().st_size
    assert t["peak_memory_bytes"] > weights and t["peak_memory_kind"] in (
        "peak RSS of the training process", "cuda max_memory_allocated")
