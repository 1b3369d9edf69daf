"""The split stage: dataset -> alpaca_data/{train,test}.jsonl and split.json.

Test rows are held out by a seeded shuffle of prompt groups, so no prompt is in both sets; same
inputs give byte-identical files. A group is every record whose prompt is the same once normalised
(`prompt_key`): the templates build prompts from the stripped instruction and input, and a model
trained on "Name a colour." has in effect seen "name  a colour. " too. `split_for_config` skips the work when
alpaca_data/ already holds this exact split.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..files import jsonl_dumps, sha256_bytes, sha256_file, write_json, write_text
from ..hub import Snapshot, is_hub_dataset, resolve
from ..layout import Workdir
from ..provenance import logic
from .sources import load_usable_records, record_id

log = logging.getLogger(__name__)

# Bump when split writes other train/test files for the same inputs (tests/test_logic_versions.py pins them).
# 2: rows grouped by the normalised prompt (prompt_key), not the raw (instruction, input).
SPLIT_VERSION = 2


def split_logic() -> dict:
    return logic("split", SPLIT_VERSION)


def normalised(text: str) -> str:
    """Whitespace runs collapsed to one space, ends stripped, case folded."""
    return " ".join(text.split()).casefold()


def prompt_key(rec: dict) -> tuple[str, str]:
    """What makes two records the same prompt: every template formats the stripped instruction and input,
    so records whose fields differ only in whitespace or case are one prompt to a model."""
    return normalised(rec["instruction"]), normalised(rec.get("input") or "")


def prompt_groups(records: list[dict]) -> dict[tuple, list[int]]:
    """Record indices by prompt_key, in first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, rec in enumerate(records):
        groups.setdefault(prompt_key(rec), []).append(i)
    return groups


def near_duplicates(records: list[dict], groups: dict[tuple, list[int]]) -> int:
    """Records grouped with another record of a different raw (instruction, input): the rows a split on the
    raw text would have been free to put on the other side."""
    return sum(len({(records[i]["instruction"], records[i]["input"]) for i in idx}) - 1 for idx in groups.values())


def choose_test(records: list[dict], test_size: int, seed: int,
                groups: Optional[dict[tuple, list[int]]] = None) -> set[int]:
    """Pick test rows by seeded shuffle of prompt groups, so no normalised prompt is in both sets."""
    groups = prompt_groups(records) if groups is None else groups
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
    if n < 1:
        raise UserError(f"dataset.test_size = {test_size!r}: the test set would be empty ({test_size!r} of {n_usable} "
                        f"usable records rounds to 0 rows); hold out at least 1 row (a fraction of at least {0.5 / n_usable:.2g})")
    if n >= n_usable:
        raise UserError(
            f"dataset.test_size = {test_size!r}: must leave at least one training row, but the dataset has "
            f"{n_usable} usable records"
        )
    return n


def split_dataset(source: str, workdir: str | Path, test_size, seed: int = 42, max_rows: Optional[int] = None,
                  builtin_rows: int = 3000, revision: Optional[str] = None, snapshot: Optional[Snapshot] = None) -> dict:
    """Write alpaca_data/{train,test}.jsonl and split.json; same inputs give byte-identical files.
    A hub `source` is read at `snapshot` (or resolved at `revision` here); split.json records its commit."""
    if snapshot is None and is_hub_dataset(source):
        snapshot = resolve(source, revision, "dataset", "dataset.source")
    loaded, usable, stats = load_usable_records(source, seed=seed, builtin_rows=builtin_rows, snapshot=snapshot)
    if max_rows is not None:
        usable = usable[:max_rows]
    n_test = resolve_test_size(test_size, len(usable))
    groups = prompt_groups(usable)
    n_near = near_duplicates(usable, groups)
    if n_near:
        log.info("%s: %d record(s) differ from another only in whitespace or case of the instruction or input; "
                 "each is kept on the same side of the split as its prompt group", source, n_near)
    test_idx = choose_test(usable, n_test, seed, groups)
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
    paths = Workdir(workdir)
    meta = {
        "source": source,
        "revision": revision,
        # a hub dataset: the commit it resolved to; source_hash is then `<repo>@<commit>`
        "source_commit": snapshot.commit if snapshot else None,
        "source_hash": loaded.source_hash,
        "seed": seed,
        "test_size": test_size,
        "max_rows": max_rows,
        **stats,
        "usable": len(usable),
        # Rows sharing a normalised prompt stay on one side (prompt_key); near_duplicates of them differ
        # from another only in whitespace or case.
        "prompt_groups": len(groups),
        "near_duplicates": n_near,
        "train_rows": len(train),
        "test_rows": len(test),
        "train_sha256": sha256_bytes(train_text.encode()),
        "test_sha256": sha256_bytes(test_text.encode()),
        "logic": split_logic(),
    }
    # Written last: split.json present means the two data files beside it are complete.
    write_text(paths.split_file("train"), train_text)
    write_text(paths.split_file("test"), test_text)
    write_json(paths.split_meta, meta)
    return meta


def split_is_current(workdir: str | Path) -> Optional[dict]:
    """The split.json of a complete split, or None when the files are missing or were edited."""
    paths = Workdir(workdir)
    try:
        meta = json.loads(paths.split_meta.read_text())
        ok = (sha256_file(paths.split_file("train")) == meta["train_sha256"]
              and sha256_file(paths.split_file("test")) == meta["test_sha256"])
    except (OSError, KeyError, json.JSONDecodeError):
        return None
    return meta if ok else None


def split_for_config(cfg, force: bool = False) -> tuple[dict, bool]:
    """Split the config's dataset unless alpaca_data/ already holds this exact split; (meta, skipped)."""
    meta = split_is_current(cfg.path)
    # A hub dataset is resolved once, here: upstream moving `main` to another commit splits again.
    snapshot = cfg.dataset.hub_snapshot()
    wanted = {"source": cfg.dataset.source, "seed": cfg.seed, "test_size": cfg.dataset.test_size,
              "max_rows": cfg.dataset.max_rows}
    wanted["logic"] = split_logic()
    if cfg.dataset.revision is not None:  # (split.json files of local sources hold no revision)
        wanted["revision"] = cfg.dataset.revision
    if snapshot is not None:
        wanted["source_hash"] = snapshot.identity
    if not force and meta and all(meta.get(k) == v for k, v in wanted.items()):
        if not cfg.dataset.source.startswith("builtin:") and Path(cfg.dataset.source).is_file():
            # A local file edited since the split must be split again.
            if sha256_file(cfg.dataset.source) != meta.get("source_hash"):
                meta = None
        if meta:
            return meta, True
    meta = split_dataset(cfg.dataset.source, cfg.path, cfg.dataset.test_size, seed=cfg.seed,
                         max_rows=cfg.dataset.max_rows, builtin_rows=cfg.dataset.builtin_rows,
                         revision=cfg.dataset.revision, snapshot=snapshot)
    return meta, False
