"""Human evaluation: agreement statistics against worked examples, and the export -> rate -> import
round trip with two raters on (a copy of) the study the real stages produced (conftest `study`)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from helpers import run_tunesweep
from tunesweep.config import expand_sweep, load_config
from tunesweep.errors import UserError
from tunesweep.evaluate.agreement import krippendorff_alpha, pairwise_exact_agreement
from tunesweep.evaluate.human_eval import SHEET_COLUMNS, export_sheet, import_ratings
from tunesweep.files import derive_seed, read_jsonl, write_jsonl
from tunesweep.layout import Workdir


def key_path(cfg):
    return Workdir(cfg.path).human_key

# --- agreement: worked examples ------------------------------------------------------------------

# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", section C: 4 observers,
# 12 units, values 1-5, missing data. Published: nominal .743, ordinal .815, interval .849, ratio .797.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def units_of(observers):
    return [[v for v in unit if v is not None] for unit in zip(*observers)]


@pytest.mark.parametrize("level, published", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849),
                                              ("ratio", 0.797)])
def test_krippendorff_alpha_matches_the_published_example(level, published):
    assert krippendorff_alpha(units_of(KRIPPENDORFF_2011), level) == pytest.approx(published, abs=5e-4)


def test_agreement_on_a_hand_computed_example():
    # Two raters, three items: (1, 1), (2, 3), (3, 3). Values: n_1 = 2, n_2 = 1, n_3 = 3, n = 6.
    # Coincidences: o_11 = 2, o_23 = o_32 = 1, o_33 = 2.
    # Interval: sum o d2 = 2 * 1 = 2; sum n_c n_k d2 = 2*(2*1*1 + 2*3*4 + 1*3*1) = 58;
    #   alpha = 1 - (6 - 1) * 2 / 58 = 48/58.
    # Ordinal: d2(1,2) = (3 - 1.5)^2 = 2.25, d2(2,3) = (4 - 2)^2 = 4, d2(1,3) = (6 - 2.5)^2 = 12.25;
    #   sum o d2 = 8; sum n_c n_k d2 = 2*(2*1*2.25 + 2*3*12.25 + 1*3*4) = 180; alpha = 1 - 5*8/180 = 7/9.
    # Exact agreement: items 1 and 3 agree, item 2 does not: 2/3.
    units = [[1, 1], [2, 3], [3, 3]]
    assert krippendorff_alpha(units, "interval") == pytest.approx(48 / 58)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(7 / 9)
    assert pairwise_exact_agreement(units) == pytest.approx(2 / 3)
    # Three raters on one item: 3 pairs, one of which agrees; a lone rating has no pair.
    assert pairwise_exact_agreement([[4, 4, 5], [2]]) == pytest.approx(1 / 3)
    # Undefined: no item with two ratings, or no variation at all.
    assert krippendorff_alpha([[3], [4]]) is None
    assert krippendorff_alpha([[3, 3], [3, 3]]) is None
    assert pairwise_exact_agreement([[3], [4]]) is None


# --- the round trip ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(study, tmp_path_factory):
    copy = study.copy_to(tmp_path_factory.mktemp("human"))
    cfg = load_config(copy.config)
    sheet = export_sheet(cfg)
    return copy.config, cfg, sheet


def read_sheet(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def write_sheet(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def rate(key: dict, item: str, rater: str) -> int:
    """A made-up but deterministic rating: depends on model, config and row; bob disagrees on some."""
    e = key["items"][item]
    base = 1 + derive_seed(e["model"], e["config"], e["id"]) % 5
    if rater == "bob" and int(e["id"], 16) % 3 == 0:
        return min(5, base + 1) if base < 5 else 4
    return base


def test_export_is_stratified_blinded_and_seeded(exported, tmp_path):
    cfg_path, cfg, sheet = exported
    rows = read_sheet(sheet)
    key = json.loads(key_path(cfg).read_text())
    assert list(rows[0]) == SHEET_COLUMNS
    targets = [t.name for t in cfg.run_targets()]
    configs = [dc.name for dc in expand_sweep(cfg.generation)]
    # 3 rows x 13 configs x 2 targets, the SAME three test rows in every cell.
    assert len(rows) == 3 * len(configs) * len(targets)
    cells: dict[tuple, set] = {}
    for r in rows:
        e = key["items"][r["item"]]
        cells.setdefault((e["model"], e["config"]), set()).add(e["id"])
    assert set(cells) == {(t, c) for t in targets for c in configs}
    assert all(ids == set(key["ids"]) and len(ids) == 3 for ids in cells.values())
    # Blind: no model or config name anywhere in the sheet, and rows are not grouped by model.
    text = sheet.read_text()
    for name in targets + configs + ["temp_", "num_beams"]:
        assert name not in text
    order = [key["items"][r["item"]]["model"] for r in rows]
    assert order != sorted(order)
    # Each row shows the instruction and the response that its key says.
    test = {r["id"]: r for r in read_jsonl(cfg.path / "alpaca_data" / "test.jsonl")}
    for r in rows[:10]:
        e = key["items"][r["item"]]
        rec = next(x for x in read_jsonl(cfg.path / "llm_responses" / e["model"] / f"{e['config']}.jsonl")
                   if x["id"] == e["id"])
        assert r["instruction"] == test[e["id"]]["instruction"] and r["response"] == rec["response"]
        assert r["rating"] == "" and r["rater"] == ""
    # The rubric beside the sheet: the 1-5 scale, and the key kept from raters.
    rubric = (sheet.parent / "rubric.md").read_text()
    assert "| 1 | Unusable" in rubric and "| 5 | Excellent" in rubric and "key.json" in rubric
    # Seeded: a second export gives the same bytes; another seed a different order.
    before = sheet.read_bytes()
    assert export_sheet(cfg).read_bytes() == before
    other = cfg.model_copy(update={"seed": 8})
    other_sheet = export_sheet(other, out=tmp_path / "other.csv")
    assert other_sheet.read_bytes() != before
    export_sheet(cfg)  # restore the key of the module's sheet


@pytest.fixture(scope="module")
def rated(exported, tmp_path_factory):
    """alice rates every row in her own file (rater cell blank: the file names her); bob writes his
    name in the rater column and leaves one row blank."""
    cfg_path, cfg, sheet = exported
    key = json.loads(key_path(cfg).read_text())
    rows = read_sheet(sheet)
    out = tmp_path_factory.mktemp("rated")
    alice = write_sheet(out / "alice.csv", [{**r, "rating": str(rate(key, r["item"], "alice"))} for r in rows])
    bob_rows = [{**r, "rating": str(rate(key, r["item"], "bob")), "rater": "bob"} for r in rows]
    skipped = bob_rows[4]["item"]
    bob_rows[4]["rating"] = ""
    bob = write_sheet(out / "bob.csv", bob_rows)
    expected: dict[tuple, list] = {}
    pairs: dict[tuple, list] = {}
    for r in rows:
        e = key["items"][r["item"]]
        cell = (e["model"], e["config"])
        a = rate(key, r["item"], "alice")
        expected.setdefault(cell, []).append(a)
        if r["item"] != skipped:
            b = rate(key, r["item"], "bob")
            expected[cell].append(b)
            pairs.setdefault(cell, []).append(a == b)
    return alice, bob, expected, pairs


def read_human(cfg) -> dict:
    with open(cfg.path / "eval_results" / "human.csv", newline="") as fh:
        return {(r["model"], r["config"]): r for r in csv.DictReader(fh)}


def item_first_means(cfg, files) -> dict:
    """{(model, config): mean over items of each item's mean rating}, from the rated sheets themselves."""
    key = json.loads(key_path(cfg).read_text())
    ratings: dict[str, list] = {}
    for path in files:
        for r in read_sheet(path):
            if r["rating"].strip():
                ratings.setdefault(r["item"], []).append(int(r["rating"]))
    cells: dict[tuple, list] = {}
    for item, values in ratings.items():
        e = key["items"][item]
        cells.setdefault((e["model"], e["config"]), []).append(sum(values) / len(values))
    return {cell: sum(means) / len(means) for cell, means in cells.items()}


def test_import_writes_mean_ratings_and_agreement(exported, rated, caplog):
    cfg_path, cfg, _ = exported
    alice, bob, expected, pairs = rated
    # The cell score averages each item's ratings first (bob skipped one item: it counts once, not half).
    means = item_first_means(cfg, [alice, bob])
    tables = {t.name: (cfg.path / "eval_results" / f"{t.name}.csv").read_bytes() for t in cfg.run_targets()}
    with caplog.at_level("INFO", logger="tunesweep.evaluate.human_eval"):
        out = import_ratings(cfg, [alice, bob])
    # Import writes human.csv and human.json only, and says which command puts them into the tables.
    assert tables == {t.name: (cfg.path / "eval_results" / f"{t.name}.csv").read_bytes() for t in cfg.run_targets()}
    assert "run `tunesweep score --config <config>` to fill the Human column" in caplog.text
    assert out == cfg.path / "eval_results" / "human.csv"
    human = read_human(cfg)
    assert set(human) == set(expected)
    with open(out, newline="") as fh:
        assert list(csv.DictReader(fh).fieldnames) == ["model", "config", "human", "human_ci_low", "human_ci_high",
                                                       "human_n", "raters", "agreement"]
    for cell, values in expected.items():
        row = human[cell]
        assert float(row["human"]) == pytest.approx(means[cell], abs=5e-5)
        assert int(row["human_n"]) == len(values)
        assert float(row["human_ci_low"]) <= float(row["human"]) <= float(row["human_ci_high"])
        assert int(row["raters"]) == 2
        assert float(row["agreement"]) == pytest.approx(sum(pairs[cell]) / len(pairs[cell]), abs=5e-5)
    summary = json.loads((cfg.path / "eval_results" / "human.json").read_text())
    all_pairs = [p for ps in pairs.values() for p in ps]
    assert summary["agreement"]["pairwise_exact"] == pytest.approx(sum(all_pairs) / len(all_pairs))
    assert summary["blank_skipped"] == 1
    assert summary["ratings"] == sum(len(v) for v in expected.values())
    assert set(summary["raters"]) == {"alice", "bob"}
    assert summary["agreement"]["krippendorff_alpha_ordinal"] is not None
    # score (tunesweep.scoring, for real; its cached metric results reused) fills the Human column with them.
    from tunesweep.evaluate.scoring import score

    score(cfg)
    for target in cfg.run_targets():
        with open(cfg.path / "eval_results" / f"{target.name}.csv", newline="") as fh:
            table = {r["config"]: r for r in csv.DictReader(fh)}
        assert list(table) == [dc.name for dc in expand_sweep(cfg.generation)]
        for config, row in table.items():
            values = expected[(target.name, config)]
            assert float(row["human"]) == pytest.approx(means[(target.name, config)], abs=5e-5)
            assert row["bleu"] != "" and row["rougeL"] != ""
    # ... and the report shows them, with the agreement figures.
    from tunesweep.report import report

    text = report(cfg).read_text()
    assert "## Human evaluation" in text and "Krippendorff's alpha" in text
    tiny_row = next(line for line in text.splitlines() if line.startswith("| `top_k_50_num_beams_1_temp_0.8`"))
    assert tiny_row.rstrip(" |").endswith(f"{means[('tiny', 'top_k_50_num_beams_1_temp_0.8')]:.2f}")


def test_human_ci_on_a_worked_example():
    """Items rated (5, 3), (2), (4, 4, 4): item means 4, 2, 4, so the cell scores 10/3 (not 22/6, the
    mean of all six ratings, where the three-rater item would weigh three times). The CI resamples
    items, recomputed here with plain loops over the same draws."""
    import numpy as np

    from tunesweep.evaluate.human_eval import human_ci, human_mean

    items = [[5, 3], [2], [4, 4, 4]]
    assert human_mean(items) == pytest.approx(10 / 3)
    draws = np.random.default_rng(7).integers(0, 3, size=(400, 3))
    item_means = [sum(r) / len(r) for r in items]
    by_hand = sorted(sum(item_means[k] for k in row) / 3 for row in draws)
    low, high = human_ci(items, 400, seed=7)
    assert low == pytest.approx(np.percentile(by_hand, 2.5)) and high == pytest.approx(np.percentile(by_hand, 97.5))
    assert 2 <= low <= 10 / 3 <= high <= 4
    assert human_ci(items, 0, seed=7) == (None, None)


def test_one_rater_has_no_agreement_figure(exported, rated, tmp_path):
    cfg_path, cfg, _ = exported
    alice, _, expected, _ = rated
    # As a spreadsheet may save it: capitalised header, a trailing empty row; still alice's ratings.
    header, rest = alice.read_bytes().decode("utf-8").split("\r\n", 1)
    resaved = tmp_path / "alice.csv"
    resaved.write_bytes((header.replace("item", "Item").replace("rating", "Rating") + "\r\n" + rest
                         + ",,,,,,\r\n").encode("utf-8"))
    import_ratings(cfg, [resaved])
    human = read_human(cfg)
    assert len(human) == len(expected)
    key = json.loads(key_path(cfg).read_text())
    alice_only: dict[tuple, list] = {}
    for r in read_sheet(alice):
        e = key["items"][r["item"]]
        alice_only.setdefault((e["model"], e["config"]), []).append(int(r["rating"]))
    for cell, row in human.items():
        assert row["raters"] == "1" and row["agreement"] == ""
        assert float(row["human"]) == pytest.approx(sum(alice_only[cell]) / len(alice_only[cell]), abs=5e-5)
        assert int(row["human_n"]) == len(alice_only[cell])
    summary = json.loads((cfg.path / "eval_results" / "human.json").read_text())
    assert set(summary["raters"]) == {"alice"} and summary["agreement"]["pairwise_exact"] is None


@pytest.mark.parametrize("column, value, message", [
    ("rating", "7", "rating '7' is outside the scale 1-5"),
    ("rating", "0", "rating '0' is outside the scale 1-5"),
    ("rating", "3.5", "rating '3.5' is not a whole number"),
    ("rating", "good", "rating 'good' is not a number"),
    ("item", "deadbeef", "unknown item 'deadbeef'"),
    ("response", "an edited answer", "the response text differs from the exported one"),
])
def test_bad_rows_are_rejected_with_file_row_and_value(exported, rated, tmp_path, column, value, message):
    cfg_path, cfg, _ = exported
    alice = rated[0]
    rows = read_sheet(alice)
    rows[5][column] = value  # the 6th data row is row 7 of the spreadsheet (the header is row 1)
    bad = write_sheet(tmp_path / "carol.csv", rows)
    with pytest.raises(UserError) as exc:
        import_ratings(cfg, [bad])
    text = str(exc.value)
    assert f"{bad}: row 7" in text and message in text and "\n" not in text


def test_other_import_mistakes(exported, rated, tmp_path):
    cfg_path, cfg, _ = exported
    alice = rated[0]
    # The same rater twice (alice.csv under two names would be two raters; a copy named alice is not).
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    shutil.copy(alice, copy_dir / "alice.csv")
    with pytest.raises(UserError, match=r"rater 'alice' already rated this item at .*alice.csv: row 2"):
        import_ratings(cfg, [alice, copy_dir / "alice.csv"])
    # A sheet without the rating column, an empty sheet, no files at all.
    rows = [{k: v for k, v in r.items() if k != "rating"} for r in read_sheet(alice)]
    with pytest.raises(UserError, match=r"lacks column\(s\) rating"):
        import_ratings(cfg, [write_sheet(tmp_path / "norating.csv", rows)])
    blank = write_sheet(tmp_path / "blank.csv", [{**r, "rating": ""} for r in read_sheet(alice)])
    with pytest.raises(UserError, match="no ratings found"):
        import_ratings(cfg, [blank])
    with pytest.raises(UserError, match="give the rated CSV"):
        import_ratings(cfg, [])


def test_ratings_of_regenerated_responses_are_refused(exported, rated, tmp_path):
    cfg_path, cfg, _ = exported
    alice = rated[0]
    key = json.loads(key_path(cfg).read_text())
    e = next(iter(key["items"].values()))
    path = cfg.path / "llm_responses" / e["model"] / f"{e['config']}.jsonl"
    original = path.read_bytes()
    records = read_jsonl(path)
    for r in records:
        if r["id"] == e["id"]:
            r["response"] = "a regenerated answer"
    write_jsonl(path, records)
    try:
        with pytest.raises(UserError, match=f"id {e['id']}: the response changed after the sheet was exported"):
            import_ratings(cfg, [alice])
    finally:
        path.write_bytes(original)


def test_cli_rejects_a_seven_in_one_line(exported, rated, tmp_path):
    cfg_path, cfg, _ = exported
    rows = read_sheet(rated[0])
    rows[2]["rating"] = "7"
    bad = write_sheet(tmp_path / "dave.csv", rows)
    proc = run_tunesweep("human-eval", "import", bad, "--config", cfg_path, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{bad}: row 4" in lines[0] and "rating '7' is outside the scale 1-5" in lines[0]


# --- re-exports: item keys are unique per export --------------------------------------------------

def small_study(tmp_path: Path):
    """Two configs of one target whose every response is the same text (a tiny model often answers
    everything alike): the response check at import then cannot tell rows apart, only the keys can.
    Written by hand and vouched for as generate would (no engine)."""
    from helpers import vouch_for_responses
    from tunesweep.clean.stage import clean
    from tunesweep.templates import build_prompt

    cfg_path = tmp_path / "study.yaml"
    cfg_path.write_text(f"name: reexport\nworkdir: {tmp_path / 'work'}\nseed: 5\n"
                        "models: [{name: tiny, base: unused-base}]\ngeneration: {sweep: {top_k: [10]}}\n"
                        "evaluation: {metrics: [bleu], bootstrap: 0, human: {rows_per_config: 2}}\n")
    cfg = load_config(cfg_path)
    rows = [{"id": f"id{i}", "instruction": f"Task {i}.", "input": "", "output": f"Answer {i}."} for i in range(6)]
    write_jsonl(Workdir(cfg.path).split_file("test"), rows)
    for dc in expand_sweep(cfg.generation):
        write_jsonl(Workdir(cfg.path).response_file("tiny", dc.name),
                    [{"id": r["id"], "prompt": build_prompt(r), "reference": r["output"], "response_raw": "Done.",
                      "response": None, "finish_reason": "stop", "num_tokens": 2, "config": dc.name, "model": "tiny"}
                     for r in rows])
    vouch_for_responses(cfg.path, "tiny", cfg=cfg)
    clean(cfg)
    return cfg_path, cfg


def rated_copy(sheet: Path, key: dict, path: Path) -> Path:
    return write_sheet(path, [{**r, "rating": str(rate(key, r["item"], "alice")), "rater": "alice"}
                              for r in read_sheet(sheet)])


def test_a_sheet_from_an_earlier_export_is_refused_by_name(tmp_path):
    """Export, rate, re-export with other rows: the old sheet's ratings are refused naming the file, not
    booked to whatever rows and configs now hold its keys; the current sheet imports and its ratings land on
    the rows the key says."""
    cfg_path, cfg = small_study(tmp_path)
    old_sheet = export_sheet(cfg)
    old_key = json.loads(key_path(cfg).read_text())
    old_rated = rated_copy(old_sheet, old_key, tmp_path / "alice-old.csv")
    # Re-exported after a change that reselects and reorders the items (3 rows per config instead of 2).
    new_sheet = export_sheet(cfg, rows_per_config=3)
    new_key = json.loads(key_path(cfg).read_text())
    with pytest.raises(UserError) as exc:
        import_ratings(cfg, [old_rated])
    text = str(exc.value)
    assert "\n" not in text and f"{old_rated}: row 2" in text and "another export" in text
    assert set(old_key["items"]).isdisjoint(new_key["items"]), "an item key was reused by another export"
    assert all(item.startswith(new_key["export"] + "-") for item in new_key["items"])
    assert old_key["export"] != new_key["export"] and old_key["export"] in text and new_key["export"] in text
    assert not Workdir(cfg.path).human_table.exists(), "nothing may be booked from a refused sheet"
    # The same refusal on the command line: one line, exit 2.
    proc = run_tunesweep("human-eval", "import", old_rated, "--config", cfg_path, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "another export" in proc.stderr and str(old_rated) in proc.stderr

    # The current sheet imports, and each cell's mean is that of the ratings its key's items got.
    new_rated = rated_copy(new_sheet, new_key, tmp_path / "alice.csv")
    import_ratings(cfg, [new_rated])
    expected: dict[tuple, list] = {}
    for item, entry in new_key["items"].items():
        expected.setdefault((entry["model"], entry["config"]), []).append(rate(new_key, item, "alice"))
    got = {cell: float(row["human"]) for cell, row in read_human(cfg).items()}
    assert got == pytest.approx({cell: sum(v) / len(v) for cell, v in expected.items()}, abs=5e-5)  # 4 digits
    assert json.loads(Workdir(cfg.path).human_summary.read_text())["export"] == new_key["export"]
    # A key as sheets had before export ids is another export too; a typo is an unknown item of this one.
    for item, message in (("k0123abcd", "is from another export"), ("deadbeef", "unknown item 'deadbeef'")):
        rows = read_sheet(new_rated)
        rows[1]["item"] = item
        with pytest.raises(UserError, match=f"alice.csv: row 3: (item '{item}' )?{message}"):
            import_ratings(cfg, [write_sheet(tmp_path / "alice.csv", rows)])
