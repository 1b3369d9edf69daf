#!/usr/bin/env python
"""Fine-tune the models of an experiment config: a thin front over `tunesweep finetune`.

    python finetuning_scripts/finetune.py --config configs/alpaca.yaml [--model NAME]
        [--backend auto|unsloth|peft] [--max-steps N] [--force]

--config defaults to configs/alpaca.yaml. finetune_llama.py, finetune_mistral.py and
finetune_phi.py are the same with --model defaulting to llama2 / mistral / phi2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # runnable from a checkout without `pip install -e .`

DEFAULT_CONFIG = str(REPO / "configs" / "alpaca.yaml")


def _has(argv: list[str], *flags: str) -> bool:
    return any(a == f or a.startswith(f + "=") for a in argv for f in flags)


def main(argv: Optional[list[str]] = None, default_model: Optional[str] = None) -> int:
    from tunesweep.cli import main as tunesweep_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if not _has(argv, "--config", "-c") and "-h" not in argv and "--help" not in argv:
        argv = ["--config", DEFAULT_CONFIG, *argv]
    if default_model and not _has(argv, "--model"):
        argv = [*argv, "--model", default_model]
    return tunesweep_main(["finetune", *argv])


if __name__ == "__main__":
    sys.exit(main())
