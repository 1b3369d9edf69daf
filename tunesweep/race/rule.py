"""The race's statistics: which rows each round adds, and which configs a round eliminates.

Rounds. Round 1 uses the first `first_rows` rows; after each round the rows used grow by `growth`
(ceil), capped at the split's rows. Rows come in units: single rows in the split's order where a row's
answer is its own (vLLM's per-request seeds), or whole batches of the full sweep where it depends on its
batch (transformers: shared padding and one seed per batch), taken in the order of their first row, so
every row keeps the batch, padding and seed the full sweep gives it. A round takes whole units until it
holds at least its target.

Elimination (alpha_rule `bonferroni`). The R planned rounds each get alpha / R. In a round, the leader
is the survivor with the best corpus score on the rows used so far (the highest; the lowest for a metric
registered as lower-is-better); every other survivor's difference to it is a paired bootstrap
(evaluate.compare.paired_difference: the same resampled rows for both), its two-sided p, and Holm's
adjustment over those comparisons; a survivor whose Holm p is below alpha / R is eliminated. Never more
than leaves `keep` configs: if a round would, the eliminated ones with the best scores are kept. Over the
rounds, a config is wrongly eliminated only if one of the R tests rejects for it, so Bonferroni bounds
that chance by R x alpha / R = alpha
(the p-values are the bootstrap's approximation, and the leader is picked on the same rows: see
docs/race.md for what this guarantee does and does not cover).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import metric_registry
from ..evaluate.compare import best_config, holm, paired_difference

RULES = {"bonferroni": "Bonferroni over the planned rounds (alpha / R per round), Holm within a round over the "
                       "survivors' paired bootstrap differences to the round's leader"}


def round_targets(n_rows: int, first_rows: int, growth: float) -> list[int]:
    """The rows used after each planned round: first_rows, then x growth (ceil), the last one all rows."""
    targets = [min(first_rows, n_rows)]
    while targets[-1] < n_rows:
        targets.append(min(n_rows, max(targets[-1] + 1, math.ceil(targets[-1] * growth))))
    return targets


def plan_rounds(units: list[list[int]], first_rows: int, growth: float) -> list[list[int]]:
    """The rows (indices, ascending) each round adds: whole units, in the order given, until the round's
    target of round_targets is reached. Every row of `units` is in exactly one round."""
    n_rows = sum(len(u) for u in units)
    rounds, used, k = [], 0, 0
    for target in round_targets(n_rows, first_rows, growth):
        if used >= target:
            continue
        added: list[int] = []
        while used < target and k < len(units):
            added += units[k]
            used += len(units[k])
            k += 1
        rounds.append(sorted(added))
    return rounds


def row_units(n_rows: int, batches: Optional[list[list[int]]]) -> list[list[int]]:
    """Single rows in split order; or the full sweep's batches in the order of their first (lowest) row."""
    if batches is None:
        return [[i] for i in range(n_rows)]
    return sorted((sorted(b) for b in batches), key=lambda b: b[0])


@dataclass
class Verdict:
    """One survivor's standing after a round (the leader's own diff is 0 with no p)."""

    config: str
    score: float
    diff: float  # score - leader's score, on the same rows
    ci_low: Optional[float]
    ci_high: Optional[float]
    p: Optional[float]
    p_holm: Optional[float]
    eliminated: bool
    kept_by_keep: bool = False  # detectably worse, but kept so that `keep` configs survive


def judge_round(metric, per_config: dict[str, np.ndarray], idx: np.ndarray, alpha_round: float,
                keep: int) -> tuple[str, list[Verdict]]:
    """(leader, a Verdict per config in the given order) of one round: see the module docstring."""
    leader = best_config(metric, per_config)
    # Worse is a negative difference, or a positive one for a metric registered as lower-is-better.
    sign = 1.0 if metric_registry.get(metric.name).higher_is_better else -1.0
    others = [c for c in per_config if c != leader]
    diffs = {c: paired_difference(metric, per_config[c], per_config[leader], idx) for c in others}
    adjusted = dict(zip(others, holm([diffs[c]["p"] for c in others])))
    verdicts = {leader: Verdict(leader, float(metric.aggregate(per_config[leader])), 0.0, 0.0, 0.0, None, None, False)}
    for c in others:
        d = diffs[c]
        worse = bool(adjusted[c] is not None and adjusted[c] < alpha_round and sign * d["diff"] < 0)
        verdicts[c] = Verdict(c, float(d["score"]), float(d["diff"]), d["ci_low"], d["ci_high"], d["p"], adjusted[c],
                              worse)
    survivors = [v for v in verdicts.values() if not v.eliminated]
    if len(survivors) < keep:
        # The best of the eliminated stay, highest score first (sweep order on a tie).
        order = sorted((v for v in verdicts.values() if v.eliminated), key=lambda v: -sign * v.score)
        for v in order[:keep - len(survivors)]:
            v.eliminated, v.kept_by_keep = False, True
    return leader, [verdicts[c] for c in per_config]
