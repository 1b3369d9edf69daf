"""Human evaluation: export a blinded rating sheet, import rated sheets into eval_results/human.csv.

Export (`export_sheet`) picks N test rows per run target x decoding config, seeded by `cfg.seed`.
Design: the SAME N test row ids are used for every target and every config, so raters judge the
same instructions under every setting (like with like), and a difference between two configs is
never a difference between two sets of questions. The rows are shuffled (seed `cfg.seed`) and each
gets an opaque item key; which model, config and test row an item came from is written only to a
private key file, `eval_results/human_eval/key.json`, which stays in the workdir wherever the sheet
goes. The rubric (`rubric.md`) is written beside the sheet.
Every item key starts with the export's id (a digest of what the sheet holds), so keys are unique per
export: a re-export that picks or orders other items gets other keys, and a sheet rated before it is
refused by name at import instead of booking its ratings to whatever rows now hold its keys.

Import (`import_ratings`) reads one or more rated copies of the sheet. The rater of a row is its
`rater` cell, or the file's name without extension when that cell is blank (a rater per file).
A blank `rating` means "not rated" and is skipped (partial sheets are normal); a rating that is not
an integer on the configured scale, an unknown item, an edited response text or the same rater
rating an item twice stops the import with the file, the row (as a spreadsheet numbers it: the
header is row 1) and the value. The result, one row per (model, config) with ratings:

    model, config, human (mean over the cell's items of each item's mean rating, so an item with more
    raters does not weigh more), human_ci_low / human_ci_high (95% percentile bootstrap over the
    cell's items, evaluation.bootstrap resamples, the study's seed), human_n (ratings counted),
    raters (distinct raters in the cell), agreement (mean pairwise exact agreement between raters
    on the cell's items; blank with one rater)

goes to eval_results/human.csv, and eval_results/human.json records the inputs and study-wide
agreement (pairwise exact agreement, Krippendorff's alpha at the ordinal and interval levels).
Each import replaces both files: give it every rated file at once.
The score stage (`tunesweep score`, or the pipeline; import does not run it) then fills the Human column
of eval_results/<target>.csv from human.csv.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..config import ExperimentConfig, expand_sweep
from ..errors import UserError
from ..files import derive_seed, read_json, sha256_file, write_json, write_text
from ..records import ResponseRecord, read_response_records
from ..layout import (HUMAN_COLUMNS, Workdir, format_cell, load_split, partial_configs, read_target_responses,
                      sheet_cell, sheet_text, write_table)
from .agreement import krippendorff_alpha, pairwise_exact_agreement
from .metrics import bootstrap_indices, percentile_ci

log = logging.getLogger(__name__)

SHEET_COLUMNS = ["item", "instruction", "input", "reference", "response", "rating", "rater"]

# What each point of a 5-point scale means; other scales take these as anchors (RUBRIC_ANCHORS).
ANCHORS = [
    "Unusable: wrong, off-topic, empty, gibberish, or harmful.",
    "Poor: addresses the instruction but is mostly wrong, incomplete, or badly repetitive.",
    "Acceptable: partly correct or partly complete; a user would need to fix or finish it.",
    "Good: correct and complete, with minor flaws in accuracy, style, or length.",
    "Excellent: correct, complete, well written; as good as or better than the reference.",
]


def normalized_text(text: str) -> str:
    """Spreadsheet programs rewrite line endings and trailing blanks; compare texts without them."""
    return "\n".join(line.rstrip() for line in (text or "").splitlines()).strip()


def text_sha256(text: str) -> str:
    return hashlib.sha256(normalized_text(text).encode("utf-8")).hexdigest()


# --- export --------------------------------------------------------------------------------------

def _load_responses(cfg: ExperimentConfig) -> dict[str, dict[str, list[ResponseRecord]]]:
    """{target: {config: records}} for every target that has generated (and cleaned) responses."""
    paths = Workdir(cfg.path)
    configs = [dc.name for dc in expand_sweep(cfg.generation)]
    out: dict[str, dict[str, list[ResponseRecord]]] = {}
    for target in cfg.run_targets():
        if not paths.responses_dir(target.name).is_dir():
            log.warning("%s: not found; %s is left out of the rating sheet", paths.responses_dir(target.name),
                        target.name)
            continue
        # A config a race eliminated holds some rows only: not rated (no table shows it).
        partial = partial_configs(cfg.path, target.name)
        kept = [c for c in configs if c not in partial]
        out[target.name] = read_target_responses(cfg.path, target.name, kept).records
    if not out:
        raise UserError(f"{paths.responses_root}: no generated responses for any model; "
                        "run `tunesweep generate --config ...` first")
    return out


def rubric_text(scale_min: int, scale_max: int, sheet_name: str) -> str:
    points = list(range(scale_min, scale_max + 1))
    lines = [
        "# Rating rubric",
        "",
        f"Rate each row of `{sheet_name}`: how well does `response` carry out the `instruction`"
        " (using `input` when it is given)?",
        "",
        f"Enter ONE whole number from {scale_min} to {scale_max} in the `rating` column:",
        "",
        "| rating | meaning |",
        "|---|---|",
    ]
    last = len(ANCHORS) - 1
    for i, point in enumerate(points):
        # Spread the five anchors over the scale; points between two anchors lie between them.
        pos = i * last / (len(points) - 1)
        if abs(pos - round(pos)) < 1e-9:
            meaning = ANCHORS[round(pos)]
        else:
            lo, hi = int(pos), int(pos) + 1
            meaning = f"Between '{ANCHORS[lo].split(':')[0]}' and '{ANCHORS[hi].split(':')[0]}'."
        lines.append(f"| {point} | {meaning} |")
    lines += [
        "",
        "Guidance:",
        "",
        "- `reference` is one good answer, not the only one: a different but correct answer deserves a high rating.",
        "- Judge correctness and helpfulness first, then clarity; do not reward length for its own sake.",
        "- Rate each row on its own. Rows come in random order and the same instruction appears several"
        " times with different responses; that is by design.",
        "- Put your name or initials in `rater` (or leave it blank and name the file after yourself,"
        " e.g. `alice.csv`).",
        "- Leave `rating` blank for a row you cannot judge: blank rows are skipped, not counted as low.",
        "- Do not change the `item`, `instruction`, `input`, `reference` or `response` cells, and do not add rows:"
        " the import checks the item keys and the response texts. Sorting or filtering rows is fine.",
        "- Do not open `key.json` (in the study's eval_results/human_eval/): it says which model and"
        " decoding setting wrote each response, and the ratings must be given blind.",
        "",
        "Errors at import name the row as a spreadsheet numbers it (the header is row 1).",
        "",
    ]
    return "\n".join(lines)


def export_id(entries: list[tuple[str, str, ResponseRecord]], scale: tuple[int, int]) -> str:
    """The id of an export: a digest of its items in sheet order (model, config, row, response) and the
    scale, behind a letter. Same sheet, same id; a sheet with other items or another order, another id."""
    digest = hashlib.sha256(json.dumps([list(scale)] + [[t, c, r.id, text_sha256(r.response)]
                                                        for t, c, r in entries]).encode()).hexdigest()
    return f"e{digest[:8]}"


def item_export(item: str) -> Optional[str]:
    """The export an item key names: `<export>` of `<export>-<8 hex>`; "" for a key of a sheet exported before
    export ids (`k<8 hex>`); None for anything else (a typo names no export)."""
    if match := re.fullmatch(r"(e[0-9a-f]{8})-[0-9a-f]{8}", item):
        return match.group(1)
    return "" if re.fullmatch(r"k[0-9a-f]{8}", item) else None


def export_sheet(cfg: ExperimentConfig, out: Optional[str | Path] = None,
                 rows_per_config: Optional[int] = None) -> Path:
    """Write the blinded sheet (default eval_results/human_eval/sheet.csv), rubric.md beside it, and
    the private key eval_results/human_eval/key.json. Deterministic: same inputs, same files."""
    n_rows = rows_per_config if rows_per_config is not None else cfg.evaluation.human.rows_per_config
    if n_rows < 1:
        raise UserError(f"--rows {n_rows}: must be at least 1 row per model x config")
    paths = Workdir(cfg.path)
    sheet = Path(out) if out else paths.human_eval_dir / "sheet.csv"
    responses = _load_responses(cfg)

    test_rows = {r["id"]: r for r in load_split(cfg.path, "test")}
    # Rows every target generated for every config (a --limit run generates fewer), in test order.
    present = [{r.id for r in recs} for by_cfg in responses.values() for recs in by_cfg.values()]
    common = [i for i in test_rows if all(i in ids for ids in present)]
    if not common:
        raise UserError(f"{paths.responses_root}: no test row id is present in every response file")
    if n_rows > len(common):
        log.warning("only %d test rows are common to every response file; using all of them, not %d",
                    len(common), n_rows)
        n_rows = len(common)
    chosen = random.Random(derive_seed(cfg.seed, "human-eval", "rows")).sample(common, n_rows)
    chosen_set = set(chosen)

    entries = []
    for target, by_cfg in responses.items():
        for config, records in by_cfg.items():
            for rec in records:
                if rec.id in chosen_set:
                    entries.append((target, config, rec))
    random.Random(cfg.seed).shuffle(entries)

    scale = cfg.evaluation.human
    export = export_id(entries, (scale.scale_min, scale.scale_max))
    key_rng = random.Random(derive_seed(cfg.seed, "human-eval", "keys", export))
    keys: set[str] = set()
    items: dict[str, dict] = {}
    buf = io.StringIO()
    # CRLF rows (RFC 4180, as spreadsheets write them): the csv module then quotes a cell holding a
    # lone "\r" too, which a model can emit and which would otherwise split the row when read back.
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(SHEET_COLUMNS)
    for target, config, rec in entries:
        # Opaque keys: the export id (it starts with a letter, so a spreadsheet cannot read a key as a
        # number such as 00012345 or 1234e567), then 8 random hex digits (a typo is very unlikely to hit
        # another item).
        while (item := f"{export}-{key_rng.getrandbits(32):08x}") in keys:
            pass
        keys.add(item)
        row = test_rows[rec.id]
        items[item] = {"model": target, "config": config, "id": rec.id, "response_sha256": text_sha256(rec.response)}
        writer.writerow([item] + [sheet_cell(text) for text in (row.get("instruction", ""), row.get("input", ""),
                                                                rec.reference, rec.response)] + ["", ""])

    key = {
        "about": "PRIVATE: which model and decoding config wrote each item. Raters must not see this file.",
        "sheet": sheet.name,
        "export": export,
        "seed": cfg.seed,
        "rows_per_config": n_rows,
        "scale": [scale.scale_min, scale.scale_max],
        "ids": chosen,
        "targets": list(responses),
        "configs": [dc.name for dc in expand_sweep(cfg.generation)],
        "items": items,
    }
    kp = paths.human_key
    if kp.is_file() and read_json(kp).get("items") != items:
        log.warning("%s replaced: sheets exported before this one can no longer be imported", kp)
    write_json(kp, key)
    write_text(sheet, buf.getvalue())
    write_text(sheet.parent / "rubric.md", rubric_text(scale.scale_min, scale.scale_max, sheet.name))
    log.info("rating sheet: export %s, %d items (%d rows x %d configs x %d models) -> %s; rubric %s; private key %s",
             export, len(items), n_rows, len(key["configs"]), len(responses), sheet, sheet.parent / "rubric.md", kp)
    return sheet


# --- import --------------------------------------------------------------------------------------

def _parse_rating(cell: str, lo: int, hi: int) -> Optional[int]:
    """The integer rating in a cell, None for a blank cell; ValueError says what is wrong."""
    text = (cell or "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"rating {text!r} is not a number (use a whole number {lo}-{hi})") from None
    if not value.is_integer():
        raise ValueError(f"rating {text!r} is not a whole number on the scale {lo}-{hi}")
    if not lo <= value <= hi:
        raise ValueError(f"rating {text!r} is outside the scale {lo}-{hi}")
    return int(value)


def _read_sheet(path: Path, key: dict, lo: int, hi: int, errors: list[str]) -> tuple[list[tuple[str, str, int, int]], int]:
    """(item, rater, rating, row) for every rated row of one file, and the count of blank ratings."""
    if not path.is_file():
        raise UserError(f"{path}: rated sheet not found")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet may save a BOM
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as CSV UTF-8") from None
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in ("item", "rating") if c not in header]
    if missing:
        raise UserError(f"{path}: header {header[:8]} lacks column(s) {', '.join(missing)}; "
                        f"rate a copy of the exported sheet (comma-separated)")
    reader.fieldnames = header
    rated, blank = [], 0
    for index, row in enumerate(reader):
        rownum = index + 2  # spreadsheet numbering: the header is row 1
        if not any((v or "").strip() for k, v in row.items() if k is not None):
            continue  # an empty row a spreadsheet left at the end
        item = (row.get("item") or "").strip()
        where = f"{path}: row {rownum}"
        if None in row:  # more cells than header columns
            errors.append(f"{where}: has more cells than the header has columns")
            continue
        if item not in key["items"]:
            if (export := item_export(item)) is not None and export != key.get("export", ""):
                # A key of another export: that export's items are other rows and configs, so no row of this
                # file can be trusted; the file is refused, not the row.
                raise UserError(f"{where}: item {item!r} is from another export of the rating sheet "
                                f"({export or 'one without an export id'}; the current one is "
                                f"{key.get('export') or 'without an export id'}, {key.get('sheet', 'sheet.csv')}): "
                                f"{path.name} was exported before the last `human-eval export`; rate the current sheet")
            errors.append(f"{where}: unknown item {item!r} (not in {key.get('sheet', 'the exported sheet')}'s key)")
            continue
        where += f" (item {item})"
        # The exported cell is sheet_cell(response); a spreadsheet may have dropped the apostrophe when saving.
        cell = row.get("response") or ""
        if "response" in header and key["items"][item]["response_sha256"] not in (text_sha256(sheet_text(cell)),
                                                                                   text_sha256(cell)):
            errors.append(f"{where}: the response text differs from the exported one")
            continue
        try:
            rating = _parse_rating(row.get("rating"), lo, hi)
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
            continue
        if rating is None:
            blank += 1
            continue
        rater = sheet_text((row.get("rater") or "").strip()) or path.stem
        rated.append((item, rater, rating, rownum))
    return rated, blank


def _check_current(cfg: ExperimentConfig, key: dict, rated_items: set[str]) -> None:
    """Ratings must describe the responses the score stage sees: stop if they were regenerated."""
    by_file: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for item in rated_items:
        entry = key["items"][item]
        by_file[(entry["model"], entry["config"])][entry["id"]] = entry["response_sha256"]
    for (model, config), expected in sorted(by_file.items()):
        path = Workdir(cfg.path).response_file(model, config)
        if not path.is_file():
            log.warning("%s: not found; cannot check that the rated responses are still current", path)
            continue
        current = {r.id: text_sha256(r.response or "") for r in read_response_records(path)}
        for row_id, sha in expected.items():
            if current.get(row_id) != sha:
                raise UserError(f"{path}: id {row_id}: the response changed after the sheet was exported "
                                f"(regenerated or recleaned); export and rate a new sheet")


def human_mean(item_ratings: Sequence[Sequence[float]]) -> float:
    """The cell's score: each item's ratings averaged first, then the mean over items."""
    return float(np.mean([np.mean(r) for r in item_ratings]))


def human_ci(item_ratings: Sequence[Sequence[float]], resamples: int, seed: int) -> tuple[Optional[float], Optional[float]]:
    """95% percentile bootstrap CI of `human_mean` over items (None, None without resamples)."""
    if not resamples or not item_ratings:
        return None, None
    means = np.array([np.mean(r) for r in item_ratings], dtype=float)
    idx = bootstrap_indices(len(means), resamples, seed)
    return percentile_ci(means[idx].mean(axis=1))


def _read_key(cfg: ExperimentConfig) -> dict:
    """eval_results/human_eval/key.json of the last export, checked against the config's rating scale."""
    kp = Workdir(cfg.path).human_key
    if not kp.is_file():
        raise UserError(f"{kp}: not found; run `tunesweep human-eval export --config ...` first")
    key = read_json(kp)
    lo, hi = cfg.evaluation.human.scale_min, cfg.evaluation.human.scale_max
    if list(key.get("scale", [lo, hi])) != [lo, hi]:
        raise UserError(f"{kp}: the sheet was exported for the scale {key['scale'][0]}-{key['scale'][1]}, "
                        f"but evaluation.human is now {lo}-{hi}")
    return key


def _read_ratings(files: Sequence[str | Path], key: dict, lo: int, hi: int) -> tuple[dict, int]:
    """{(item, rater): (rating, where)} over every rated sheet, and the number of blank ratings skipped; every
    malformed row, out-of-range rating or repeated (item, rater) is a UserError naming its file and row."""
    errors: list[str] = []
    ratings: dict[tuple[str, str], tuple[int, str]] = {}
    blanks = 0
    for f in files:
        path = Path(f)
        rated, blank = _read_sheet(path, key, lo, hi, errors)
        blanks += blank
        for item, rater, rating, rownum in rated:
            where = f"{path}: row {rownum}"
            if (item, rater) in ratings:
                errors.append(f"{where} (item {item}): rater {rater!r} already rated this item at {ratings[(item, rater)][1]}")
                continue
            ratings[(item, rater)] = (rating, where)
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(errors[0] + more)
    if not ratings:
        raise UserError(f"{', '.join(map(str, files))}: no ratings found (every `rating` cell is blank)")
    return ratings, blanks


def _cell_table(cfg: ExperimentConfig, key: dict, by_item: dict[str, dict[str, int]]) -> list[dict]:
    """human.csv's rows: per model x config cell, in study order, the item-first mean, its CI and agreement."""
    by_cell: dict[tuple[str, str], list[str]] = defaultdict(list)
    for item in by_item:
        entry = key["items"][item]
        by_cell[(entry["model"], entry["config"])].append(item)
    order = [(t.name, dc.name) for t in cfg.run_targets() for dc in expand_sweep(cfg.generation)]
    order += sorted(set(by_cell) - set(order))  # a cell of a model since dropped from the config
    table = []
    for model, config in order:
        items = by_cell.get((model, config))
        if not items:
            continue
        units = [list(by_item[i].values()) for i in items]
        raters = {rater for item in items for rater in by_item[item]}
        low, high = human_ci(units, cfg.evaluation.bootstrap, cfg.seed)
        table.append({"model": model, "config": config, "human": human_mean(units),
                      "human_ci_low": low, "human_ci_high": high, "human_n": sum(len(u) for u in units),
                      "raters": len(raters), "agreement": pairwise_exact_agreement(units) if len(raters) > 1 else None})
    return table


HUMAN_DEFINITIONS = {
    "human": "mean over the cell's items of each item's mean rating (items with more raters do not weigh more)",
    "human_ci": "95% percentile bootstrap over the cell's items (item means resampled), "
                "evaluation.bootstrap resamples, the study's seed; blank with bootstrap 0",
    "human_n": "number of ratings in the cell (items x raters who rated them)",
    "raters": "distinct raters in the cell",
    "agreement": "mean pairwise exact agreement between raters on the cell's items (blank with one rater)",
    "blank": "a blank rating is 'not rated' and skipped",
}


def _summary(cfg: ExperimentConfig, files: Sequence[str | Path], key: dict, ratings: dict,
             by_item: dict[str, dict[str, int]], blanks: int) -> dict:
    """human.json: the import's inputs, per-rater counts and means, and agreement over every item."""
    units = [list(r.values()) for r in by_item.values()]
    raters = sorted({rater for _, rater in ratings})
    return {
        "scale": [cfg.evaluation.human.scale_min, cfg.evaluation.human.scale_max],
        "files": {str(f): sha256_file(f) for f in files},
        "key_sha256": sha256_file(Workdir(cfg.path).human_key),
        "export": key.get("export"),
        "raters": {r: {"ratings": sum(1 for (_, rr) in ratings if rr == r),
                       "mean": round(float(np.mean([v for (_, rr), (v, _) in ratings.items() if rr == r])), 4)}
                   for r in raters},
        "ratings": len(ratings),
        "items_rated": len(by_item),
        "items_in_sheet": len(key["items"]),
        "blank_skipped": blanks,
        # Each rated item's mean rating with where it came from: the judge's calibration (evaluate/judged.py) asks
        # which of two rated answers to the same test row the humans and the judge prefer.
        "item_means": [{"model": key["items"][i]["model"], "config": key["items"][i]["config"],
                        "id": key["items"][i]["id"], "rating": human_mean([list(by_item[i].values())])}
                       for i in sorted(by_item)],
        "agreement": {
            "items_with_2plus_raters": sum(1 for u in units if len(u) >= 2),
            "pairwise_exact": pairwise_exact_agreement(units),
            "krippendorff_alpha_ordinal": krippendorff_alpha(units, "ordinal"),
            "krippendorff_alpha_interval": krippendorff_alpha(units, "interval"),
        },
        "definitions": HUMAN_DEFINITIONS,
    }


# What puts imported ratings into the tables and the report (import writes human.csv only).
REFRESH_HINT = ("human ratings: run `tunesweep score --config <config>` to fill the Human column of the tables "
                "(cached metric results are reused), then `tunesweep report --config <config>`")


def import_ratings(cfg: ExperimentConfig, files: Sequence[str | Path]) -> Path:
    """Read rated sheets and write eval_results/human.csv and human.json; returns the path of human.csv.

    The Human column of eval_results/<target>.csv is the score stage's: `tunesweep score` (or the pipeline,
    which runs score) puts the ratings into the tables, reusing its cached metric results. Import does not
    call score itself: evaluate's steps stay separate stages, each run by the CLI or the pipeline."""
    if not files:
        raise UserError("human-eval import: give the rated CSV file(s), e.g. `tunesweep human-eval import alice.csv bob.csv`")
    key = _read_key(cfg)
    ratings, blanks = _read_ratings(files, key, cfg.evaluation.human.scale_min, cfg.evaluation.human.scale_max)
    _check_current(cfg, key, {item for item, _ in ratings})
    by_item: dict[str, dict[str, int]] = defaultdict(dict)  # item -> {rater: rating}
    for (item, rater), (rating, _) in ratings.items():
        by_item[item][rater] = rating
    table = _cell_table(cfg, key, by_item)
    summary = _summary(cfg, files, key, ratings, by_item, blanks)
    paths = Workdir(cfg.path)
    write_table(paths.human_table, HUMAN_COLUMNS, table, digits=4)
    write_json(paths.human_summary, summary)
    a = summary["agreement"]
    log.info("human ratings: %d ratings of %d items by %d rater(s) (%d blank skipped) -> %s (%d model x config cells)%s",
             len(ratings), len(by_item), len(summary["raters"]), blanks, paths.human_table, len(table),
             "" if a["pairwise_exact"] is None else
             f"; exact agreement {a['pairwise_exact']:.3f}, Krippendorff's alpha (ordinal) "
             f"{format_cell(a['krippendorff_alpha_ordinal'], 4) or 'n/a'}")
    log.info("%s", REFRESH_HINT)
    return paths.human_table

