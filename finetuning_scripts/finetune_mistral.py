#!/usr/bin/env python
"""Fine-tune Mistral-7B (model `mistral` of configs/alpaca.yaml): `finetune.py --model mistral`.

    python finetuning_scripts/finetune_mistral.py [--config configs/alpaca.yaml] [--backend ...] [--max-steps N] [--force]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(default_model="mistral"))
