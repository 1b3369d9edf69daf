"""The clean stage: llm_responses/<model>/<config>.jsonl `response_raw` -> the cleaned `response`.

stage.py holds the one rule set (`clean_response`) and the stage that applies it to every response file. Score,
the judge and the race read `response`; the race, which scores before the clean stage runs, calls
`clean_response` itself so that its rounds see the same text.
"""
