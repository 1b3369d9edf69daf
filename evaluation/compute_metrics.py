"""BLEU / ROUGE-L / BERTScore / perplexity with 95% bootstrap CIs (thin front over `tunesweep score`).

    python evaluation/compute_metrics.py --config configs/alpaca.yaml [--model NAME] [--force]

Writes eval_results/<model>.csv and .md, all.csv, perplexity.csv and metrics.json.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunesweep.cli import main  # noqa: E402

if __name__ == "__main__":  # the ROUGE process pool may spawn workers: they must not rerun this
    sys.exit(main(["score", *sys.argv[1:]]))
