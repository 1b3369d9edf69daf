"""What tracking.backend: mlflow adds to a pipeline run, side by side with backend none, on a finished study.

Copies a finished workdir (e.g. demo_run after `make demo`) once per variant and runs the shell pipeline on
each copy, alternating the variants within each repeat so both see the same machine load:

    .venv/bin/python bench/tracking.py --config configs/tiny.yaml [--repeats 3] [--limit N]

Every stage finds its work current, so a run is the pipeline's own fixed cost (a tunesweep process per
stage, reading and checking the files, writing the report) plus, with mlflow, the three pushes (after
finetune, score and report). Variants:
  none      tracking.backend none
  first     mlflow into a new SQLite store (creates the store, then every run)
  rerun     mlflow into the store `first` filled (finds every run, logs nothing new)
Printed: per variant the median wall time and its extra seconds over none. The extra seconds are what
tracking adds to a `make demo` (whose training and generation are not repeated here); the live logging
of training steps runs in a thread of the training process and is not in these figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def variant_config(config: Path, workdir: Path, backend: str, dest: Path) -> Path:
    data = yaml.safe_load(config.read_text())
    data["workdir"] = str(workdir)
    data["tracking"] = {"backend": backend}
    # models[].base stays as written: relative to the checkout (the pipeline runs there), so nothing retrains.
    dest.write_text(yaml.safe_dump(data, sort_keys=False))
    return dest


def run_pipeline(config: Path, limit: int | None) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    start = time.perf_counter()
    extra = ["--limit", str(limit)] if limit else []
    res = subprocess.run(["bash", str(REPO / "hyperparameter_experiments.sh"), "--config", str(config), *extra],
                         cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"pipeline failed on {config}:\n{res.stderr[-3000:]}")
    if "tracking: could not" in res.stderr:
        sys.exit(f"tracking failed on {config}:\n{res.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/tiny.yaml", help="the finished study's config (its workdir is copied)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--limit", type=int, help="the --limit the study was run with (its rows stay current)")
    args = ap.parse_args()
    config = (REPO / args.config) if not Path(args.config).is_absolute() else Path(args.config)
    source = Path(yaml.safe_load(config.read_text())["workdir"])
    source = source if source.is_absolute() else REPO / source
    if not (source / "eval_results" / "report.html").is_file():
        sys.exit(f"{source}: not a finished study (no eval_results/report.html); run `make demo` first")
    times: dict[str, list[float]] = {"none": [], "first": [], "rerun": []}
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        for i in range(args.repeats):
            for backend in ("none", "mlflow"):
                work = Path(tmp) / f"{backend}-{i}"
                shutil.copytree(source, work, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts", "tiny_models",
                                                                          ".tunesweep.lock"))
                cfg = variant_config(config, work, backend, Path(tmp) / f"{backend}-{i}.yaml")
                if backend == "none":
                    times["none"].append(run_pipeline(cfg, args.limit))
                else:
                    times["first"].append(run_pipeline(cfg, args.limit))
                    times["rerun"].append(run_pipeline(cfg, args.limit))
                shutil.rmtree(work)
    print(f"$ {' '.join(shlex.quote(a) for a in [sys.executable, *sys.argv])}")
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; study {source}")
    base = statistics.median(times["none"])
    for name, values in times.items():
        median = statistics.median(values)
        extra = "" if name == "none" else f"  (+{median - base:.1f} s, x{median / base:.2f})"
        print(f"  {name:6s} median {median:6.1f} s of {len(values)}: {', '.join(f'{v:.1f}' for v in values)}{extra}")


if __name__ == "__main__":
    main()
