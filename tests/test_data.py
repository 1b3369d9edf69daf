"""The data stage: loading, record checks, the split, and the embedded demo dataset."""

import json

import pandas as pd
import pytest

from helpers import run_tunesweep
from tunesweep.data import load_usable_records, split_dataset
from tunesweep.data.builtin import generate_records
from tunesweep.errors import UserError


def write_cfg(tmp_path, source, test_size=10, extra=""):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: t\nworkdir: {tmp_path / 'work'}\ndataset: {{source: {json.dumps(str(source))}, "
                   f"test_size: {test_size}}}\nmodels:\n  - {{name: m, base: x}}\n{extra}")
    return cfg


def read(path):
    return path.read_bytes()


def test_split_real_alpaca_twice_identical(tmp_path, alpaca_demo_path):
    cfg = write_cfg(tmp_path, alpaca_demo_path, test_size=100)
    outs = []
    for workdir in ("w1", "w2"):
        r = run_tunesweep("split", "--config", cfg, "--seed", "42", "--workdir", tmp_path / workdir)
        assert r.returncode == 0, r.stderr
        d = tmp_path / workdir / "alpaca_data"
        outs.append({name: read(d / name) for name in ("train.jsonl", "test.jsonl", "split.json")})
    assert outs[0] == outs[1]

    d = tmp_path / "w1" / "alpaca_data"
    train = [json.loads(l) for l in (d / "train.jsonl").read_text().splitlines()]
    test = [json.loads(l) for l in (d / "test.jsonl").read_text().splitlines()]
    meta = json.loads((d / "split.json").read_text())
    assert len(test) == 100
    assert {r["id"] for r in train}.isdisjoint({r["id"] for r in test})
    # no prompt is in both sets
    assert {(r["instruction"], r["input"]) for r in train}.isdisjoint({(r["instruction"], r["input"]) for r in test})
    _, usable, stats = load_usable_records(str(alpaca_demo_path))
    assert len(train) + len(test) == len(usable) == meta["usable"]
    assert stats["rows_read"] == 400
    assert meta["rows_read"] - meta["dropped_empty"] - meta["dropped_duplicates"] == meta["usable"]
    assert set(train[0]) == {"id", "instruction", "input", "output"}


def test_other_seed_gives_other_split(tmp_path, alpaca_demo_path):
    a = split_dataset(str(alpaca_demo_path), tmp_path / "a", 50, seed=1)
    b = split_dataset(str(alpaca_demo_path), tmp_path / "b", 50, seed=2)
    assert a["test_sha256"] != b["test_sha256"]


def test_ids_are_stable_when_rows_move(tmp_path):
    recs = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(20)]
    (tmp_path / "a.json").write_text(json.dumps(recs))
    (tmp_path / "b.json").write_text(json.dumps(list(reversed(recs))))
    split_dataset(str(tmp_path / "a.json"), tmp_path / "wa", 5)
    split_dataset(str(tmp_path / "b.json"), tmp_path / "wb", 5)

    def ids(w):
        rows = []
        for name in ("train", "test"):
            rows += [json.loads(l) for l in (tmp_path / w / "alpaca_data" / f"{name}.jsonl").read_text().splitlines()]
        return {r["instruction"]: r["id"] for r in rows}

    assert ids("wa") == ids("wb")


def assert_user_error_cli(tmp_path, cfg, *expected):
    r = run_tunesweep("split", "--config", cfg)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    for e in expected:
        assert e in r.stderr
    assert not (tmp_path / "work" / "alpaca_data").exists()
    return r.stderr.strip().splitlines()


def test_broken_json_line_names_file_and_row(tmp_path):
    src = tmp_path / "data.jsonl"
    lines = [json.dumps({"instruction": f"q{i}", "input": "", "output": f"a{i}"}) for i in range(30)]
    lines[6] = '{"instruction": "q6", "output": '
    src.write_text("\n".join(lines) + "\n")
    err = assert_user_error_cli(tmp_path, write_cfg(tmp_path, src), f"{src}: row 7: not valid JSON")
    assert len(err) == 1


def test_broken_json_file_names_line(tmp_path):
    src = tmp_path / "data.json"
    src.write_text('[\n{"instruction": "a", "output": "b"},\n{"instruction": "c" "output": "d"}\n]\n')
    err = assert_user_error_cli(tmp_path, write_cfg(tmp_path, src), f"{src}: line 3: not valid JSON")
    assert len(err) == 1


def test_missing_output_names_file_and_row(tmp_path):
    src = tmp_path / "data.json"
    recs = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(30)]
    del recs[11]["output"]
    src.write_text(json.dumps(recs))
    err = assert_user_error_cli(tmp_path, write_cfg(tmp_path, src), f"{src}: row 12: missing field 'output'")
    assert len(err) == 1


def test_non_string_value_and_fault_cap(tmp_path):
    src = tmp_path / "data.json"
    recs = [{"instruction": f"q{i}", "input": "", "output": i} for i in range(30)]
    src.write_text(json.dumps(recs))
    err = assert_user_error_cli(tmp_path, write_cfg(tmp_path, src), "row 1: field 'output' must be a string")
    assert len(err) == 21 and err[-1].endswith("and 10 more faulty rows")


def test_empty_and_duplicate_records_dropped_with_warning(tmp_path):
    recs = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(20)]
    recs.append({"instruction": "  ", "input": "", "output": "x"})
    recs.append({"instruction": "q", "input": "", "output": "\n"})
    recs.append(dict(recs[3]))
    src = tmp_path / "data.json"
    src.write_text(json.dumps(recs))
    r = run_tunesweep("split", "--config", write_cfg(tmp_path, src, test_size=5))
    assert r.returncode == 0, r.stderr
    assert "dropped 2 record(s) with an empty instruction or output (rows 21, 22)" in r.stderr
    assert "dropped 1 record(s) that repeat an earlier record exactly (rows 23)" in r.stderr
    meta = json.loads((tmp_path / "work" / "alpaca_data" / "split.json").read_text())
    assert (meta["train_rows"], meta["test_rows"], meta["usable"]) == (15, 5, 20)


def test_test_size_not_smaller_than_dataset(tmp_path):
    src = tmp_path / "data.json"
    src.write_text(json.dumps([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(10)]))
    err = assert_user_error_cli(tmp_path, write_cfg(tmp_path, src, test_size=10), "dataset.test_size = 10")
    assert len(err) == 1


def test_fraction_test_size(tmp_path):
    src = tmp_path / "data.json"
    src.write_text(json.dumps([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(40)]))
    meta = split_dataset(str(src), tmp_path / "w", 0.25)
    assert meta["test_rows"] == 10


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_other_formats_load(tmp_path, fmt):
    recs = [{"instruction": f"q{i}", "input": "" if i % 2 else f"in{i}", "output": f"a{i}"} for i in range(12)]
    src = tmp_path / f"data.{fmt}"
    if fmt == "jsonl":
        src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    elif fmt == "csv":
        pd.DataFrame(recs).to_csv(src, index=False)
    else:
        pd.DataFrame(recs).to_parquet(src)
    _, usable, _ = load_usable_records(str(src))
    assert [(r["instruction"], r["input"], r["output"]) for r in usable] == [
        (r["instruction"], r["input"], r["output"]) for r in recs]


def test_missing_local_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_usable_records(str(tmp_path / "nope.json"))


def test_builtin_tasks_split_never_leaks_prompts(tmp_path):
    meta = split_dataset("builtin:tasks", tmp_path, 200, seed=42, builtin_rows=2000)
    rows = {}
    for name in ("train", "test"):
        rows[name] = [json.loads(l) for l in (tmp_path / "alpaca_data" / f"{name}.jsonl").read_text().splitlines()]
    train_prompts = {(r["instruction"], r["input"]) for r in rows["train"]}
    assert not any((r["instruction"], r["input"]) in train_prompts for r in rows["test"])
    assert meta["dropped_duplicates"] == 0 and meta["usable"] == 2000


def test_builtin_tasks_are_seeded_and_checkable():
    a, b = generate_records(500, seed=3), generate_records(500, seed=3)
    assert a == b and a != generate_records(500, seed=4)
    kinds = {r["instruction"] for r in a}
    assert "Reverse the order of the words." in kinds and "Say whether the number is odd or even." in kinds
    for r in a:
        if r["instruction"] == "Say whether the number is odd or even.":
            assert r["output"] == f"The number is {'even' if int(r['input']) % 2 == 0 else 'odd'}."
        if r["instruction"] == "Reverse the order of the words.":
            assert r["output"].split() == r["input"].split()[::-1]
        if r["instruction"] == "Sort the words alphabetically.":
            assert r["output"].split() == sorted(r["input"].split())


@pytest.mark.slow  # trains, loads a model or runs a stage in a fresh interpreter
def test_split_is_skipped_when_current_and_redone_when_source_changes(tmp_path):
    src = tmp_path / "data.json"
    recs = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(20)]
    src.write_text(json.dumps(recs))
    cfg = write_cfg(tmp_path, src, test_size=5)
    assert run_tunesweep("split", "--config", cfg).returncode == 0
    test_file = tmp_path / "work" / "alpaca_data" / "test.jsonl"
    first = test_file.stat().st_mtime_ns
    r = run_tunesweep("split", "--config", cfg)
    assert r.returncode == 0 and "already current" in r.stdout
    assert test_file.stat().st_mtime_ns == first
    src.write_text(json.dumps(recs + [{"instruction": "new", "input": "", "output": "row"}]))
    r = run_tunesweep("split", "--config", cfg)
    assert r.returncode == 0 and "already current" not in r.stdout
    assert json.loads((tmp_path / "work" / "alpaca_data" / "split.json").read_text())["usable"] == 21


def test_outputs_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    import os
    import stat

    from tunesweep.files import write_text

    write_text(tmp_path / "x.csv", "a\n")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "x.csv").stat().st_mode) == 0o666 & ~umask


def _variant(rec: dict, kind: int) -> dict:
    """The same prompt to a model, written another way: padded, re-spaced or re-cased (and another answer, so
    it is not an exact duplicate that loading drops)."""
    instruction, inp = rec["instruction"], rec["input"]
    if kind == 0:
        instruction = f"  {instruction}\n"
    elif kind == 1:
        instruction = instruction.upper()
    elif kind == 2:
        instruction = instruction.replace(" ", "  \t", 2)
    else:
        inp = f"\n{inp.lower()}  " if inp else " "
    return {"instruction": instruction, "input": inp, "output": rec["output"] + " Indeed."}


def test_whitespace_and_case_variants_of_a_prompt_stay_on_one_side(tmp_path, alpaca_demo_path):
    """Acceptance: real Alpaca records plus planted near-duplicates; no prompt, as the template builds it and
    compared with whitespace collapsed and case folded, is on both sides of the split, for any seed."""
    from tunesweep.templates import build_prompt

    records = json.loads(alpaca_demo_path.read_text())
    planted = [_variant(rec, i % 4) for i, rec in enumerate(records[::5])]
    source = tmp_path / "planted.json"
    source.write_text(json.dumps(records + planted))

    def seen(rows):
        return {" ".join(build_prompt(r).split()).casefold() for r in rows}

    base = split_dataset(str(alpaca_demo_path), tmp_path / "base", 100, seed=42)
    for seed in (1, 42, 7):
        meta = split_dataset(str(source), tmp_path / f"s{seed}", 100, seed=seed)
        rows = {name: [json.loads(l) for l in (tmp_path / f"s{seed}" / "alpaca_data" / f"{name}.jsonl").open()]
                for name in ("train", "test")}
        assert len(rows["test"]) == 100 and meta["usable"] == base["usable"] + len(planted)
        assert seen(rows["train"]).isdisjoint(seen(rows["test"])), f"seed {seed}: a prompt is on both sides"
        # split.json says how many it grouped: the planted ones, beside any the sample holds itself
        assert meta["near_duplicates"] == base["near_duplicates"] + len(planted)
        assert meta["prompt_groups"] == base["prompt_groups"]


def test_the_split_says_how_many_near_duplicates_it_grouped(tmp_path):
    src = tmp_path / "data.json"
    recs = [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(20)]
    src.write_text(json.dumps(recs + [{"instruction": " Q3 ", "input": "", "output": "other"},
                                      {"instruction": "q4", "input": "", "output": "again"}]))
    r = run_tunesweep("split", "--config", write_cfg(tmp_path, src, test_size=5))
    assert r.returncode == 0, r.stderr
    meta = json.loads((tmp_path / "work" / "alpaca_data" / "split.json").read_text())
    # " Q3 " is a near-duplicate of q3; the second q4 repeats q4 exactly (same prompt, other answer)
    assert meta["near_duplicates"] == 1 and meta["prompt_groups"] == 20 and meta["usable"] == 22
    assert "1 record(s) differ from another only in whitespace or case" in r.stderr
