"""The judge's verdicts as metrics of the score stage: win rate and length-controlled win rate per config.

The judge stage writes eval_results/judge/<target>/<config>.jsonl (one preference in [0, 1] per judged row
for the answer under test against the baseline answer). Here, per config:
- judge_win: the mean preference (a tie counts half) with the 95% percentile bootstrap CI over the judged
  rows, drawn from the study's seed like every other metric (the same resamples when every row is judged);
- judge_lc: AlpacaEval 2's length-controlled win rate (winrate.lc_win_rate: the logistic model of the
  preference on tanh of the standardised length difference, read off at zero difference; its instruction-
  difficulty term is left out, see winrate.py), CI by refitting each resample.
The baseline config is not judged; its row is 0.5 by definition (no CI), and in the paired comparisons it
enters as 0.5 on every row, so "config minus centre" for judge_win is the config's win rate minus 1/2 when the
centre is the baseline.

Only verdicts of the current responses are used: each judged row's answer digests must equal the responses as
generate and clean vouch for them now, and the judge manifest must name the judge and baseline the config
names, else a one-line UserError says to rerun `tunesweep judge`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import judge_baseline
from ..errors import UserError
from ..files import sha256_text
from ..layout import TargetResponses, Workdir, read_json_if_present, read_judgments
from ..records import JudgeManifest, JudgeRecord, JudgeTarget
from .metrics import MeanOfRows, bootstrap_ci, bootstrap_indices, percentile_ci
from .winrate import lc_win_rate

JUDGE_METRICS = ("judge_win", "judge_lc")
JUDGE_COLUMNS = [c for m in JUDGE_METRICS for c in (m, f"{m}_ci_low", f"{m}_ci_high")]
RERUN = "rerun `tunesweep judge --config <config>`"


class WinRateMetric(MeanOfRows):
    """judge_win as the comparisons see it: a mean of per-row preferences."""

    name = "judge_win"


@dataclass
class Judged:
    """One target's judged rows: per config the preferences and both answers' lengths (baseline: 0.5s)."""

    baseline: str
    preferences: dict[str, np.ndarray]
    lengths: dict[str, tuple[np.ndarray, np.ndarray]]
    rows: int
    flip_share: Optional[float]
    unsure_requests: int
    ids: list = None  # the judged rows' ids, in order

    def row_preference(self, config: str, row_id: str) -> Optional[float]:
        """The preference of one judged row (None when the row was not judged)."""
        try:
            i = self.ids.index(str(row_id))
        except ValueError:
            return None
        return float(self.preferences[config][i])


def load_judged(cfg, tr: TargetResponses) -> Optional[Judged]:
    """The target's verdicts, checked against the config and the current responses; None without a judge."""
    jc = cfg.evaluation.judge
    if jc is None:
        return None
    paths = Workdir(cfg.path)
    manifest = JudgeManifest.read(read_json_if_present(paths.judge_manifest))
    configs = list(tr.records)
    baseline = judge_baseline(cfg)
    if manifest.judge_model != jc.model or manifest.baseline != baseline:
        raise UserError(f"{paths.judge_manifest}: judged by {manifest.judge_model!r} against {manifest.baseline!r}, "
                        f"but evaluation.judge names {jc.model!r} against {baseline!r}; {RERUN}")
    judged = read_judgments(cfg.path, tr.target, configs)
    if not judged:
        raise UserError(f"{tr.target}: evaluation.judge is set but {tr.target!r} has no judgments; {RERUN}")
    preferences, lengths = {}, {}
    n = None
    for config in configs:
        if config == baseline:
            continue
        records = judged.get(config)
        if records is None:
            raise UserError(f"{paths.judge_file(tr.target, config)}: not judged; {RERUN}")
        n = len(records) if n is None else n
        if len(records) != n or len(records) > tr.n_rows:
            raise UserError(f"{paths.judge_file(tr.target, config)}: {len(records)} judged rows where the other configs "
                            f"have {n}; {RERUN}")
        answers = tr.records[config]
        base = tr.records.get(baseline)
        records = [JudgeRecord.from_json(r) for r in records]
        for i, rec in enumerate(records):
            want = answers[i].response
            want_base = answers[i].reference if baseline == "reference" else base[i].response
            if (rec.id != answers[i].id or rec.answer_sha256 != sha256_text(want)
                    or rec.baseline_sha256 != sha256_text(want_base)):
                raise UserError(f"{paths.judge_file(tr.target, config)}: row {i + 1} (id {answers[i].id!r}) was "
                                f"judged on other answers than the current responses; {RERUN}")
        preferences[config] = np.array([r.preference for r in records], dtype=float)
        lengths[config] = (np.array([r.answer_chars for r in records], dtype=float),
                           np.array([r.baseline_chars for r in records], dtype=float))
    n = n or 0
    if baseline in configs:
        preferences[baseline] = np.full(n, 0.5)
    entry = manifest.target(tr.target) or JudgeTarget({})
    ordered = {c: preferences[c] for c in configs if c in preferences}
    ids = [str(r.id) for r in next(iter(tr.records.values()))[:n]]
    return Judged(baseline, ordered, lengths, n, entry.flip_share, entry.unsure_requests, ids)


def judge_cells(judged: Judged, config: str, resamples: int, seed: int) -> dict:
    """The judge columns of one config's table row."""
    if config == judged.baseline:
        return {"judge_win": 0.5, "judge_lc": 0.5}
    prefs = judged.preferences[config]
    idx = bootstrap_indices(len(prefs), resamples, seed) if resamples and len(prefs) else None
    low, high = bootstrap_ci(WinRateMetric(), prefs, idx)
    lc = lc_win_rate(prefs, *judged.lengths[config], resamples=resamples, seed=seed)
    return {"judge_win": float(prefs.mean()) if len(prefs) else None, "judge_win_ci_low": low,
            "judge_win_ci_high": high, "judge_lc": lc.value, "judge_lc_ci_low": lc.ci_low, "judge_lc_ci_high": lc.ci_high}


def with_row_preferences(columns: list[str], rows: list[dict], judged: Judged) -> tuple[list[str], list[dict]]:
    """eval_results/rows/<target>.csv with each judged row's preference as `judge_win` (blank where the row was
    not judged), so the report's explorer shows the verdict next to the answers."""
    by_key = {}
    for config, prefs in judged.preferences.items():
        for i, p in enumerate(prefs):
            by_key[(config, i)] = float(p)
    seen: dict[str, int] = {}
    out = []
    for row in rows:  # in sweep order, then test order: the i-th row of a config is test row i
        i = seen.get(row["config"], 0)
        seen[row["config"]] = i + 1
        out.append({**row, "judge_win": by_key.get((row["config"], i))})
    return columns + ["judge_win"], out


# --- calibration against human ratings ---------------------------------------------------------------

LOW_AGREEMENT = 0.6  # judge-human agreement on pairs below this: the report warns


def pairwise_agreement(item_means: list[dict], judged: dict, resamples: int, seed: int) -> dict:
    """How often the judge and the humans agree on which of two rated answers to the same test row is better.

    `item_means`: human.json's rated items ({model, config, id, rating}); `judged`: {target: Judged}. For every
    target and test row, every two rated configs whose mean ratings differ form a pair; the humans prefer the
    higher rating, the judge the answer with the higher preference against the row's common baseline (the
    baseline config itself has preference 1/2: its pairs are the judge's direct verdicts). A pair agrees (1) when
    both prefer the same answer, disagrees (0) when they differ, and counts 1/2 when the judge ties. The CI is a
    95% percentile bootstrap over the (target, row) groups, whose pairs share answers."""
    groups: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for item in item_means:
        j = judged.get(item.get("model"))
        if j is None or item.get("config") not in j.preferences:
            continue
        groups.setdefault((item["model"], str(item["id"])), []).append((item["config"], float(item["rating"])))
    per_group = []
    for (target, row_id), rated in sorted(groups.items()):
        j = judged[target]
        pref = {c: j.row_preference(c, row_id) for c, _ in rated}
        scores = []
        for a in range(len(rated)):
            for b in range(a + 1, len(rated)):
                (ca, ha), (cb, hb) = rated[a], rated[b]
                if ha == hb or pref[ca] is None or pref[cb] is None:
                    continue
                human = 1 if ha > hb else -1
                judge = (pref[ca] > pref[cb]) - (pref[ca] < pref[cb])
                scores.append(0.5 if judge == 0 else float(judge == human))
        if scores:
            per_group.append(scores)
    pairs = sum(len(g) for g in per_group)
    out = {"pairs": pairs, "rows": len(per_group), "agreement": None, "ci_low": None, "ci_high": None}
    if not pairs:
        return out
    sums = np.array([sum(g) for g in per_group])
    counts = np.array([len(g) for g in per_group], dtype=float)
    out["agreement"] = float(sums.sum() / counts.sum())
    if resamples:
        idx = bootstrap_indices(len(per_group), resamples, seed)
        low, high = percentile_ci(sums[idx].sum(axis=1) / counts[idx].sum(axis=1))
        out["ci_low"], out["ci_high"] = low, high
    return out


def rank_correlation(win_rates: dict, human_means: dict) -> dict:
    """Spearman's rho between per-(target, config) judge win rates and human mean ratings, over the cells that
    have both (None with fewer than 3 cells or no spread)."""
    from scipy.stats import spearmanr

    cells = sorted(set(win_rates) & set(human_means))
    out = {"cells": len(cells), "spearman": None, "p": None}
    if len(cells) < 3:
        return out
    x = [win_rates[c] for c in cells]
    y = [human_means[c] for c in cells]
    if len(set(x)) < 2 or len(set(y)) < 2:
        return out
    rho, p = spearmanr(x, y)
    out["spearman"], out["p"] = float(rho), float(p)
    return out


def calibration(cfg, judged: dict, item_means: list[dict], human: dict, tables: dict) -> dict:
    """metrics.json's judge calibration: pairwise agreement with the humans (with CI), Spearman of per-config win
    rates against human means, and the warnings the report prints."""
    agreement = pairwise_agreement(item_means, judged, cfg.evaluation.bootstrap, cfg.seed)
    win_rates = {(t, row["config"]): row["judge_win"] for t, table in tables.items() if t in judged for row in table
                 if row.get("judge_win") is not None}
    rank = rank_correlation(win_rates, human)
    warnings = []
    if agreement["agreement"] is not None and agreement["agreement"] < LOW_AGREEMENT:
        warnings.append(f"the judge agrees with the human ratings on {agreement['agreement']:.0%} of "
                        f"{agreement['pairs']} pairs of rated answers (under {LOW_AGREEMENT:.0%}): its win rates "
                        "do not track what the raters preferred")
    if rank["spearman"] is not None and rank["spearman"] < LOW_AGREEMENT:
        warnings.append(f"per-config judge win rates rank the configs unlike the human means (Spearman "
                        f"{rank['spearman']:.2f} over {rank['cells']} cells)")
    return {"pairs": agreement, "rank": rank, "warnings": warnings,
            "how": "pairs: two rated answers (different configs) to the same test row of one target whose mean "
                   "ratings differ; agreement = share where the judge prefers the same one (a judge tie counts "
                   "half), 95% bootstrap CI over rows. rank: Spearman of per-(target, config) judge win rates vs "
                   "human means"}


STAND_IN_HIDDEN = 1024  # a judge with a smaller hidden size is a stand-in: it shows the mechanics, not quality


def stand_in(manifest: JudgeManifest) -> Optional[str]:
    """Why the judge is only a stand-in (a tiny model such as the demo's), or None."""
    import json
    from pathlib import Path

    folder = Path(manifest.judge_checkpoint or "")
    try:
        hidden = json.loads((folder / "config.json").read_text()).get("hidden_size")
    except (OSError, ValueError):
        return None
    if isinstance(hidden, int) and hidden < STAND_IN_HIDDEN:
        return (f"the judge is a tiny model (hidden size {hidden}): a stand-in that shows the mechanics (files, "
                "both orders, win rates, CIs), not a judgment of answer quality")
    return None


def judge_settings(cfg, judged: dict, calibrated: Optional[dict] = None) -> dict:
    """metrics.json's `judge` entry: what the judge columns mean, and per target the position bias."""
    jc = cfg.evaluation.judge
    manifest = JudgeManifest.read(read_json_if_present(Workdir(cfg.path).judge_manifest))
    return {"model": jc.model, "against": jc.against, "judge": manifest.judge or None, "backend": manifest.backend,
            "stand_in": stand_in(manifest), "self_preference": manifest.self_preference,
            "judge_win": "mean preference for the config's answer over the baseline's (both orders averaged; a tie "
                         "counts half); 95% percentile bootstrap CI over the judged rows",
            "judge_lc": "AlpacaEval 2's length-controlled win rate: logistic fit of the preference on tanh(length "
                        "difference / its sd), read off at zero difference; its instruction-difficulty term is left "
                        "out (AlpacaEval's values belong to its own 805 instructions); unpenalised fit",
            "baseline_row": "the baseline config is not judged: 0.5 by definition",
            "comparisons": "judge_win only, versus centre and best (the base model is judged against its own "
                           "baseline, so fine-tuned minus base win rates would compare different baselines)",
            "targets": {t: {"rows": j.rows, "flip_share": j.flip_share, "unsure_requests": j.unsure_requests,
                            "baseline": j.baseline} for t, j in judged.items()},
            "calibration": calibrated}
