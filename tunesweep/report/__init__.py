"""The report stage: eval_results/ -> eval_results/report.md and plots/.

stage.py writes the report's sections; tables.py reads the scored tables; plots.py draws one PNG
per decoding factor and metric.
"""

from .stage import report

__all__ = ["report"]
