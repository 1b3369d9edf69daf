"""Logic versions: every stage's fingerprint holds tunesweep's version and its own logic version (and
those its inputs were made by), so a change of a stage's logic redoes exactly that stage and the ones
after it. The pins below catch a change of a stage's output on fixed inputs that forgot to bump its
version: if one fails and the change is intended, bump the named constant and update the pin.

All cheap: no engine, no training, no model load.
"""

from __future__ import annotations

import json

import pytest

from helpers import vouch_for_responses
from tunesweep.config import expand_sweep, load_config
from tunesweep.files import read_json, sha256_bytes, write_json, write_jsonl
from tunesweep.layout import Workdir, load_split
from tunesweep.records import RECORD_FIELDS

STAGES = ["split", "train", "generate", "clean", "score"]


def write_config(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(f"name: logic\nworkdir: {tmp_path / 'work'}\nseed: 3\n"
                    "dataset: {source: builtin:tasks, builtin_rows: 60, test_size: 4}\n"
                    "models: [{name: tiny, base: unused-base, lora: null}]\n"
                    "generation: {sweep: {top_k: [10]}}\nevaluation: {metrics: [bleu], bootstrap: 0}\n")
    return load_config(path)


def run_stages(cfg) -> dict:
    """What each stage decides from, by the stages' own functions: split's skip decision and split.json,
    train's logic (part of its fingerprint; a stand-in tunesweep.json records it as a training would),
    generate's job fingerprints (from split.json and tunesweep.json), clean's cleaning.json and score's
    cache-key logic. Response files stand in for generation (no engine)."""
    from tunesweep.data import split_for_config
    from tunesweep.clean.stage import clean
    from tunesweep.evaluate.scoring import score_logic
    from tunesweep.generate.stage import plan_target
    from tunesweep.train.stage import train_logic

    paths = Workdir(cfg.path)
    meta, skipped = split_for_config(cfg)
    out = {"split": (skipped, meta["logic"])}
    model_dir = paths.model_dir("tiny")
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "config.json").write_text("{}\n")
    (model_dir / "tokenizer.json").write_text("{}\n")
    header = b'{"__metadata__": {}}'
    (model_dir / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    out["train"] = train_logic(cfg.path)
    record = paths.model_record("tiny")
    if not record.is_file() or read_json(record).get("logic") != out["train"]:
        write_json(record, {"logic": out["train"]})  # what a (re)training records
    target = cfg.run_targets("tiny")[0]
    rows = load_split(cfg.path, "test")
    plan = plan_target(cfg, target, "hf", rows, None)
    out["generate"] = [j.inputs for j in plan.jobs]
    for dc in expand_sweep(cfg.generation):
        write_jsonl(paths.response_file("tiny", dc.name),
                    [{k: {"id": r["id"], "prompt": "p", "reference": r["output"], "response_raw": r["output"],
                          "response": None, "finish_reason": "stop", "num_tokens": 1, "config": dc.name,
                          "model": "tiny"}[k] for k in RECORD_FIELDS} for r in rows])
    manifest = vouch_for_responses(cfg.path, "tiny", cfg=cfg)
    write_json(paths.manifest("tiny"), {**manifest, "logic": plan.logic})
    clean(cfg)
    out["clean"] = read_json(paths.cleaning("tiny"))["logic"]
    out["score"] = score_logic(cfg.path, "tiny")
    return out


@pytest.mark.parametrize("stage", STAGES)
def test_a_logic_version_redoes_its_stage_and_the_ones_after(tmp_path, monkeypatch, stage):
    import tunesweep.data.split as split_mod
    import tunesweep.clean.stage as clean_mod
    import tunesweep.evaluate.scoring as score_mod
    import tunesweep.generate.stage as generate_mod
    import tunesweep.train.stage as train_mod

    cfg = write_config(tmp_path)
    first = run_stages(cfg)
    again = run_stages(cfg)
    assert again["split"][0] is True  # an unchanged rerun: split skipped, nothing else differs
    assert {k: v for k, v in again.items() if k != "split"} == {k: v for k, v in first.items() if k != "split"}

    module = {"split": split_mod, "train": train_mod, "generate": generate_mod, "clean": clean_mod,
              "score": score_mod}[stage]
    constant = f"{stage.upper()}_VERSION"
    monkeypatch.setattr(module, constant, getattr(module, constant) + 1)
    bumped = run_stages(cfg)
    redone = [s for s in STAGES if (bumped[s][0] is False if s == "split" else bumped[s] != first[s])]
    assert redone == STAGES[STAGES.index(stage):]
    # Every record names the versions it was made by.
    assert bumped["score"][stage] == getattr(module, constant)
    assert bumped["score"]["tunesweep"] == __import__("tunesweep").__version__


def test_every_record_holds_the_logic_versions(tmp_path):
    cfg = write_config(tmp_path)
    run_stages(cfg)
    paths = Workdir(cfg.path)
    assert set(read_json(paths.split_meta)["logic"]) == {"tunesweep", "split"}
    assert set(read_json(paths.cleaning("tiny"))["logic"]) == {"tunesweep", "split", "train", "generate", "clean"}


# --- pins: deterministic outputs of fixed inputs ---------------------------------------------------

def _hash(obj) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode())[:16]


def test_split_of_a_fixed_file_is_pinned(tmp_path, alpaca_demo_path):
    from tunesweep.data import split_dataset

    split_dataset(str(alpaca_demo_path), tmp_path, 40, seed=42)
    got = _hash([(tmp_path / "alpaca_data" / f"{w}.jsonl").read_text() for w in ("train", "test")])
    assert got == SPLIT_PIN, "split output changed: bump SPLIT_VERSION if this change is intended"


CLEAN_CASES = [
    ("Below is an instruction.\n\n### Instruction:\nName a colour.\n\n### Response:\nBlue.</s>",
     "Below is an instruction.\n\n### Instruction:\nName a colour.\n\n### Response:\n"),
    ("Red and green.\n### Instruction:\nAnother task", "p"),
    ("  trailing   \n  spaces  \n", "p"),
    ("<s>Un chat.<|endoftext|><pad>", "p"),
    ("", "p"),
    ("### Input:\nleak", "p"),
]


def test_clean_of_fixed_responses_is_pinned():
    from tunesweep.clean.stage import clean_records
    from tunesweep.records import ResponseRecord

    records = [ResponseRecord.from_json({"response_raw": raw, "prompt": prompt, "finish_reason": "stop"})
               for raw, prompt in CLEAN_CASES]
    counts = clean_records(records)
    got = _hash([[r.response for r in records], counts])
    assert got == CLEAN_PIN, "clean output changed: bump CLEAN_VERSION if this change is intended"


def test_decode_of_fixed_token_ids_is_pinned():
    """The one decoding both generation backends use, on a fixed word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from tunesweep.templates import decode_response, stop_strings

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "Hello", "world", "###", "Instruction:",
                                         "é", "猫", "Response:", "\n"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    sequences = [[1, 3, 4, 2], [3, 7, 8, 5, 6, 4], [8, 8, 2, 3], [], [5, 9, 3]]
    got = _hash([decode_response(hf, ids, stop_strings("alpaca")) for ids in sequences])
    assert got == DECODE_PIN, "decoding of token ids changed: bump GENERATE_VERSION if this change is intended"


def test_scoring_of_fixed_responses_is_pinned():
    from tunesweep.evaluate.metrics import build_metric

    refs = ["The cat sat on the mat.", "Paris is the capital of France.", "Water boils at 100 degrees Celsius.",
            "Blue.", "A long answer with many words in it, to score."]
    hyps = ["The cat sat on a mat.", "Paris is France's capital.", "", "Blue.", "A short answer."]
    for name, pin in SCORE_PINS.items():
        metric = build_metric(name)
        rows = metric.rows(hyps, refs)
        got = [round(float(metric.aggregate(rows[i:i + 1])), 6) for i in range(len(hyps))]
        got.append(round(float(metric.aggregate(rows)), 6))
        # One metric's pin: a change of its numbers rescores it alone by its own version.
        assert _hash({name: got}) == pin, (f"{name} scores changed ({got}): bump its version in "
                                           f"tunesweep/metric_registry.py if this change is intended")


SPLIT_PIN = "7ce8df35f767e178"  # split 2: groups by the normalised prompt
CLEAN_PIN = "d6db3692667a2cda"
DECODE_PIN = "9b6c21a92888f569"
SCORE_PINS = {"bleu": "5358b9f795e9f5c0", "rougeL": "91ce16474362d332"}  # together: aca9767fb6ccfdd4, the pin before
