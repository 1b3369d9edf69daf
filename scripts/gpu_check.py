"""The GPU check: the CUDA path of tunesweep end to end, on a CUDA box with no network, in one command.

    make gpu-check                                   # or: python scripts/gpu_check.py
    make gpu-check WHEELS=.whl                       # first install the offline wheels (../shared/gpu/README.md)
    python scripts/gpu_check.py --limit 2 --max-steps 3 --bench-steps 4 --bench-warmup-steps 1 --bench-model 128,2,4  # CPU dry run

Everything goes to gpu_check_run/ (models/, work/, logs/, summary.md, summary.json).
Steps (each logged to <out>/logs/<step>.log; about 6-8 minutes on one H100):
  1. `tunesweep doctor` (in the background: its unsloth import probe takes ~40 s);
  2. a tiny Llama (tokenizer trained on builtin:tasks) and a ~0.7B random-init Llama (hidden 2048,
     16 layers, 16 heads; tokenizer trained on --data);
  3. `tunesweep run` on configs/gpu_check.yaml: tiny-auto (backend auto: unsloth when CUDA is visible and
     it imports) and tiny-peft (peft QLoRA), generation auto (vllm when it imports, else transformers),
     the judge stage (one judge engine, auto backend), BLEU / ROUGE-L / perplexity / judge win rates, report;
  4. bench/training.py on the 0.7B model: QLoRA through peft and unsloth, each in its own process;
  5. <out>/summary.md and summary.json: machine, date, versions, backends chosen and why, losses, EOS
     check, trained tokens/s, peak memory, scores, the bench's ratio. Written even when a step fails.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def run_step(name: str, cmd: list[str], out: Path, steps: list[dict], env: dict, background: bool = False):
    log = out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[gpu-check] {name}: {' '.join(cmd)}", flush=True)
    fh = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True)
    step = {"step": name, "command": " ".join(cmd), "log": str(log.relative_to(out)), "started": time.time()}
    steps.append(step)

    def finish():
        proc.wait()
        fh.close()
        step["seconds"] = round(time.time() - step.pop("started"), 1)
        step["exit_code"] = proc.returncode
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        print(f"[gpu-check] {name}: exit {proc.returncode} after {step['seconds']} s; {tail[0][:200]}", flush=True)
        return proc.returncode

    return finish if background else finish()


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def gpu_name() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    except Exception as exc:  # the summary must still be written
        return f"unknown ({exc.__class__.__name__})"


def summarize(out: Path, work: Path, steps: list[dict], started: float) -> dict:
    from tunesweep.config import load_config
    from tunesweep.provenance import library_versions

    cfg = load_config(REPO / "configs" / "gpu_check.yaml", {"workdir": str(work)})
    models = {}
    for m in cfg.models:
        rec = read_json(work / "finetuned_models" / m.name / "tunesweep.json")
        if rec is None:
            models[m.name] = {"trained": False}
            continue
        check = rec.get("post_merge_check") or {}
        models[m.name] = {
            "backend": rec["backend"], "why": rec["backend_reason"], "method": rec["method"], "steps": rec["global_step"],
            "first_loss": rec["first_loss"], "final_loss": rec["final_loss"], "train_runtime_s": rec["train_runtime_s"],
            "eos_check": f"{check.get('ended_with_eos')}/{check.get('prompts')}", "throughput": rec.get("throughput"),
            "device": rec.get("device"), "dtype": rec.get("dtype"),
        }
        manifest = read_json(work / "llm_responses" / m.name / "manifest.json") or {}
        models[m.name]["generation_backend"] = manifest.get("backend")
        csv = work / "eval_results" / f"{m.name}.csv"
        if csv.is_file():
            import pandas as pd

            table = pd.read_csv(csv)
            keep = [c for c in ("config", "mode", "bleu", "rougeL") if c in table.columns]
            models[m.name]["scores"] = table[keep].to_dict(orient="records")
    ppl = work / "eval_results" / "perplexity.csv"
    if ppl.is_file():
        import pandas as pd

        for row in pd.read_csv(ppl).to_dict(orient="records"):
            models.setdefault(row["model"], {})["perplexity"] = row.get("perplexity")
    judge = read_json(work / "eval_results" / "judge" / "manifest.json")
    if judge:
        run = (judge.get("runs") or [{}])[-1]
        judge = {"backend": judge.get("backend"), "why": judge.get("backend_reason"), "runs": judge.get("runs"),
                 "engine_loads": run.get("engine_loads"), "engine_build_s": run.get("engine_build_s"),
                 "pairs_judged": run.get("pairs_judged"), "wall_s": run.get("wall_s"),
                 "flip_share": {t: e.get("flip_share") for t, e in (judge.get("targets") or {}).items()}}
    doctor = out / "logs" / "doctor.log"
    return {
        "judge": judge,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"gpu": gpu_name(), "python": platform.python_version(), "platform": platform.platform()},
        "total_s": round(time.time() - started, 1),
        "steps": steps,
        "doctor": doctor.read_text().strip().splitlines() if doctor.is_file() else None,
        "models": models,
        "bench": read_json(out / "bench_training.json"),
        "versions": library_versions(),
    }


def markdown(s: dict) -> str:
    lines = [f"# GPU check, {s['date']}", "", f"Machine: {s['machine']['gpu']}, Python {s['machine']['python']}; "
             f"total {s['total_s']} s.", "", "| step | exit | seconds |", "|---|---|---|"]
    lines += [f"| {st['step']} | {st.get('exit_code')} | {st.get('seconds')} |" for st in s["steps"]]
    lines += ["", "## doctor", "", "```", *(s["doctor"] or ["(no output)"]), "```", "", "## Fine-tuned models", ""]
    for name, m in s["models"].items():
        if not m.get("backend"):
            lines.append(f"- {name}: not trained" + (f"; perplexity {m['perplexity']:.2f}" if m.get("perplexity") else ""))
            continue
        t = m.get("throughput") or {}
        tps = f"{t['tokens_per_s']:,.0f} tokens/s after {t['warmup_steps_excluded']} warm-up steps" \
            if t.get("tokens_per_s") else "tokens/s not measured"
        lines.append(f"- {name}: backend {m['backend']} ({m['why']}), {m['method']}, {m['steps']} steps, loss "
                     f"{m['first_loss']} -> {m['final_loss']}, {m['train_runtime_s']} s, {tps}, peak "
                     f"{(t.get('peak_memory_bytes') or 0) / 2**30:.2f} GiB ({t.get('peak_memory_kind')}), EOS check "
                     f"{m['eos_check']}, generation {m.get('generation_backend')}, perplexity {m.get('perplexity')}")
        for row in m.get("scores") or []:
            if row["config"] in ("top_k_50_num_beams_1_temp_0.8", "top_k_50_num_beams_1_temp_0.0",
                                 "top_k_50_num_beams_5_temp_0.8"):
                lines.append(f"  - {row['config']} ({row.get('mode')}): BLEU {row.get('bleu'):.3f}, "
                             f"ROUGE-L {row.get('rougeL'):.3f}")
    j = s.get("judge")
    lines += ["", "## Judge stage", ""]
    if j:
        first = next((r for r in j.get("runs") or [] if r.get("engine_loads")), {})
        lines.append(f"- backend {j['backend']} ({j['why']}); first judging run: {first.get('engine_loads')} engine "
                     f"load(s) in {first.get('engine_build_s')} s, {first.get('pairs_judged')} pairs, "
                     f"{first.get('wall_s')} s; flip share per model {json.dumps(j['flip_share'])}")
    else:
        lines.append("(no judge manifest: the stage did not run)")
    b = s.get("bench")
    lines += ["", "## bench/training.py", ""]
    if b:
        for backend, r in b["results"].items():
            if r.get("tokens_per_s"):
                lines.append(f"- {backend}: {r['tokens_per_s']:,.0f} tokens/s over {r['measured_steps']} steps "
                             f"({r['warmup_steps_excluded']} warm-up excluded), peak {r['peak_memory_bytes'] / 2**30:.2f} "
                             f"GiB, train_runtime {r['train_runtime_s']} s, final loss {r['final_loss']:.4f}")
            else:
                lines.append(f"- {backend}: {r.get('skipped') or r.get('failed')}")
        if b.get("unsloth_over_peft"):
            lines.append(f"- unsloth / peft tokens/s after warm-up: {b['unsloth_over_peft']:.2f}x")
        lines.append(f"- settings: {json.dumps(b['settings'])}")
        lines.append(f"- command: `{b['command']}`")
    else:
        lines.append("(did not finish)")
    lines += ["", "## Versions", "", ", ".join(f"{k} {v}" for k, v in s["versions"].items()), ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description="tunesweep's GPU check (see the module docstring)")
    p.add_argument("--data", default=None, help="Alpaca-format file for the 0.7B tokenizer and the bench "
                   "(default: tests/data/alpaca_sample.json when present, else builtin:tasks)")
    p.add_argument("--limit", type=int, default=20, help="test rows generated per config")
    p.add_argument("--bench-steps", type=int, default=30)
    p.add_argument("--bench-warmup-steps", type=int, default=10)
    p.add_argument("--max-steps", type=int, help="train the check's two models this many steps only (a dry run)")
    p.add_argument("--bench-model", default="2048,16,16", help="hidden size, layers, heads of the bench's random "
                   "Llama (2048,16,16: ~0.7B parameters; 128,2,4 tries the check's logic on a CPU)")
    args = p.parse_args()
    # A `timeout` around the check sends SIGTERM: leave through `finally`, so the summary is still written.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    hidden, layers, heads = args.bench_model.split(",")
    out = REPO / "gpu_check_run"  # configs/gpu_check.yaml's bases live under it
    work = out / "work"
    sample = REPO / "tests" / "data" / "alpaca_sample.json"
    data = args.data or (str(sample) if sample.is_file() else "builtin:tasks")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))}
    py = [sys.executable]
    ts = py + ["-m", "tunesweep"]
    steps: list[dict] = []
    try:
        doctor_done = run_step("doctor", ts + ["doctor"], out, steps, env, background=True)
        if not (out / "models" / "tiny").is_dir():
            run_step("tiny-model", ts + ["make-tiny-model", str(out / "models" / "tiny"), "--seed", "1"], out, steps, env)
        bench_model = out / "models" / f"llama-{hidden}x{layers}"
        if not bench_model.is_dir():
            run_step("bench-model", ts + ["make-tiny-model", str(bench_model), "--data", data, "--hidden-size", hidden,
                                          "--num-layers", layers, "--num-heads", heads], out, steps, env)
        doctor_done()
        study = ["--config", "configs/gpu_check.yaml", "--workdir", str(work)]
        if args.max_steps:
            run_step("split", ts + ["split", *study], out, steps, env)
            run_step("finetune", ts + ["finetune", *study, "--max-steps", str(args.max_steps)], out, steps, env)
        run_step("pipeline", ts + ["run", *study, "--limit", str(args.limit)]
                 + (["--from", "generate"] if args.max_steps else []), out, steps, env)
        run_step("bench-training", py + ["bench/training.py", "--base", str(bench_model),
                                         "--data", data, "--steps", str(args.bench_steps), "--warmup-steps",
                                         str(args.bench_warmup_steps), "--batch-size", "8", "--max-seq-length", "512",
                                         "--json", str(out / "bench_training.json")], out, steps, env)
    finally:
        summary = summarize(out, work, steps, started)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
        (out / "summary.md").write_text(markdown(summary))
        print((out / "summary.md").read_text())
    return 0 if all(st.get("exit_code") == 0 for st in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
