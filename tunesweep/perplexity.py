"""Compatibility alias kept only for tests/test_train.py until the training stage moves into
tunesweep/train/: perplexity lives in tunesweep.evaluate.perplexity. Delete this file when the
train move re-points that import."""

from .evaluate.perplexity import corpus_perplexity  # noqa: F401
