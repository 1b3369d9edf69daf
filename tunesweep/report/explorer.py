"""The response explorer's data for report.html: every answer of every target x config, read through the
same checks as the score stage (layout.read_target_responses), with each row's own scores."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from ..config import ExperimentConfig, expand_sweep
from ..errors import UserError
from ..files import read_jsonl
from ..layout import TableReader, Workdir, check_vouched, read_target_responses
from ..config import centre_config
from .tables import Scored, target_label, to_number as _num

log = logging.getLogger(__name__)

# Per-row scores are rounded: the page stays a few MB at full study size.
ROW_DECIMALS = 4


def _read_row_scores(path: Path, metrics: list[str]) -> dict:
    """{(config, id): {metric: value}} from eval_results/rows/<target>.csv; empty when absent."""
    out = {}
    if not path.is_file():
        return out
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for rec in TableReader(fh):
                out[(rec.get("config"), rec.get("id"))] = {m: _num(rec.get(m)) for m in metrics if m in rec}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("%s: per-row scores not shown (%s)", path, exc)
        return {}
    return out


def explorer_data(cfg: ExperimentConfig, scored: list[Scored], metrics: list[tuple[str, str]]) -> dict:
    """Every answer of every target x config for every test row, with its finish reason, token count
    and per-row scores; rows carry instruction, input and reference. Columnar: one list per
    (target, config) in row order, so the page stays a few MB at full study size."""
    paths = Workdir(cfg.path)
    configs = expand_sweep(cfg.generation)
    text_metrics = [(m, label) for m, label in metrics if m != "human"]
    test_path = paths.split_file("test")
    try:
        test = {r.get("id"): r for r in read_jsonl(test_path)} if test_path.is_file() else {}
    except UserError as exc:
        log.warning("%s", exc)
        test = {}
    ids: list = []
    rows: list[dict] = []
    seen: set = set()
    resp, finish, ntok, scores = {}, {}, {}, {}
    targets = []
    loaded: dict[str, dict[str, dict]] = {}
    for s in scored:
        # What score read, checked the same way (the manifest vouches for every file; references come
        # from alpaca_data/test.jsonl): the page never shows another run's answers beside this run's tables.
        # The configs of its table: a config a race eliminated holds some rows only and is in no table.
        tr = read_target_responses(cfg.path, s.target.name, [dc.name for dc in configs if dc.name in s.table.index],
                                   fields=("response",), cfg=cfg)
        per = {config: {r.id: r for r in recs} for config, recs in tr.records.items()}
        for r in next(iter(tr.records.values()), []):
            if r.id not in seen:
                seen.add(r.id)
                ids.append(r.id)
                t = test.get(r.id, {})
                rows.append({"id": str(r.id), "instruction": t.get("instruction", r.prompt or ""),
                             "input": t.get("input", ""), "reference": r.reference})
        if per:
            loaded[s.target.name] = per
            targets.append({"name": s.target.name, "label": target_label(s.target), "base": s.target.is_base})
    for t in targets:
        name = t["name"]
        per = loaded[name]
        row_scores = _read_row_scores(check_vouched(cfg.path, paths.row_scores(name)), [m for m, _ in text_metrics])
        resp[name], finish[name], ntok[name], scores[name] = {}, {}, {}, {m: {} for m, _ in text_metrics}
        for config, by_id in per.items():
            recs = [by_id.get(i) for i in ids]
            resp[name][config] = [None if r is None else r.response for r in recs]
            finish[name][config] = [None if r is None else r.finish_reason for r in recs]
            ntok[name][config] = [None if r is None else r.num_tokens for r in recs]
            for m, _ in text_metrics:
                vals = [row_scores.get((config, str(i)), {}).get(m) for i in ids]
                if any(v is not None for v in vals):
                    scores[name][m][config] = [None if v is None else round(v, ROW_DECIMALS) for v in vals]
    return {
        "study": cfg.name,
        "centre": centre_config(cfg).name,
        "configs": [{"name": dc.name, "mode": dc.mode, "varies": dc.varied or "centre"} for dc in configs],
        "targets": targets,
        "metrics": [[m, label] for m, label in text_metrics],
        "row_scores": any(scores[t["name"]][m] for t in targets for m, _ in text_metrics),
        "rows": rows,
        "resp": resp, "finish": finish, "ntok": ntok, "scores": scores,
    }
