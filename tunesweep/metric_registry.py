"""The study's metrics, each one descriptor registered here: everything else derives from this list.

A `Metric` says what a metric is (name, label, direction, version, what it needs, its table columns)
and names the function that builds its scorer. From the registry come: the names
`evaluation.metrics` accepts and its default (config.py), the columns of eval_results/<model>.csv
(`table_columns`), the report's metric order and labels (report/), which metrics are slow jobs and
each metric's share of the score cache key (evaluate/scoring.py). Adding a metric is its own module
(the scorer) plus one `register(...)` line below.

This module is part of the shared base: config validation and the report must know the metrics without
importing the evaluate stage. So a built-in metric names its scorer factory by import path
("module:function"), the way a plugin entry point does; only the score stage resolves it
(evaluate/metrics.build_metric). A metric registered at run time (a test, a plugin) may pass the
factory itself.

A scorer (what the factory returns for the config's `evaluation` section) has `name`, `settings()`,
`rows(hyps, refs, groups)` (per-row values of a flat list of pairs; `groups`: the per-config block
lengths), `per_row(rows)` (each row's own score), `aggregate(rows)` (the corpus score) and
`aggregate_resamples(rows, idx)` (the corpus score of each bootstrap resample): see evaluate/metrics.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional, Union

Needs = Literal["references", "model", "judge", "human"]


@dataclass(frozen=True)
class Metric:
    name: str  # the key in evaluation.metrics, the <model>.csv column and comparisons.csv's `metric`
    label: str  # how the report and the tables' readers name it
    needs: Needs  # references: scored from responses and references; model: the checkpoint (perplexity);
    #               judge: a judge's verdicts; human: imported ratings (`tunesweep human-eval import`)
    version: int  # this metric's logic: bumping it rescores this metric alone (its cached rows are keyed by it)
    scorer: Union[str, Callable, None] = None  # "module:function" or a callable, evaluation section -> scorer;
    #                                            None: not scored per row by the score stage (perplexity, human)
    higher_is_better: bool = True  # which config is "best" (comparisons.csv versus best, the report's best table)
    slow: bool = False  # loads a model: scored as a job of its own (a Ray task under execution.backend: ray, so
    #                    its scorer must pickle: a module-level factory and class, not a lambda)
    default: bool = True  # in evaluation.metrics' default list, and a column of every table even when not scored
    table: bool = True  # has columns in eval_results/<model>.csv (perplexity has a file of its own)
    ci: bool = True  # the table holds <name>_ci_low / <name>_ci_high beside the score
    decimals: int = 4  # digits the report prints

    @property
    def columns(self) -> list[str]:
        """This metric's columns in eval_results/<model>.csv."""
        if not self.table:
            return []
        return [self.name] + ([f"{self.name}_ci_low", f"{self.name}_ci_high"] if self.ci else [])

    @property
    def per_row(self) -> bool:
        """Scored per test row by the score stage (and so bootstrapped and compared pairwise)."""
        return self.scorer is not None


_REGISTRY: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    """Add `metric` (after those registered before it); a name may be registered once."""
    if metric.name in _REGISTRY:
        raise ValueError(f"metric {metric.name!r} is registered already")
    _REGISTRY[metric.name] = metric
    return metric


def unregister(name: str) -> Metric:
    """Remove a metric registered at run time (a test undoing its own registration)."""
    return _REGISTRY.pop(name)


def replace(metric: Metric) -> Metric:
    """Put `metric` in place of the registered metric of the same name (keeping its place); returns the old one."""
    old = _REGISTRY[metric.name]
    _REGISTRY[metric.name] = metric
    return old


def get(name: str) -> Metric:
    return _REGISTRY[name]


def all_metrics() -> list[Metric]:
    """Every registered metric in report order: registration order, imported human ratings last."""
    return sorted(_REGISTRY.values(), key=lambda m: m.needs == "human")


def selectable() -> list[str]:
    """The names evaluation.metrics accepts: every metric but human ratings, which are imported, not scored."""
    return [m.name for m in all_metrics() if m.needs != "human"]


def default_names() -> list[str]:
    return [m.name for m in all_metrics() if m.default and m.needs != "human"]


def scored_per_row(wanted: Iterable[str]) -> list[Metric]:
    """The metrics of `wanted` the score stage scores per row, in registry order."""
    wanted = set(wanted)
    return [m for m in all_metrics() if m.per_row and m.name in wanted]


def table_metrics(wanted: Optional[Iterable[str]] = None) -> list[Metric]:
    """The metrics with columns in eval_results/<model>.csv: the default ones always (blank when not scored,
    so tables of one study keep one shape), others when `wanted` names them (None: every one)."""
    wanted = None if wanted is None else set(wanted)
    return [m for m in all_metrics()
            if m.table and (m.default or m.needs == "human" or wanted is None or m.name in wanted)]


def table_columns(wanted: Optional[Iterable[str]] = None) -> list[str]:
    """The columns of eval_results/<model>.csv (and .md) for a study scoring `wanted`."""
    return ["config", "mode"] + [c for m in table_metrics(wanted) for c in m.columns]


# --- the registry: one line per metric -----------------------------------------------------------

register(Metric("bleu", "BLEU", "references", version=1, scorer="tunesweep.evaluate.metrics:bleu_scorer"))
register(Metric("rougeL", "ROUGE-L", "references", version=1, scorer="tunesweep.evaluate.metrics:rouge_scorer"))
register(Metric("bertscore", "BERTScore", "references", version=1, slow=True,
                scorer="tunesweep.evaluate.metrics:bertscore_scorer"))
# Perplexity of the test references under each model: one figure per model, not per config, in
# eval_results/perplexity.csv (scoring.py computes it from the checkpoint); registered for its name,
# version, direction and label.
register(Metric("perplexity", "Perplexity", "model", version=1, higher_is_better=False, slow=True, table=False,
                decimals=3))
register(Metric("human", "Human", "human", version=1, ci=False, decimals=2))  # mean rating, 1-5: no CI in tables
