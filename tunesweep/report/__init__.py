"""The report stage: eval_results/ -> eval_results/report.md, report.html and plots/.

model.py reads the study once into a ReportModel (tables.py: the scored tables, comparisons.csv and the
verdicts; explorer.py: every answer for the page's explorer); stage.py renders it as report.md and
html.py as one self-contained page (style and script from assets/, inlined), so both pages show the
same numbers and verdicts; plots.py draws one PNG per decoding factor and metric.
"""

from .stage import report

__all__ = ["report"]
