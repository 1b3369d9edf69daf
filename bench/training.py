"""Training throughput: the same LoRA/QLoRA job through the peft and the unsloth backends, side by side.

Each backend trains in a spawned process of its own (Unsloth patches transformers at import, so the
two can never share one), through the very backend code `tunesweep finetune` runs, on the same
rows in the same order (same seed), with the same LoRA rank and targets, batch, max_seq_length and
number of optimizer steps, and with these held equal in both:
  - padding-free batching: off in both by default (TRL `padding_free=False` given explicitly, which
    also stops Unsloth from auto-enabling it); `--padding-free on` turns it on in both;
  - gradient checkpointing: off in both by default (peft: `gradient_checkpointing=False`; unsloth:
    `use_gradient_checkpointing=False`); `--gradient-checkpointing on` uses transformers' non-reentrant
    checkpointing in peft and Unsloth's plain (not offloaded) one.
Tokens/s counts the non-padding input tokens the trainer saw, per second of optimizer steps after
`--warmup-steps` steps (compilation and allocator warm-up), without checkpoint writing. Peak memory is
torch.cuda.max_memory_allocated on CUDA, the training process's peak RSS on a CPU. Without CUDA only
peft runs, and the line for unsloth says why.

    .venv/bin/python bench/training.py                     # CPU: tiny random Llama, peft only (~1-2 min)
    python bench/training.py --base llama-0.7b --data tests/data/alpaca_sample.json \\
        --steps 40 --warmup-steps 10 --batch-size 8 --max-seq-length 512     # CUDA: QLoRA, both backends
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", help="model folder (default: a tiny random Llama built here)")
    p.add_argument("--data", default="builtin:tasks", help="Alpaca-format file, or builtin:tasks")
    p.add_argument("--rows", type=int, default=2000, help="training rows taken from --data")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per backend")
    p.add_argument("--warmup-steps", type=int, default=5, help="steps excluded from tokens/s")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-length", type=int, default=512)
    p.add_argument("--r", type=int, default=16, help="LoRA rank (alpha = r), on all linear layers")
    p.add_argument("--quant", choices=["auto", "4bit", "none"], default="auto",
                   help="auto: 4-bit (QLoRA) on CUDA, none (LoRA) on a CPU")
    p.add_argument("--padding-free", choices=["on", "off"], default="off")
    p.add_argument("--gradient-checkpointing", choices=["on", "off"], default="off")
    p.add_argument("--backends", default="peft,unsloth")
    p.add_argument("--json", help="also write the results to this file")
    return p.parse_args(argv)


def training_pairs(data: str, rows: int, seed: int) -> list[dict]:
    from tunesweep.data import load_usable_records
    from tunesweep.data.builtin import generate_records
    from tunesweep.templates import build_training_pair

    records = generate_records(rows, seed=seed) if data == "builtin:tasks" else load_usable_records(data)[1][:rows]
    return [build_training_pair(r, "alpaca") for r in records]


def make_job(args, backend: str, base: str, pairs: list[dict], root: Path, cuda: bool):
    from tunesweep.config import ModelConfig
    from tunesweep.train.job import SpeedSettings, TrainJob
    from tunesweep.train.resume import effective_train

    four_bit = args.quant == "4bit" or (args.quant == "auto" and cuda)
    model = ModelConfig(name=f"bench-{backend}", base=base, backend=backend, load_in_4bit=four_bit,
                        max_seq_length=args.max_seq_length,
                        lora={"r": args.r, "alpha": args.r, "dropout": 0.0, "target_modules": ALL_LINEAR},
                        train={"max_steps": args.steps, "batch_size": args.batch_size, "grad_accum": 1,
                               "learning_rate": 2e-4, "logging_steps": 5, "save_steps": args.steps + 1})
    train = effective_train(model, None, os.cpu_count() or 1)  # both backends on every core
    speed = SpeedSettings(gradient_checkpointing=args.gradient_checkpointing == "on",
                          padding_free=args.padding_free == "on", warmup_steps=args.warmup_steps)
    return TrainJob(name=model.name, model=model, train=train, seed=0, template="alpaca", pairs=pairs,
                    output_dir=root / backend / "out", training_dir=root / backend / "training", speed=speed,
                    merge=False)


def main(argv=None) -> int:
    args = parse_args(argv)
    from tunesweep.backends import cuda_visible, pick_train_backend
    from tunesweep.errors import UserError
    from tunesweep.isolation import run_isolated
    from tunesweep.train.worker import train_backend

    cuda = cuda_visible()
    root = Path(tempfile.mkdtemp(prefix="tunesweep-train-bench-"))
    base = args.base
    if base is None:
        from tunesweep.tinymodel import make_tiny_model

        base = str(make_tiny_model(root / "tiny", seed=0))
    pairs = training_pairs(args.data, args.rows, seed=0)
    results = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend == "unsloth":
            auto, why = pick_train_backend("auto")
            if auto != "unsloth":
                results[backend] = {"skipped": why}
                print(f"unsloth: skipped ({why})", flush=True)
                continue
        print(f"{backend}: training {args.steps} steps in its own process ...", flush=True)
        job = make_job(args, backend, base, pairs, root, cuda)
        try:
            res = run_isolated(train_backend, job, backend, name=f"bench {backend}",
                               log_file=root / backend / "train.log")
        except UserError as exc:
            results[backend] = {"failed": str(exc)}
            print(f"{backend}: FAILED: {exc}", flush=True)
            continue
        results[backend] = {**res.throughput.as_dict(), "train_runtime_s": res.train_runtime_s,
                            "global_step": res.global_step, "device": res.device, "dtype": res.dtype,
                            "final_loss": res.loss_history[-1]["loss"] if res.loss_history else None}

    print()
    print(f"{'backend':<9} {'tokens/s':>10} {'steps measured':>15} {'warm-up excl.':>14} {'peak memory':>12} "
          f"{'train_runtime':>14}  final loss")
    for backend, r in results.items():
        if "tokens_per_s" not in r:
            print(f"{backend:<9} {r.get('skipped') or r.get('failed')}")
            continue
        tps = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "n/a"
        print(f"{backend:<9} {tps:>10} {r['measured_steps']:>15} {r['warmup_steps_excluded']:>14} "
              f"{r['peak_memory_bytes'] / 2**30:>9.2f} GiB {r['train_runtime_s']:>12.1f} s  {r['final_loss']:.4f}")
    speeds = {b: r.get("tokens_per_s") for b, r in results.items()}
    ratio = None
    if speeds.get("peft") and speeds.get("unsloth"):
        ratio = speeds["unsloth"] / speeds["peft"]
        print(f"\nunsloth / peft tokens/s after warm-up: {ratio:.2f}x")
    first = next((r for r in results.values() if "tokens_per_s" in r), {})
    settings = {"base": base, "data": args.data, "rows": len(pairs), "steps": args.steps,
                "warmup_steps": args.warmup_steps, "batch_size": args.batch_size,
                "max_seq_length": args.max_seq_length, "lora_r": args.r, "target_modules": "all linear",
                "quant": args.quant if args.quant != "auto" else ("4bit" if cuda else "none"),
                "padding_free": args.padding_free, "gradient_checkpointing": args.gradient_checkpointing,
                "peak_memory": first.get("peak_memory_kind"), "device": first.get("device"),
                "python": platform.python_version()}
    print("\nsettings: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    print(f"command: {command}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "unsloth_over_peft": ratio, "settings": settings,
                                               "command": command}, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
