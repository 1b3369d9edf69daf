"""The workdir: every path under it, and the readers and writers of the files that pass between stages.

    alpaca_data/{train,test}.jsonl, split.json                  split      -> finetune, generate
    finetuned_models/<model>/ (+ <model>.training/, .<model>.staging/)   finetune -> generate, score
    llm_responses/<target>/<config>.jsonl, manifest.json       generate   -> clean, score, human-eval, report
    llm_responses/<target>/cleaning.json                       clean      -> report
    eval_results/<target>.csv/.md, all.csv, perplexity.csv, comparisons.csv, metrics.json, .cache/   score -> report
    eval_results/human_eval/{sheet.csv,rubric.md,key.json}, human.csv/.json         human-eval -> score, report
    eval_results/report.md, plots/<factor>_<metric>.png        report
    logs/<stage>.log                                           pipeline

No other module spells these names. The column names of the tables are defined here too, and
`format_cell` / `write_table` / `markdown_table` are the one way a number becomes a table cell.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .errors import UserError
from .files import read_json, read_jsonl, write_text

# --- column names of the inter-stage files ----------------------------------------------------------

# One record of llm_responses/<target>/<config>.jsonl, in the order written.
RECORD_FIELDS = ("id", "prompt", "reference", "response_raw", "response", "finish_reason", "num_tokens", "config",
                 "model")
TABLE_COLUMNS = ["config", "mode", "bleu", "bleu_ci_low", "bleu_ci_high", "rougeL", "rougeL_ci_low", "rougeL_ci_high",
                 "bertscore", "bertscore_ci_low", "bertscore_ci_high", "human"]
TIDY_COLUMNS = ["model", "config", "parameter", "value", "metric", "score", "ci_low", "ci_high"]
PERPLEXITY_COLUMNS = ["model", "perplexity", "ppl_ci_low", "ppl_ci_high", "nll", "tokens", "checkpoint"]
HUMAN_COLUMNS = ["model", "config", "human", "human_ci_low", "human_ci_high", "human_n", "raters", "agreement"]
# eval_results/comparisons.csv: `config` of `model` minus `reference` (the centre config of the same model when
# versus = "centre", its best config for that metric when "best", the same config of the base model when
# "base"), paired bootstrap over the rows.
COMPARISON_COLUMNS = ["model", "metric", "config", "versus", "reference", "score", "reference_score", "diff",
                      "ci_low", "ci_high", "p", "p_holm", "resamples"]
ROW_SCORE_KEYS = ["config", "id"]  # eval_results/rows/<target>.csv: then one column per text metric scored


class Workdir:
    """The paths of one study's workdir (the config's `workdir`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    # split
    @property
    def data_dir(self) -> Path:
        return self.root / "alpaca_data"

    def split_file(self, which: str) -> Path:
        """alpaca_data/train.jsonl or test.jsonl."""
        return self.data_dir / f"{which}.jsonl"

    @property
    def split_meta(self) -> Path:
        return self.data_dir / "split.json"

    # finetune
    @property
    def models_dir(self) -> Path:
        return self.root / "finetuned_models"

    def model_dir(self, model: str) -> Path:
        return self.models_dir / model

    def model_record(self, model: str) -> Path:
        """tunesweep.json: what <model>/ was trained from and how the training went."""
        return self.model_dir(model) / "tunesweep.json"

    def training_dir(self, model: str) -> Path:
        """TRL checkpoints, inputs.json, train.log, runs/ while <model>/ is being trained."""
        return self.models_dir / f"{model}.training"

    def staging_dir(self, model: str) -> Path:
        """The next <model>/ while it is written; renamed into place when complete."""
        return self.models_dir / f".{model}.staging"

    # generate, clean
    @property
    def responses_root(self) -> Path:
        return self.root / "llm_responses"

    def responses_dir(self, target: str) -> Path:
        return self.responses_root / target

    def response_file(self, target: str, config: str) -> Path:
        return self.responses_dir(target) / f"{config}.jsonl"

    def manifest(self, target: str) -> Path:
        return self.responses_dir(target) / "manifest.json"

    def cleaning(self, target: str) -> Path:
        return self.responses_dir(target) / "cleaning.json"

    # score, human-eval, report
    @property
    def eval_dir(self) -> Path:
        return self.root / "eval_results"

    def table(self, target: str, suffix: str = "csv") -> Path:
        return self.eval_dir / f"{target}.{suffix}"

    def row_scores(self, target: str) -> Path:
        """eval_results/rows/<target>.csv: each test row's own score per config (ROW_SCORE_KEYS, then metrics)."""
        return self.eval_dir / "rows" / f"{target}.csv"

    @property
    def tidy_table(self) -> Path:
        return self.eval_dir / "all.csv"

    @property
    def perplexity_table(self) -> Path:
        return self.eval_dir / "perplexity.csv"

    @property
    def metrics_json(self) -> Path:
        return self.eval_dir / "metrics.json"

    def score_cache(self, target: str) -> Path:
        return self.eval_dir / ".cache" / f"{target}.json"

    @property
    def human_table(self) -> Path:
        return self.eval_dir / "human.csv"

    @property
    def human_summary(self) -> Path:
        return self.eval_dir / "human.json"

    @property
    def human_eval_dir(self) -> Path:
        return self.eval_dir / "human_eval"

    @property
    def human_key(self) -> Path:
        """The private item -> (model, config, id) map; raters must never see it."""
        return self.human_eval_dir / "key.json"

    @property
    def comparisons(self) -> Path:
        """Paired differences to the centre config and to the base, with CIs and p-values."""
        return self.eval_dir / "comparisons.csv"

    @property
    def report_html(self) -> Path:
        return self.eval_dir / "report.html"

    @property
    def report(self) -> Path:
        return self.eval_dir / "report.md"

    @property
    def plots_dir(self) -> Path:
        return self.eval_dir / "plots"

    # pipeline
    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def log(self, stage: str) -> Path:
        return self.logs_dir / f"{stage}.log"


# --- alpaca_data/ ----------------------------------------------------------------------------------

def load_split(workdir: str | os.PathLike, which: str) -> list[dict]:
    """Read alpaca_data/<which>.jsonl, failing with a pointer to `split` if it is not there."""
    path = Workdir(workdir).split_file(which)
    if not path.is_file():
        raise UserError(f"{path}: not found; run `tunesweep split --config ...` first")
    return read_jsonl(path)


# --- llm_responses/ --------------------------------------------------------------------------------

def read_json_if_present(path: Path) -> Optional[dict]:
    """A JSON file written by an earlier stage, or None when there is none; a broken one is a UserError."""
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None


@dataclass
class TargetResponses:
    """The responses of one target (model or <model>-base) for every config of the sweep."""

    target: str
    folder: Path
    manifest: dict
    records: dict[str, list[dict]]  # config name -> records, in test.jsonl order
    paths: dict[str, Path]

    @property
    def n_rows(self) -> int:
        return len(next(iter(self.records.values()))) if self.records else 0


# What to run when a field a stage needs is missing from a response record.
_FIELD_HINTS = {"response": "run `tunesweep clean`"}


def read_target_responses(workdir: str | os.PathLike, target: str, configs: Sequence[str],
                          fields: Sequence[str] = ("response", "reference")) -> TargetResponses:
    """Read and check every config file of `target`: each exists, holds manifest.json's `test_rows`
    rows, the same ids in the same order, and text in every one of `fields`. Any gap is a one-line
    UserError naming the file (a results table never silently drops a config or a row)."""
    paths = Workdir(workdir)
    manifest_path = paths.manifest(target)
    manifest = read_json_if_present(manifest_path)
    if manifest is None:
        raise UserError(f"{manifest_path}: not found; run `tunesweep generate` for {target!r} first")
    expected = manifest.get("test_rows")
    if not isinstance(expected, int) or isinstance(expected, bool) or expected < 1:
        raise UserError(f"{manifest_path}: test_rows = {expected!r}: expected the number of rows generated per config")
    records: dict[str, list[dict]] = {}
    files: dict[str, Path] = {}
    first_ids, first_path = None, None
    for config in configs:
        path = paths.response_file(target, config)
        if not path.is_file():
            raise UserError(f"{path}: not found: config {config} has no responses for {target!r} "
                            f"(run `tunesweep generate`); a results table never drops a config")
        recs = read_jsonl(path)
        if len(recs) != expected:
            raise UserError(f"{path}: {len(recs)} rows, but {manifest_path.name} says test_rows = {expected}: "
                            f"incomplete responses (rerun `tunesweep generate`)")
        for row, rec in enumerate(recs, 1):
            for key in fields:
                value = rec.get(key)
                if not isinstance(value, str):
                    hint = _FIELD_HINTS.get(key, "rerun `tunesweep generate`")
                    raise UserError(f"{path}: row {row} (id {rec.get('id')!r}): {key} = {value!r}: "
                                    f"missing or not text ({hint})")
        ids = [rec.get("id") for rec in recs]
        if first_ids is None:
            first_ids, first_path = ids, path
        elif ids != first_ids:
            row = next(i for i, (a, b) in enumerate(zip(ids, first_ids), 1) if a != b)
            raise UserError(f"{path}: row {row}: id {ids[row - 1]!r} where {first_path.name} has {first_ids[row - 1]!r}: "
                            f"every config must cover the same test rows in the same order")
        records[config] = recs
        files[config] = path
    return TargetResponses(target, paths.responses_dir(target), manifest, records, files)


# --- tables ----------------------------------------------------------------------------------------

def format_cell(x, digits: int = 6, blank: str = "") -> str:
    """A table cell: `blank` for None or NaN, an integer as it is, another number with `digits` decimals."""
    import numpy as np

    if x is None or (isinstance(x, (float, np.floating)) and math.isnan(x)):
        return blank
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.{digits}f}"
    return str(x)


def csv_text(columns: Sequence[str], rows: Sequence[dict], digits: int = 6) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([format_cell(row.get(c), digits) for c in columns])
    return buf.getvalue()


def write_table(path: Path, columns: Sequence[str], rows: Sequence[dict], digits: int = 6) -> None:
    """A CSV table (atomically): numbers with `digits` decimals, missing values blank."""
    write_text(path, csv_text(columns, rows, digits))


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A Markdown table of already formatted cells; `|` and newlines in a cell cannot break it."""
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def read_rows(path: Path) -> list[dict]:
    """A CSV table as it is written: one dict of cell texts per row."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_frame(path: Path):
    """A table of eval_results/ (<target>.csv, perplexity.csv) as a pandas DataFrame (blank cells NaN)."""
    import pandas as pd

    return pd.read_csv(path)


def read_human(path: Path) -> dict[tuple[str, str], float]:
    """{(model, config): mean rating} from eval_results/human.csv, empty when there is none."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        needed = HUMAN_COLUMNS[:3]
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
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
