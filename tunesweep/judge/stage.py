"""The judge stage (between clean and score): every target's every config judged against a baseline answer to
the same test row, by ONE judge engine loaded once for the whole study.

Writes (DESIGN.md contracts):
- eval_results/judge/<target>/<config>.jsonl: one record per judged row, in test.jsonl order: `id`, both
  answers' sha256 and lengths (characters), `p_a` in each order with the two labels' probability `mass`, the
  averaged `preference` for the answer under test (verdict.py), whether it `flipped` with the order, and the
  `key` it was judged under;
- eval_results/judge/manifest.json: the judge (checkpoint identity: a content hash of a local folder, or
  `repo@commit` of a hub id), backend and engine settings, template hash, labels, the baseline, per target and
  config the file's sha256, pairs, flip share and unsure requests, and per run the engine loads.

The baseline (evaluation.judge.against): `centre` = the same target's centre config (config.centre_config),
`reference` = the test row's dataset output, or a config of the sweep by name. The baseline config itself is
not judged (its win rate against itself is 1/2 by definition) and has no file.

Cache: a judgment's key is a fingerprint of the judge's identity, the backend and precision it ran with, the
template's hash, JUDGE_VERSION, the row's instruction and input, and both answers' sha256. A rerun reads the
previous file only when the manifest vouches for it (its sha256) and judges only the rows whose key changed;
when nothing changed no engine is loaded. Each config's file is written atomically as soon as its verdicts
arrive, then the manifest: a killed stage loses at most the config in flight, and the rerun ends with the
files an uninterrupted run writes.

Responses are read through layout.read_target_responses (with the config), so a response file that generate
or clean did not write for the current run is refused in one line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..backends import cuda_visible, pick_generation_backend
from ..config import ExperimentConfig, expand_sweep, judge_baseline
from ..errors import UserError
from ..files import fingerprint, read_jsonl, sha256_bytes, sha256_file, sha256_text, write_json, write_jsonl
from ..hub import is_hub_model, resolve
from ..layout import (Workdir, current_checkpoint_hash, load_split, read_json_if_present, read_judgments,
                      partial_configs, read_target_responses)
from ..loading import check_checkpoint_folder, load_tokenizer
from ..provenance import checkpoint_identity, library_versions, logic
from ..records import JudgeEntry, JudgeManifest, JudgeRecord, JudgeRunRecord, judge_target
from .engine import EngineSpec, engine_settings, numeric_identity, start_engine
from .prompt import INPUT_BLOCK, PAIRWISE_TEMPLATE, PROMPT_VERSION, check_template, pick_labels
from .verdict import Pair, UNSURE_MASS, flip_share, judge_pairs

log = logging.getLogger(__name__)

# Bump when the stage writes other verdicts for the same inputs (part of every judgment's key).
JUDGE_VERSION = 2  # 2: a pair of identical answers is never `flipped` (it counted as one when the judge favours A)
MAX_RUNS = 50  # run records kept in the manifest


def judge_template(cfg: ExperimentConfig) -> tuple[str, str]:
    """(template text, what the manifest calls it): evaluation.judge.template's file (checked at load), else the
    built-in pairwise prompt."""
    path = cfg.evaluation.judge.template
    if path is None:
        return PAIRWISE_TEMPLATE, "built-in pairwise prompt (tunesweep/judge/prompt.py)"
    return check_template(read_template(path), f"evaluation.judge.template ({path})"), path


def read_template(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"evaluation.judge.template: {path}: cannot be read as UTF-8 text "
                        f"({exc.__class__.__name__})") from None


def template_sha256(template: str = PAIRWISE_TEMPLATE) -> str:
    """The pairwise prompt's identity: its wording and version (the labels follow from the tokenizer, which the
    checkpoint's identity covers, chat template included). A user's template changes it with its text."""
    return sha256_bytes(json.dumps([PROMPT_VERSION, template, INPUT_BLOCK]).encode())


@dataclass
class JudgeModel:
    """The judge checkpoint as this run loads it."""

    checkpoint: str  # a local folder (a hub id's pinned snapshot folder)
    identity: dict  # provenance.checkpoint_identity: {"checkpoint", "sha256", "stat"}
    hub: Optional[str] = None  # `repo@commit` when the judge is a hub id


def resolve_judge(cfg: ExperimentConfig, previous: Optional[dict]) -> JudgeModel:
    """The judge's local folder and identity: a hub id pinned to its commit (evaluation.judge.revision, default
    main), a local folder hashed like generation's checkpoints (the recorded hash reused while the files' names,
    sizes and mtimes are unchanged)."""
    jc = cfg.evaluation.judge
    if is_hub_model(jc.model):
        snap = resolve(jc.model, jc.revision, "model", "evaluation.judge.model")
        check_checkpoint_folder(snap.path, "judge model")
        return JudgeModel(snap.path, checkpoint_identity(snap.path), snap.identity)
    folder = Path(jc.model).expanduser()
    if not folder.is_dir():
        raise UserError(f"evaluation.judge.model = {jc.model!r}: no such folder (and not a hub id); build or "
                        "download the judge first")
    check_checkpoint_folder(str(folder), "judge model")
    recorded = JudgeManifest.read(previous)
    prior = recorded.judge_identity if recorded.judge_checkpoint == str(folder.resolve()) else None
    return JudgeModel(str(folder.resolve()), checkpoint_identity(str(folder.resolve()), prior))


def self_preference(cfg: ExperimentConfig, judge: JudgeModel) -> list[str]:
    """Warnings for judged targets that share the judge's base model (or are the judge): a judge tends to
    prefer answers written like its own."""
    jc = cfg.evaluation.judge
    out = []
    for target in cfg.run_targets():
        checkpoint = target.checkpoint(cfg.path)
        same_folder = Path(checkpoint).is_dir() and Path(checkpoint).resolve() == Path(judge.checkpoint)
        same_base = jc.model in (target.model.base, checkpoint)
        if same_folder or same_base:
            out.append(f"{target.name}: the judge {'is this checkpoint' if same_folder else 'shares its base'} "
                       f"({jc.model}); expect self-preference (a judge favours answers like its own)")
    return out


# --- the plan ----------------------------------------------------------------------------------------

@dataclass
class PlannedRow:
    """One row to judge: the pair, both answers' digests and lengths, and the key its verdict is cached under."""

    id: object
    pair: Pair
    answer_sha256: str
    baseline_sha256: str
    answer_chars: int
    baseline_chars: int
    key: str = ""


@dataclass
class ConfigPlan:
    target: str
    config: str
    baseline: str  # a config name or "reference"
    rows: list[PlannedRow]
    reused: dict = field(default_factory=dict)  # row id -> the previous JudgeRecord, still current

    @property
    def pending(self) -> list[int]:
        return [i for i, r in enumerate(self.rows) if r.id not in self.reused]


def previous_records(paths: Workdir, manifest: Optional[dict], target: str, config: str) -> dict:
    """{row id: record} of the config's previous file, only when the manifest vouches for the file (its sha256):
    a file edited by hand or left by a killed run is not trusted."""
    path = paths.judge_file(target, config)
    judged = judge_target(manifest, target)
    entry = judged.entry(config) if judged is not None else None
    if not path.is_file() or entry is None or entry.sha256 != sha256_file(path):
        return {}
    try:
        return {r.id: r for r in map(JudgeRecord.from_json, read_jsonl(path))}
    except UserError:
        return {}


def plan_config(target: str, config: str, baseline: str, records: dict, tests: list[dict], n_rows: int,
                key_base: dict, previous: dict) -> ConfigPlan:
    plan = ConfigPlan(target, config, baseline, [])
    for i in range(n_rows):
        rec, test = records[config][i], tests[i]
        answer = rec.response
        base_text = test["output"] if baseline == "reference" else records[baseline][i].response
        row = PlannedRow(rec.id, Pair(test.get("instruction", ""), test.get("input", "") or "", answer, base_text),
                         sha256_text(answer), sha256_text(base_text), len(answer), len(base_text))
        row.key = fingerprint({**key_base, "instruction": sha256_text(row.pair.instruction),
                               "input": sha256_text(row.pair.input), "answer": row.answer_sha256,
                               "baseline": row.baseline_sha256})
        plan.rows.append(row)
        old = previous.get(row.id)
        if old is not None and old.key == row.key:
            plan.reused[row.id] = old
    return plan


def verdict_record(row: PlannedRow, v) -> JudgeRecord:
    return JudgeRecord(id=row.id, answer_sha256=row.answer_sha256, baseline_sha256=row.baseline_sha256,
                       answer_chars=row.answer_chars, baseline_chars=row.baseline_chars,
                       p_a_test_first=v.p_a_test_first, p_a_test_second=v.p_a_test_second,
                       mass_test_first=v.mass_test_first, mass_test_second=v.mass_test_second,
                       preference=v.preference, flipped=v.flipped, unsure_requests=v.unsure_requests, key=row.key)


# --- the stage ---------------------------------------------------------------------------------------

@dataclass
class JudgeRun:
    """What one run of the stage judges with and against, checked before any work."""

    cfg: ExperimentConfig
    paths: Workdir
    names: list[str]  # the sweep's configs
    baseline: str
    targets: list
    loaded: dict  # target name -> layout.TargetResponses
    tests: list[dict]
    previous_manifest: Optional[dict]
    judge_model: JudgeModel
    backend: str
    backend_reason: str
    on_cuda: bool
    settings: dict  # engine settings
    numeric: dict  # engine.numeric_identity
    template_text: str
    template_name: str
    template: str  # template_sha256
    started: float = field(default_factory=time.time)

    @property
    def key_base(self) -> dict:
        return {"judge": self.judge_model.identity["sha256"], **self.numeric, "template": self.template,
                "judge_version": JUDGE_VERSION}


def prepare_run(cfg: ExperimentConfig, model: Optional[str], backend: Optional[str]) -> JudgeRun:
    """Every input checked before any work: the baseline, the responses the current run vouches for, the test
    rows, the judge and its engine settings."""
    jc = cfg.evaluation.judge
    paths = Workdir(cfg.path)
    names = [dc.name for dc in expand_sweep(cfg.generation)]
    baseline = judge_baseline(cfg)
    if baseline != "reference" and baseline not in names:
        raise UserError(f"evaluation.judge.against = {jc.against!r}: the baseline config {baseline} is not in the "
                        f"sweep ({cfg.generation.mode}); name a config of the sweep or use reference")
    targets = cfg.run_targets(model)
    cfg.pin_bases(targets)
    loaded = {t.name: read_target_responses(cfg.path, t.name, raced_out(cfg, t.name, names, baseline),
                                            checkpoint_hash=current_checkpoint_hash(cfg, t), cfg=cfg) for t in targets}
    tests = load_split(cfg.path, "test")
    previous_manifest = read_json_if_present(paths.judge_manifest)
    judge_model = resolve_judge(cfg, previous_manifest)
    chosen, why = pick_generation_backend(backend or jc.backend)
    on_cuda = cuda_visible()
    settings = engine_settings(chosen, judge_model.checkpoint, jc, cfg.seed, on_cuda)
    template_text, template_name = judge_template(cfg)
    return JudgeRun(cfg, paths, names, baseline, targets, loaded, tests, previous_manifest, judge_model, chosen, why,
                    on_cuda, settings, numeric_identity(chosen, settings, on_cuda), template_text, template_name,
                    template_sha256(template_text))


def plan_run(run: JudgeRun, force: bool) -> list[ConfigPlan]:
    """Per target and config (the baseline config aside), the rows to judge and those still current."""
    plans = []
    jc = run.cfg.evaluation.judge
    for t in run.targets:
        tr = run.loaded[t.name]
        n_rows = min(tr.n_rows, jc.rows or tr.n_rows)
        for config in run.names:
            if config == run.baseline:
                continue
            previous = {} if force else previous_records(run.paths, run.previous_manifest, t.name, config)
            plans.append(plan_config(t.name, config, run.baseline, tr.records, run.tests, n_rows, run.key_base,
                                     previous))
    return plans


def start_manifest(run: JudgeRun, warnings: list[str], reused_pairs: int) -> tuple[JudgeManifest, JudgeRunRecord]:
    """(the judge manifest with this run's settings and run record, the run record)."""
    jc = run.cfg.evaluation.judge
    manifest = JudgeManifest.read(run.previous_manifest)
    record = manifest.start_run(
        judge=JudgeManifest.judge_record(jc.model, jc.revision, run.judge_model.hub, run.judge_model.checkpoint,
                                         run.judge_model.identity),
        backend=run.backend, backend_reason=run.backend_reason, engine=run.settings, numeric_identity=run.numeric,
        template=run.template_name, template_sha256=run.template, prompt_version=PROMPT_VERSION,
        judge_version=JUDGE_VERSION, against=jc.against, baseline=run.baseline, rows=jc.rows, unsure_mass=UNSURE_MASS,
        logic=logic("judge", JUDGE_VERSION), versions=library_versions(), self_preference=warnings,
        key="fingerprint of the judge identity, backend and precision, template_sha256, judge_version, the row's "
            "instruction and input sha256 and both answers' sha256",
        started=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), pairs_reused=reused_pairs,
        max_runs=MAX_RUNS)
    return manifest, record


@dataclass
class JudgeEngine:
    """The ONE judge engine of a run, loaded when the first pair needs it."""

    run: JudgeRun
    record: JudgeRunRecord  # the run's record in the manifest
    engine: object = None
    tokenizer: object = None
    labels: object = None

    def load(self) -> None:
        run, jc = self.run, self.run.cfg.evaluation.judge
        self.tokenizer = load_tokenizer(run.judge_model.checkpoint)
        self.labels = pick_labels(self.tokenizer, f"evaluation.judge.model = {jc.model!r}")
        log.info("judge: loading the judge engine (%s) once for every target and config", run.backend)
        spec = EngineSpec(run.backend, run.judge_model.checkpoint, run.settings if run.backend == "vllm" else {},
                          jc.hf_batch_size)
        self.engine = start_engine(spec, run.cfg, run.on_cuda, ray=run.cfg.execution.backend == "ray")
        self.record.loaded_engine(self.engine.build_s, [self.labels.first, self.labels.second])
        log.info("judge: judge engine loaded in %.1f s (engine loads this run: %d)", self.engine.build_s,
                 self.record.engine_loads)

    def judge(self, plan: ConfigPlan) -> dict:
        """{row id: JudgeRecord} of the plan: the reused ones and the pending ones judged now."""
        out = dict(plan.reused)
        pending = plan.pending
        if not pending:
            return out
        if self.engine is None:
            self.load()
        t = time.perf_counter()
        verdicts = judge_pairs([plan.rows[i].pair for i in pending], self.tokenizer, self.labels,
                               self.engine.score, self.run.template_text)
        for i, v in zip(pending, verdicts):
            out[plan.rows[i].id] = verdict_record(plan.rows[i], v)
        self.record.judged(len(pending))
        log.info("judge: %s %s vs %s: %d pair(s) judged in %.1f s, %d reused, flip share %.2f", plan.target,
                 plan.config, plan.baseline, len(pending), time.perf_counter() - t, len(plan.reused),
                 flip_share(verdicts))
        return out

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()


def write_plan(run: JudgeRun, manifest: JudgeManifest, plan: ConfigPlan, judged: dict) -> None:
    """The config's verdict file, then its manifest entry (a killed stage loses at most the config in flight)."""
    records = [judged[r.id] for r in plan.rows]
    path = run.paths.judge_file(plan.target, plan.config)
    write_jsonl(path, [r.to_json() for r in records])
    entry = JudgeEntry.summarise(path.relative_to(run.paths.root).as_posix(), sha256_file(path), plan.baseline,
                                 len(plan.pending), records)
    manifest.target(plan.target, create=True).set_entry(plan.config, entry)
    write_json(run.paths.judge_manifest, manifest.to_json())


def judge(cfg: ExperimentConfig, model: Optional[str] = None, backend: Optional[str] = None, force: bool = False,
          export_alpacaeval: Optional[str] = None) -> dict:
    """Judge every target's configs (or `model`'s) against the baseline; returns a summary of the run."""
    jc = cfg.evaluation.judge
    if jc is None:
        log.info("judge: evaluation.judge is not set in the config: nothing to judge (skipped)")
        if export_alpacaeval:
            raise UserError("--export-alpacaeval: evaluation.judge is not set, so there are no judgments to export")
        return {"skipped": True, "engine_loads": 0}
    run = prepare_run(cfg.for_execution(), model, backend)
    cfg, paths = run.cfg, run.paths
    plans = plan_run(run, force)
    pending_pairs = sum(len(p.pending) for p in plans)
    reused_pairs = sum(len(p.reused) for p in plans)
    warnings = self_preference(cfg, run.judge_model)
    for w in warnings:
        log.warning("judge: %s", w)
    log.info("judge: %s (%s) via %s (%s): %d target(s) x %d config(s) against %s, %d pair(s) to judge "
             "(%d requests), %d reused", jc.model, run.judge_model.hub or run.judge_model.identity["sha256"][:12],
             run.backend, run.backend_reason, len(run.targets), len(run.names) - (run.baseline != "reference"),
             run.baseline, pending_pairs, 2 * pending_pairs, reused_pairs)
    manifest, record = start_manifest(run, warnings, reused_pairs)
    engine = JudgeEngine(run, record)
    try:
        for plan in plans:
            write_plan(run, manifest, plan, engine.judge(plan))
    finally:
        engine.close()
    # Entries of configs the sweep no longer has (or that became the baseline) are dropped.
    for t in run.targets:
        if (judged := manifest.target(t.name)) is not None:
            judged.keep_only({p.config for p in plans if p.target == t.name})
    record.finished(time.time() - run.started)
    write_json(paths.judge_manifest, manifest.to_json())
    log.info("judge: %d pair(s) judged, %d reused; judge engine loads this run: %d; verdicts in %s",
             record.pairs_judged, reused_pairs, record.engine_loads, paths.judge_dir)
    if export_alpacaeval:
        n = export_annotations(cfg, Path(export_alpacaeval), model)
        log.info("judge: %d AlpacaEval annotations written to %s", n, export_alpacaeval)
    return {"skipped": False, "engine_loads": record.engine_loads, "pairs_judged": record.pairs_judged,
            "pairs_reused": reused_pairs, "backend": run.backend, "manifest": str(paths.judge_manifest)}


# --- the AlpacaEval export --------------------------------------------------------------------------

def raced_out(cfg: ExperimentConfig, target: str, names: list[str], baseline: Optional[str] = None) -> list[str]:
    """The configs of `names` the judge reads: not those a race eliminated (they hold some rows only, and no
    table shows them); a baseline config the race eliminated is one line."""
    partial = partial_configs(cfg.path, target)
    if baseline in partial:
        raise UserError(f"evaluation.judge.against: the baseline config {baseline} of {target!r} was eliminated by "
                        f"the race after {partial[baseline]} rows, so it has no answer to every row; judge against "
                        "reference or a config that survived (eval_results/race.csv)")
    return [n for n in names if n not in partial]


def export_annotations(cfg: ExperimentConfig, out: Path, model: Optional[str] = None) -> int:
    """AlpacaEval's annotation format, one object per judged pair: instruction, output_1 (the baseline),
    output_2 (the answer under test), generator_1, generator_2 and preference in [1, 2] (1 + the preference
    for output_2; 1.5 = a tie), plus the annotator and the row id."""
    paths = Workdir(cfg.path)
    names = [dc.name for dc in expand_sweep(cfg.generation)]
    tests = {r["id"]: r for r in load_split(cfg.path, "test")}
    manifest = JudgeManifest.read(read_json_if_present(paths.judge_manifest))
    annotator = f"tunesweep-judge:{manifest.judge_model}"
    rows = []
    for t in cfg.run_targets(model):
        judged = read_judgments(cfg.path, t.name, names)
        if not judged:
            continue
        responses = read_target_responses(cfg.path, t.name, raced_out(cfg, t.name, names),
                                          checkpoint_hash=current_checkpoint_hash(cfg, t), cfg=cfg).records
        entries = manifest.target(t.name).entries()
        for config, records in judged.items():
            baseline = entries[config].baseline
            answers = {r.id: r.response for r in responses[config]}
            base = {r.id: r.response for r in responses[baseline]} if baseline != "reference" else None
            for rec in map(JudgeRecord.from_json, records):
                test = tests[rec.id]
                instruction = test["instruction"] + (f"\n\n{test['input']}" if (test.get("input") or "").strip() else "")
                output_1 = test["output"] if base is None else base[rec.id]
                output_2 = answers[rec.id]
                if sha256_text(output_1) != rec.baseline_sha256 or sha256_text(output_2) != rec.answer_sha256:
                    raise UserError(f"{paths.judge_file(t.name, config)}: row {rec.id}: judged other answers than "
                                    "the responses hold now; rerun `tunesweep judge --config <config>` first")
                rows.append({"instruction": instruction, "output_1": output_1, "output_2": output_2,
                             "generator_1": f"{t.name}:{baseline}", "generator_2": f"{t.name}:{config}",
                             "preference": 1.0 + rec.preference, "annotator": annotator, "id": rec.id})
    if not rows:
        raise UserError(f"{paths.judge_manifest}: no judgments to export; run `tunesweep judge --config <config>` first")
    write_json(out, rows)
    return len(rows)
