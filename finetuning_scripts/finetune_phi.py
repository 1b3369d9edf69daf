#!/usr/bin/env python
"""Fine-tune Phi-2 (model `phi2` of configs/alpaca.yaml): `finetune.py --model phi2`.

    python finetuning_scripts/finetune_phi.py [--config configs/alpaca.yaml] [--backend ...] [--max-steps N] [--force]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(default_model="phi2"))
