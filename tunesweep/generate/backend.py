"""The generation-backend interface: what the stage asks of vLLM and transformers alike.

The stage plans `Job`s (one per decoding config), hands the pending ones to a backend in a
`Request`, and records what comes back: one `EngineBuilt` when the model is loaded, then one
`ConfigDone` per finished config. A backend owns everything library-specific: the exact keyword
arguments of each config (`job_params`), how requests are seeded (`request_seeds`,
`seed_scheme`), what engine settings change its numbers (`identity`), and how results are produced.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Iterator, Optional, Union

from ..config import DecodingConfig, ExperimentConfig


@dataclass(frozen=True)
class Job:
    """One decoding config as a backend runs it."""

    decoding: DecodingConfig
    call: str  # the library call: "generate" or "beam_search"
    params: dict  # the exact keyword arguments passed (built explicitly: no model default leaks in)
    note: str  # what the mode ignores, for a reader of the manifest
    seeds: tuple[int, ...]  # one per test row where the backend seeds requests; empty otherwise
    inputs: str  # fingerprint of everything that changes this config's responses

    @property
    def config(self) -> str:
        return self.decoding.name


@dataclass
class Request:
    """Everything a backend needs to run the pending jobs of one target (picklable: vLLM runs it
    in a child process)."""

    checkpoint: str
    engine: dict  # backend.engine_settings(...)
    row_ids: list[str]
    prompts: list[str]
    jobs: list[Job]
    stop: list[str]
    seed: int
    batch_size: int
    use_tqdm: bool = False


@dataclass
class EngineBuilt:
    build_s: float


@dataclass
class RowResult:
    response_raw: str
    finish_reason: str  # "stop" or "length"
    num_tokens: int  # generated tokens, EOS included


@dataclass
class ConfigDone:
    """The results of one config, in row order, and the library call that produced them (several
    configs may share one call)."""

    config: str
    results: list[RowResult]
    call_wall_s: float
    call_configs: list[str]
    call_tokens: int


Message = Union[EngineBuilt, ConfigDone]


class Backend(abc.ABC):
    name: ClassVar[str]
    label: ClassVar[str]  # what is built before generating, for the log
    # Libraries whose version can change the generated text (part of every config's inputs).
    result_libraries: ClassVar[tuple[str, ...]]

    def __init__(self, on_cuda: bool):
        self.on_cuda = on_cuda

    def engine_settings(self, checkpoint: str, cfg: ExperimentConfig) -> dict:
        """The settings the model is loaded with, recorded in the manifest ({} when there are none)."""
        return {}

    @abc.abstractmethod
    def identity(self, engine: dict, cfg: ExperimentConfig) -> dict:
        """What changes the numbers besides the decoding parameters (precision, batching)."""

    @abc.abstractmethod
    def job_params(self, dc: DecodingConfig, max_new_tokens: int, stop: list[str]) -> tuple[str, dict, str]:
        """(call, keyword arguments, note) of one decoding config."""

    def request_seeds(self, run_seed: int, dc: DecodingConfig, row_ids: list[str]) -> tuple[int, ...]:
        return ()

    @abc.abstractmethod
    def seed_scheme(self, job_call: str, mode: str, run_seed: int) -> dict:
        """How the responses of a config were seeded (recorded in the manifest)."""

    def shared_call_note(self, n_configs: int) -> Optional[str]:
        """A note for configs that shared one library call with others (None: never happens)."""
        return None

    @abc.abstractmethod
    def run(self, request: Request) -> Iterator[Message]:
        """Load the model, yield EngineBuilt, then a ConfigDone per job (in any order)."""


def decoding_note(dc: DecodingConfig) -> str:
    """What a sampling or greedy config ignores (both backends say it the same way)."""
    if dc.mode == "greedy":
        return "temperature 0 is greedy decoding: top_k is ignored"
    return "top_k 0 means no top-k filter" if dc.top_k == 0 else ""

