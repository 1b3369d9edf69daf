"""The report stage: eval_results/ -> eval_results/report.md, report.html and plots/.

stage.py writes report.md's sections; html.py writes report.html (one self-contained page with a
response explorer); tables.py reads the scored tables; plots.py draws one PNG per decoding factor
and metric.
"""

from .stage import report

__all__ = ["report"]
