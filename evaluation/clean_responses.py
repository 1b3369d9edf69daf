"""Derive the cleaned `response` from `response_raw` (thin front over `tunesweep clean`).

    python evaluation/clean_responses.py --config configs/alpaca.yaml [--model NAME]

Writes `response` in every llm_responses/<model>/<config>.jsonl (response_raw is never changed)
and llm_responses/<model>/cleaning.json with per-config counts.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunesweep.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["clean", *sys.argv[1:]]))
