"""The typed records that cross a stage boundary, one owner for each record's keys, reading, writing and
fingerprint (no other module spells their keys; tests/test_records.py checks that):

    ResponseRecord       one line of llm_responses/<target>/<config>.jsonl       generate -> clean, judge, score
    GenerationManifest   llm_responses/<target>/manifest.json                    generate -> every later stage
    GenerationRun        one run's record in it (`runs`)                          generate, race
    ConfigEntry          one config's entry of it (`configs`)                     generate (race) -> every reader
    cleaning_record      llm_responses/<target>/cleaning.json                    clean -> score, report
    ScoredTarget         one target of eval_results/metrics.json (`scored_from`) score -> report, track
    JudgeManifest        eval_results/judge/manifest.json (JudgeTarget, JudgeEntry, JudgeRunRecord)  judge -> score
    JudgeRecord          one line of eval_results/judge/<target>/<config>.jsonl  judge -> score, report
    RaceState            llm_responses/<target>/race.json (RaceRound)            race -> race, report

On disk every record is the JSON it always was (same keys, same order): the dataclasses only name the fields.
The manifests are read and updated in place (a stage adds its keys to what an earlier run wrote), so
GenerationManifest wraps the JSON object itself; an entry is written whole, so ConfigEntry is a dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import UserError
from .files import jsonl_dumps, read_jsonl, sha256_bytes


class JsonRecord:
    """A record dataclass's JSON: its fields are its keys, in order; a key missing from the JSON (a file of an older
    tunesweep, or anything but an object) reads as None."""

    @classmethod
    def from_json(cls, data):
        data = data if isinstance(data, dict) else {}
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --- llm_responses/<target>/<config>.jsonl --------------------------------------------------------

@dataclass
class ResponseRecord(JsonRecord):
    """One test row's response to one config, in the order written. `response` is the clean stage's (None
    until clean ran); `reference` is the test row's output."""

    id: Any
    prompt: Optional[str]
    reference: Optional[str]
    response_raw: Optional[str]
    response: Optional[str]
    finish_reason: Optional[str]
    num_tokens: Optional[int]
    config: Optional[str]
    model: Optional[str]

    def reference_pair(self) -> dict:
        """{"prompt", "reference"}: what perplexity scores (the pair training used), and its cache key."""
        return {"prompt": self.prompt, "reference": self.reference}


RECORD_FIELDS = tuple(f.name for f in fields(ResponseRecord))


def _as_json(record) -> dict:
    return record.to_json() if isinstance(record, ResponseRecord) else record


def records_digest(records: Sequence) -> str:
    """sha256 of what generate wrote in a response file (records as read, or ResponseRecords): every field but
    `response`, which the clean stage rewrites. The manifest records it per config (`generated_sha256`), so a file
    edited (or left from another run) after generate wrote it is not trusted."""
    rows = (_as_json(r) for r in records)
    return sha256_bytes(jsonl_dumps({k: v for k, v in r.items() if k != "response"} for r in rows).encode())


def generated_digest(path: Path) -> Optional[str]:
    """records_digest of a response file; None when the file is missing or damaged."""
    try:
        records = read_jsonl(path)
    except (OSError, UserError):
        return None
    return records_digest(records)


def cleaned_digest(records: Sequence) -> str:
    """sha256 of the `response` fields of a config's records, in order: what the clean stage wrote, recorded per
    config in cleaning.json, so a `response` edited after clean is not scored (generated_sha256 leaves it out)."""
    return sha256_bytes(jsonl_dumps({"response": _as_json(r).get("response")} for r in records).encode())


def read_response_records(path: Path) -> list[ResponseRecord]:
    return [ResponseRecord.from_json(r) for r in read_jsonl(path)]


# --- llm_responses/<target>/manifest.json: one config's entry --------------------------------------

@dataclass
class ConfigEntry(JsonRecord):
    """What generate recorded for one config: the decoding parameters that took effect, how the call went, and
    what the file is vouched by (checkpoint, test set, settings, inputs, generated_sha256). A race adds `race`
    and, for a config that does not hold every row, `partial` ({rows, of, round_eliminated, state})."""

    top_k: Any = None
    num_beams: Any = None
    temperature: Any = None
    mode: Optional[str] = None
    ignored: Optional[list] = None
    effective: Optional[dict] = None
    beam_impl: Optional[str] = None  # written only when a beam search ran (provenance, not identity)
    note: Optional[str] = None
    seed: Any = None
    max_new_tokens: Optional[int] = None
    rows: Optional[int] = None
    finish_reasons: Optional[dict] = None
    wall_s: Optional[float] = None
    tokens: Optional[int] = None
    tokens_per_s: Optional[float] = None
    batch: Optional[dict] = None
    backend: Optional[str] = None
    checkpoint_hash: Optional[str] = None
    test_set_sha256: Optional[str] = None
    logic: Optional[dict] = None
    inputs: Optional[str] = None
    settings: Optional[dict] = None
    generated_sha256: Optional[str] = None
    written: Optional[str] = None
    race: Optional[dict] = None  # generation.strategy race
    partial: Optional[dict] = None  # a config the race left with fewer rows than the test set

    OPTIONAL = ("beam_impl", "race", "partial")  # left out of the JSON when unset (as generate always wrote it)

    def to_json(self) -> dict:
        return {k: v for k, v in super().to_json().items() if not (k in self.OPTIONAL and v is None)}

    @staticmethod
    def race_marks(rounds: int, race_json: str, rows: int, of: int, round_eliminated: Optional[int],
                   finished: bool) -> dict:
        """The fields a race adds to an entry: its `race` record and, unless the config holds every row, `partial`."""
        marks: dict = {"race": {"strategy": "race", "rounds": rounds, "race_json": race_json}}
        if not finished:
            marks["partial"] = {"rows": rows, "of": of, "round_eliminated": round_eliminated,
                                "state": "eliminated" if round_eliminated is not None else "racing"}
        return marks

    def tracking_params(self) -> dict:
        """The decoding and provenance fields an experiment tracker logs as a config's parameters."""
        return {"mode": self.mode, "top_k": self.top_k, "num_beams": self.num_beams, "temperature": self.temperature,
                "ignored": self.ignored, "effective": self.effective, "seed": self.seed,
                "max_new_tokens": self.max_new_tokens, "rows": self.rows, "backend": self.backend,
                "checkpoint_hash": self.checkpoint_hash}

    @staticmethod
    def batch_record(wall_s: float, configs: list, tokens: int) -> dict:
        """`batch`: the library call this config shared (its wall time, configs and tokens)."""
        return {"wall_s": wall_s, "configs": configs, "tokens": tokens}

    @property
    def partial_rows(self) -> Optional[int]:
        return int(self.partial.get("rows", 0)) if isinstance(self.partial, dict) else None


@dataclass
class GenerationRun:
    """One run's record in the manifest's `runs` (the JSON object itself, so the manifest holds the same object):
    what it set out to generate, what it wrote and the engines it built."""

    data: dict

    @classmethod
    def start(cls, started: str, backend: str, pending: list[str]) -> "GenerationRun":
        return cls({"started": started, "backend": backend, "pending": pending, "written": [], "engine_builds": 0,
                    "engine_build_s": None})

    @property
    def started(self) -> str:
        return self.data["started"]

    def wrote(self, config: str) -> None:
        self.data["written"].append(config)

    def set_written(self, configs: list[str]) -> None:
        self.data["written"] = configs

    def built_engine(self, build_s: float) -> None:
        self.data["engine_builds"] += 1
        self.data["engine_build_s"] = round(build_s, 2)

    @property
    def engine_build_s(self) -> Optional[float]:
        return self.data["engine_build_s"]


MANIFEST_KEYS = ("model", "checkpoint", "checkpoint_hash", "checkpoint_identity", "checkpoint_stat", "backend",
                 "backend_reason", "versions", "test_rows", "limit", "engine", "test_set_sha256", "logic",
                 "incomplete", "configs", "engine_builds", "runs", "replica_agreement", "batch_invariance", "race")


@dataclass
class GenerationManifest:
    """llm_responses/<target>/manifest.json, the JSON object itself (`data`) behind named accessors: generate
    updates it in place run after run, so its key order is what the runs made it."""

    data: dict

    @classmethod
    def empty(cls) -> "GenerationManifest":
        return cls({})

    def to_json(self) -> dict:
        return self.data

    # what the whole target was generated from
    @property
    def checkpoint(self) -> Optional[str]:
        return self.data.get("checkpoint")

    @property
    def checkpoint_hash(self) -> Optional[str]:
        return self.data.get("checkpoint_hash")

    @property
    def backend(self) -> Optional[str]:
        return self.data.get("backend")

    @property
    def runs(self) -> list:
        return self.data.get("runs") or []

    @property
    def test_rows(self):
        return self.data.get("test_rows")

    @property
    def logic(self) -> Optional[dict]:
        return self.data.get("logic")

    @property
    def incomplete(self) -> Optional[str]:
        """Why the configs a run regenerates are missing: set while generate runs, left by a run that failed."""
        return self.data.get("incomplete")

    def recorded_identity(self, checkpoint: str) -> Optional[dict]:
        """The checkpoint identity generate recorded, for provenance.checkpoint_identity to reuse while the
        checkpoint's files are unchanged (no rehash); None when it recorded another checkpoint."""
        if self.data.get("checkpoint") != checkpoint:
            return None
        return {"sha256": self.data.get("checkpoint_hash"), "stat": self.data.get("checkpoint_stat")}

    # the configs
    @property
    def raw_entries(self):
        """`configs` as found (anything: readers that vouch check it is an object of objects)."""
        return self.data.get("configs")

    def entries(self) -> dict[str, ConfigEntry]:
        raw = self.raw_entries
        if not isinstance(raw, dict):
            return {}
        return {c: ConfigEntry.from_json(e) for c, e in raw.items() if isinstance(e, dict)}

    def entry(self, config: str) -> Optional[ConfigEntry]:
        raw = self.raw_entries
        e = raw.get(config) if isinstance(raw, dict) else None
        return ConfigEntry.from_json(e) if isinstance(e, dict) else None

    def set_entry(self, config: str, entry: ConfigEntry) -> None:
        self.data.setdefault("configs", {})[config] = entry.to_json()

    def partial_configs(self) -> dict[str, int]:
        """{config: rows it holds} of the configs a race left with fewer rows than the test set."""
        return {c: e.partial_rows for c, e in self.entries().items() if e.partial_rows is not None}

    # a run writing it
    def start_run(self, *, model: str, checkpoint: str, checkpoint_hash: str, checkpoint_identity: str,
                  checkpoint_stat, backend: str, backend_reason: Optional[str], versions: dict, test_rows: int,
                  limit: Optional[int], engine: Optional[dict], test_set_sha256: Optional[str], logic: Optional[dict],
                  incomplete: str, run: GenerationRun, pending: Sequence[str], max_runs: int) -> None:
        """Mark the manifest as written by a run (`incomplete` until it ends) of the target's checkpoint (its
        identity, as provenance.checkpoint_identity gives it), and drop the entries (and replica agreement) of
        `pending`; `run` is appended to `runs` (the last `max_runs` kept)."""
        self.data.update({
            "model": model, "checkpoint": checkpoint, "checkpoint_hash": checkpoint_hash,
            "checkpoint_identity": checkpoint_identity, "checkpoint_stat": checkpoint_stat, "backend": backend,
            "backend_reason": backend_reason, "versions": versions, "test_rows": test_rows, "limit": limit,
            "engine": engine, "test_set_sha256": test_set_sha256, "logic": logic, "incomplete": incomplete})
        self.data.setdefault("configs", {})
        self.data.setdefault("engine_builds", 0)
        self.data["runs"] = (self.data.get("runs") or [])[-(max_runs - 1):] + [run.data]
        for name in pending:
            self.data["configs"].pop(name, None)
            ((self.data.get("replica_agreement") or {}).get("configs") or {}).pop(name, None)

    def mark_failed(self, why: str) -> None:
        self.data["incomplete"] = why

    def mark_finished(self) -> None:
        self.data.pop("incomplete", None)

    def count_engine_build(self) -> int:
        self.data["engine_builds"] = self.data.get("engine_builds", 0) + 1
        return self.data["engine_builds"]

    @property
    def replica_agreement(self) -> Optional[dict]:
        return self.data.get("replica_agreement")

    @replica_agreement.setter
    def replica_agreement(self, value: dict) -> None:
        self.data["replica_agreement"] = value

    @property
    def batch_invariance(self) -> Optional[dict]:
        return self.data.get("batch_invariance")

    @batch_invariance.setter
    def batch_invariance(self, value: Optional[dict]) -> None:
        if value is None:
            self.data.pop("batch_invariance", None)
        else:
            self.data["batch_invariance"] = value

    def set_race(self, race_json: str, rule: str) -> None:
        self.data["race"] = {"strategy": "race", "race_json": race_json, "rule": rule}


# --- llm_responses/<target>/cleaning.json ---------------------------------------------------------

CLEANING_KEYS = ("rules", "configs", "logic")
CLEANING_CONFIG_KEYS = ("cleaned_sha256",)  # besides the counts of clean/stage.py


def cleaning_record(rules: dict, per_config: dict, logic: dict) -> dict:
    """cleaning.json: the rules clean applied, per config its counts and `cleaned_sha256`, and its logic."""
    return {"rules": rules, "configs": per_config, "logic": logic}


def cleaning_config(counts: dict, records: Sequence) -> dict:
    """One config's entry of cleaning.json: the clean counts and what clean wrote (cleaned_digest)."""
    return {**counts, "cleaned_sha256": cleaned_digest(records)}


def cleaning_digests(data: Optional[dict]) -> dict:
    """{config: cleaned_sha256} of a cleaning.json ({} when clean has not run)."""
    configs = (data or {}).get("configs")
    if not isinstance(configs, dict):
        return {}
    return {c: e.get("cleaned_sha256") for c, e in configs.items() if isinstance(e, dict)}


def cleaning_rules(data: Optional[dict]) -> Optional[dict]:
    """The rules a cleaning.json records (None when clean has not run)."""
    return (data or {}).get("rules")


def cleaning_configs(data: Optional[dict]) -> dict:
    """cleaning.json's per-config counts ({} when clean has not run)."""
    configs = (data or {}).get("configs")
    return configs if isinstance(configs, dict) else {}


# --- eval_results/metrics.json: one scored target ---------------------------------------------------

def scored_from(manifest: GenerationManifest, cleaned: dict, configs: Sequence[str], test_sha: str) -> dict:
    """THE fingerprint score records per target (`scored_from`) and report checks is still current: the
    checkpoint, what generate wrote and with which settings per config (manifest.json), what clean wrote
    (`cleaned`: {config: cleaned_sha256} of cleaning.json) and the test set."""
    entries = manifest.entries()

    def recorded(config: str, name: str):
        entry = entries.get(config)
        return getattr(entry, name) if entry is not None else None

    return {"checkpoint_hash": manifest.checkpoint_hash,
            "generated_sha256": {c: recorded(c, "generated_sha256") for c in configs},
            "cleaned_sha256": {c: cleaned.get(c) for c in configs},
            "settings": {c: recorded(c, "settings") for c in configs},
            "test_set_sha256": test_sha}


@dataclass
class ScoredTarget(JsonRecord):
    """One target of metrics.json's `targets`: what score scored and from which responses (`scored_from`)."""

    rows: Optional[int] = None
    configs: Optional[list] = None
    responses: Optional[str] = None
    race_eliminated: Optional[dict] = None
    bertscore_empty: Optional[dict] = None
    scored_from: Optional[dict] = None
    logic: Optional[dict] = None

    def generated_sha256(self, config: str) -> Optional[str]:
        """What generate wrote for `config` when score read it."""
        return ((self.scored_from or {}).get("generated_sha256") or {}).get(config)


def score_metadata(metrics: dict, targets: dict, files: dict) -> dict:
    """eval_results/metrics.json: every metric's settings, per target a ScoredTarget's JSON, and the sha256 of
    every eval_results file score wrote (layout.vouch_files)."""
    return {"metrics": metrics, "targets": targets, "files": files}


def scored_targets(meta: Optional[dict]) -> dict[str, ScoredTarget]:
    """{target: ScoredTarget} of a metrics.json ({} without one)."""
    targets = (meta or {}).get("targets") if isinstance(meta, dict) else None
    return {t: ScoredTarget.from_json(v) for t, v in targets.items()} if isinstance(targets, dict) else {}


def scored_targets_json(meta: Optional[dict]) -> dict:
    """metrics.json's `targets` as written (to keep the entries of targets not scored now)."""
    targets = meta.get("targets") if isinstance(meta, dict) else None
    return dict(targets) if isinstance(targets, dict) else {}


def vouched_files(meta: Optional[dict]):
    """metrics.json's `files` ({path under the workdir: sha256}), as found."""
    return meta.get("files") if isinstance(meta, dict) else None


# --- eval_results/judge/ --------------------------------------------------------------------------

@dataclass
class JudgeRecord(JsonRecord):
    """One judged row: both answers' digests and lengths, `p_a` in each order with the labels' probability mass,
    the averaged `preference` for the answer under test, whether it `flipped` with the order, and its cache key."""

    id: Any
    answer_sha256: Optional[str]
    baseline_sha256: Optional[str]
    answer_chars: Optional[int]
    baseline_chars: Optional[int]
    p_a_test_first: Optional[float]
    p_a_test_second: Optional[float]
    mass_test_first: Optional[float]
    mass_test_second: Optional[float]
    preference: Optional[float]
    flipped: Optional[bool]
    unsure_requests: Optional[int]
    key: Optional[str]


@dataclass
class JudgeEntry(JsonRecord):
    """One config's entry of the judge manifest (targets.<target>.configs.<config>)."""

    file: Optional[str] = None
    sha256: Optional[str] = None
    baseline: Optional[str] = None
    judged_now: Optional[int] = None
    pairs: Optional[int] = None
    win_rate: Optional[float] = None
    flip_share: Optional[float] = None
    unsure_requests: Optional[int] = None

    @classmethod
    def summarise(cls, file: str, sha256: str, baseline: str, judged_now: int,
                  records: Sequence[JudgeRecord]) -> "JudgeEntry":
        n = len(records)
        return cls(file=file, sha256=sha256, baseline=baseline, judged_now=judged_now, pairs=n,
                   win_rate=sum(r.preference for r in records) / n if n else None,
                   flip_share=sum(bool(r.flipped) for r in records) / n if n else None,
                   unsure_requests=sum(int(r.unsure_requests) for r in records))


@dataclass
class JudgeTarget:
    """One target of the judge manifest's `targets`: its config entries and its position-bias totals."""

    data: dict

    def entries(self) -> dict[str, JudgeEntry]:
        configs = self.data.get("configs")
        return {c: JudgeEntry.from_json(e) for c, e in configs.items()} if isinstance(configs, dict) else {}

    def entry(self, config: str) -> Optional[JudgeEntry]:
        e = (self.data.get("configs") or {}).get(config)
        return JudgeEntry.from_json(e) if isinstance(e, dict) else None

    def set_entry(self, config: str, entry: JudgeEntry) -> None:
        self.data.setdefault("configs", {})[config] = entry.to_json()
        self.update_totals()

    def keep_only(self, configs: set) -> None:
        """Drop the entries of configs the sweep no longer judges (or that became the baseline)."""
        self.data["configs"] = {c: e for c, e in (self.data.get("configs") or {}).items() if c in configs}
        self.update_totals()

    def update_totals(self) -> None:
        """The target's flip share and unsure requests over all its judged configs (position bias per model)."""
        entries = self.entries().values()
        pairs = sum(e.pairs or 0 for e in entries)
        flips = sum((e.flip_share or 0) * (e.pairs or 0) for e in entries)
        self.data["pairs"] = pairs
        self.data["flip_share"] = flips / pairs if pairs else None
        self.data["unsure_requests"] = sum(e.unsure_requests or 0 for e in entries)

    @property
    def flip_share(self) -> Optional[float]:
        return self.data.get("flip_share")

    @property
    def unsure_requests(self) -> int:
        return int(self.data.get("unsure_requests") or 0)


def judge_target(manifest: Optional[dict], target: str, create: bool = False) -> Optional[JudgeTarget]:
    """The judge manifest's record of `target` (created with `create`), None when it has none."""
    if not isinstance(manifest, dict):
        return None
    targets = manifest.setdefault("targets", {}) if create else (manifest.get("targets") or {})
    if create:
        return JudgeTarget(targets.setdefault(target, {"configs": {}}))
    entry = targets.get(target)
    return JudgeTarget(entry) if isinstance(entry, dict) else None


JUDGE_MANIFEST_KEYS = ("judge", "backend", "backend_reason", "engine", "numeric_identity", "template",
                       "template_sha256", "prompt_version", "judge_version", "against", "baseline", "rows",
                       "unsure_mass", "logic", "versions", "self_preference", "key", "targets", "runs", "engine_loads",
                       "labels")
JUDGE_TARGET_KEYS = ("configs", "pairs", "flip_share", "unsure_requests")


@dataclass
class JudgeManifest:
    """eval_results/judge/manifest.json, the JSON object itself behind named accessors (updated in place run
    after run, like the generation manifest)."""

    data: dict

    @classmethod
    def read(cls, data) -> "JudgeManifest":
        return cls(data if isinstance(data, dict) else {})

    def to_json(self) -> dict:
        return self.data

    @property
    def judge(self) -> dict:
        """{model, revision, hub, checkpoint, identity} of the judge that wrote the verdicts."""
        judge = self.data.get("judge")
        return judge if isinstance(judge, dict) else {}

    @property
    def judge_model(self) -> Optional[str]:
        return self.judge.get("model")

    @property
    def judge_checkpoint(self) -> Optional[str]:
        """The judge's folder as loaded (resolved)."""
        return self.judge.get("checkpoint")

    @property
    def judge_identity(self) -> Optional[dict]:
        """provenance.checkpoint_identity of the judge's folder, as recorded."""
        return self.judge.get("identity")

    @staticmethod
    def judge_record(model: str, revision, hub, checkpoint: str, identity: dict) -> dict:
        """The `judge` object start_run records: which judge wrote the verdicts."""
        return {"model": model, "revision": revision, "hub": hub, "checkpoint": checkpoint, "identity": identity}

    @property
    def baseline(self) -> Optional[str]:
        return self.data.get("baseline")

    @property
    def backend(self) -> Optional[str]:
        return self.data.get("backend")

    @property
    def self_preference(self) -> list:
        return self.data.get("self_preference") or []

    def target(self, target: str, create: bool = False) -> Optional[JudgeTarget]:
        return judge_target(self.data, target, create)

    def start_run(self, *, judge: dict, backend: str, backend_reason: str, engine: dict, numeric_identity: dict,
                  template: str, template_sha256: str, prompt_version, judge_version: int, against: str,
                  baseline: str, rows, unsure_mass: float, logic: dict, versions: dict, self_preference: list,
                  key: str, started: str, pairs_reused: int, max_runs: int) -> "JudgeRunRecord":
        """This run's settings over the previous run's, and its record appended to `runs` (returned)."""
        self.data.update({
            "judge": judge, "backend": backend, "backend_reason": backend_reason, "engine": engine,
            "numeric_identity": numeric_identity, "template": template, "template_sha256": template_sha256,
            "prompt_version": prompt_version, "judge_version": judge_version, "against": against,
            "baseline": baseline, "rows": rows, "unsure_mass": unsure_mass, "logic": logic, "versions": versions,
            "self_preference": self_preference, "key": key})
        self.data.setdefault("targets", {})
        record = {"started": started, "engine_loads": 0, "engine_build_s": None, "pairs_judged": 0,
                  "pairs_reused": pairs_reused, "requests": 0}
        self.data["runs"] = (self.data.get("runs") or [])[-(max_runs - 1):] + [record]
        self.data["engine_loads"] = 0  # this run's
        return JudgeRunRecord(record, self.data)


@dataclass
class JudgeRunRecord:
    """One judge run's record in the manifest's `runs` (the same JSON object), and the manifest it counts in."""

    data: dict
    manifest: dict

    def loaded_engine(self, build_s: float, labels: list[str]) -> None:
        self.data["engine_loads"] += 1
        self.manifest["engine_loads"] = self.data["engine_loads"]
        self.data["engine_build_s"] = round(build_s, 2)
        self.manifest["labels"] = labels

    def judged(self, pairs: int) -> None:
        self.data["pairs_judged"] += pairs
        self.data["requests"] += 2 * pairs

    def finished(self, wall_s: float) -> None:
        self.data["wall_s"] = round(wall_s, 2)

    @property
    def engine_loads(self) -> int:
        return self.data["engine_loads"]

    @property
    def pairs_judged(self) -> int:
        return self.data["pairs_judged"]


# --- llm_responses/<target>/race.json -----------------------------------------------------------------

@dataclass
class RaceRound(JsonRecord):
    """One round of a race: the rows it added and used, who raced, the leader, every survivor's verdict (the race
    rule's Verdict as JSON: config, score, diff, CI, p, Holm p) and who was eliminated."""

    round: int = 0
    rows_added: int = 0
    rows_used: int = 0
    survivors_before: list = field(default_factory=list)
    leader: Optional[str] = None
    verdicts: list = field(default_factory=list)
    eliminated: list = field(default_factory=list)


@dataclass
class RaceState(JsonRecord):
    """race.json: a target's race, written after each round (and its finish), read back to resume it and by the
    report. `eliminated`: {config: {round, rows}}; `usage`: {config: {tokens, wall_s}} generated so far."""

    identity: Optional[str] = None
    target: Optional[str] = None
    metric: Optional[str] = None
    alpha: Optional[float] = None
    alpha_rule: Optional[str] = None
    rule: Optional[str] = None
    planned_rounds: Optional[int] = None
    alpha_round: Optional[float] = None
    keep: Optional[int] = None
    rows_total: Optional[int] = None
    round_rows: list = field(default_factory=list)
    configs: list = field(default_factory=list)
    rounds: list = field(default_factory=list)  # of RaceRound
    survivors: list = field(default_factory=list)
    eliminated: dict = field(default_factory=dict)
    finished: bool = False
    usage: dict = field(default_factory=dict)
    round_wall_s: list = field(default_factory=list)
    finish_wall_s: Optional[float] = None

    @classmethod
    def from_json(cls, data) -> "RaceState":
        state = super().from_json(data)
        state.rounds = [RaceRound.from_json(r) for r in state.rounds or []]
        state.eliminated = state.eliminated or {}
        return state

    def to_json(self) -> dict:
        return {**super().to_json(), "rounds": [r.to_json() for r in self.rounds]}

    def eliminate(self, config: str, round_no: int, rows: int) -> None:
        self.eliminated[config] = {"round": round_no, "rows": rows}

    def eliminated_round(self, config: str) -> Optional[int]:
        out = self.eliminated.get(config)
        return out["round"] if out else None

    def eliminated_rows(self, config: str) -> Optional[int]:
        out = self.eliminated.get(config)
        return out["rows"] if out else None

    def tokens(self) -> int:
        return sum(u["tokens"] for u in self.usage.values())

    def full_sweep_tokens(self) -> int:
        """The tokens a full sweep would generate: the survivors' (all rows) plus each eliminated config's tokens
        scaled from its rows to all rows (an estimate; bench/race.py measures the full sweep)."""
        total = 0.0
        for config, use in self.usage.items():
            rows = self.eliminated_rows(config)
            total += use["tokens"] * self.rows_total / rows if rows else use["tokens"]
        return int(round(total))
