"""The score and human-eval stages: llm_responses/ -> eval_results/.

metrics.py holds BLEU / ROUGE-L / BERTScore and the bootstrap; perplexity.py scores reference answers under
a checkpoint; scoring.py is the score stage (tables, cache); human_eval.py exports and imports rating sheets;
agreement.py measures raters. The cleaned `response` they read comes from the clean stage (tunesweep/clean/).
"""
