"""No record key is spelled outside the module that owns its record (tunesweep/records.py).

The keys are read from the owner itself: the fields of every record dataclass of tunesweep.records (one with
from_json and to_json) and every `*_KEYS` tuple it defines (the keys of the JSON objects it wraps). A string
literal equal to one of them is a violation when it is used as a record key: a subscript (`x["configs"]`), the
key argument of `.get` / `.pop` / `.setdefault`, or a key of a dict literal, in any module of tunesweep/ but
records.py. Pure AST over the source; the only import is tunesweep.records.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

from tunesweep import records

PKG = Path(__file__).resolve().parent.parent / "tunesweep"
OWNER = PKG / "records.py"

# Record keys that are also ordinary words of other files and objects, so a literal equal to one of them says
# nothing about whose record is read. Each is exempt everywhere, for the reason given.
GENERIC = {
    "id": "the row id of every file (alpaca_data/*.jsonl, tables, human-eval key, judge exports)",
    "model": "a column of every eval_results table and a key of the human-eval key and of tunesweep.json",
    "config": "a column of every eval_results table and a key of the human-eval key",
    "prompt": "TRL's {prompt, completion} training pair (templates, train/, perplexity)",
    "reference": "comparisons.csv's column (the config a difference is taken to) and AlpacaEval exports",
    "backend": "tunesweep.json and every stage's summary name their backend too",
    "logic": "provenance.logic records of every stage file (split.json, tunesweep.json, cleaning.json, ...)",
    "versions": "library versions recorded by every stage file (provenance.library_versions)",
    "engine": "engine settings passed to the generation backends",
    "seed": "the study's seed in tunesweep.json, split.json and the config",
    "mode": "a column of eval_results/<model>.csv (greedy / sample / beam)",
    "rows": "row counts in summaries, cleaning counts, race rounds and the report's JSON",
    "tokens": "token counts in summaries, race usage and perplexity.csv",
    "wall_s": "wall times in summaries, runs and race usage",
    "tokens_per_s": "throughput in summaries and tunesweep.json",
    "note": "free-text notes of many records",
    "key": "cache keys (the score cache's entries)",
    "file": "paths in several summaries",
    "temperature": "a decoding parameter: config fields, effective parameters, sweep settings",
    "top_k": "a decoding parameter: config fields, effective parameters, sweep settings",
    "num_beams": "a decoding parameter: config fields, effective parameters, sweep settings",
    "max_new_tokens": "a decoding parameter: config fields, effective parameters, sweep settings",
    "limit": "a CLI / summary word",
    "settings": "score's summary of metric settings",
    "targets": "the targets of every stage's summary, the human-eval key and the report's JSON",
    "baseline": "a setting of evaluation.judge and a column of the judge's report tables",
    "pairs": "pair counts in the report's judge summary",
    "flip_share": "the report's judge summary and metrics.json's judge settings",
    "unsure_requests": "verdict objects (judge/verdict.py) and metrics.json's judge settings",
    "preference": "AlpacaEval's annotation field (judge export)",
    "sha256": "provenance.checkpoint_identity's record {checkpoint, sha256, stat}, used for every checkpoint",
    "race": "generate's summary of a race",
    "template": "the config's prompt template, a part of every cache key and of tunesweep.json",
    "judge": "metrics.json's judge settings and the config's evaluation.judge",
    "against": "evaluation.judge.against, recorded in metrics.json's judge settings",
    "metric": "a column of all.csv, comparisons.csv and race.csv, and the score cache's key",
    "target": "every stage's summary names its target",
    "identity": "provenance.checkpoint_identity's record (the judge's, tunesweep.json's base)",
    "rule": "race.csv's column (layout.RACE_COLUMNS)",
}

# Where a record key's word is another record's or object's key, by module and (innermost) function ("*": the
# whole module), with the reason.
ELSEWHERE = {
    ("tunesweep/data/split.py", "*", "test_rows"): "split.json's count of test rows (the split stage's record)",
    ("tunesweep/cli.py", "cmd_split", "test_rows"): "split.json's count of test rows",
    ("tunesweep/pipeline.py", "*", "test_rows"): "split.json's count of test rows",
    ("tunesweep/config.py", "*", "ignored"): "DecodingConfig's own description of itself",
    ("tunesweep/evaluate/human_eval.py", "*", "response"): "the rating sheet's `response` column",
    ("tunesweep/train/check.py", "*", "response"): "the post-merge check's sample answers (tunesweep.json)",
    ("tunesweep/train/check.py", "*", "num_tokens"): "the post-merge check's sample answers (tunesweep.json)",
    ("tunesweep/train/stage.py", "*", "inputs"): "tunesweep.json's inputs (the finetune stage's record)",
    ("tunesweep/train/stage.py", "*", "backend_reason"): "tunesweep.json's backend reason",
    ("tunesweep/report/stage.py", "_training_section", "backend_reason"): "tunesweep.json's backend reason",
    # "checkpoint" and "configs" are the generation manifest's keys, and other records' words too:
    ("tunesweep/provenance.py", "checkpoint_identity", "checkpoint"): "the checkpoint identity record it owns",
    ("tunesweep/train/resume.py", "training_inputs", "checkpoint"): "a checkpoint identity (provenance)",
    ("tunesweep/train/stage.py", "finish_one", "checkpoint"): "a checkpoint identity (provenance)",
    ("tunesweep/generate/stage.py", "start_run", "checkpoint"): "a checkpoint identity (provenance)",
    ("tunesweep/evaluate/scoring.py", "perplexity_job", "checkpoint"): "perplexity.csv's column",
    ("tunesweep/report/stage.py", "_perplexity_section", "checkpoint"): "perplexity.csv's column",
    ("tunesweep/report/html.py", "_perplexity_table", "checkpoint"): "perplexity.csv's column",
    ("tunesweep/evaluate/human_eval.py", "export_sheet", "configs"): "the human-eval key's configs",
    ("tunesweep/generate/backend.py", "agreement_record", "configs"): "replica_agreement's own per-config shares",
    ("tunesweep/report/tables.py", "agreement_text", "configs"): "replica_agreement's own per-config shares",
    ("tunesweep/report/explorer.py", "explorer_data", "configs"): "the report page's explorer data",
    ("tunesweep/generate/stage.py", "run_target", "configs"): "generate's summary",
    ("tunesweep/race/stage.py", "summary", "configs"): "the race's summary",
    ("tunesweep/race/stage.py", "generate_responses", "configs"): "the race's summary",
    # Cache keys: their key names are part of every recorded hash; renaming them would redo all the work.
    ("tunesweep/generate/stage.py", "plan_target", "checkpoint_hash"): "the job's `inputs` fingerprint",
    ("tunesweep/generate/stage.py", "plan_target", "test_set_sha256"): "the job's `inputs` fingerprint",
    ("tunesweep/judge/stage.py", "key_base", "judge_version"): "the verdict cache key",
    ("tunesweep/evaluate/scoring.py", "plan_rows", "responses"): "the score cache key",
    ("tunesweep/race/stage.py", "race_identity", "rounds"): "the race identity's fingerprint",
    # race.csv's columns (layout.RACE_COLUMNS), filled from race.json's accessors.
    **{("tunesweep/race/stage.py", "race_rows", k): "race.csv's column"
       for k in ("rows_used", "rows_total", "leader", "alpha_round")},
    # A stage's returned summary (what the pipeline and CLI print), not a file.
    **{("tunesweep/race/stage.py", f, k): "the race's summary" for f in ("summary", "generate_responses")
       for k in ("survivors", "rounds", "planned_rounds", "eliminated")},
    ("tunesweep/generate/stage.py", "run_target", "engine_builds"): "generate's summary",
    ("tunesweep/generate/stage.py", "generate", "engine_builds"): "generate's summary",
    ("tunesweep/race/stage.py", "summary", "engine_builds"): "the race's summary",
    ("tunesweep/judge/stage.py", "judge", "engine_loads"): "the judge stage's summary",
    # metrics.json's `judge` settings are score's record, built in judged.py from the judge manifest's accessors.
    ("tunesweep/evaluate/judged.py", "judge_settings", "self_preference"): "metrics.json's judge settings",
    ("tunesweep/report/tables.py", "judge_summary", "self_preference"): "metrics.json's judge settings",
}


def record_keys() -> dict[str, str]:
    """{key: record} of every key tunesweep.records owns: its record dataclasses' fields and its *_KEYS tuples."""
    out: dict[str, str] = {}
    for name, obj in vars(records).items():
        # A record dataclass reads and writes its JSON (from_json / to_json) and its fields are its keys; the
        # wrappers of JSON objects updated in place (GenerationManifest, JudgeManifest, ...) name theirs in *_KEYS.
        if (inspect.isclass(obj) and dataclasses.is_dataclass(obj) and obj.__module__ == records.__name__
                and hasattr(obj, "from_json") and hasattr(obj, "to_json")):
            for f in dataclasses.fields(obj):
                out.setdefault(f.name, name)
        elif name.endswith("_KEYS") and isinstance(obj, tuple):
            for key in obj:
                out.setdefault(key, name)
    return out


def _key_nodes(node: ast.AST) -> list[ast.AST]:
    """The nodes of `node` that hold a key: a subscript's, a .get/.pop/.setdefault's first argument, a dict's keys."""
    if isinstance(node, ast.Subscript):
        return [node.slice]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop", "setdefault") and node.args):
        return [node.args[0]]
    if isinstance(node, ast.Dict):
        return [k for k in node.keys if k is not None]
    return []


def key_literals(tree: ast.AST, function: str = "*"):
    """(line, innermost function, text) of every string literal used as a dict key."""
    for child in ast.iter_child_nodes(tree):
        inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else function
        for c in _key_nodes(child):
            if isinstance(c, ast.Constant) and isinstance(c.value, str):
                yield c.lineno, function, c.value
        yield from key_literals(child, inner)


def violations(source: str, keys: dict[str, str], module: str = "snippet.py") -> list[tuple[int, str]]:
    return [(line, text) for line, function, text in key_literals(ast.parse(source))
            if text in keys and text not in GENERIC
            and (module, "*", text) not in ELSEWHERE and (module, function, text) not in ELSEWHERE]


def test_the_owner_defines_the_keys_of_every_record():
    keys = record_keys()
    # The key set is read from the owner: every record is there (not an empty or one-record set).
    for key, record in [("response_raw", "ResponseRecord"), ("generated_sha256", "ConfigEntry"),
                        ("checkpoint_hash", "ConfigEntry"), ("scored_from", "ScoredTarget"),
                        ("answer_sha256", "JudgeRecord"), ("win_rate", "JudgeEntry"), ("test_rows", "MANIFEST_KEYS"),
                        ("cleaned_sha256", "CLEANING_CONFIG_KEYS"), ("template_sha256", "JUDGE_MANIFEST_KEYS")]:
        assert keys.get(key) == record, key
    assert set(GENERIC) <= set(keys), f"exempt but owned by no record: {set(GENERIC) - set(keys)}"
    assert {k for _, _, k in ELSEWHERE} <= set(keys), "an exemption of a key no record has"


def test_a_record_key_spelled_outside_its_owner_is_found():
    """The check cannot pass vacuously: each kind of use of a record key in other code is caught, also inside a
    function that is exempt for another key."""
    keys = record_keys()
    snippet = ("entry = manifest['configs'].get('generated_sha256')\n"
               "x = rec['response_raw']\n"
               "y = {'finish_reason': 1, 'bleu': 2}\n"
               "z = entry.pop('inputs', None)\n"
               "w = row['bleu']\n"
               "def plan_rows():\n"
               "    return {'responses': 1, 'scored_from': 2}\n")
    found = violations(snippet, keys, "tunesweep/evaluate/scoring.py")
    assert [t for _, t in found] == ["generated_sha256", "configs", "response_raw", "finish_reason", "inputs",
                                     "scored_from"], found


def test_no_record_key_is_spelled_outside_records_py():
    keys = record_keys()
    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path == OWNER:
            continue
        module = path.relative_to(PKG.parent).as_posix()
        for line, text in violations(path.read_text(encoding="utf-8"), keys, module):
            found.append(f"{module}:{line}: {text!r} (a key of {keys[text]})")
    assert not found, "record keys spelled outside tunesweep/records.py:\n" + "\n".join(found)


def test_records_read_and_write_the_json_the_stages_always_wrote():
    """Same keys, same order, same values: a record read and written again is byte-identical, so files and caches
    of earlier runs stay current. The examples are written in the order the stages wrote them before the records
    had types (generate's config entry with a beam search and a race's marks; a judge verdict)."""
    import json

    entry = {"top_k": 50, "num_beams": 3, "temperature": 0.8, "mode": "beam", "ignored": ["top_k", "temperature"],
             "effective": {"call": "beam_search", "beam_width": 3}, "beam_impl": "vllm", "note": "", "seed": None,
             "max_new_tokens": 8, "rows": 6, "finish_reasons": {"stop": 2, "length": 4}, "wall_s": 1.5, "tokens": 40,
             "tokens_per_s": 26.7, "batch": {"wall_s": 1.5, "configs": ["c"], "tokens": 40}, "backend": "vllm",
             "checkpoint_hash": "ab", "test_set_sha256": "cd", "logic": {"generate": 1}, "inputs": "ef",
             "settings": {"seed": 7}, "generated_sha256": "01", "written": "2026-12-06T10:00:00+00:00",
             "race": {"strategy": "race", "rounds": 2, "race_json": "race.json"},
             "partial": {"rows": 4, "of": 6, "round_eliminated": 2, "state": "eliminated"}}
    assert json.dumps(records.ConfigEntry.from_json(entry).to_json()) == json.dumps(entry)
    plain = {k: v for k, v in entry.items() if k not in ("beam_impl", "race", "partial")}
    assert json.dumps(records.ConfigEntry.from_json(plain).to_json()) == json.dumps(plain)  # unset: left out
    marks = records.ConfigEntry.race_marks(2, "race.json", 4, 6, 2, finished=False)
    assert json.dumps(marks) == json.dumps({k: entry[k] for k in ("race", "partial")})

    response = {"id": 3, "prompt": "p", "reference": "r", "response_raw": "raw", "response": None,
                "finish_reason": "length", "num_tokens": 8, "config": "c", "model": "tiny"}
    assert json.dumps(records.ResponseRecord.from_json(response).to_json()) == json.dumps(response)
    verdict = {"id": 3, "answer_sha256": "a", "baseline_sha256": "b", "answer_chars": 5, "baseline_chars": 7,
               "p_a_test_first": 0.6, "p_a_test_second": 0.3, "mass_test_first": 0.9, "mass_test_second": 0.8,
               "preference": 0.65, "flipped": True, "unsure_requests": 0, "key": "k"}
    assert json.dumps(records.JudgeRecord.from_json(verdict).to_json()) == json.dumps(verdict)
    race = {"identity": "i", "target": "tiny", "metric": "bleu", "alpha": 0.05, "alpha_rule": "bonferroni",
            "rule": "r", "planned_rounds": 2, "alpha_round": 0.025, "keep": 1, "rows_total": 6, "round_rows": [3, 3],
            "configs": ["a", "b"],
            "rounds": [{"round": 1, "rows_added": 3, "rows_used": 3, "survivors_before": ["a", "b"], "leader": "a",
                        "verdicts": [{"config": "b", "score": 0.1}], "eliminated": ["b"]}],
            "survivors": ["a"], "eliminated": {"b": {"round": 1, "rows": 3}}, "finished": True,
            "usage": {"a": {"tokens": 60, "wall_s": 1.0}, "b": {"tokens": 30, "wall_s": 0.5}},
            "round_wall_s": [0.4], "finish_wall_s": 0.2}
    state = records.RaceState.from_json(race)
    assert json.dumps(state.to_json()) == json.dumps(race)
    assert state.full_sweep_tokens() == 60 + 30 * 6 // 3 and state.eliminated_round("b") == 1
    # The digests leave `response` out of what generate wrote and take only it for what clean wrote.
    cleaned = dict(response, response="clean")
    assert records.records_digest([response]) == records.records_digest([cleaned])
    assert records.cleaned_digest([response]) != records.cleaned_digest([records.ResponseRecord.from_json(cleaned)])
