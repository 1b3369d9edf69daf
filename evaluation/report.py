"""Write eval_results/report.md and eval_results/plots/*.png (thin front over `tunesweep report`).

    python evaluation/report.py --config configs/alpaca.yaml [--workdir DIR]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunesweep.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
