"""What runs inside a training process (spawned by the stage through tunesweep.isolation).

Unsloth patches transformers' model classes for the whole process when it is imported, so a backend
never trains in the stage's own process, and a merged checkpoint is checked only in a process that
never imported unsloth: the peft process checks its own output, an unsloth one leaves the check to a
fresh process.
"""

from __future__ import annotations

import sys
from typing import Optional

from .check import post_merge_check
from .job import TrainJob, TrainResult


def train_backend(job: TrainJob, backend: str) -> TrainResult:
    import torch

    # Before any work: the same thread count wherever this process runs (a Ray worker's OMP_NUM_THREADS is
    # the task's num_cpus, a local process gets one thread per core), since it is part of the identity.
    torch.set_num_threads(job.train["threads"])
    if backend == "unsloth":
        from .unsloth_backend import train
    else:
        from .peft_backend import train
    result = train(job)
    result.notes = job.notes
    return result


def train_and_check(job: TrainJob, backend: str, check: Optional[tuple]) -> TrainResult:
    """Train; then, when this process is free of unsloth, check the merged folder
    (`check`: post_merge_check's arguments after the checkpoint)."""
    result = train_backend(job, backend)
    if check is not None and "unsloth" not in sys.modules:
        result.post_merge_check = post_merge_check(job.output_dir, *check)
    return result
