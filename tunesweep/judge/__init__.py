"""The judge: an LLM compares two answers to the same instruction and says which is better.

A stage package (tests/test_layering.py): it imports the shared base modules and its own, nothing else.
- prompt: the built-in pairwise prompt and the two one-token answer labels;
- verdict: preferences from the judge's next-token probabilities of the labels, asked in both orders
  (vLLM and transformers backends);
- stats: win rate with a bootstrap CI and AlpacaEval 2's length-controlled win rate;
- engine: the judge engine, loaded once per stage (in this process, a child process, or a Ray actor);
- stage: the `judge` stage (files, cache, resume, manifest, AlpacaEval export).
"""
