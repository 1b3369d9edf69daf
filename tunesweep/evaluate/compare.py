"""Paired comparisons: is one config's corpus score really different from another's?

Every config of a study is scored on the same test rows, so the difference of two configs' corpus
scores is judged with a paired bootstrap: each resample draws one set of row indices and computes
BOTH configs' corpus scores on those same rows (BLEU from the summed sufficient statistics, ROUGE-L
and BERTScore as means), so the noise the two share (hard rows, easy rows) cancels in the
difference. Per comparison:

- diff: score(a) - score(b) on all rows;
- ci_low, ci_high: the 95% percentile interval of the resampled differences;
- p: two-sided bootstrap p-value, min(1, 2 * min(P(d <= 0), P(d >= 0))) over the resampled
  differences d (a config identical to the other gets p = 1 and a zero-width interval);
- p_holm: Holm's step-down adjustment of p over one model's comparisons of one kind for one metric.

Three kinds (`versus`): every config minus the centre config; every config minus the best config of
that model and metric (what the report's "best config" table is judged by); fine-tuned minus base
for every config.

The score stage writes them to eval_results/comparisons.csv (COMPARISON_COLUMNS in layout.py); the
report turns them into sentences.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .. import metric_registry
from .metrics import CI_LEVEL, percentile_ci

ALPHA = 1.0 - CI_LEVEL  # a Holm-adjusted p below this counts as a difference


def bootstrap_p(diffs: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference from its resampled values: min(1, 2 * min tail)."""
    d = np.asarray(diffs, dtype=float)
    if d.size == 0:
        return float("nan")
    return float(min(1.0, 2.0 * min(np.mean(d <= 0), np.mean(d >= 0))))


def holm(pvalues: Sequence[Optional[float]]) -> list[Optional[float]]:
    """Holm's step-down adjusted p-values, in the order given (None / NaN entries stay None and do not count).

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j))."""
    valid = [(i, float(p)) for i, p in enumerate(pvalues) if p is not None and not np.isnan(p)]
    out: list[Optional[float]] = [None] * len(pvalues)
    m = len(valid)
    running = 0.0
    for rank, (i, p) in enumerate(sorted(valid, key=lambda ip: ip[1])):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def paired_difference(metric, rows_a: np.ndarray, rows_b: np.ndarray, idx: Optional[np.ndarray]) -> dict:
    """{score, reference_score, diff, ci_low, ci_high, p, resamples} of a minus b on the same rows.

    `rows_a` / `rows_b` are the metric's per-row values (same test rows, same order); `idx` the
    (resamples, n_rows) bootstrap indices shared by every config (None or empty: no interval, no p)."""
    rows_a, rows_b = np.asarray(rows_a), np.asarray(rows_b)
    if len(rows_a) != len(rows_b):
        raise ValueError(f"paired comparison needs the same rows: {len(rows_a)} vs {len(rows_b)}")
    a, b = metric.aggregate(rows_a), metric.aggregate(rows_b)
    out = {"score": a, "reference_score": b, "diff": a - b, "ci_low": None, "ci_high": None, "p": None,
           "resamples": 0}
    if idx is None or len(idx) == 0 or len(rows_a) == 0:
        return out
    diffs = metric.aggregate_resamples(rows_a, idx) - metric.aggregate_resamples(rows_b, idx)
    out["ci_low"], out["ci_high"] = percentile_ci(diffs)
    out["p"] = bootstrap_p(diffs)
    out["resamples"] = int(len(idx))
    return out


def _each_config_versus(metric, target: str, per_config: dict[str, np.ndarray], reference: str, versus: str,
                        idx: Optional[np.ndarray]) -> list[dict]:
    """Every config of `target` but `reference`, minus `reference`, with Holm over these comparisons."""
    rows = []
    for config, values in per_config.items():
        if config == reference:
            continue
        d = paired_difference(metric, values, per_config[reference], idx)
        rows.append({"model": target, "metric": metric.name, "config": config, "versus": versus,
                     "reference": reference, **d})
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
    return rows


def compare_to_centre(metric, target: str, per_config: dict[str, np.ndarray], centre: str,
                      idx: Optional[np.ndarray]) -> list[dict]:
    """Every other config of `target` minus the centre config, with Holm over these comparisons."""
    if centre not in per_config:
        return []
    return _each_config_versus(metric, target, per_config, centre, "centre", idx)


def best_config(metric, per_config: dict[str, np.ndarray]) -> Optional[str]:
    """The config with the best corpus score (the highest, or the lowest for a metric registered as lower is
    better; the first in the given order on a tie)."""
    scores = [(metric.aggregate(v), c) for c, v in per_config.items()]
    scores = [(s, c) for s, c in scores if not np.isnan(s)]
    if not scores:
        return None
    top = (max if metric_registry.get(metric.name).higher_is_better else min)(s for s, _ in scores)
    return next(c for s, c in scores if s == top)


def compare_to_best(metric, target: str, per_config: dict[str, np.ndarray], idx: Optional[np.ndarray]) -> list[dict]:
    """Every other config minus the best one (diff <= 0; >= 0 for a lower-is-better metric), with Holm over these comparisons: which
    configs are detectably worse than the best. The best is picked on the same data, so a p here
    is optimistic about the best config's lead (winner's curse), not a confirmatory test."""
    best = best_config(metric, per_config)
    if best is None:
        return []
    return _each_config_versus(metric, target, per_config, best, "best", idx)


def compare_to_base(metric, target: str, base: str, per_config: dict[str, np.ndarray],
                    base_per_config: dict[str, np.ndarray], idx: Optional[np.ndarray]) -> list[dict]:
    """Fine-tuned minus base for every config both have, with Holm over these comparisons."""
    rows = []
    for config, values in per_config.items():
        if config not in base_per_config:
            continue
        d = paired_difference(metric, values, base_per_config[config], idx)
        rows.append({"model": target, "metric": metric.name, "config": config, "versus": "base",
                     "reference": base, **d})
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"] = adjusted
    return rows

