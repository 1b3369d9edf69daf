"""The clean, score and human-eval stages: llm_responses/ -> eval_results/.

clean.py derives the cleaned `response`; metrics.py holds BLEU / ROUGE-L / BERTScore and the
bootstrap; perplexity.py scores reference answers under a checkpoint; scoring.py is the score stage
(tables, cache); human_eval.py exports and imports rating sheets; agreement.py measures raters.
"""
