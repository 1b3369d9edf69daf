"""The data stage: load Alpaca-format records, check them, split them into train and test.

Sources: a hub id (through `datasets`), a local .json / .jsonl / .parquet / .csv file, or
`builtin:tasks` (the embedded offline demo set of tunesweep.demo_data).

Structural faults (unparseable JSON, a missing `instruction` or `output`, a value that is not
a string) stop the stage with every faulty row named (up to 20) and nothing written. Empty
records and exact duplicates are dropped with a warning.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import UserError
from .files import fingerprint, sha256_bytes, sha256_file, jsonl_dumps, write_json, write_text

log = logging.getLogger(__name__)

REQUIRED = ("instruction", "output")
TEXT_FIELDS = ("instruction", "input", "output")
MAX_FAULTS_SHOWN = 20
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")


@dataclass
class LoadedRecords:
    source: str
    rows: list[tuple[int, object]]  # (row number as the user sees it, raw record)
    faults: list[str] = field(default_factory=list)  # structural faults found while parsing
    source_hash: Optional[str] = None


def _read_json_file(path: Path) -> LoadedRecords:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # A .json file that is really JSON Lines is common; read it as such.
        if exc.msg == "Extra data":
            return _read_jsonl_file(path)
        raise UserError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        # {"train": [...]} or {"data": [...]}: take the single list inside.
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError(f"{path}: expected a JSON list of records, got an object with keys {list(data)[:5]}")
        data = lists[0]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    return LoadedRecords(str(path), [(i, r) for i, r in enumerate(data, 1)], source_hash=sha256_file(path))


def _read_jsonl_file(path: Path) -> LoadedRecords:
    rows, faults = [], []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                faults.append(f"{path}: row {lineno}: not valid JSON ({exc.msg})")
    return LoadedRecords(str(path), rows, faults, sha256_file(path))


def _read_table_file(path: Path) -> LoadedRecords:
    import pandas as pd

    try:
        if path.suffix == ".csv":
            # keep_default_na=False: an empty `input` cell is "", not NaN.
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            df = pd.read_parquet(path)
    except Exception as exc:  # pandas raises many types for a malformed file
        raise UserError(f"{path}: cannot read as {path.suffix[1:]} ({exc.__class__.__name__}: {exc})") from None
    records = df.to_dict(orient="records")
    # CSV row numbers as a spreadsheet shows them: the header is row 1.
    offset = 2 if path.suffix == ".csv" else 1
    return LoadedRecords(str(path), [(i + offset, r) for i, r in enumerate(records)], source_hash=sha256_file(path))


def _read_hub(source: str) -> LoadedRecords:
    try:
        import datasets

        ds = datasets.load_dataset(source, split="train")
    except Exception as exc:
        raise UserError(
            f"dataset.source = {source!r}: cannot load it from the hub ({exc.__class__.__name__}: {str(exc)[:200]}); "
            "offline, point dataset.source at a local .json/.jsonl/.parquet/.csv file or use builtin:tasks"
        ) from None
    return LoadedRecords(source, [(i, r) for i, r in enumerate(ds, 1)], source_hash=getattr(ds, "_fingerprint", None))


def read_source(source: str, seed: int = 42, builtin_rows: int = 3000) -> LoadedRecords:
    if source.startswith("builtin:"):
        from .demo_data import generate_records

        name = source.split(":", 1)[1]
        if name != "tasks":
            raise UserError(f"dataset.source = {source!r}: the only builtin dataset is builtin:tasks")
        records = generate_records(builtin_rows, seed=seed)
        return LoadedRecords(source, list(enumerate(records, 1)), source_hash=fingerprint(records))
    path = Path(source)
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise UserError(f"dataset.source = {source!r}: file not found")
        suffix = path.suffix.lower()
        if suffix == ".json":
            return _read_json_file(path)
        if suffix == ".jsonl":
            return _read_jsonl_file(path)
        if suffix in (".csv", ".parquet"):
            return _read_table_file(path)
        raise UserError(f"dataset.source = {source!r}: unsupported file type (use .json, .jsonl, .parquet or .csv)")
    return _read_hub(source)


def check_records(loaded: LoadedRecords) -> tuple[list[dict], list[str]]:
    """Normalise records to {instruction, input, output} strings; collect structural faults."""
    faults = list(loaded.faults)
    good: list[dict] = []
    for row, rec in loaded.rows:
        where = f"{loaded.source}: row {row}"
        if not isinstance(rec, dict):
            faults.append(f"{where}: expected a JSON object, got {type(rec).__name__}")
            continue
        missing = [k for k in REQUIRED if k not in rec]
        if missing:
            faults.append(f"{where}: missing field {' and '.join(repr(k) for k in missing)}")
            continue
        bad = [k for k in TEXT_FIELDS if k in rec and rec[k] is not None and not isinstance(rec[k], str)]
        bad += [k for k in REQUIRED if rec[k] is None]
        if bad:
            k = bad[0]
            faults.append(f"{where}: field {k!r} must be a string, got {type(rec[k]).__name__} {str(rec[k])[:40]!r}")
            continue
        good.append({"row": row, "instruction": rec["instruction"], "input": rec.get("input") or "", "output": rec["output"]})
    return good, faults


def fault_report(faults: list[str]) -> str:
    shown = faults[:MAX_FAULTS_SHOWN]
    more = len(faults) - len(shown)
    text = "\n".join(shown)
    if more:
        text += f"\n... and {more} more faulty row{'s' if more > 1 else ''}"
    return text


def record_id(rec: dict) -> str:
    """A stable id from the content: the same record gets the same id in every run."""
    return sha256_bytes(json.dumps([rec["instruction"], rec["input"], rec["output"]]).encode())[:12]


def drop_unusable(records: list[dict], source: str) -> tuple[list[dict], int, int]:
    """Drop empty records and exact duplicates, warning with counts and the first rows."""
    empty, dupes, kept, seen = [], [], [], set()
    for rec in records:
        if not rec["instruction"].strip() or not rec["output"].strip():
            empty.append(rec["row"])
            continue
        key = (rec["instruction"], rec["input"], rec["output"])
        if key in seen:
            dupes.append(rec["row"])
            continue
        seen.add(key)
        kept.append(rec)
    for rows, what in ((empty, "with an empty instruction or output"), (dupes, "that repeat an earlier record exactly")):
        if rows:
            first = ", ".join(str(r) for r in rows[:5])
            log.warning("%s: dropped %d record(s) %s (rows %s%s)", source, len(rows), what, first,
                        ", ..." if len(rows) > 5 else "")
    return kept, len(empty), len(dupes)


def load_usable_records(source: str, seed: int = 42, builtin_rows: int = 3000) -> tuple[LoadedRecords, list[dict], dict]:
    loaded = read_source(source, seed=seed, builtin_rows=builtin_rows)
    records, faults = check_records(loaded)
    if faults:
        raise UserError(fault_report(faults))
    usable, n_empty, n_dupes = drop_unusable(records, loaded.source)
    stats = {"rows_read": len(loaded.rows), "dropped_empty": n_empty, "dropped_duplicates": n_dupes}
    return loaded, usable, stats


def choose_test(records: list[dict], test_size: int, seed: int) -> set[int]:
    """Pick test rows by seeded shuffle of prompt groups, so no (instruction, input) is in both sets."""
    groups: dict[tuple, list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault((rec["instruction"], rec["input"]), []).append(i)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    chosen: set[int] = set()
    for key in keys:
        remaining = test_size - len(chosen)
        if remaining == 0:
            break
        if len(groups[key]) <= remaining:
            chosen.update(groups[key])
    return chosen


def resolve_test_size(test_size, n_usable: int) -> int:
    n = round(test_size * n_usable) if isinstance(test_size, float) else int(test_size)
    if n < 1 or n >= n_usable:
        raise UserError(
            f"dataset.test_size = {test_size!r}: must leave at least one training row, but the dataset has "
            f"{n_usable} usable records"
        )
    return n


def split_dataset(source: str, workdir: str | Path, test_size, seed: int = 42, max_rows: Optional[int] = None,
                  builtin_rows: int = 3000) -> dict:
    """Write alpaca_data/{train,test}.jsonl and split.json; same inputs give byte-identical files."""
    loaded, usable, stats = load_usable_records(source, seed=seed, builtin_rows=builtin_rows)
    if max_rows is not None:
        usable = usable[:max_rows]
    n_test = resolve_test_size(test_size, len(usable))
    test_idx = choose_test(usable, n_test, seed)
    if len(test_idx) != n_test:
        raise UserError(
            f"dataset.test_size = {test_size!r}: cannot hold out {n_test} rows without splitting a repeated prompt "
            f"across train and test (got {len(test_idx)})"
        )

    def out(rec):
        return {"id": record_id(rec), "instruction": rec["instruction"], "input": rec["input"], "output": rec["output"]}

    train = [out(r) for i, r in enumerate(usable) if i not in test_idx]
    test = [out(r) for i, r in enumerate(usable) if i in test_idx]
    train_text, test_text = jsonl_dumps(train), jsonl_dumps(test)
    data_dir = Path(workdir) / "alpaca_data"
    meta = {
        "source": source,
        "source_hash": loaded.source_hash,
        "seed": seed,
        "test_size": test_size,
        "max_rows": max_rows,
        **stats,
        "usable": len(usable),
        "train_rows": len(train),
        "test_rows": len(test),
        "train_sha256": sha256_bytes(train_text.encode()),
        "test_sha256": sha256_bytes(test_text.encode()),
    }
    # Written last: split.json present means the two data files beside it are complete.
    write_text(data_dir / "train.jsonl", train_text)
    write_text(data_dir / "test.jsonl", test_text)
    write_json(data_dir / "split.json", meta)
    return meta


def split_is_current(workdir: str | Path) -> Optional[dict]:
    """The split.json of a complete split, or None when the files are missing or were edited."""
    data_dir = Path(workdir) / "alpaca_data"
    try:
        meta = json.loads((data_dir / "split.json").read_text())
        ok = (sha256_file(data_dir / "train.jsonl") == meta["train_sha256"]
              and sha256_file(data_dir / "test.jsonl") == meta["test_sha256"])
    except (OSError, KeyError, json.JSONDecodeError):
        return None
    return meta if ok else None


def load_split(workdir: str | Path, which: str) -> list[dict]:
    """Read alpaca_data/<which>.jsonl, failing with a pointer to `split` if it is not there."""
    path = Path(workdir) / "alpaca_data" / f"{which}.jsonl"
    if not path.is_file():
        raise UserError(f"{path}: not found; run `tunesweep split --config ...` first")
    from .files import read_jsonl

    return read_jsonl(path)


def split_for_config(cfg, force: bool = False) -> tuple[dict, bool]:
    """Split the config's dataset unless alpaca_data/ already holds this exact split; (meta, skipped)."""
    meta = split_is_current(cfg.path)
    wanted = {"source": cfg.dataset.source, "seed": cfg.seed, "test_size": cfg.dataset.test_size,
              "max_rows": cfg.dataset.max_rows}
    if not force and meta and all(meta.get(k) == v for k, v in wanted.items()):
        if not cfg.dataset.source.startswith("builtin:") and Path(cfg.dataset.source).is_file():
            # A local file edited since the split must be split again.
            if sha256_file(cfg.dataset.source) != meta.get("source_hash"):
                meta = None
        if meta:
            return meta, True
    meta = split_dataset(cfg.dataset.source, cfg.path, cfg.dataset.test_size, seed=cfg.seed,
                         max_rows=cfg.dataset.max_rows, builtin_rows=cfg.dataset.builtin_rows)
    return meta, False
