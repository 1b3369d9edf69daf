"""The generation-backend interface: what the stage asks of vLLM and transformers alike.

The stage plans `Job`s (one per decoding config), hands the pending ones to a backend in a
`Request`, and records what comes back: one `EngineBuilt` when the model is loaded, then one
`ConfigDone` per finished config. A backend owns everything library-specific: the exact keyword
arguments of each config (`job_params`), how requests are seeded (`request_seeds`,
`seed_scheme`), what engine settings change its numbers (`identity`), and how results are produced.

Batch invariance: when the request names an `InvarianceCheck`, the backend regenerates the greedy
config for the sample rows in other batch compositions (each row alone, the sample in reversed
order) in the same loaded model, after the sweep, and yields one `InvarianceDone` with the token ids
of all three; `batch_invariance_record` compares them for the manifest.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar, Iterator, Optional, Union

from ..config import DecodingConfig, ExperimentConfig

# Rows of the greedy config regenerated after a sweep in other batch compositions (the first N test rows).
INVARIANCE_ROWS = 8


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


@dataclass(frozen=True)
class InvarianceCheck:
    """The greedy config to regenerate after the sweep, and the sample rows (indices into `Request.prompts`)."""

    config: str
    rows: tuple[int, ...]


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
    invariance: Optional[InvarianceCheck] = None
    # (batch index, row indices into `prompts`) to run instead of the backend's own batching: a replica's share
    # of the whole request's `Backend.row_batches`, so each row keeps its one-engine companions and seed.
    batches: Optional[list[tuple[int, list[int]]]] = None
    beam_impl: str = "tunesweep"  # generation.beam_impl: which beam search runs the vllm backend's beam configs


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
    beam_impl: Optional[str] = None  # the beam search that ran (vllm backend's beam configs), for the manifest
    call_note: Optional[str] = None  # how configs shared the call, where the backend's shared_call_note is not it


@dataclass
class InvarianceDone:
    """The greedy config's generated token ids for the sample rows, in row order: as the sweep made them
    (`batched`), each row alone in a call of its own (`alone`), and the sample in one call in reversed
    order (`reversed`); `how` says each batch composition in words."""

    greedy_config: str  # not `config`: this is no config's results
    row_ids: list[str]
    batched: list[list[int]]
    alone: list[list[int]]
    reversed: list[list[int]]
    wall_s: float
    how: dict


@dataclass
class AgreementDone:
    """Replicas only (generate/sharded.py): every config generated now, regenerated for a check sample of
    rows spread over all shards by ONE engine, against what the replicas wrote for those rows. A row is
    identical when its text, token count and finish reason are."""

    replicas: int
    row_ids: list[str]
    identical: dict  # config -> share of the sample rows identical to the single engine's
    differs: dict  # config -> the row ids that differ
    wall_s: float


Message = Union[EngineBuilt, ConfigDone, InvarianceDone, AgreementDone]


def identical_fraction(reference: list[list[int]], other: list[list[int]]) -> tuple[float, list[int]]:
    """(share of rows whose token ids are identical, indices of the rows that differ)."""
    if len(reference) != len(other) or not reference:
        raise ValueError(f"cannot compare {len(reference)} rows with {len(other)}")
    differ = [i for i, (a, b) in enumerate(zip(reference, other)) if list(a) != list(b)]
    return (len(reference) - len(differ)) / len(reference), differ


def batch_invariance_record(done: InvarianceDone, backend: str) -> dict:
    """What manifest.json's `batch_invariance` holds: the rows compared and, per other batch composition,
    the share of rows whose generated token ids are identical to the sweep's (and which rows differ)."""
    record = {"config": done.greedy_config, "backend": backend, "rows_compared": list(done.row_ids)}
    for name, other in (("alone", done.alone), ("reversed", done.reversed)):
        share, differ = identical_fraction(done.batched, other)
        record[f"{name}_identical"] = share
        record[f"{name}_differs"] = [done.row_ids[i] for i in differ]
    record["how"] = dict(done.how)
    record["wall_s"] = round(done.wall_s, 3)
    return record


def agreement_record(done: AgreementDone, previous: Optional[dict] = None) -> dict:
    """What manifest.json's `replica_agreement` holds: per config, the share of the check rows identical to
    one engine's (configs generated earlier keep their entries when the same rows were compared)."""
    configs = {}
    if previous and previous.get("rows_compared") == done.row_ids:
        configs = dict(previous.get("configs") or {})
    for config, share in done.identical.items():
        configs[config] = {"identical": share, "differs": list(done.differs.get(config, []))}
    return {"replicas": done.replicas, "rows_compared": list(done.row_ids), "configs": configs,
            "how": "every config of the run regenerated for these rows by one engine (a replica with the sample as "
                   "its only shard, the same per-request seeds); identical = same text, tokens and finish reason",
            "wall_s": round(done.wall_s, 3)}


class Session(abc.ABC):
    """A loaded model kept across several requests (generation.strategy race: one engine for every round).
    Each `run` takes a request over a subset of the opening request's rows (sharded.rows_of: the same
    per-request seeds, and for a batch-dependent backend the same batches by index), so a row gets what a
    one-request run would give it."""

    build_s: float  # seconds the model took to load
    builds = 1  # models loaded (a session on replicas: one per replica, and one per restart)

    @abc.abstractmethod
    def run(self, request: Request) -> Iterator[Message]:
        """A ConfigDone per job of `request` (no EngineBuilt: the model is loaded)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free the model (a session not closed is freed when its process exits)."""


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

    def row_batches(self, request: Request) -> Optional[list[list[int]]]:
        """The batches (row indices, in run order) the backend runs `request` in, where a row's result depends
        on its batch (shared padding, one seed per batch); None where each row's result is its own (vLLM's
        per-request seeds). Replicas split such a request at batch boundaries (generate/sharded.py)."""
        return None

    def shared_call_note(self, n_configs: int) -> Optional[str]:
        """A note for configs that shared one library call with others (None: never happens)."""
        return None

    def open(self, request: Request) -> Session:
        """Load the model for several requests over `request`'s rows (see Session)."""
        raise NotImplementedError(f"the {self.name} backend cannot keep a model across requests")

    @abc.abstractmethod
    def run(self, request: Request) -> Iterator[Message]:
        """Load the model, yield EngineBuilt, then a ConfigDone per job (in any order), then, when
        `request.invariance` names a greedy config among the jobs, one InvarianceDone."""


def decoding_note(dc: DecodingConfig) -> str:
    """What a sampling or greedy config ignores (both backends say it the same way)."""
    if dc.mode == "greedy":
        return "temperature 0 is greedy decoding: top_k is ignored"
    return "top_k 0 means no top-k filter" if dc.top_k == 0 else ""

