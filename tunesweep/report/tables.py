"""The scored tables the report reads: eval_results/<target>.csv of every target of the study."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from ..config import ExperimentConfig, RunTarget
from ..errors import UserError
from ..layout import Workdir, read_frame, read_json_if_present, test_set_sha256

log = logging.getLogger(__name__)


@dataclass
class Scored:
    target: RunTarget
    table: pd.DataFrame  # eval_results/<target>.csv, indexed by config
    path: Path


def to_number(x) -> Optional[float]:
    """A float, or None for a blank / NaN cell."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def target_label(t: RunTarget) -> str:
    return f"{t.name} (base, not fine-tuned)" if t.is_base else t.name


def read_scored(cfg: ExperimentConfig) -> list[Scored]:
    paths = Workdir(cfg.path)
    eval_dir = paths.eval_dir
    hint = "run `tunesweep score --config ...` first"
    if not eval_dir.is_dir():
        raise UserError(f"{eval_dir}: not found: the study has not been scored yet; {hint}")
    out = []
    scored_meta = (read_json_if_present(paths.metrics_json) or {}).get("targets") or {}
    for t in cfg.run_targets():
        path = paths.table(t.name)
        if not path.is_file():
            continue
        check_still_current(cfg, t, path, scored_meta.get(t.name) or {})
        table = read_frame(path)
        for col in ("config", "mode"):
            if col not in table.columns:
                raise UserError(f"{path}: column {col!r} is missing; rerun `tunesweep score --config ... --force`")
        out.append(Scored(t, table.set_index("config", drop=False), path))
    if not out:
        names = ", ".join(f"{t.name}.csv" for t in cfg.run_targets())
        raise UserError(f"{eval_dir}: no scored results ({names}): the study has not been scored yet; {hint}")
    missing = [t.name for t in cfg.run_targets() if t.name not in {s.target.name for s in out}]
    if missing:
        log.warning("not scored yet, left out of the report: %s", ", ".join(missing))
    return out


def check_still_current(cfg: ExperimentConfig, t: RunTarget, path: Path, scored: dict) -> None:
    """A table is reported only while what it was scored from (metrics.json's `scored_from`) is what
    manifest.json and alpaca_data/test.jsonl hold now: responses regenerated or a re-split since make it stale."""
    paths = Workdir(cfg.path)
    manifest = read_json_if_present(paths.manifest(t.name)) or {}
    entries = manifest.get("configs") or {}
    now = {"checkpoint_hash": manifest.get("checkpoint_hash"),
           "generated_sha256": {c: (entries.get(c) or {}).get("generated_sha256") for c in scored.get("configs", [])},
           "test_set_sha256": test_set_sha256(cfg.path)}
    if scored.get("scored_from") != now:
        raise UserError(f"{path}: scored from responses that are not the current run's (regenerated, re-split or "
                        f"scored by an older tunesweep since); rerun `tunesweep score --config <config>`")


def value_of(s: Scored, config: str, metric: str) -> tuple[Optional[float], Optional[float], Optional[float]]:
    if config not in s.table.index or metric not in s.table.columns:
        return None, None, None
    row = s.table.loc[config]
    return (to_number(row[metric]), to_number(row.get(f"{metric}_ci_low")), to_number(row.get(f"{metric}_ci_high")))


