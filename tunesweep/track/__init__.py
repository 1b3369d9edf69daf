"""The study in MLflow (tracking.backend: mlflow): `push_study` logs the workdir's files into the store;
`sync` is what a stage calls after writing its results: never an error, one warning line at worst."""

from __future__ import annotations

import logging

from ..config import ExperimentConfig
from ..errors import UserError
from ..tracking import enabled, failure_line, tracking_uri
from .push import PushSummary, describe, push_study

log = logging.getLogger(__name__)

__all__ = ["PushSummary", "push_study", "sync", "track"]


def sync(cfg: ExperimentConfig) -> None:
    """Push after a stage: a store that cannot be reached is one warning line; the stage's files stand."""
    if not enabled(cfg):
        return
    try:
        log.info(describe(push_study(cfg)))
    except Exception as exc:  # noqa: BLE001 - logging never loses results: `tunesweep track` pushes them later
        log.warning(failure_line(tracking_uri(cfg), exc))


def track(cfg: ExperimentConfig) -> PushSummary:
    """`tunesweep track`: push what is missing; here a store that cannot be reached is the command's error."""
    if not enabled(cfg):
        raise UserError("tracking.backend is 'none': set tracking: {backend: mlflow} in the config, or pass "
                        "--tracking-uri")
    uri = tracking_uri(cfg)
    try:
        summary = push_study(cfg)
    except Exception as exc:  # noqa: BLE001 - one line naming the store, not MLflow's traceback
        raise UserError(f"tracking: could not push to {uri} ({' '.join(str(exc).split())[:300]})") from None
    log.info(describe(summary))
    return summary
