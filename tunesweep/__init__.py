"""tunesweep: fine-tune several LLMs, sweep decoding settings, score the answers."""

__version__ = "0.1.0"
