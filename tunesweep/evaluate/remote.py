"""Scoring on Ray (`execution.backend: ray`): each target's BERTScore and each target's perplexity is a Ray
task, all submitted at once, so the models are scored side by side on the cluster's GPUs.

The jobs are scoring.py's own (`SlowJob`: metric_rows_job, perplexity_job), so a task computes exactly
what the local run computes; the driver caches each result as it comes back. A task whose worker dies
is started again by Ray up to `execution.retries` times; after that the stage fails with one line
naming the model and the metric, and a rerun scores only what the cache still lacks.
"""

from __future__ import annotations

import logging

from ..cluster import check_shared, first_line, user_error
from ..errors import UserError

log = logging.getLogger(__name__)


def run_job(fn, args: tuple, shared: tuple[str, str], what: str):
    """Inside the Ray task: the job's own function, after checking that this node sees the workdir."""
    check_shared(*shared, what)
    return fn(*args)


def task_name(job) -> str:
    """The Ray task's name (and its worker's process title, `ray::<name>`, while it runs)."""
    return f"tunesweep-score-{job.what}-{job.target}"


def run_on_ray(cfg, jobs: list):
    """Yield (job, result) as each job's Ray task finishes."""
    from ..backends import cuda_visible
    from ..cluster import join, score_gpus

    gpus = score_gpus(cfg, cuda_visible())
    ray, shared = join(cfg, "score_gpus", gpus, "scoring task")
    from ray.exceptions import RayError, RayTaskError

    task = ray.remote(run_job)
    refs = {}
    for job in jobs:
        ref = task.options(name=task_name(job), num_cpus=cfg.execution.cpus, num_gpus=gpus,
                           max_retries=cfg.execution.retries, retry_exceptions=False).remote(
            job.fn, job.args, shared, f"score {job.target} ({job.what})")
        refs[ref] = job
        log.info("%s: %s submitted as a Ray task (%g CPUs, %g GPUs)", job.target, job.what, cfg.execution.cpus, gpus)
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1)
            job = refs.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except RayTaskError as exc:
                if (err := user_error(exc)) is not None:
                    raise err from None
                raise UserError(f"{job.target}: the {job.what} task failed on Ray "
                                f"({first_line(getattr(exc, 'cause', None) or exc)}); a rerun scores only what is "
                                "missing") from None
            except RayError as exc:  # the worker died, and kept dying through every retry
                raise UserError(f"{job.target}: the {job.what} task failed {cfg.execution.retries + 1} time(s) "
                                f"(execution.retries = {cfg.execution.retries}): {first_line(exc)}; a rerun scores "
                                "only what is missing") from None
            yield job, result
    finally:
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
