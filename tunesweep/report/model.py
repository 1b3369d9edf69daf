"""The report model: everything report.md and report.html show, read once.

`build_model` reads every file the report stage depends on, each with one policy (the score stage's tables
only while metrics.json vouches for them, other stages' JSON records strictly: a broken one is a UserError),
and derives what both pages print from the same data (the verdicts, the centre config, the metrics present).
stage.py renders it as Markdown and html.py as one self-contained page; neither reads a file of the study,
so the two pages cannot disagree on a number or a verdict.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from .. import metric_registry
from ..config import DecodingConfig, ExperimentConfig, RunTarget, centre_config, expand_sweep
from ..layout import Workdir, check_vouched, read_frame, read_json_if_present
from ..records import GenerationManifest
from .explorer import explorer_data
from .plots import Plot
from .tables import MetricVerdict, Scored, read_comparisons, read_scored, table_metrics, verdicts


@dataclass
class ReportModel:
    cfg: ExperimentConfig
    generated: str  # when the report was written (UTC, ISO 8601)
    scored: list[Scored]  # eval_results/<target>.csv of every scored target, in study order
    configs: list[DecodingConfig]  # the sweep, in sweep order
    centre: str  # the centre config's name
    metrics: list[tuple[str, str]]  # (column, label) of the registered metrics with a value, in report order
    targets: dict[str, RunTarget]
    metrics_json: Optional[dict]
    perplexity: Optional[pd.DataFrame]
    perplexity_path: Path
    comparisons: Optional[pd.DataFrame]  # comparisons.csv, vouched for and with every expected column
    verdicts: dict[str, list[MetricVerdict]]  # per target, from tables.verdicts
    manifests: dict[str, GenerationManifest]  # llm_responses/<target>/manifest.json of the targets that have one
    cleaning: dict[str, Optional[dict]]  # llm_responses/<target>/cleaning.json per scored target
    training: dict[str, Optional[dict]]  # finetuned_models/<model>/tunesweep.json per model of the config
    human_summary: Optional[dict]
    human_cells: Optional[pd.DataFrame]  # eval_results/human.csv
    split: dict  # alpaca_data/split.json
    explorer: dict  # the response explorer's data (explorer.explorer_data)
    inputs: list[Path]  # the files the report is made from, for report.md's Inputs
    plots: list[Plot] = field(default_factory=list)  # drawn by the stage (plots.draw_plots) before rendering
    race: list = field(default_factory=list)  # the race section's RaceBlocks (report/race.py), drawn with the plots


# comparisons.csv has no paired test of the length-controlled win rate (a refit per resample and config pair).
NO_PAIRED_TEST = {"judge_lc"}


def tested_metrics(metrics: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The metrics with paired tests in comparisons.csv (the verdicts, comparisons and best sections' metrics)."""
    return [(m, label) for m, label in metrics if m not in NO_PAIRED_TEST]


def base_compared_metrics(metrics: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The metrics compared with the base model's: not a judge's (each target is judged against its own baseline)."""
    return [(m, label) for m, label in metrics if metric_registry.get(m).needs != "judge"]


def metrics_present(scored: list[Scored]) -> list[tuple[str, str]]:
    """The registered metrics with at least one value in some table, in the registry's order."""
    return [(m, label) for m, label in table_metrics()
            if any(m in s.table.columns and s.table[m].notna().any() for s in scored)]


def _vouched_frame(cfg: ExperimentConfig, path: Path) -> Optional[pd.DataFrame]:
    return read_frame(check_vouched(cfg.path, path)) if path.is_file() else None


def _inputs(cfg: ExperimentConfig, scored: list[Scored]) -> list[Path]:
    paths = Workdir(cfg.path)
    inputs = [s.path for s in scored] + [paths.tidy_table, paths.perplexity_table, paths.comparisons,
                                         paths.metrics_json, paths.human_table, paths.human_summary]
    inputs += [p for s in scored for p in (paths.manifest(s.target.name), paths.cleaning(s.target.name))]
    inputs += [paths.model_record(m.name) for m in cfg.models]
    return inputs + [paths.race_state(s.target.name) for s in scored if paths.race_state(s.target.name).is_file()]


def build_model(cfg: ExperimentConfig) -> ReportModel:
    """Read the study's results once (see the module's doc)."""
    paths = Workdir(cfg.path)
    scored = read_scored(cfg)
    metrics = metrics_present(scored)
    centre = centre_config(cfg).name
    comparisons = read_comparisons(cfg)
    manifests = {s.target.name: GenerationManifest(m) for s in scored
                 if (m := read_json_if_present(paths.manifest(s.target.name)))}
    return ReportModel(
        cfg=cfg, generated=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        scored=scored, configs=expand_sweep(cfg.generation), centre=centre, metrics=metrics,
        targets={t.name: t for t in cfg.run_targets()},
        metrics_json=read_json_if_present(paths.metrics_json),
        perplexity=_vouched_frame(cfg, paths.perplexity_table), perplexity_path=paths.perplexity_table,
        comparisons=comparisons, verdicts=verdicts(scored, tested_metrics(metrics), centre, comparisons), manifests=manifests,
        cleaning={s.target.name: read_json_if_present(paths.cleaning(s.target.name)) for s in scored},
        training={m.name: read_json_if_present(paths.model_record(m.name)) for m in cfg.models},
        human_summary=(human := read_json_if_present(paths.human_summary)),
        human_cells=_vouched_frame(cfg, paths.human_table) if human is not None else None,
        split=read_json_if_present(paths.split_meta) or {},
        # Reads and checks every response file: a file that fails the check stops the stage before either
        # page is written.
        explorer=explorer_data(cfg, scored, metrics),
        inputs=_inputs(cfg, scored),
    )
