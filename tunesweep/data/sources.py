"""Reading a dataset: Alpaca-format records from any source, checked and normalised.

Sources: a hub id (resolved to one commit's snapshot folder by tunesweep.hub, read with `datasets`), a local .json / .jsonl / .parquet / .csv file, or
`builtin:tasks` (the embedded offline demo set of tunesweep.data.builtin).

Structural faults (unparseable JSON, a missing `instruction` or `output`, a value that is not
a string) stop the stage with every faulty row named (up to 20) and nothing written. Empty
records and exact duplicates are dropped with a warning.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..files import fingerprint, read_jsonl_rows, sha256_bytes, sha256_file
from ..hub import DATASET_FILE_SUFFIXES, Snapshot, resolve

log = logging.getLogger(__name__)

REQUIRED = ("instruction", "output")
TEXT_FIELDS = ("instruction", "input", "output")
MAX_FAULTS_SHOWN = 20
LOCAL_SUFFIXES = DATASET_FILE_SUFFIXES


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
    rows, faults = read_jsonl_rows(path, unit="row")
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


def _read_hub(source: str, snapshot: Snapshot) -> LoadedRecords:
    """The train split of a hub dataset, read from the snapshot folder it was resolved to (tunesweep.hub);
    its identity is `<repo>@<commit>`."""
    try:
        import datasets

        ds = datasets.load_dataset(snapshot.path, split="train")
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise UserError(
            f"dataset.source = {source!r} (revision {snapshot.revision!r}, commit {snapshot.commit}): cannot read its "
            f"train split from {snapshot.path} ({exc.__class__.__name__}: {first}); point dataset.source at a local "
            ".json/.jsonl/.parquet/.csv file or use builtin:tasks") from None
    return LoadedRecords(source, [(i, r) for i, r in enumerate(ds, 1)], source_hash=snapshot.identity)


def read_source(source: str, seed: int = 42, builtin_rows: int = 3000, revision: Optional[str] = None,
                snapshot: Optional[Snapshot] = None) -> LoadedRecords:
    """The records of `source`; a hub id is read at `snapshot` (or resolved at `revision` here)."""
    if source.startswith("builtin:"):
        from .builtin import generate_records

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
        try:
            if suffix == ".json":
                return _read_json_file(path)
            if suffix == ".jsonl":
                return _read_jsonl_file(path)
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); save it as UTF-8") from None
        if suffix in (".csv", ".parquet"):
            return _read_table_file(path)
        raise UserError(f"dataset.source = {source!r}: unsupported file type (use .json, .jsonl, .parquet or .csv)")
    return _read_hub(source, snapshot or resolve(source, revision, "dataset", "dataset.source"))


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


def load_usable_records(source: str, seed: int = 42, builtin_rows: int = 3000, revision: Optional[str] = None,
                        snapshot: Optional[Snapshot] = None) -> tuple[LoadedRecords, list[dict], dict]:
    loaded = read_source(source, seed=seed, builtin_rows=builtin_rows, revision=revision, snapshot=snapshot)
    records, faults = check_records(loaded)
    if faults:
        raise UserError(fault_report(faults))
    usable, n_empty, n_dupes = drop_unusable(records, loaded.source)
    stats = {"rows_read": len(loaded.rows), "dropped_empty": n_empty, "dropped_duplicates": n_dupes}
    return loaded, usable, stats


