"""Push a study's files to MLflow: what `tunesweep track` runs, and every stage that writes results after it.

It reads only the workdir's files (split.json, finetuned_models/<model>/tunesweep.json, manifest.json,
eval_results/), so it can run any time later, against another store too, and log the same runs:
- the study's run: the config (workdir, execution and tracking left out), the split's hashes, tunesweep's
  and the libraries' versions (tags), report.html, report.md and the CSVs as artifacts;
- one child run per fine-tune: backend, LoRA and training settings, the loss per logged step, trained
  tokens/s, peak memory, merge fidelity, the checkpoint identity;
- one child run per target x decoding config that score vouches for (metrics.json's scored_from is what
  generate wrote): every decoding parameter as it took effect, every metric of eval_results/all.csv with its
  CI bounds (the judge's win rate too, once it is a metric there), perplexity, the paired differences of
  comparisons.csv with CI and Holm p.

A run already in the store gets only what it lacks: missing params, metric values that differ from its
latest, history steps it has not got, artifacts whose content changed; a run whose `tunesweep.synced`
digest equals what would be logged is left alone. Runs are looked up by their `tunesweep.key` (tracking.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .. import __version__
from ..config import ExperimentConfig, expand_sweep
from ..files import fingerprint, read_json, sha256_file
from ..layout import Workdir, read_rows
from ..provenance import library_versions
from ..records import GenerationManifest, ScoredTarget, scored_targets
from ..tracking import (PARENT_TAG, connect, eval_key, experiment_id, experiment_name, finetune_key, open_run,
                        runs_by_key, study_key, study_settings, tracking_uri)

log = logging.getLogger(__name__)

SYNCED_TAG = "tunesweep.synced"
ARTIFACTS_TAG = "tunesweep.artifacts"
PARAM_LIMIT = 6000  # MLflow's longest param value
BATCH = 99  # params (and tags) per log_batch: MLflow takes 100, one tag of the last batch is the synced digest


@dataclass
class RunSpec:
    """Everything one run should hold."""

    key: str
    name: str
    kind: str  # study | finetune | eval
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # name -> value (logged at step 0)
    histories: dict = field(default_factory=dict)  # name -> [(step, value)]
    tags: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)  # path in the run -> local file

    def digest(self, files: dict) -> str:
        """What the run holds when it is in sync (`files`: the artifacts' sha256)."""
        return fingerprint([self.key, self.name, self.params, self.metrics, self.histories, self.tags, files])


@dataclass
class PushSummary:
    uri: str
    experiment: str
    runs: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0


def flatten(value, prefix: str = "") -> dict:
    """{"a.b": "1", ...}: a nested dict as MLflow params (lists as JSON, models by name)."""
    out = {}
    if isinstance(value, dict):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(value, list) and value and all(isinstance(x, dict) and "name" in x for x in value):
        for x in value:
            out.update(flatten({k: v for k, v in x.items() if k != "name"}, f"{prefix}{x['name']}."))
    else:
        out[prefix[:-1]] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return {k: v[:PARAM_LIMIT] for k, v in out.items()}


def number(value) -> Optional[float]:
    """A finite float from a CSV cell or a record, else None (blank cells, NaN)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def read_if_present(path: Path):
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


# --- what the files say ------------------------------------------------------------------------------

def study_spec(cfg: ExperimentConfig) -> RunSpec:
    paths = Workdir(cfg.workdir)
    split = read_if_present(paths.split_meta) or {}
    params = flatten(study_settings(cfg))
    for k in ("source_hash", "train_sha256", "test_sha256", "train_rows", "test_rows"):
        if split.get(k) is not None:
            params[f"split.{k}"] = str(split[k])
    tags = {"tunesweep.version": __version__, "tunesweep.workdir": str(Path(cfg.workdir).resolve()),
            **{f"version.{k}": v for k, v in library_versions().items()}}
    artifacts = {}
    for p in (paths.report_html, paths.report):
        if p.is_file():
            artifacts[p.name] = p
    for p in sorted(paths.eval_dir.glob("*.csv")) if paths.eval_dir.is_dir() else []:
        artifacts[f"tables/{p.name}"] = p
    return RunSpec(study_key(cfg), cfg.name, "study", params=params, tags=tags, artifacts=artifacts)


def finetune_spec(record: dict, checkpoint_sha256: Optional[str] = None) -> RunSpec:
    name = record["model"]
    params = flatten({"base": record.get("base"), "base_identity": record.get("base_identity"),
                      "backend": record.get("backend"), "method": record.get("method"),
                      "load_in_4bit": record.get("load_in_4bit"), "max_seq_length": record.get("max_seq_length"),
                      "lora": record.get("lora"), "train": record.get("train"), "template": record.get("template"),
                      "seed": record.get("seed"), "train_rows": (record.get("data") or {}).get("train_rows"),
                      "train_sha256": (record.get("data") or {}).get("train_sha256")})
    t = record.get("throughput") or {}
    check = record.get("post_merge_check") or {}
    fidelity = check.get("merge_fidelity") or {}
    metrics = {"global_step": record.get("global_step"), "first_loss": record.get("first_loss"),
               "final_loss": record.get("final_loss"), "train_runtime_s": record.get("train_runtime_s"),
               "wall_s": record.get("wall_s"), "trained_tokens_per_s": t.get("tokens_per_s"),
               "peak_memory_bytes": t.get("peak_memory_bytes"), "check_ended_with_eos": check.get("ended_with_eos"),
               "merge_greedy_agreement": fidelity.get("greedy_agreement"), "merge_mean_kl": fidelity.get("mean_kl"),
               "merge_max_abs_logit_diff": fidelity.get("max_abs_logit_diff")}
    histories = {}
    for metric in ("loss", "learning_rate"):
        steps = [(int(e["step"]), number(e.get(metric))) for e in record.get("loss_history") or []
                 if e.get("step") is not None]
        histories[metric] = [(s, v) for s, v in steps if v is not None]
    tags = {"tunesweep.inputs": record.get("inputs_fingerprint", ""), "tunesweep.device": str(record.get("device")),
            "tunesweep.finished_at": str(record.get("finished_at")), "tunesweep.peak_memory_kind":
            str(t.get("peak_memory_kind"))}
    if checkpoint_sha256:  # the merged checkpoint's own hash, as generate recorded it
        tags["tunesweep.checkpoint_sha256"] = checkpoint_sha256
    return RunSpec(finetune_key(name, record["inputs_fingerprint"]), f"finetune {name}", "finetune", params=params,
                   metrics={k: v for k, v in ((k, number(v)) for k, v in metrics.items()) if v is not None},
                   histories=histories, tags=tags)


def eval_specs(cfg: ExperimentConfig) -> list[RunSpec]:
    """One spec per target x config that score vouches for."""
    paths = Workdir(cfg.workdir)
    scored = scored_targets(read_if_present(paths.metrics_json))
    tidy = read_rows(paths.tidy_table) if paths.tidy_table.is_file() else []
    comparisons = read_rows(paths.comparisons) if paths.comparisons.is_file() else []
    perplexity = {r["model"]: r for r in read_rows(paths.perplexity_table)} if paths.perplexity_table.is_file() else {}
    out = []
    for target in cfg.run_targets():
        manifest = GenerationManifest(read_if_present(paths.manifest(target.name)) or {})
        vouched = scored.get(target.name, ScoredTarget())
        for dc in expand_sweep(cfg.generation):
            entry = manifest.entry(dc.name)
            if (entry is None or not entry.generated_sha256
                    or vouched.generated_sha256(dc.name) != entry.generated_sha256):
                continue
            params = flatten({"model": target.name, "config": dc.name, **entry.tracking_params()})
            metrics = {"tokens_per_s": number(entry.tokens_per_s), "generate_wall_s": number(entry.wall_s)}
            for row in tidy:
                if row["model"] == target.name and row["config"] == dc.name:
                    m = row["metric"]
                    metrics.update({m: number(row["score"]), f"{m}_ci_low": number(row["ci_low"]),
                                    f"{m}_ci_high": number(row["ci_high"])})
            ppl = perplexity.get(target.name)
            if ppl:
                metrics.update({"perplexity": number(ppl.get("perplexity")),
                                "perplexity_ci_low": number(ppl.get("ppl_ci_low")),
                                "perplexity_ci_high": number(ppl.get("ppl_ci_high"))})
            for row in comparisons:
                if row["model"] == target.name and row["config"] == dc.name:
                    stem = f"{row['metric']}_diff_vs_{row['versus']}"
                    metrics.update({stem: number(row["diff"]), f"{stem}_ci_low": number(row["ci_low"]),
                                    f"{stem}_ci_high": number(row["ci_high"]), f"{stem}_p_holm": number(row["p_holm"])})
            tags = {"tunesweep.target": target.name, "tunesweep.config": dc.name,
                    "tunesweep.generated_sha256": entry.generated_sha256}
            out.append(RunSpec(eval_key(target.name, dc.name, entry.inputs or entry.generated_sha256),
                               f"{target.name} {dc.name}", "eval", params=params,
                               metrics={k: v for k, v in metrics.items() if v is not None}, tags=tags))
    return out


def study_runs(cfg: ExperimentConfig) -> tuple[RunSpec, list[RunSpec]]:
    """(the study's run, its children) as the workdir's files describe them now."""
    paths = Workdir(cfg.workdir)
    children = []
    for m in cfg.models:
        record = read_if_present(paths.model_record(m.name))
        if record and record.get("inputs_fingerprint"):
            manifest = GenerationManifest(read_if_present(paths.manifest(m.name)) or {})
            children.append(finetune_spec(record, manifest.checkpoint_hash))
    children.extend(eval_specs(cfg))
    return study_spec(cfg), children


# --- the store ----------------------------------------------------------------------------------------

def sync_run(client, run, spec: RunSpec) -> bool:
    """Log into `run` what `spec` has and the run lacks; False when it already held it all. Few calls (each is
    a transaction of the store): artifacts first, then params, metrics and tags in batches, the synced digest
    in the last one, so a push cut short is redone next time."""
    from mlflow.entities import Metric, Param, RunTag

    files = {k: sha256_file(p) for k, p in sorted(spec.artifacts.items())}
    digest = spec.digest(files)
    if run.data.tags.get(SYNCED_TAG) == digest:
        return False
    run_id = run.info.run_id
    logged = json.loads(run.data.tags.get(ARTIFACTS_TAG) or "{}")
    for path, local in spec.artifacts.items():
        if logged.get(path) != files[path]:
            folder = str(Path(path).parent) if Path(path).parent != Path(".") else None
            client.log_artifact(run_id, str(local), folder)
    now = int(time.time() * 1000)
    params = [Param(k, v) for k, v in spec.params.items() if k not in run.data.params]
    metrics = [Metric(k, v, now, 0) for k, v in spec.metrics.items() if run.data.metrics.get(k) != v]
    for name, series in spec.histories.items():
        have = {m.step for m in client.get_metric_history(run_id, name)} if name in run.data.metrics else set()
        metrics.extend(Metric(name, v, now, s) for s, v in series if s not in have)
    wanted = {**spec.tags, **({ARTIFACTS_TAG: json.dumps(files, sort_keys=True)[:PARAM_LIMIT]} if files else {})}
    tags = [RunTag(k, v) for k, v in wanted.items() if run.data.tags.get(k) != v]
    last = max(len(params), len(metrics), len(tags) + 1) - 1
    for i in range(0, last + 1, BATCH):
        final = i + BATCH > last
        client.log_batch(run_id, metrics=metrics[i:i + BATCH], params=params[i:i + BATCH],
                         tags=tags[i:i + BATCH] + ([RunTag(SYNCED_TAG, digest)] if final else []))
    if run.info.status != "FINISHED":
        client.set_terminated(run_id, "FINISHED")
    return True


def push_study(cfg: ExperimentConfig) -> PushSummary:
    """Log the study's files into its MLflow experiment; raises what the store raises."""
    uri = tracking_uri(cfg)
    client = connect(uri)
    exp = experiment_id(client, cfg)
    known = runs_by_key(client, exp)
    study, children = study_runs(cfg)
    summary = PushSummary(uri, experiment_name(cfg))
    before = set(known)
    parent = open_run(client, exp, study.key, study.name, study.kind, known=known)
    specs = [(study, None)] + [(c, parent.info.run_id) for c in children]
    for spec, parent_id in specs:
        run = open_run(client, exp, spec.key, spec.name, spec.kind, parent_id=parent_id, known=known)
        if parent_id and run.data.tags.get(PARENT_TAG) != parent_id:
            client.set_tag(run.info.run_id, PARENT_TAG, parent_id)
        changed = sync_run(client, run, spec)
        summary.runs += 1
        if spec.key not in before:
            summary.created += 1
        elif changed:
            summary.updated += 1
        else:
            summary.unchanged += 1
    return summary


def describe(summary: PushSummary) -> str:
    return (f"tracking: {summary.runs} runs in MLflow experiment {summary.experiment!r} at {summary.uri} "
            f"({summary.created} new, {summary.updated} updated, {summary.unchanged} unchanged)")
