"""Generate test-set responses for every decoding config (thin front over `tunesweep generate`).

    python inference/generate_responses.py --config configs/alpaca.yaml [--model NAME]
        [--backend auto|vllm|hf] [--limit N] [--force]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tunesweep.cli import main  # noqa: E402

if __name__ == "__main__":  # the vLLM worker is a spawned process: it must not rerun this
    sys.exit(main(["generate", *sys.argv[1:]]))
