"""The generation stage: test-set responses for every decoding config of the sweep.

For each run target (a fine-tuned model, or `<model>-base`) this writes
`llm_responses/<target>/<config>.jsonl` (one record per test row, in test.jsonl order; the cleaned
`response` is left null for the clean stage, which owns it) and `llm_responses/<target>/manifest.json`
(per config: the decoding parameters that took effect, seeds, checkpoint hash, backend, library
versions, wall time, tokens and tokens/s; and `batch_invariance`: when the greedy config is generated,
its first INVARIANCE_ROWS rows are generated again, each alone and in reversed order, in the same
engine, and the share of rows whose token ids match the sweep's is recorded).

Resumable at config granularity: a config whose file still holds what generate wrote (its digest
matches the manifest) and whose inputs (checkpoint hash, decoding parameters, test rows, seed,
backend, library versions) are unchanged is skipped; when every config of a target is current no
engine is started at all. The manifest is rewritten after each config, and every file is written
under a temporary name and renamed, so a killed run loses at most the config in flight.

This module plans (`plan_target`: typed `Job`s, which are pending), runs (hands a `Request` to a
backend of tunesweep.generate.backend) and records; vllm.py and hf.py own everything library-specific.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..backends import cuda_visible, pick_generation_backend
from ..config import ExperimentConfig, RunTarget, expand_sweep
from ..errors import UserError
from ..files import fingerprint, write_json, write_jsonl
from ..loading import check_checkpoint_folder
from ..layout import Workdir, load_split, read_json_if_present, response_settings, test_set_sha256
from ..records import ConfigEntry, GenerationManifest, GenerationRun, ResponseRecord, generated_digest
from ..provenance import checkpoint_identity, library_versions, logic, recorded_logic
from ..templates import build_prompt, stop_strings
from .backend import (INVARIANCE_ROWS, AgreementDone, Backend, ConfigDone, EngineBuilt, InvarianceCheck,
                      InvarianceDone, Job, Request, agreement_record, batch_invariance_record)

log = logging.getLogger(__name__)

MAX_RUNS = 50  # run records kept in the manifest (what each run wrote, engine builds)
# Bump when generate writes other response files for the same inputs (decoding of token ids, records).
GENERATE_VERSION = 2  # 2: sampled rows seeded by row only, the same for every config (common random numbers)


def generate_logic(workdir: Path, target: RunTarget) -> dict:
    """This stage's logic version over those of what it reads: split.json, and for a fine-tuned target
    its tunesweep.json (which holds split's too)."""
    paths = Workdir(workdir)
    upstream = recorded_logic(paths.split_meta)
    if not target.is_base:
        upstream = {**upstream, **recorded_logic(paths.model_record(target.model.name))}
    return logic("generate", GENERATE_VERSION, upstream)


def check_checkpoint(target: RunTarget, workdir: Path) -> str:
    checkpoint = target.checkpoint(workdir)
    if not target.is_base and not (Path(checkpoint) / "config.json").is_file():
        raise UserError(f"{checkpoint}: fine-tuned checkpoint of model {target.name!r} not found; "
                        f"run `tunesweep finetune --config ... --model {target.name}` first")
    check_checkpoint_folder(checkpoint, "base model" if target.is_base else "fine-tuned checkpoint")
    return checkpoint


def get_backend(name: str, on_cuda: bool) -> Backend:
    if name == "vllm":
        from .vllm import VllmBackend

        return VllmBackend(on_cuda)
    if name == "hf":
        from .hf import HfBackend

        return HfBackend(on_cuda)
    raise ValueError(f"unknown generation backend {name!r}")


# --- planning: what is current, what must run ---------------------------------------------------

def is_current(path: Path, job: Job, manifest: GenerationManifest, test_sha: Optional[str] = None) -> bool:
    entry = manifest.entry(job.config)
    # A config a race eliminated holds only the rows it used: never current for a run that wants them all.
    return (entry is not None and not entry.partial and entry.inputs == job.inputs and path.is_file()
            and (test_sha is None or entry.test_set_sha256 == test_sha)
            and generated_digest(path) == entry.generated_sha256)


def load_manifest(path: Path) -> GenerationManifest:
    try:
        manifest = GenerationManifest(read_json_if_present(path) or {})
        entries = manifest.raw_entries or {}
        if isinstance(entries, dict) and all(isinstance(e, dict) for e in entries.values()):
            return manifest
        raise UserError(f"{path}: configs is not an object of config entries")
    except (OSError, UserError):
        log.warning("%s: unreadable, every config of this model will be regenerated", path)
        return GenerationManifest.empty()


@dataclass
class TargetPlan:
    """Everything a run of one target needs; `pending` are the jobs whose output is not current."""

    target: RunTarget
    backend: Backend
    checkpoint: str
    checkpoint_id: dict  # provenance.checkpoint_identity
    out_dir: Path
    manifest: GenerationManifest
    rows: list[dict]
    prompts: list[str]
    jobs: list[Job]
    pending: list[Job]
    engine: dict
    versions: dict
    stop: list[str]
    limit: Optional[int]
    backend_reason: Optional[str] = None
    test_sha: Optional[str] = None  # sha256 of alpaca_data/test.jsonl
    logic: Optional[dict] = None  # provenance.logic of this stage over its inputs


def plan_target(cfg: ExperimentConfig, target: RunTarget, backend: str | Backend, rows: list[dict],
                limit: Optional[int], force: bool = False) -> TargetPlan:
    """The jobs of one target and which of them are pending. Starts nothing; `generate` uses it, and
    tests can ask what a run would redo."""
    if isinstance(backend, str):
        backend = get_backend(backend, cuda_visible())
    paths = Workdir(cfg.path)
    checkpoint = check_checkpoint(target, cfg.path)
    manifest = load_manifest(paths.manifest(target.name))
    ckpt = checkpoint_identity(checkpoint, manifest.recorded_identity(checkpoint))
    stop = stop_strings(cfg.template)
    versions = library_versions()
    prompts = [build_prompt(r, cfg.template) for r in rows]
    row_ids = [r["id"] for r in rows]
    test_sha = test_set_sha256(cfg.path)
    engine = backend.engine_settings(checkpoint, cfg)
    common = {
        "checkpoint_hash": ckpt["sha256"],
        "backend": backend.name,
        "rows": fingerprint([[r["id"], p, r["output"]] for r, p in zip(rows, prompts)]),
        "test_set_sha256": test_sha,
        "logic": generate_logic(cfg.path, target),
        "template": cfg.template,
        "run_seed": cfg.seed,
        "settings": response_settings(cfg, backend.name),
        "versions": {k: v for k, v in versions.items() if k in backend.result_libraries},
        **backend.identity(engine, cfg),
    }
    jobs, pending = [], []
    for dc in expand_sweep(cfg.generation):
        call, params, note = backend.job_params(dc, cfg.generation.max_new_tokens, stop)
        job = Job(decoding=dc, call=call, params=params, note=note,
                  seeds=backend.request_seeds(cfg.seed, dc, row_ids),
                  inputs=fingerprint({**common, "call": call, "params": params}))
        jobs.append(job)
        if force or not is_current(paths.response_file(target.name, dc.name), job, manifest, test_sha):
            pending.append(job)
    return TargetPlan(target=target, backend=backend, checkpoint=checkpoint, checkpoint_id=ckpt,
                      out_dir=paths.responses_dir(target.name), manifest=manifest, rows=rows, prompts=prompts,
                      jobs=jobs, pending=pending, engine=engine, versions=versions, stop=stop, limit=limit,
                      test_sha=test_sha, logic=common["logic"])


# --- running ------------------------------------------------------------------------------------

def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _records(plan: TargetPlan, done: ConfigDone, indices: Optional[list[int]] = None) -> list[dict]:
    """The response records of one config; `response` is the clean stage's.
    `indices`: the rows of `plan` that `done.results` hold, ascending (all rows when None)."""
    indices = range(len(plan.rows)) if indices is None else indices
    return [ResponseRecord(id=plan.rows[i]["id"], prompt=plan.prompts[i], reference=plan.rows[i]["output"],
                           response_raw=res.response_raw, response=None, finish_reason=res.finish_reason,
                           num_tokens=res.num_tokens, config=done.config, model=plan.target.name)
            for i, res in zip(indices, done.results)]


def run_target(cfg: ExperimentConfig, plan: TargetPlan) -> dict:
    """Generate the pending configs of one target; returns its one-line summary as a dict."""
    from tqdm import tqdm

    target = plan.target.name
    paths = Workdir(cfg.path)
    manifest = plan.manifest
    pending = plan.pending
    backend = plan.backend
    summary = {"target": target, "backend": backend.name, "configs": len(plan.jobs),
               "generated": [], "skipped": [j.config for j in plan.jobs if j not in pending],
               "tokens": 0, "wall_s": 0.0, "tokens_per_s": None, "engine_builds": 0, "engine_build_s": None}
    clear_stale(plan)
    if not pending:
        log.info("%s: all %d configs current, nothing to generate (no engine started)", target, len(plan.jobs))
        return summary

    run = start_run(plan, pending)
    by_name = {j.config: j for j in pending}
    check = invariance_check(plan, manifest)
    write_json(paths.manifest(target), manifest.to_json())

    log.info("%s: %d of %d configs to generate (%d current) with %s from %s", target, len(pending),
             len(plan.jobs), len(summary["skipped"]), backend.name, plan.checkpoint)
    request = Request(checkpoint=plan.checkpoint, engine=plan.engine, row_ids=[r["id"] for r in plan.rows],
                      prompts=plan.prompts, jobs=pending, stop=plan.stop, seed=cfg.seed,
                      batch_size=cfg.generation.hf_batch_size, use_tqdm=sys.stderr.isatty(), invariance=check,
                      beam_impl=cfg.generation.beam_impl)
    bar = tqdm(total=len(pending), desc=f"{target}", unit="config", disable=None)
    try:
        for msg in backend.run(request):
            if isinstance(msg, AgreementDone):
                manifest.replica_agreement = agreement_record(msg, manifest.replica_agreement)
                write_json(paths.manifest(target), manifest.to_json())
                log.info("%s: %d replicas vs one engine on %d rows: identical in %s", target, msg.replicas,
                         len(msg.row_ids), ", ".join(f"{c} {v:.2f}" for c, v in msg.identical.items()))
                continue
            if isinstance(msg, InvarianceDone):
                record = manifest.batch_invariance = batch_invariance_record(msg, backend.name)
                write_json(paths.manifest(target), manifest.to_json())
                log.info("%s: batch invariance of %s over %d rows: identical token ids alone %.2f, reversed %.2f",
                         target, msg.greedy_config, len(msg.row_ids), record["alone_identical"],
                         record["reversed_identical"])
                continue
            if isinstance(msg, EngineBuilt):  # the model is loaded
                run.built_engine(msg.build_s)
                builds = manifest.count_engine_build()
                summary["engine_builds"] += 1
                summary["engine_build_s"] = run.engine_build_s
                log.info("%s: %s built in %.1f s (engine build %d for this model)", target, backend.label,
                         msg.build_s, builds)
                continue
            job = by_name[msg.config]
            tokens = sum(r.num_tokens for r in msg.results)
            write_config(cfg, plan, job, msg, config_wall(msg, tokens))
            run.wrote(job.config)
            write_json(paths.manifest(target), manifest.to_json())
            summary["generated"].append(job.config)
            summary["tokens"] += tokens
            bar.update(1)
    except BaseException as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        manifest.mark_failed(f"the generate run started {run.started} failed: {reason[:300]}")
        write_json(paths.manifest(target), manifest.to_json())
        raise
    finally:
        bar.close()
    manifest.mark_finished()
    write_json(paths.manifest(target), manifest.to_json())
    summary["wall_s"] = round(sum(manifest.entry(c).wall_s for c in summary["generated"]), 3)
    if summary["wall_s"]:
        summary["tokens_per_s"] = round(summary["tokens"] / summary["wall_s"], 1)
    return summary


def config_wall(done: ConfigDone, tokens: int) -> float:
    """A config's wall time: configs sharing one library call split its wall time by their share of its tokens
    (so the walls add up to the call's); tokens/s is then the call's throughput."""
    if done.call_tokens:
        return done.call_wall_s * tokens / done.call_tokens
    return done.call_wall_s / len(done.call_configs)


def write_config(cfg: ExperimentConfig, plan: TargetPlan, job: Job, done: ConfigDone, wall: float,
                 indices: Optional[list[int]] = None, extra: Optional[dict] = None) -> dict:
    """Write one config's response file (the rows `indices` of the plan, or all) and its manifest entry with
    `extra` fields (a race's `partial` and `race`); the manifest itself is the caller's to write. Returns the entry."""
    paths = Workdir(cfg.path)
    records = _records(plan, done, indices)
    path = paths.response_file(plan.target.name, job.config)
    write_jsonl(path, [r.to_json() for r in records])
    tokens = sum(r.num_tokens for r in records)
    entry = _config_entry(plan, cfg, job, done, tokens, wall, path, records)
    for name, value in (extra or {}).items():
        setattr(entry, name, value)
    plan.manifest.set_entry(job.config, entry)
    return entry


def clear_stale(plan: TargetPlan) -> None:
    """A run killed by SIGKILL cannot remove its temporary files: clear such leftovers (never trusted)."""
    for stale in plan.out_dir.glob(".*.tmp") if plan.out_dir.is_dir() else []:
        stale.unlink(missing_ok=True)


def start_run(plan: TargetPlan, pending: list[Job]) -> GenerationRun:
    """Mark the manifest as being written by a run of `pending` (`incomplete` until the run ends), drop the
    entries of the configs it regenerates, and return the run's record (in the manifest's `runs`)."""
    run = GenerationRun.start(_now(), plan.backend.name, [j.config for j in pending])
    plan.manifest.start_run(
        model=plan.target.name, checkpoint=plan.checkpoint, checkpoint_hash=plan.checkpoint_id["sha256"],
        # <repo>@<commit> of a hub base (its snapshot folder is `checkpoint`); the folder itself otherwise
        checkpoint_identity=plan.checkpoint_id["checkpoint"],
        checkpoint_stat=plan.checkpoint_id["stat"], backend=plan.backend.name,
        backend_reason=plan.backend_reason, versions=plan.versions,
        test_rows=len(plan.rows), limit=plan.limit, engine=plan.engine or None,
        test_set_sha256=plan.test_sha, logic=plan.logic,
        # Until this run ends, the configs it regenerates are missing: score says so instead of trusting
        # older files (configs from an older checkpoint or row set must not pass as current while we run).
        # A run that fails (a checkpoint that does not load) leaves the mark and its reason.
        incomplete=f"a generate run started {_now()} has not finished",
        run=run, pending=[j.config for j in pending], max_runs=MAX_RUNS)
    return run


def invariance_check(plan: TargetPlan, manifest: GenerationManifest) -> Optional[InvarianceCheck]:
    """The batch-invariance check of this run, if any: the sweep's greedy config (temperature 0, num_beams 1)
    when it is generated now. A current greedy config keeps its recorded check; a sweep without one says so."""
    greedy = next((j for j in plan.jobs if j.decoding.mode == "greedy"), None)
    if greedy is None:
        manifest.batch_invariance = {"skipped": "the sweep has no greedy config (temperature 0, num_beams 1)"}
        return None
    if greedy not in plan.pending:
        return None
    manifest.batch_invariance = None  # measured again below, with the new responses
    return InvarianceCheck(greedy.config, tuple(range(min(INVARIANCE_ROWS, len(plan.rows)))))


def _config_entry(plan: TargetPlan, cfg: ExperimentConfig, job: Job, done: ConfigDone, tokens: int, wall: float,
                  path: Path, records: list[ResponseRecord]) -> ConfigEntry:
    dc = job.decoding
    shared = (done.call_note or plan.backend.shared_call_note(len(done.call_configs))
              if len(done.call_configs) > 1 else None)
    return ConfigEntry(
        top_k=dc.top_k, num_beams=dc.num_beams, temperature=dc.temperature, mode=dc.mode, ignored=list(dc.ignored),
        effective={"call": job.call, **job.params},
        # Which beam search ran is provenance, not identity (not in `inputs`): both give the same tokens
        # (tests/test_beams.py), so switching generation.beam_impl regenerates nothing.
        beam_impl=done.beam_impl or None,
        note=job.note + (("; " if job.note else "") + shared if shared else ""),
        seed=plan.backend.seed_scheme(job.call, dc.mode, cfg.seed),
        max_new_tokens=cfg.generation.max_new_tokens,
        rows=len(records),
        finish_reasons={r: sum(1 for x in records if x.finish_reason == r) for r in ("stop", "length")},
        wall_s=round(wall, 3),
        tokens=tokens,
        tokens_per_s=round(tokens / wall, 1) if wall else None,
        batch=ConfigEntry.batch_record(round(done.call_wall_s, 3), done.call_configs, done.call_tokens),
        backend=plan.backend.name,
        checkpoint_hash=plan.checkpoint_id["sha256"],
        test_set_sha256=plan.test_sha,
        logic=plan.logic,
        inputs=job.inputs,
        settings=response_settings(cfg, plan.backend.name),
        generated_sha256=generated_digest(path),
        written=_now(),
    )


def target_backend(chosen: str, requested: str, checkpoint: str) -> tuple[str, Optional[str]]:
    """The backend for one target: a bitsandbytes 4-bit checkpoint (unsloth's `*-bnb-4bit` bases as
    `-base` rows) needs vLLM's bitsandbytes quantization; where the installed vLLM lacks it, `auto`
    generates that target with transformers instead (which loads bnb 4-bit itself)."""
    if chosen != "vllm":
        return chosen, None
    from .vllm import is_prequantized_bnb, vllm_supports_bnb

    if not is_prequantized_bnb(checkpoint) or vllm_supports_bnb():
        return chosen, None
    why = (f"{checkpoint} is a bitsandbytes 4-bit checkpoint and the installed vLLM has no bitsandbytes "
           "quantization (removed upstream)")
    if requested == "vllm":
        raise UserError(f"generation.backend = vllm: {why}; use --backend auto or hf for this model")
    return "hf", why + ": generated with the hf backend"


# execution.agreement_rows = null on CUDA: rows of the one-engine check after a replicated sweep.
AGREEMENT_ROWS = 32


def ray_setup(cfg: ExperimentConfig, on_cuda: bool):
    """execution.backend = ray: join the cluster; returns a function wrapping a target's backend in
    R replica actors (tunesweep.generate.sharded)."""
    from ..cluster import engine_gpus, join
    from .sharded import ShardedBackend

    gpus = engine_gpus(cfg, on_cuda)
    _, shared = join(cfg, "engine_gpus", gpus, "replica")
    ex = cfg.execution
    log.info("generation on Ray: %d replica(s) per model, %g CPUs and %g GPUs each, %d retries", ex.replicas,
             ex.cpus, gpus, ex.retries)

    agreement_rows = ex.agreement_rows if ex.agreement_rows is not None else (AGREEMENT_ROWS if on_cuda else 0)

    def wrap(backend: Backend, target: str) -> Backend:
        return ShardedBackend(backend, target, ex.replicas, ex.retries, ex.cpus, gpus, shared, agreement_rows)

    return wrap


def generate(cfg: ExperimentConfig, model: Optional[str] = None, backend: Optional[str] = None,
             limit: Optional[int] = None, force: bool = False, runner=None) -> list[dict]:
    """Generate every pending config of every run target; one summary dict per target. `runner(cfg, plan)`
    replaces run_target (tunesweep.race's race_target, for generation.strategy race)."""
    requested = backend or cfg.generation.backend
    chosen, why = pick_generation_backend(requested)
    # find_spec, not an import: the engine's child process imports vLLM, the parent never needs it.
    if chosen == "vllm" and importlib.util.find_spec("vllm") is None:
        raise UserError("generation.backend = vllm: vllm is not installed; install it or use --backend hf")
    if limit is not None and limit < 1:
        raise UserError(f"--limit = {limit}: must be at least 1 test row")
    cfg = cfg.for_execution()
    targets = cfg.run_targets(model)
    cfg.pin_bases(targets)  # hub bases of base targets: one commit's snapshot folder for this whole stage
    for target in targets:  # fail before any work if a fine-tuned model is missing
        check_checkpoint(target, cfg.path)
    rows = load_split(cfg.path, "test")
    if limit is not None:
        rows = rows[:limit]
    log.info("generation backend: %s (%s); %d test rows", chosen, why, len(rows))
    on_cuda = cuda_visible()
    on_ray = ray_setup(cfg, on_cuda) if cfg.execution.backend == "ray" else None
    summaries = []
    for target in targets:
        backend_here, why_here = target_backend(chosen, requested, target.checkpoint(cfg.path))
        if why_here:
            log.warning("%s: %s", target.name, why_here)
        backend_obj = get_backend(backend_here, on_cuda)
        if on_ray is not None:
            backend_obj = on_ray(backend_obj, target.name)
        plan = plan_target(cfg, target, backend_obj, rows, limit, force=force)
        plan.backend_reason = why_here or why
        summary = (runner or run_target)(cfg, plan)
        summaries.append(summary)
        tps = f", {summary['tokens']} tokens at {summary['tokens_per_s']} tokens/s" if summary["generated"] else ""
        build = (f", engine built {summary['engine_builds']}x ({summary['engine_build_s']} s)"
                 if summary["engine_builds"] else ", no engine started")
        print(f"{target.name}: {len(summary['generated'])} configs generated, {len(summary['skipped'])} skipped "
              f"(current){tps}{build} -> {plan.out_dir}", file=sys.stderr)
    return summaries
