"""The score stage: BLEU / ROUGE-L / BERTScore per decoding config, perplexity per model, 95% CIs.

Reads llm_responses/<target>/<config>.jsonl for every target of the study and every config of the
sweep, and writes (DESIGN.md contracts):

- eval_results/<target>.csv and .md: one row per config in sweep order, with bootstrap CIs and the
  human rating from eval_results/human.csv when present;
- eval_results/all.csv: the same numbers in tidy form (model, config, parameter, value, metric, ...);
- eval_results/perplexity.csv: perplexity of the test references per target;
- eval_results/metrics.json: the settings of every metric;
- eval_results/rows/<target>.csv: every row's own score per config and metric (`config, id, bleu,
  rougeL, bertscore`; BLEU there is sentence BLEU), for reading single answers (report.html).

A config whose file is missing, short, or lacks `response` stops the stage with a one-line error:
a table never silently drops a row. Per-row scores are cached in eval_results/.cache/<target>.json,
keyed by a fingerprint of (responses, references, metric settings), so rescoring unchanged
responses (e.g. after `human-eval import`) recomputes nothing and loads no model.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .config import DecodingConfig, expand_sweep, format_temperature
from .errors import UserError
from .files import fingerprint, read_json, read_jsonl, write_json, write_text
from .metrics import CI_LEVEL, TEXT_METRICS, bootstrap_ci, bootstrap_indices, build_metric

log = logging.getLogger(__name__)

TABLE_COLUMNS = ["config", "mode", "bleu", "bleu_ci_low", "bleu_ci_high", "rougeL", "rougeL_ci_low", "rougeL_ci_high",
                 "bertscore", "bertscore_ci_low", "bertscore_ci_high", "human"]
TIDY_COLUMNS = ["model", "config", "parameter", "value", "metric", "score", "ci_low", "ci_high"]
PERPLEXITY_COLUMNS = ["model", "perplexity", "nll", "tokens", "checkpoint"]
ROW_SCORE_KEYS = ["config", "id"]  # then one column per text metric scored
HUMAN_COLUMNS = ("model", "config", "human")
CACHE_VERSION = 1
PERPLEXITY_SCOPE = ("test references, response tokens only (prompt masked, EOS included); corpus level: "
                    "exp of the mean token NLL")


# --- reading responses ----------------------------------------------------------------------------

@dataclass
class TargetResponses:
    """The responses of one target (model or <model>-base) for every config of the sweep."""

    target: str
    folder: Path
    manifest: dict
    records: dict[str, list[dict]]  # config name -> records, in test.jsonl order

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.records.values()))) if self.records else 0


def load_target_responses(workdir: Path, target: str, configs: list[DecodingConfig]) -> TargetResponses:
    """Read and check every config file of `target`; any gap is a UserError naming the file."""
    folder = Path(workdir) / "llm_responses" / target
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise UserError(f"{manifest_path}: not found; run `tunesweep generate` for {target!r} first")
    manifest = read_json(manifest_path)
    expected = manifest.get("test_rows")
    if not isinstance(expected, int) or isinstance(expected, bool) or expected < 1:
        raise UserError(f"{manifest_path}: test_rows = {expected!r}: expected the number of rows generated per config")
    records: dict[str, list[dict]] = {}
    first_ids, first_path = None, None
    for dc in configs:
        path = folder / f"{dc.name}.jsonl"
        if not path.is_file():
            raise UserError(f"{path}: not found: config {dc.name} has no responses for {target!r} "
                            f"(run `tunesweep generate`); a results table never drops a config")
        recs = read_jsonl(path)
        if len(recs) != expected:
            raise UserError(f"{path}: {len(recs)} rows, but {manifest_path.name} says test_rows = {expected}: "
                            f"incomplete responses (rerun `tunesweep generate`)")
        for row, rec in enumerate(recs, 1):
            for key in ("response", "reference"):
                value = rec.get(key)
                if not isinstance(value, str):
                    hint = "run `tunesweep clean`" if key == "response" else "rerun `tunesweep generate`"
                    raise UserError(f"{path}: row {row} (id {rec.get('id')!r}): {key} = {value!r}: "
                                    f"missing or not text ({hint})")
        ids = [rec.get("id") for rec in recs]
        if first_ids is None:
            first_ids, first_path = ids, path
        elif ids != first_ids:
            row = next(i for i, (a, b) in enumerate(zip(ids, first_ids), 1) if a != b)
            raise UserError(f"{path}: row {row}: id {ids[row - 1]!r} where {first_path.name} has {first_ids[row - 1]!r}: "
                            f"every config must cover the same test rows in the same order")
        records[dc.name] = recs
    return TargetResponses(target, folder, manifest, records)


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


def score_rows(metric, settings: dict, tr: TargetResponses, cache: RowCache, force: bool) -> tuple[dict, list]:
    """({config: per-row values}, configs computed now): every cache miss scored in ONE metric call."""
    rows: dict[str, np.ndarray] = {}
    missing: list[tuple[str, str, list, list]] = []
    for config, recs in tr.records.items():
        hyps = [r["response"] for r in recs]
        refs = [r["reference"] for r in recs]
        key = fingerprint({"metric": metric.name, "settings": settings, "responses": hyps, "references": refs})
        cached = None if force else cache.get(metric.name, config, key)
        if cached is not None:
            rows[config] = np.asarray(cached)
        else:
            missing.append((config, key, hyps, refs))
    if missing:
        # One pass over all configs: references repeat once per config, and the metric sees them together.
        flat_hyps = [h for _, _, hyps, _ in missing for h in hyps]
        flat_refs = [r for _, _, _, refs in missing for r in refs]
        values = metric.rows(flat_hyps, flat_refs, groups=[len(hyps) for _, _, hyps, _ in missing])
        start = 0
        for config, key, hyps, _ in missing:
            part = values[start:start + len(hyps)]
            start += len(hyps)
            rows[config] = part
            cache.put(metric.name, config, key, part.tolist())
    return rows, [m[0] for m in missing]


# --- perplexity -----------------------------------------------------------------------------------

def _checkpoint_identity(checkpoint: str, manifest: dict) -> dict:
    """What identifies the weights without hashing gigabytes: names, sizes and mtimes of a local dir."""
    path = Path(checkpoint)
    ident = {"checkpoint": checkpoint, "manifest_hash": manifest.get("checkpoint_hash")}
    if path.is_dir():
        ident["files"] = sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns)
                                for p in path.rglob("*") if p.is_file())
    return ident


def target_perplexity(cfg, target, tr: TargetResponses, cache: RowCache, force: bool) -> tuple[dict, bool]:
    """(perplexity row, computed now?) of the test references under the target's checkpoint."""
    from . import perplexity  # the perplexity module's public function

    checkpoint = target.checkpoint(cfg.path)
    # The response records carry exactly the prompt and reference that training used.
    first = next(iter(tr.records.values()))
    records = [{"prompt": r["prompt"], "reference": r["reference"]} for r in first]
    from .doctor import library_versions

    versions = library_versions()
    key = fingerprint({"weights": _checkpoint_identity(checkpoint, tr.manifest), "records": records,
                       "template": cfg.template, "torch": versions.get("torch"),
                       "transformers": versions.get("transformers")})
    cached = None if force else cache.get("perplexity", "corpus", key)
    if cached is not None:
        return cached, False
    if not target.is_base and not Path(checkpoint).is_dir():
        raise UserError(f"{checkpoint}: fine-tuned checkpoint not found (perplexity of {target.name!r} needs it); "
                        f"run `tunesweep finetune` first")
    log.info("perplexity %s: %d test references under %s", target.name, len(records), checkpoint)
    try:
        result = perplexity.corpus_perplexity(checkpoint, records, template=cfg.template,
                                              batch_size=cfg.evaluation.perplexity_batch_size)
    except OSError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{checkpoint}: cannot load it for the perplexity of {target.name!r} ({first_line})") from None
    row = {"model": target.name, "perplexity": result["perplexity"], "nll": result["nll"],
           "tokens": result["tokens"], "checkpoint": checkpoint}
    cache.put("perplexity", "corpus", key, row)
    return row, True


# --- human ratings --------------------------------------------------------------------------------

def read_human(path: Path) -> dict[tuple[str, str], float]:
    """{(model, config): mean rating} from eval_results/human.csv, empty when there is none."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in HUMAN_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)} (written by `tunesweep human-eval import`)")
        out = {}
        for row, rec in enumerate(reader, 2):
            value = (rec["human"] or "").strip()
            if not value:
                continue
            try:
                out[(rec["model"], rec["config"])] = float(value)
            except ValueError:
                raise UserError(f"{path}: row {row}: human = {value!r}: not a number") from None
    return out


# --- tables ---------------------------------------------------------------------------------------

def _fmt(x, digits: int = 6) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{digits}f}"
    return str(x)


def csv_text(columns: list[str], rows: list[dict], digits: int = 6) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row.get(c), digits) for c in columns])
    return buf.getvalue()


def markdown_table(columns: list[str], rows: list[dict], digits: int = 4) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _parse_float(text: str) -> Optional[float]:
    return float(text) if text not in ("", None) else None


def read_table(path: Path) -> list[dict]:
    """eval_results/<target>.csv back as dicts of floats (blank = None)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: (v if k in ("config", "mode") else _parse_float(v)) for k, v in rec.items()}
                for rec in csv.DictReader(fh)]


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
        for metric in (*TEXT_METRICS, "human"):
            score = row.get(metric)
            if score is None:
                continue
            out.append({"model": target, "config": dc.name, "parameter": parameter, "value": value,
                        "metric": metric, "score": score, "ci_low": row.get(f"{metric}_ci_low"),
                        "ci_high": row.get(f"{metric}_ci_high")})
    return out


def settings_note(settings: dict, n_rows: int) -> str:
    """The settings printed under each Markdown table, so a pasted table carries them."""
    parts = [f"n = {n_rows} test rows per config."]
    if "bleu" in settings:
        parts.append(f"BLEU: sacrebleu corpus BLEU / 100 ({settings['bleu']['signature']}).")
    if "rougeL" in settings:
        parts.append("ROUGE-L: mean F1 of rouge-score with the Porter stemmer.")
    if "bertscore" in settings:
        b = settings["bertscore"]
        parts.append(f"BERTScore: mean F1, {b['model']}, layer {b['num_layers']}, no baseline rescaling "
                     f"(scores depend on the model: MiniLM and roberta-large figures are not comparable).")
    boot = settings["bootstrap"]
    if boot["resamples"]:
        parts.append(f"CIs: {int(CI_LEVEL * 100)}% percentile bootstrap, {boot['resamples']} paired row resamples, "
                     f"seed {boot['seed']}.")
    else:
        parts.append("CIs: off (evaluation.bootstrap = 0).")
    return " ".join(parts)


def row_scores(metrics, per_metric_rows: dict, tr: TargetResponses) -> tuple[list[str], list[dict]]:
    """(columns, rows) of eval_results/rows/<target>.csv: one row per config and test row, in sweep
    and test order, with each metric's per-row score (BLEU: sentence BLEU of that row)."""
    columns = ROW_SCORE_KEYS + [m.name for m in metrics]
    out = []
    for config, recs in tr.records.items():
        values = {m.name: m.per_row(per_metric_rows[m.name][config]) for m in metrics}
        for i, rec in enumerate(recs):
            out.append({"config": config, "id": rec["id"], **{name: float(v[i]) for name, v in values.items()}})
    return columns, out


# --- the stage ------------------------------------------------------------------------------------

def _merge_rows(path: Path, new_rows: list[dict], order: list[str], key: str = "model") -> list[dict]:
    """Rows of `path` for targets not rescored now, plus the new rows, in the study's target order."""
    rows = {}
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as fh:
            for rec in csv.DictReader(fh):
                rows[rec[key]] = rec
    for row in new_rows:
        rows[row[key]] = row
    return [rows[t] for t in order if t in rows]


def score(cfg, model: Optional[str] = None, force: bool = False) -> dict:
    """Score every target of the study (or `model`); returns what was computed and the table rows."""
    configs = expand_sweep(cfg.generation)
    targets = cfg.run_targets(model)
    all_targets = [t.name for t in cfg.run_targets()]
    # Check every input before any work: a gap must not surface after an hour of scoring.
    loaded = {t.name: load_target_responses(cfg.path, t.name, configs) for t in targets}

    wanted = cfg.evaluation.metrics
    metrics = [build_metric(name, cfg.evaluation) for name in TEXT_METRICS if name in wanted]
    settings = {m.name: m.settings() for m in metrics}
    boot_seed = cfg.seed
    settings["bootstrap"] = {"resamples": cfg.evaluation.bootstrap, "seed": boot_seed, "level": CI_LEVEL,
                             "method": "percentile; paired row resampling: the same resampled rows for every "
                                       "config, metric and model of a study"}
    if "perplexity" in wanted:
        settings["perplexity"] = {"scope": PERPLEXITY_SCOPE, "template": cfg.template,
                                  "batch_size": cfg.evaluation.perplexity_batch_size,
                                  "models": "fine-tuned targets load finetuned_models/<model>/, base targets the base"}
    if "bertscore" in settings:
        b = settings["bertscore"]
        log.info("bertscore model: %s (layer %d) - %s", b["model"], b["num_layers"], b["note"])

    out_dir = cfg.path / "eval_results"
    human_path = out_dir / "human.csv"
    human = read_human(human_path)
    settings["human"] = {"source": str(human_path) if human else None,
                         "statistic": "mean rating per model and config (tunesweep human-eval import)"}

    summary: dict = {"targets": {}, "settings": settings}
    tables: dict[str, list[dict]] = {}
    ppl_rows: list[dict] = []
    for target in targets:
        tr = loaded[target.name]
        cache = RowCache.load(out_dir / ".cache" / f"{target.name}.json")
        computed: dict[str, list[str]] = {}
        per_metric_rows: dict[str, dict[str, np.ndarray]] = {}
        library_calls: dict[str, int] = {}
        for metric in metrics:
            calls_before = getattr(metric, "calls", 0)
            rows, done = score_rows(metric, settings[metric.name], tr, cache, force)
            per_metric_rows[metric.name] = rows
            computed[metric.name] = done
            if hasattr(metric, "calls"):  # BERTScorer.score calls: one per target, zero when cached
                library_calls[metric.name] = metric.calls - calls_before
            log.info("%s %s: %d configs x %d rows, %d scored now in one pass, %d reused from the cache",
                     target.name, metric.name, len(configs), tr.n_rows, len(done), len(configs) - len(done))
            cache.save()  # keep finished metrics even if a later one is interrupted
        if "perplexity" in wanted:
            row, fresh = target_perplexity(cfg, target, tr, cache, force)
            computed["perplexity"] = ["corpus"] if fresh else []
            ppl_rows.append(row)
            log.info("%s perplexity %.4f over %d reference tokens (%s)", target.name, row["perplexity"],
                     row["tokens"], "computed" if fresh else "reused")
        cache.save()

        # The same resampled rows for every config and metric: differences between configs are paired.
        idx = bootstrap_indices(tr.n_rows, cfg.evaluation.bootstrap, boot_seed) if cfg.evaluation.bootstrap else None
        table = []
        for dc in configs:
            row = {"config": dc.name, "mode": dc.mode}
            for metric in metrics:
                values = per_metric_rows[metric.name][dc.name]
                row[metric.name] = metric.aggregate(values)
                row[f"{metric.name}_ci_low"], row[f"{metric.name}_ci_high"] = bootstrap_ci(metric, values, idx)
            row["human"] = human.get((target.name, dc.name))
            table.append(row)
        tables[target.name] = table
        columns, per_row = row_scores(metrics, per_metric_rows, tr)
        write_text(out_dir / "rows" / f"{target.name}.csv", csv_text(columns, per_row))
        write_text(out_dir / f"{target.name}.csv", csv_text(TABLE_COLUMNS, table))
        write_text(out_dir / f"{target.name}.md",
                   f"# {target.name}\n\n" + markdown_table(TABLE_COLUMNS, table) + "\n"
                   + settings_note(settings, tr.n_rows) + "\n")
        summary["targets"][target.name] = {"rows": tr.n_rows, "computed": computed, "library_calls": library_calls,
                                           "table": table}

    # all.csv covers every target of the study that has a table, not only the ones scored now.
    tidy = []
    for name in all_targets:
        table = tables.get(name)
        if table is None and (out_dir / f"{name}.csv").is_file():
            table = read_table(out_dir / f"{name}.csv")
        if table is not None:
            tidy.extend(tidy_rows(name, table, configs))
    write_text(out_dir / "all.csv", csv_text(TIDY_COLUMNS, tidy))
    if "perplexity" in wanted:
        merged = _merge_rows(out_dir / "perplexity.csv", ppl_rows, all_targets)
        write_text(out_dir / "perplexity.csv", csv_text(PERPLEXITY_COLUMNS, merged))

    meta_path = out_dir / "metrics.json"
    previous = read_json(meta_path) if meta_path.is_file() else {}
    scored = dict(previous.get("targets", {})) if isinstance(previous, dict) else {}
    for name, tr in loaded.items():
        scored[name] = {"rows": tr.n_rows, "configs": list(tr.records), "responses": str(tr.folder)}
    write_json(meta_path, {"metrics": {k: v for k, v in settings.items()},
                           "targets": {k: scored[k] for k in all_targets if k in scored}})
    return summary
