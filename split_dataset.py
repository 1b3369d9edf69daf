#!/usr/bin/env python
"""Split the dataset of a config into alpaca_data/train.jsonl and test.jsonl (same as `tunesweep split`).

    python split_dataset.py --config configs/alpaca.yaml [--dataset SRC] [--test-size N] [--seed S] [--workdir DIR]
"""

import sys

from tunesweep.cli import main

if __name__ == "__main__":
    sys.exit(main(["split", *sys.argv[1:]]))
