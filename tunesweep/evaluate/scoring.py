"""The score stage: BLEU / ROUGE-L / BERTScore per decoding config, perplexity per model, 95% CIs.

Reads llm_responses/<target>/<config>.jsonl for every target of the study and every config of the
sweep, and writes (DESIGN.md contracts):

- eval_results/<target>.csv and .md: one row per config in sweep order, with bootstrap CIs and the
  human rating from eval_results/human.csv when present;
- eval_results/all.csv: the same numbers in tidy form (model, config, parameter, value, metric, ...);
- eval_results/perplexity.csv: perplexity of the test references per target;
- eval_results/comparisons.csv: per target, metric and config the paired-bootstrap difference to the
  centre config and to the best config, and fine-tuned minus base per config, with 95% CI, p and Holm-adjusted p (compare.py);
- eval_results/metrics.json: the settings of every metric;
- eval_results/rows/<target>.csv: every row's own score per config and metric (`config, id, bleu,
  rougeL, bertscore`; BLEU there is sentence BLEU), for reading single answers (report.html).

A config whose file is missing, short, or lacks `response` stops the stage with a one-line error:
a table never silently drops a row. Per-row scores are cached in eval_results/.cache/<target>.json,
keyed by a fingerprint of (responses, references, metric settings), so rescoring unchanged
responses (e.g. after `human-eval import`) recomputes nothing and loads no model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..config import DecodingConfig, centre_config, expand_sweep, format_temperature
from ..errors import UserError
from ..files import fingerprint, read_json, write_json, write_text
from .. import metric_registry
from ..layout import (COMPARISON_COLUMNS, PERPLEXITY_COLUMNS, ROW_SCORE_KEYS, TIDY_COLUMNS,
                      TargetResponses, Workdir, format_cell, partial_configs,
                      markdown_table, read_human, read_json_if_present, read_rows, read_frame,
                      read_target_responses, responses_fingerprint, vouch_files, write_table)
from ..layout import current_checkpoint_hash  # noqa: F401 (moved to the base: the judge stage vouches the same way)
from ..records import ScoredTarget, score_metadata, scored_targets_json, vouched_files
from ..provenance import checkpoint_identity, library_versions, logic, recorded_logic
from .compare import compare_to_base, compare_to_best, compare_to_centre
from .judged import (JUDGE_METRICS, WinRateMetric, calibration, judge_cells, judge_settings, load_judged,
                     with_row_preferences)
from .metrics import (CI_LEVEL, bootstrap_ci, bootstrap_indices, build_metric, language_warning,
                      percentile_ci)

log = logging.getLogger(__name__)

CACHE_VERSION = 1
# Bump when score computes other numbers from the same responses for every metric (what they share: the
# records read, the pairing of rows); a change of one metric's numbers bumps that metric's own version in
# tunesweep/metric_registry.py instead (tests/test_logic_versions.py pins both).
SCORE_VERSION = 1
PERPLEXITY_SCOPE = ("test references, response tokens only (prompt masked, EOS included); corpus level: "
                    "exp of the mean token NLL; CI: bootstrap over test rows of exp(sum NLL / sum tokens)")


# --- the per-row cache ----------------------------------------------------------------------------

@dataclass
class RowCache:
    """eval_results/.cache/<target>.json: {metric: {config: {"key", "rows"}}, "perplexity": {...}}."""

    path: Path
    data: dict = field(default_factory=dict)
    dirty: bool = False

    @classmethod
    def load(cls, path: Path) -> "RowCache":
        data = {}
        if path.is_file():
            try:
                data = read_json(path)
            except (OSError, ValueError):
                data = {}  # a damaged cache only costs a recomputation
            if data.get("version") != CACHE_VERSION:
                data = {}
        return cls(path, data or {"version": CACHE_VERSION})

    def get(self, section: str, item: str, key: str):
        entry = self.data.get(section, {}).get(item)
        return entry["value"] if entry and entry.get("key") == key else None

    def put(self, section: str, item: str, key: str, value) -> None:
        self.data.setdefault(section, {})[item] = {"key": key, "value": value}
        self.dirty = True

    def save(self) -> None:
        # Written only when something was computed: an unchanged rerun leaves the file untouched.
        if self.dirty:
            write_json(self.path, self.data)
            self.dirty = False


def score_logic(workdir, target: str) -> dict:
    """This stage's logic version over what it reads: cleaning.json (which holds generate's and the
    earlier stages'), or manifest.json where clean has not recorded any."""
    paths = Workdir(workdir)
    upstream = recorded_logic(paths.cleaning(target)) or recorded_logic(paths.manifest(target))
    return logic("score", SCORE_VERSION, upstream)


def plan_rows(metric, settings: dict, tr: TargetResponses, cache: RowCache, force: bool,
              logic_versions: Optional[dict] = None) -> tuple[dict, list]:
    """({config: cached per-row values}, [(config, key, hyps, refs)] of the configs still to score)."""
    rows: dict[str, np.ndarray] = {}
    missing: list[tuple[str, str, list, list]] = []
    for config, recs in tr.records.items():
        hyps = [r.response for r in recs]
        refs = [r.reference for r in recs]
        # The metric's own version is part of the key: bumping it rescores this metric alone.
        key = fingerprint({"metric": metric.name, "settings": settings, "responses": hyps, "references": refs,
                           "logic": logic_versions, "version": metric_registry.get(metric.name).version})
        cached = None if force else cache.get(metric.name, config, key)
        if cached is not None:
            rows[config] = np.asarray(cached)
        else:
            missing.append((config, key, hyps, refs))
    return rows, missing


def metric_rows_job(metric, missing: list) -> tuple[np.ndarray, int]:
    """(per-row values of every missing config, flat; library calls made): ONE metric call for all of
    them, since references repeat once per config and the metric sees them together."""
    calls_before = getattr(metric, "calls", 0)
    values = metric.rows([h for _, _, hyps, _ in missing for h in hyps],
                         [r for _, _, _, refs in missing for r in refs],
                         groups=[len(hyps) for _, _, hyps, _ in missing])
    return values, getattr(metric, "calls", 0) - calls_before


def fill_rows(metric, missing: list, values: np.ndarray, rows: dict, cache: RowCache) -> list[str]:
    """Put each missing config's slice of `values` into `rows` and the cache; returns those configs."""
    start = 0
    for config, key, hyps, _ in missing:
        part = values[start:start + len(hyps)]
        start += len(hyps)
        rows[config] = part
        cache.put(metric.name, config, key, part.tolist())
    return [m[0] for m in missing]


# --- perplexity -----------------------------------------------------------------------------------

def plan_perplexity(cfg, target, tr: TargetResponses, cache: RowCache, force: bool,
                    logic_versions: Optional[dict] = None) -> tuple[Optional[dict], str, tuple]:
    """(cached perplexity row or None, cache key, perplexity_job's arguments) of the test references
    under the target's checkpoint."""
    checkpoint = target.checkpoint(cfg.path)
    # The response records carry exactly the prompt and reference that training used.
    first = next(iter(tr.records.values()))
    records = [r.reference_pair() for r in first]
    versions = library_versions()
    # The identity generate recorded is reused while the checkpoint's files are unchanged (no rehash).
    recorded = tr.manifest.recorded_identity(checkpoint)
    key = fingerprint({"weights": checkpoint_identity(checkpoint, recorded), "records": records,
                       "template": cfg.template, "torch": versions.get("torch"),
                       "transformers": versions.get("transformers"), "per_row": 1, "logic": logic_versions,
                       "version": metric_registry.get("perplexity").version})
    cached = None if force else cache.get("perplexity", "corpus", key)
    if cached is None and not target.is_base and not Path(checkpoint).is_dir():
        raise UserError(f"{checkpoint}: fine-tuned checkpoint not found (perplexity of {target.name!r} needs it); "
                        f"run `tunesweep finetune` first")
    return cached, key, (target.name, checkpoint, records, cfg.template, cfg.evaluation.perplexity_batch_size)


def perplexity_job(target_name: str, checkpoint: str, records: list[dict], template: str, batch_size: int) -> dict:
    """The perplexity row of `records`' references under `checkpoint` (with per-row NLL for the CI)."""
    from ..hub import local_folder
    from . import perplexity

    log.info("perplexity %s: %d test references under %s", target_name, len(records), checkpoint)
    try:
        # A Ray task on another node loads the pinned base commit from its own hub cache.
        result = perplexity.corpus_perplexity(local_folder(checkpoint), records, template=template,
                                              batch_size=batch_size)
    except OSError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{checkpoint}: cannot load it for the perplexity of {target_name!r} ({first_line})") from None
    return {"model": target_name, "perplexity": result["perplexity"], "nll": result["nll"],
            "tokens": result["tokens"], "checkpoint": checkpoint,
            "row_nll": result["row_nll"], "row_tokens": result["row_tokens"]}  # per test row, for the CI


# --- the slow parts: run in turn here, or side by side as Ray tasks --------------------------------

@dataclass
class SlowJob:
    """One target's BERTScore (the configs the cache lacks, in one call) or its perplexity: the parts of
    scoring that load a model. `execution.backend: ray` runs each as a Ray task (evaluate/remote.py)."""

    target: str
    what: str  # a slow metric's name (bertscore) or "perplexity"
    fn: object  # metric_rows_job or perplexity_job: module-level, so a Ray worker can import it
    args: tuple
    cached_as: object  # where the driver caches the result: the metric's missing configs, or the perplexity key


def run_jobs(cfg, jobs: list[SlowJob]):
    """Yield (job, result) as each job finishes: in turn in this process (local), or as Ray tasks."""
    if cfg.execution.backend == "ray" and jobs:
        from .remote import run_on_ray

        yield from run_on_ray(cfg, jobs)
        return
    for job in jobs:
        yield job, job.fn(*job.args)


def perplexity_with_ci(row: dict, idx) -> dict:
    """The perplexity row with its 95% bootstrap CI over test rows (the same resampled rows as the text
    metrics): per resample exp(sum of the rows' NLL / sum of their tokens). Blank without resamples."""
    from .perplexity import perplexity_resamples

    out = {**row, "ppl_ci_low": None, "ppl_ci_high": None}
    if idx is not None and len(idx) and row.get("row_nll"):
        if len(row["row_nll"]) != idx.shape[1]:
            raise ValueError(f"perplexity has {len(row['row_nll'])} rows, the bootstrap {idx.shape[1]}")
        out["ppl_ci_low"], out["ppl_ci_high"] = percentile_ci(perplexity_resamples(row["row_nll"], row["row_tokens"],
                                                                                    idx))
    return out


# --- tables ---------------------------------------------------------------------------------------

def read_table(path: Path) -> list[dict]:
    """eval_results/<target>.csv back as row dicts (blank cells None)."""
    df = read_frame(path)
    return df.astype(object).where(df.notna(), None).to_dict(orient="records")


def parameter_of(dc: DecodingConfig) -> tuple[str, object]:
    """(parameter, value) for all.csv: the factor a one-at-a-time config varies, or the centre."""
    if dc.varied is None:
        return "centre", None
    if dc.varied == "grid":
        return "grid", None
    value = getattr(dc, dc.varied)
    # Written as the config name writes it (temperature 0.0, not 0.000000).
    return dc.varied, format_temperature(value) if dc.varied == "temperature" else str(value)


def tidy_rows(target: str, table: list[dict], configs: list[DecodingConfig]) -> list[dict]:
    by_name = {dc.name: dc for dc in configs}
    out = []
    for row in table:
        dc = by_name.get(row["config"])
        if dc is None:
            continue  # a table from an older sweep: its rows are not part of this study
        parameter, value = parameter_of(dc)
        for metric in (m.name for m in metric_registry.table_metrics()):
            score = row.get(metric)
            if score is None:
                continue
            out.append({"model": target, "config": dc.name, "parameter": parameter, "value": value,
                        "metric": metric, "score": score, "ci_low": row.get(f"{metric}_ci_low"),
                        "ci_high": row.get(f"{metric}_ci_high")})
    return out


MIN_ROWS_FOR_CI = 10  # below this many test rows a bootstrap interval says little: the tables say so


def empty_counts(tr: TargetResponses) -> dict[str, int]:
    """Per config, the rows BERTScore scores 0 because the response (or reference) is empty or whitespace."""
    return {config: sum(1 for r in recs if not r.response.strip() or not r.reference.strip())
            for config, recs in tr.records.items()}


def empty_note(empty: dict[str, int]) -> str:
    """One sentence for next to a BERTScore table: how many empty responses were scored 0, per config."""
    total = sum(empty.values())
    if not total:
        return "BERTScore: no empty responses."
    per = ", ".join(f"{c} {n}" for c, n in empty.items() if n)
    return (f"BERTScore: {total} empty responses (or references) scored 0, which lowers the mean; per config: "
            f"{per}.")


def settings_note(settings: dict, n_rows: int, empty: Optional[dict] = None) -> str:
    """The settings printed under each Markdown table, so a pasted table carries them."""
    parts = [f"n = {n_rows} test rows per config."]
    if n_rows < MIN_ROWS_FOR_CI:
        parts.append(f"With fewer than {MIN_ROWS_FOR_CI} test rows the CIs are not meaningful.")
    if "bleu" in settings:
        parts.append(f"BLEU: sacrebleu corpus BLEU / 100 ({settings['bleu']['signature']}).")
    if "rougeL" in settings:
        r = settings["rougeL"]
        parts.append(f"ROUGE-L: mean F1 of rouge-score with {r['tokenizer']} (language {r['language']})."
                     if r.get("language") else "ROUGE-L: mean F1 of rouge-score with the Porter stemmer.")
    if "bertscore" in settings:
        b = settings["bertscore"]
        parts.append(f"BERTScore: mean F1, {b['model']}, layer {b['num_layers']}, no baseline rescaling "
                     f"(scores depend on the model: MiniLM and roberta-large figures are not comparable).")
        if empty is not None:
            parts.append(empty_note(empty))
    boot = settings["bootstrap"]
    if boot["resamples"]:
        parts.append(f"CIs: {int(CI_LEVEL * 100)}% percentile bootstrap, {boot['resamples']} paired row resamples, "
                     f"seed {boot['seed']}.")
    else:
        parts.append("CIs: off (evaluation.bootstrap = 0).")
    return " ".join(parts)


def race_note(eliminated: dict[str, int]) -> str:
    """The table's line on the configs a race eliminated (not in the table: they hold fewer rows)."""
    if not eliminated:
        return ""
    return (f"\n\n{len(eliminated)} configs eliminated by the race (generation.strategy race) are not in this table: "
            "each holds only the rows it used (" + ", ".join(f"{c} {n} rows" for c, n in eliminated.items())
            + "); eval_results/race.csv has their race scores.")


def row_scores(metrics, per_metric_rows: dict, tr: TargetResponses) -> tuple[list[str], list[dict]]:
    """(columns, rows) of eval_results/rows/<target>.csv: one row per config and test row, in sweep
    and test order, with each metric's per-row score (BLEU: sentence BLEU of that row)."""
    columns = ROW_SCORE_KEYS + [m.name for m in metrics]
    out = []
    for config, recs in tr.records.items():
        values = {m.name: m.per_row(per_metric_rows[m.name][config]) for m in metrics}
        for i, rec in enumerate(recs):
            out.append({"config": config, "id": rec.id, **{name: float(v[i]) for name, v in values.items()}})
    return columns, out


# --- the stage ------------------------------------------------------------------------------------

def _merge_rows(path: Path, new_rows: list[dict], order: list[str], key: str = "model") -> list[dict]:
    """Rows of `path` for targets not rescored now, plus the new rows, in the study's target order."""
    rows = {rec[key]: rec for rec in read_rows(path)} if path.is_file() else {}
    for row in new_rows:
        rows[row[key]] = row
    return [rows[t] for t in order if t in rows]


def centre_name(cfg) -> str:
    """The centre config's name: the generation defaults (the point every one-at-a-time factor varies from)."""
    return centre_config(cfg).name


def comparison_rows(cfg, metrics, targets, rows_by_target: dict, loaded: dict, judged: Optional[dict] = None) -> list[dict]:
    """The comparisons.csv rows of the targets scored now: every config minus the centre, and each
    fine-tuned model minus its base per config when both were scored now on the same test rows (the
    bootstrap indices are drawn from the study's seed, so both targets resample the same rows)."""
    centre = centre_name(cfg)
    resamples = cfg.evaluation.bootstrap
    out = []
    for target in targets:
        tr = loaded[target.name]
        idx = bootstrap_indices(tr.n_rows, resamples, cfg.seed) if resamples else None
        per_metric = rows_by_target[target.name]
        for metric in metrics:
            out += compare_to_centre(metric, target.name, per_metric[metric.name], centre, idx)
            out += compare_to_best(metric, target.name, per_metric[metric.name], idx)
        if judged and target.name in judged:  # the judge's win rate: its own rows (evaluation.judge.rows)
            j = judged[target.name]
            j_idx = bootstrap_indices(j.rows, resamples, cfg.seed) if resamples and j.rows else None
            out += compare_to_centre(WinRateMetric(), target.name, j.preferences, centre, j_idx)
            out += compare_to_best(WinRateMetric(), target.name, j.preferences, j_idx)
        base = f"{target.name}-base"
        if target.is_base or base not in rows_by_target:
            continue
        ids = [r.id for r in next(iter(tr.records.values()))]
        base_ids = [r.id for r in next(iter(loaded[base].records.values()))]
        if ids != base_ids:
            log.warning("%s and %s were generated on different test rows: no paired fine-tuned vs base comparison",
                        target.name, base)
            continue
        for metric in metrics:
            out += compare_to_base(metric, target.name, base, per_metric[metric.name],
                                   rows_by_target[base][metric.name], idx)
    return out


def _merge_comparisons(path: Path, new_rows: list[dict], rescored: set[str], order: list[str]) -> list[dict]:
    """comparisons.csv: the old rows of targets not rescored now (and not against a rescored base), then the new."""
    keep = []
    if path.is_file():
        for rec in read_rows(path):
            if rec.get("model") in rescored or (rec.get("versus") == "base" and rec.get("reference") in rescored):
                continue
            if rec.get("model") in order:
                keep.append(rec)
    rank = {t: i for i, t in enumerate(order)}
    merged = keep + new_rows
    # Stable: within a target, the order the rows were computed in (metric, then sweep order).
    return sorted(merged, key=lambda r: rank.get(r["model"], len(rank)))


@dataclass
class TargetScoring:
    """One target's scoring as it goes: its responses and row cache, each metric's per-config row values, what
    was computed now (and the library calls it took), its perplexity row and its table."""

    target: object  # config.RunTarget
    responses: TargetResponses
    cache: RowCache
    logic: dict  # score_logic over what the target's responses were made by
    eliminated: dict[str, int]  # configs a race left with some rows only: in no table
    rows: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # metric -> config -> per-row values
    computed: dict[str, list[str]] = field(default_factory=dict)  # metric (or perplexity) -> configs computed now
    library_calls: dict[str, int] = field(default_factory=dict)  # a slow metric's library calls made now
    perplexity: Optional[dict] = None
    table: list[dict] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.target.name

    def summary(self) -> dict:
        return {"rows": self.responses.n_rows, "logic": self.logic, "computed": self.computed,
                "library_calls": self.library_calls, "table": self.table}


def score_settings(cfg, metrics, judged: dict, human_source: Optional[str]) -> dict:
    """metrics.json's `metrics`: every metric's settings and version, the bootstrap's, perplexity's, the judge's
    and where the human ratings came from."""
    wanted = cfg.evaluation.metrics
    settings = {m.name: {**m.settings(), "metric_version": metric_registry.get(m.name).version} for m in metrics}
    settings["bootstrap"] = {"resamples": cfg.evaluation.bootstrap, "seed": cfg.seed, "level": CI_LEVEL,
                             "method": "percentile; paired row resampling: the same resampled rows for every "
                                       "config, metric and model of a study",
                             "comparisons": "comparisons.csv: paired bootstrap of the difference (same resamples), "
                                            "percentile CI, two-sided p = min(1, 2 min(P(d<=0), P(d>=0))), Holm "
                                            "over one model's comparisons of one metric and kind (centre / best / base)"}
    if "perplexity" in wanted:
        settings["perplexity"] = {"scope": PERPLEXITY_SCOPE, "template": cfg.template,
                                  "metric_version": metric_registry.get("perplexity").version,
                                  "batch_size": cfg.evaluation.perplexity_batch_size,
                                  "models": "fine-tuned targets load finetuned_models/<model>/, base targets the base"}
    if "bertscore" in settings:
        b = settings["bertscore"]
        log.info("bertscore model: %s (layer %d) - %s", b["model"], b["num_layers"], b["note"])
    if judged:
        settings["judge"] = judge_settings(cfg, judged)
    settings["human"] = {"source": human_source,
                         "statistic": "mean rating per model and config (tunesweep human-eval import)"}
    return settings


def plan_target_scoring(cfg, ts: TargetScoring, metrics, settings: dict, force: bool) -> list[SlowJob]:
    """Step 1 for one target: BLEU and ROUGE-L take seconds and are scored here and now (or read from the cache);
    BERTScore and perplexity load models and are returned as jobs."""
    tr, jobs = ts.responses, []
    if (warning := language_warning([r.reference for r in next(iter(tr.records.values()), [])],
                                    cfg.evaluation.language)):
        log.warning("%s: %s", ts.name, warning)
    for metric in metrics:
        rows, missing = plan_rows(metric, settings[metric.name], tr, ts.cache, force, ts.logic)
        ts.rows[metric.name] = rows
        ts.computed[metric.name] = []
        if hasattr(metric, "calls"):  # BERTScorer.score calls: one per target, zero when cached
            ts.library_calls[metric.name] = 0
        log.info("%s %s: %d configs x %d rows, %d to score in one pass, %d reused from the cache",
                 ts.name, metric.name, len(tr.records), tr.n_rows, len(missing), len(tr.records) - len(missing))
        if not missing:
            continue
        if metric_registry.get(metric.name).slow:
            jobs.append(SlowJob(ts.name, metric.name, metric_rows_job, (metric, missing), missing))
        else:
            values, _ = metric_rows_job(metric, missing)
            ts.computed[metric.name] = fill_rows(metric, missing, values, rows, ts.cache)
    ts.cache.save()  # keep what is finished even if a later job is interrupted
    if "perplexity" in cfg.evaluation.metrics:
        row, key, args = plan_perplexity(cfg, ts.target, tr, ts.cache, force, ts.logic)
        ts.computed["perplexity"] = []
        if row is None:
            jobs.append(SlowJob(ts.name, "perplexity", perplexity_job, args, key))
        else:
            ts.perplexity = row
            log.info("%s perplexity %.4f over %d reference tokens (reused)", ts.name, row["perplexity"], row["tokens"])
    return jobs


def collect_jobs(cfg, jobs: list[SlowJob], scorings: dict[str, TargetScoring], metrics) -> None:
    """Step 2: the slow jobs, each result cached as it arrives (an interrupted or failed run keeps what finished)."""
    by_name = {m.name: m for m in metrics}
    for job, result in run_jobs(cfg, jobs):
        ts = scorings[job.target]
        if job.what == "perplexity":
            ts.cache.put("perplexity", "corpus", job.cached_as, result)
            ts.perplexity = result
            ts.computed["perplexity"] = ["corpus"]
            log.info("%s perplexity %.4f over %d reference tokens (computed)", job.target, result["perplexity"],
                     result["tokens"])
        else:
            values, calls = result
            ts.computed[job.what] = fill_rows(by_name[job.what], job.cached_as, values, ts.rows[job.what], ts.cache)
            ts.library_calls[job.what] = calls
        ts.cache.save()


def target_table(cfg, ts: TargetScoring, configs: list[DecodingConfig], metrics, human: dict,
                 judged: Optional[object], idx) -> list[dict]:
    """One row per config of the target (sweep order): each metric's score and CI, the human rating, the judge's."""
    table = []
    for dc in configs:
        if dc.name not in ts.responses.records:
            continue  # eliminated by the race (see score)
        row = {"config": dc.name, "mode": dc.mode}
        for metric in metrics:
            values = ts.rows[metric.name][dc.name]
            row[metric.name] = metric.aggregate(values)
            row[f"{metric.name}_ci_low"], row[f"{metric.name}_ci_high"] = bootstrap_ci(metric, values, idx)
        row["human"] = human.get((ts.name, dc.name))
        if judged is not None:
            row.update(judge_cells(judged, dc.name, cfg.evaluation.bootstrap, cfg.seed))
        table.append(row)
    return table


def write_target_tables(cfg, ts: TargetScoring, configs: list[DecodingConfig], metrics, settings: dict,
                        human: dict, judged: Optional[object]) -> None:
    """Step 3 for one target: its table (eval_results/<target>.csv and .md) and its per-row scores."""
    paths = Workdir(cfg.path)
    tr = ts.responses
    # The same resampled rows for every config and metric (and every target with as many rows: the seed is the
    # study's): differences between configs and targets are paired.
    idx = bootstrap_indices(tr.n_rows, cfg.evaluation.bootstrap, cfg.seed) if cfg.evaluation.bootstrap else None
    if "perplexity" in cfg.evaluation.metrics:
        ts.perplexity = perplexity_with_ci(ts.perplexity, idx)
    ts.table = target_table(cfg, ts, configs, metrics, human, judged, idx)
    columns, per_row = row_scores(metrics, ts.rows, tr)
    if judged is not None:
        columns, per_row = with_row_preferences(columns, per_row, judged)
    write_table(paths.row_scores(ts.name), columns, per_row)
    # A judged target's table has the judge's columns too (the registry's judge metrics: evaluation.judge turns
    # them on, not evaluation.metrics).
    wanted = cfg.evaluation.metrics
    table_columns = metric_registry.table_columns([*wanted, *JUDGE_METRICS] if judged is not None else wanted)
    write_table(paths.table(ts.name), table_columns, ts.table)
    cells = [[format_cell(row.get(c), 4) for c in table_columns] for row in ts.table]
    write_text(paths.table(ts.name, "md"), f"# {ts.name}\n\n" + markdown_table(table_columns, cells)
               + "\n\n" + settings_note(settings, tr.n_rows, empty_counts(tr)) + race_note(ts.eliminated) + "\n")


def write_study_tables(cfg, scorings: dict[str, TargetScoring], metrics, judged: dict) -> list[dict]:
    """all.csv (every target of the study that has a table), comparisons.csv and perplexity.csv, merged with the
    rows of the targets not scored now; returns the comparisons computed now."""
    paths = Workdir(cfg.path)
    configs = expand_sweep(cfg.generation)
    all_targets = [t.name for t in cfg.run_targets()]
    tidy = []
    for name in all_targets:
        table = scorings[name].table if name in scorings else None
        if table is None and paths.table(name).is_file():
            table = read_table(paths.table(name))
        if table is not None:
            tidy.extend(tidy_rows(name, table, configs))
    write_table(paths.tidy_table, TIDY_COLUMNS, tidy)
    rows_by_target = {name: ts.rows for name, ts in scorings.items()}
    comparisons = comparison_rows(cfg, metrics, [ts.target for ts in scorings.values()], rows_by_target,
                                  {name: ts.responses for name, ts in scorings.items()}, judged)
    write_table(paths.comparisons, COMPARISON_COLUMNS,
                _merge_comparisons(paths.comparisons, comparisons, set(rows_by_target), all_targets))
    if "perplexity" in cfg.evaluation.metrics:
        merged = _merge_rows(paths.perplexity_table, [ts.perplexity for ts in scorings.values()], all_targets)
        write_table(paths.perplexity_table, PERPLEXITY_COLUMNS, merged)
    return comparisons


def write_score_metadata(cfg, scorings: dict[str, TargetScoring], settings: dict) -> None:
    """eval_results/metrics.json: the settings, per target what it was scored from, and the sha256 of every file
    score wrote (report shows only those)."""
    paths = Workdir(cfg.path)
    previous = read_json_if_present(paths.metrics_json) or {}
    scored = scored_targets_json(previous)
    for name, ts in scorings.items():
        tr = ts.responses
        scored[name] = ScoredTarget(rows=tr.n_rows, configs=list(tr.records), responses=str(tr.folder),
                                    race_eliminated=ts.eliminated, bertscore_empty=empty_counts(tr),
                                    scored_from=responses_fingerprint(cfg.path, name, list(tr.records)),
                                    logic=ts.logic).to_json()
    written = [p for t in scorings for p in (paths.table(t), paths.table(t, "md"), paths.row_scores(t))]
    written += [paths.tidy_table, paths.comparisons, paths.perplexity_table, paths.human_table]
    files = vouch_files(cfg.path, vouched_files(previous), written)
    all_targets = [t.name for t in cfg.run_targets()]
    write_json(paths.metrics_json,
               score_metadata(dict(settings), {k: scored[k] for k in all_targets if k in scored}, files))


def score(cfg, model: Optional[str] = None, force: bool = False) -> dict:
    """Score every target of the study (or `model`); returns what was computed and the table rows."""
    cfg = cfg.for_execution()
    configs = expand_sweep(cfg.generation)
    targets = cfg.run_targets(model)
    cfg.pin_bases(targets)  # hub bases of base targets: one commit's snapshot folder for this whole stage
    paths = Workdir(cfg.path)
    # Check every input before any work: a gap must not surface after an hour of scoring.
    names = [dc.name for dc in configs]
    scorings: dict[str, TargetScoring] = {}
    for t in targets:
        # Configs a race eliminated hold some rows only: no table shows them (eval_results/race.csv does).
        eliminated = partial_configs(cfg.path, t.name)
        tr = read_target_responses(cfg.path, t.name, [n for n in names if n not in eliminated],
                                   checkpoint_hash=current_checkpoint_hash(cfg, t), cfg=cfg)
        scorings[t.name] = TargetScoring(t, tr, RowCache.load(paths.score_cache(t.name)), score_logic(cfg.path, t.name),
                                         eliminated)
    judged = {name: j for name, ts in scorings.items() if (j := load_judged(cfg, ts.responses)) is not None}
    metrics = [build_metric(m.name, cfg.evaluation) for m in metric_registry.scored_per_row(cfg.evaluation.metrics)]
    human = read_human(paths.human_table)
    settings = score_settings(cfg, metrics, judged, str(paths.human_table) if human else None)

    jobs: list[SlowJob] = []
    for ts in scorings.values():
        jobs += plan_target_scoring(cfg, ts, metrics, settings, force)
    collect_jobs(cfg, jobs, scorings, metrics)
    for ts in scorings.values():
        write_target_tables(cfg, ts, configs, metrics, settings, human, judged.get(ts.name))

    if judged and human:  # the judge against the human ratings (items of human.json, cells of human.csv)
        items = (read_json_if_present(paths.human_summary) or {}).get("item_means") or []
        tables = {name: ts.table for name, ts in scorings.items()}
        settings["judge"]["calibration"] = calibration(cfg, judged, items, human, tables)
        for warning in settings["judge"]["calibration"]["warnings"]:
            log.warning("judge: %s", warning)
    comparisons = write_study_tables(cfg, scorings, metrics, judged)
    write_score_metadata(cfg, scorings, settings)
    return {"targets": {name: ts.summary() for name, ts in scorings.items()}, "settings": settings,
            "comparisons": comparisons}
