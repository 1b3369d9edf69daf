"""`tunesweep <stage>`: the console script. Each subcommand parses its flags and calls one
library function; the stage files (split_dataset.py, inference/..., evaluation/...) call the same.

A UserError (or a full disk) prints one line and exits 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from .errors import UserError, disk_full_message
from .layout import Workdir, WorkdirLock
from .stages import STAGES


# Commands that only read the config: no workdir needed, no lock taken.
READ_ONLY = {"plan"}
# Commands that log to MLflow when tracking.backend is mlflow (and take --tracking-uri).
TRACKED = {"finetune", "score", "report", "run", "track"}


@dataclass(frozen=True)
class SettingFlag:
    """A named flag that sets one setting of the config schema: its type and choices come from the schema."""

    flag: str  # e.g. --replicas
    key: str  # the dotted setting, e.g. execution.replicas
    help: str
    also: tuple = ()  # (key, value) pairs set with it

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


WORKDIR_FLAG = SettingFlag("--workdir", "workdir", "override the config's workdir")
SPLIT_FLAGS = (SettingFlag("--dataset", "dataset.source", "override dataset.source (hub id or local file)"),
               SettingFlag("--test-size", "dataset.test_size", "override dataset.test_size: rows (int) or fraction "
                                                                "(float)"),
               SettingFlag("--seed", "seed", "override the config's seed"))
EXECUTION_FLAGS = (SettingFlag("--execution", "execution.backend", "override execution.backend (docs/scaling.md)"),
                   SettingFlag("--ray-address", "execution.address",
                               "override execution.address (auto, local, or a cluster address)"),
                   SettingFlag("--replicas", "execution.replicas",
                               "override execution.replicas (engine replicas per model)"),
                   SettingFlag("--retries", "execution.retries",
                               "override execution.retries (restarts of a dead actor or task)"))
# --tracking-uri: log there, whatever tracking.backend says
TRACKING_FLAG = SettingFlag("--tracking-uri", "tracking.uri", "log to this MLflow store (sqlite:///FILE or "
                            "http(s)://HOST:PORT), overriding tracking.uri and tracking.backend",
                            also=(("tracking.backend", "mlflow"),))
SETTING_FLAGS = (WORKDIR_FLAG, *SPLIT_FLAGS, *EXECUTION_FLAGS, TRACKING_FLAG)


def _setting_value(key: str):
    """argparse's `type` for a setting: the schema's parse, a bad value reported as argparse reports one."""
    from .config import parse_setting

    def parse(text: str):
        try:
            return parse_setting(key, text)
        except UserError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _key_value(text: str) -> tuple[str, object]:
    """--set KEY=VALUE: the key checked against the schema, the value parsed for its type."""
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. evaluation.bootstrap=200")
    return key.strip(), _setting_value(key.strip())(value)


def add_setting_flag(sp: argparse.ArgumentParser, f: SettingFlag) -> None:
    from .config import setting_choices

    sp.add_argument(f.flag, dest=f.dest, type=_setting_value(f.key), choices=setting_choices(f.key), help=f.help)


def config_overrides(args) -> dict:
    """The config values the command line sets: its named flags that were given, then each --set in order."""
    out = {}
    for f in SETTING_FLAGS:
        value = getattr(args, f.dest, None)
        if value is not None:
            out[f.key] = value
            out.update(f.also)
    out.update(getattr(args, "settings", None) or [])
    return out


def _load(args, **overrides):
    from .config import load_config

    cfg = load_config(args.config, {**config_overrides(args), **overrides})
    if args.command in TRACKED:
        from .tracking import require_mlflow

        require_mlflow(cfg)
    if args.command not in READ_ONLY and getattr(args, "lock", None) is None:
        # One tunesweep per workdir: held until the command ends (main closes it).
        args.lock = WorkdirLock(cfg.path, " ".join(["tunesweep", *args.argv])).__enter__()
    return cfg


def cmd_doctor(args) -> int:
    from .doctor import doctor_report

    print(doctor_report(ray_address=args.ray_address))
    return 0


def cmd_plan(args) -> int:
    from .plan import plan_entries, plan_table

    cfg = _load(args)
    if args.get:
        # For shell scripts: one setting of the validated config, e.g. `--get workdir`.
        value = cfg.model_dump()
        for part in args.get.split("."):
            if not isinstance(value, dict) or part not in value:
                raise UserError(f"{args.config}: no setting {args.get!r}")
            value = value[part]
        print(value if isinstance(value, str) else json.dumps(value))
        return 0
    entries = plan_entries(cfg)
    print(json.dumps(entries, indent=2) if args.json else plan_table(cfg, entries))
    return 0


def cmd_split(args) -> int:
    from .data import split_for_config

    cfg = _load(args)
    meta, skipped = split_for_config(cfg, force=args.force)
    commit = f"@{meta['source_commit']}" if meta.get("source_commit") else ""
    print(f"split {meta['source']}{commit}: {meta['train_rows']} train + {meta['test_rows']} test rows "
          f"({meta['dropped_empty']} empty and {meta['dropped_duplicates']} duplicate records dropped) "
          f"-> {Workdir(cfg.path).data_dir}{' (already current, nothing written)' if skipped else ''}")
    return 0


def cmd_make_tiny_model(args) -> int:
    from .tinymodel import make_tiny_model

    if args.hidden_size % args.num_heads:
        raise UserError(f"--hidden-size {args.hidden_size} is not a multiple of --num-heads {args.num_heads}")
    out = make_tiny_model(args.out, data=args.data, seed=args.seed, hidden_size=args.hidden_size,
                          num_layers=args.num_layers, num_heads=args.num_heads)
    print(f"tiny model written to {out}")
    return 0


def cmd_finetune(args) -> int:
    from .train import finetune

    if args.max_steps is not None and args.max_steps < 1:
        raise UserError(f"--max-steps {args.max_steps}: must be at least 1 (leave it out to train the configured "
                        "epochs or train.max_steps)")
    cfg = _load(args)
    finetune(cfg, model=args.model, backend=args.backend, max_steps=args.max_steps, force=args.force)
    _sync(cfg)
    return 0


def cmd_generate(args) -> int:
    from .race import generate_responses

    generate_responses(_load(args), model=args.model, backend=args.backend, limit=args.limit, force=args.force)
    return 0


def cmd_clean(args) -> int:
    from .clean.stage import clean

    clean(_load(args), model=args.model)
    return 0


def cmd_judge(args) -> int:
    from .judge.stage import judge

    judge(_load(args), model=args.model, backend=args.backend, force=args.force,
          export_alpacaeval=args.export_alpacaeval)
    return 0


def cmd_score(args) -> int:
    from .evaluate.scoring import score

    cfg = _load(args)
    score(cfg, model=args.model, force=args.force)
    _sync(cfg)
    return 0


def cmd_report(args) -> int:
    from .report import report

    cfg = _load(args)
    report(cfg)
    _sync(cfg)
    return 0


def cmd_human_eval(args) -> int:
    from .evaluate import human_eval

    cfg = _load(args)
    if args.action == "export":
        human_eval.export_sheet(cfg, out=args.out, rows_per_config=args.rows)
    else:
        human_eval.import_ratings(cfg, args.files)
    return 0


def _sync(cfg) -> None:
    """After a stage's files are written: push them to MLflow when tracking is on (a warning line at worst)."""
    if cfg.tracking.backend != "none":
        from .track import sync

        sync(cfg)


def cmd_track(args) -> int:
    from .track import track

    track(_load(args))
    return 0


def cmd_stages(args) -> int:
    print("\n".join(STAGES))
    return 0


def cmd_run(args) -> int:
    from .pipeline import run_pipeline

    run_pipeline(_load(args), from_stage=args.from_stage, only_stage=args.only, limit=args.limit)
    return 0


def _flag(*names: str, **kwargs) -> tuple[tuple[str, ...], dict]:
    return names, kwargs


MODEL_FLAG = _flag("--model", help="only this model (or <model>-base)")
LIMIT_FLAG = _flag("--limit", type=int, help="only the first N test rows (smoke runs)")


def _force(help: str) -> tuple[tuple[str, ...], dict]:
    return _flag("--force", action="store_true", help=help)


@dataclass(frozen=True)
class Command:
    """One subcommand: what it calls, its help, and its flags (named settings come from SettingFlag)."""

    name: str
    func: Callable
    help: str
    flags: tuple = ()  # (names, argparse kwargs) pairs
    settings: tuple = ()  # SettingFlags beyond --workdir
    execution: str = ""  # "all": the execution flags; "local": all but --replicas (the stage runs no replicas)
    config: bool = True  # takes --config (and --workdir, --set)


COMMANDS = (
    Command("doctor", cmd_doctor, "print library versions, CUDA visibility and the backends `auto` picks", config=False,
            flags=(_flag("--ray-address", help="also report this Ray cluster's CPUs and GPUs (auto, local or an "
                                                "address)"),)),
    Command("plan", cmd_plan, "show the expanded study (models x decoding configs) without running anything",
            flags=(_flag("--json", action="store_true", help="print a JSON list instead of a table"),
                   _flag("--get", metavar="KEY", help="print one setting of the validated config (e.g. workdir)"))),
    Command("split", cmd_split, "check the dataset and write alpaca_data/{train,test}.jsonl and split.json",
            settings=SPLIT_FLAGS, flags=(_force("split again even when alpaca_data/ is current"),)),
    Command("make-tiny-model", cmd_make_tiny_model, "build a tiny Llama checkpoint offline (tests, demo)", config=False,
            flags=(_flag("out", help="output folder"),
                   _flag("--data", help="Alpaca-format file to train the tokenizer on (default: builtin:tasks)"),
                   _flag("--seed", type=int, default=0), _flag("--hidden-size", type=int, default=128),
                   _flag("--num-layers", type=int, default=2),
                   _flag("--num-heads", type=int, default=4, help="attention heads (e.g. --hidden-size 2048 "
                         "--num-layers 16 --num-heads 16: a 0.7B Llama)"))),
    Command("finetune", cmd_finetune, "fine-tune each model (QLoRA / LoRA / full) and save merged checkpoints",
            execution="all",
            flags=(_flag("--model", help="only this model"),
                   _flag("--backend", choices=["auto", "unsloth", "peft"], help="override each model's backend"),
                   _flag("--max-steps", type=int, help="override train.max_steps"),
                   _force("retrain even when inputs are unchanged"))),
    Command("generate", cmd_generate, "generate test-set responses for every decoding config", execution="all",
            flags=(MODEL_FLAG, _flag("--backend", choices=["auto", "vllm", "hf"], help="override generation.backend"),
                   LIMIT_FLAG, _force("regenerate even when inputs are unchanged"))),
    Command("clean", cmd_clean, "derive the cleaned `response` field from `response_raw`", flags=(MODEL_FLAG,)),
    Command("judge", cmd_judge, "an LLM judge compares every config's answers with a baseline (evaluation.judge) "
            "into eval_results/judge/", execution="local",
            flags=(MODEL_FLAG, _flag("--backend", choices=["auto", "vllm", "hf"],
                                     help="override evaluation.judge.backend"),
                   _force("judge again even when the judgments are current"),
                   _flag("--export-alpacaeval", metavar="PATH", help="also write the judgments as AlpacaEval "
                         "annotations (JSON: instruction, output_1, output_2, generator_1, generator_2, preference "
                         "in [1, 2])"))),
    Command("score", cmd_score, "BLEU / ROUGE-L / BERTScore / perplexity with bootstrap CIs into eval_results/",
            execution="local", flags=(MODEL_FLAG, _force("rescore even when responses are unchanged"))),
    Command("report", cmd_report, "write eval_results/report.md and plots"),
    Command("human-eval", cmd_human_eval, "export a blinded rating sheet, or import rated sheets",
            flags=(_flag("action", choices=["export", "import"]), _flag("files", nargs="*", help="rated CSV files "
                                                                                                 "(import)"),
                   _flag("--out", help="sheet to write (export; default eval_results/human_eval/sheet.csv)"),
                   _flag("--rows", type=int, help="rows per model x config (export)"))),
    Command("stages", cmd_stages, "print the pipeline's stages in order, one a line (hyperparameter_experiments.sh "
            "reads them)", config=False),
    Command("run", cmd_run, "the whole pipeline: split, finetune, generate, clean, judge, score, report",
            execution="all",
            flags=(_flag("--from", dest="from_stage", choices=STAGES, help="start at this stage"),
                   _flag("--only", choices=STAGES, help="run only this stage"), LIMIT_FLAG)),
    Command("track", cmd_track, "push the study's results (fine-tunes, every model x config, the report) to "
            "MLflow: what a run could not log, or the whole study to another store"),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tunesweep", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS:
        sp = sub.add_parser(c.name, help=c.help, description=c.help)
        if c.config:
            sp.add_argument("--config", "-c", required=True, help="experiment YAML (configs/alpaca.yaml, "
                                                                  "configs/tiny.yaml)")
            add_setting_flag(sp, WORKDIR_FLAG)
            sp.add_argument("--set", dest="settings", action="append", type=_key_value, metavar="KEY=VALUE",
                            help="override any setting by its dotted key (list items by index), the value as YAML; "
                                 "repeatable: --set evaluation.bootstrap=200 --set models.0.train.max_steps=5")
        for f in c.settings:
            add_setting_flag(sp, f)
        for names, kwargs in c.flags:
            sp.add_argument(*names, **kwargs)
        for f in EXECUTION_FLAGS if c.execution else ():
            if c.execution == "all" or f.key != "execution.replicas":
                add_setting_flag(sp, f)
        if c.name in TRACKED:
            add_setting_flag(sp, TRACKING_FLAG)
        sp.set_defaults(func=c.func)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C: `finally` blocks run (children stopped, the lock freed)."""


def _terminate(signum, frame):
    raise Terminated()


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="tunesweep: %(message)s",
                        stream=sys.stderr, force=True)
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `human-eval import --config C rated.csv` (files after the options, as the README shows): argparse
    # leaves such positionals over; they are the files. Anything else left over is an error as usual.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command == "human-eval" and not any(e.startswith("-") for e in extra):
            args.files = [*args.files, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv, args.lock = argv, None
    setup_logging(args.verbose)
    previous_sigterm = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() else None
    try:
        return args.func(args)
    except UserError as exc:
        print(f"tunesweep: error: {exc}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt as exc:
        how = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"tunesweep: {how}; finished outputs are kept, a rerun continues", file=sys.stderr)
        return 128 + signal.SIGTERM if isinstance(exc, Terminated) else 130
    except PermissionError as exc:  # the machine's permissions, not a bug: one line naming the path
        print(f"tunesweep: error: {exc.filename or ''}: {(exc.strerror or 'permission denied').lower()} for this user; "
              "fix its permissions", file=sys.stderr)
        return UserError.exit_code
    except Exception as exc:  # a full disk is no bug: one line (atomic writes name their file as DiskFullError)
        message = disk_full_message(exc)
        if message is None:
            raise
        print(f"tunesweep: error: {message}", file=sys.stderr)
        return UserError.exit_code
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if args.lock is not None:
            args.lock.__exit__(None, None, None)


if __name__ == "__main__":
    sys.exit(main())
