"""`tunesweep run`: every stage in order, the same functions the shell pipeline calls.

Each stage skips work whose inputs are unchanged, so a rerun after a failure or a kill
continues where it stopped. Each stage's log goes to <workdir>/logs/<stage>.log as well.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

from .config import ExperimentConfig
from .errors import UserError
from .files import LogFileHandler
from .layout import Workdir
from .stages import STAGES

log = logging.getLogger(__name__)


def _run_split(cfg: ExperimentConfig, limit: Optional[int]) -> None:
    from .data import split_for_config

    meta, skipped = split_for_config(cfg)
    log.info("split: %d train + %d test rows%s", meta["train_rows"], meta["test_rows"],
             " (alpaca_data/ is current, skipped)" if skipped else "")


def _run_finetune(cfg, limit):
    from .train import finetune

    finetune(cfg)


def _run_generate(cfg, limit):
    from .race import generate_responses  # generation.strategy: the full sweep, or the race

    generate_responses(cfg, limit=limit)


def _run_clean(cfg, limit):
    from .clean.stage import clean

    clean(cfg)


def _run_judge(cfg, limit):
    from .judge.stage import judge

    judge(cfg)


def _run_score(cfg, limit):
    from .evaluate.scoring import score

    score(cfg)


def _run_report(cfg, limit):
    from .report import report

    report(cfg)


RUNNERS = {"split": _run_split, "finetune": _run_finetune, "generate": _run_generate, "clean": _run_clean,
           "judge": _run_judge, "score": _run_score, "report": _run_report}


# The stages after which the study is pushed to MLflow (tracking.backend: mlflow): each writes results.
TRACKED_STAGES = ("finetune", "score", "report")


def stages_to_run(from_stage: Optional[str] = None, only_stage: Optional[str] = None) -> list[str]:
    if only_stage:
        return [only_stage]
    start = STAGES.index(from_stage) if from_stage else 0
    return list(STAGES[start:])


def run_pipeline(cfg: ExperimentConfig, from_stage: Optional[str] = None, only_stage: Optional[str] = None,
                 limit: Optional[int] = None) -> None:
    paths = Workdir(cfg.path)
    paths.logs_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for stage in stages_to_run(from_stage, only_stage):
        handler = LogFileHandler(paths.log(stage))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
        started = time.time()
        log.info("=== stage %s ===", stage)
        try:
            RUNNERS[stage](cfg, limit)
        except UserError as exc:
            raise UserError(f"stage {stage} failed: {exc} (log: {paths.log(stage)})") from None
        finally:
            root.removeHandler(handler)
            handler.close()
        log.info("stage %s done in %.0f s", stage, time.time() - started)
        if stage in TRACKED_STAGES and cfg.tracking.backend != "none":
            from .track import sync

            sync(cfg)
    log.info("tables: %s  report: %s", paths.eval_dir, paths.report)
