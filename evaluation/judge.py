"""The LLM judge: every config's answers against a baseline answer (thin front over `tunesweep judge`).

    python evaluation/judge.py --config configs/alpaca.yaml [--model NAME] [--backend auto|vllm|hf] [--force]
                               [--export-alpacaeval annotations.json]

Writes eval_results/judge/<model>/<config>.jsonl and eval_results/judge/manifest.json (nothing when the config
has no evaluation.judge).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunesweep.cli import main  # noqa: E402

if __name__ == "__main__":  # the judge's vLLM engine runs in a spawned child process: it must not rerun this
    sys.exit(main(["judge", *sys.argv[1:]]))
