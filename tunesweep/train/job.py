"""What the stage hands a training backend (TrainJob) and what the backend hands back (TrainResult).

Both cross a process boundary (the backend runs in a spawned child), so they hold plain data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import ModelConfig
from ..tracking import RunRef


@dataclass
class SpeedSettings:
    """The settings a throughput comparison must hold equal across backends. None = the backend's default
    (peft: gradient checkpointing on CUDA only, no padding-free; unsloth: its own offloaded checkpointing,
    padding-free auto-enabled)."""

    gradient_checkpointing: Optional[bool] = None
    padding_free: Optional[bool] = None
    warmup_steps: int = 5  # optimizer steps excluded from tokens/s (compilation, allocator warm-up)


@dataclass
class TrainJob:
    """Everything a backend needs; backends write the merged checkpoint into `output_dir`."""

    name: str
    model: ModelConfig
    train: dict  # effective train settings (TrainConfig as a dict, --max-steps applied)
    seed: int
    template: str
    pairs: list[dict]  # {"prompt", "completion"} rows
    output_dir: Path  # staging folder: merged checkpoint + adapter/
    training_dir: Path  # TRL checkpoints, runs/
    resume_from: Optional[str] = None  # a complete checkpoint-* folder to resume from
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    merge: bool = True  # False: train only (the training bench)
    notes: list[str] = field(default_factory=list)  # things the backend did that a reader should know
    tracking: Optional[RunRef] = None  # the MLflow run the training process logs its steps into while it trains

    @property
    def adapter_dir(self) -> Path:
        return self.output_dir / "adapter"


@dataclass
class Throughput:
    """Trained tokens per second after warm-up, from the trainer's own count of non-padding input tokens."""

    tokens_per_s: Optional[float]  # None when too few steps ran to measure after warm-up
    warmup_steps_excluded: int
    measured_steps: int
    measured_tokens: int
    measured_s: float
    tokens_seen: int  # every non-padding input token the trainer saw (all steps, resumed ones included)
    peak_memory_bytes: int
    peak_memory_kind: str  # "cuda max_memory_allocated" or "peak RSS of the training process"
    gradient_checkpointing: str
    padding_free: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TrainResult:
    loss_history: list[dict]
    global_step: int
    train_runtime_s: float
    device: str
    dtype: str
    pad_token: str
    eos_token: str
    throughput: Throughput
    notes: list[str] = field(default_factory=list)
    post_merge_check: Optional[dict] = None  # filled when the check ran in the training process
