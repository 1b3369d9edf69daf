"""generation.strategy race: the generate stage in rounds of rows, with configs detectably worse than the
round's leader dropped (stage.py runs it, rule.py decides). It sits above the generate and evaluate stages,
whose pieces it joins: one engine per model from generate, cleaning, metrics and paired bootstrap from evaluate."""

from .stage import generate_responses, race_target

__all__ = ["generate_responses", "race_target"]
