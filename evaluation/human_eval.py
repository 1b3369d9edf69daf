"""Human evaluation (thin front over `tunesweep human-eval`).

    python evaluation/human_eval.py export --config configs/alpaca.yaml [--out SHEET.csv] [--rows N]
    python evaluation/human_eval.py import --config configs/alpaca.yaml alice.csv bob.csv

export writes a blinded rating sheet (default eval_results/human_eval/sheet.csv) with rubric.md beside
it and the private key eval_results/human_eval/key.json; import checks the rated copies, writes
eval_results/human.csv and human.json; `tunesweep score` (or evaluation/compute_metrics.py) then fills the
Human column of eval_results/<model>.csv.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunesweep.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["human-eval", *sys.argv[1:]]))
