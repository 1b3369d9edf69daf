"""The report's race section (generation.strategy race): which rule ran, the survivors per round (a table and
a plot), the eliminated configs with the rows they used, and the tokens generated against a full sweep's.

Read from llm_responses/<target>/race.json (the race's own record, written after every round); an eliminated
config's score is always printed with its row count, and never in the results tables (score leaves it out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..config import ExperimentConfig
from ..files import atomic_path
from ..layout import markdown_table, read_race_state
from ..records import RaceState

PLOT = "race_survivors.png"


def race_states(cfg: ExperimentConfig) -> dict[str, RaceState]:
    """{target: race.json} of the study's targets that raced."""
    return {t.name: state for t in cfg.run_targets() if (state := read_race_state(cfg.path, t.name)) is not None}


def plot_survivors(states: dict[str, RaceState], out: Path) -> None:
    """Survivors per round, one step line per target (round 0: every config)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.6), dpi=120)
    ax = fig.add_subplot()
    for name, state in states.items():
        rows = [0] + [r.rows_used for r in state.rounds]
        alive = [len(state.configs)] + [len(r.survivors_before) - len(r.eliminated) for r in state.rounds]
        ax.step(rows, alive, where="post", marker="o", label=name)
    ax.set_xlabel("test rows used (end of round)")
    ax.set_ylabel("configs still racing")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title("Race: survivors per round", fontsize=10)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")


def _num(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


@dataclass
class RaceBlock:
    """One piece of the race section, in the order shown: a heading, a paragraph (with the **bold** and `code`
    marks both writers render), a table (header and rows of text), or the survivors plot."""

    kind: str  # "h3", "p", "table" or "plot"
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    path: Optional[Path] = None


def _target_blocks(name: str, state: RaceState) -> list[RaceBlock]:
    n = state.rows_total
    tokens, full = state.tokens(), state.full_sweep_tokens()
    wall = sum(state.round_wall_s) + (state.finish_wall_s or 0.0)
    blocks = [RaceBlock("h3", name),
              RaceBlock("p", f"{len(state.configs)} configs, {len(state.rounds)} of {state.planned_rounds} planned "
                             f"rounds, {len(state.survivors)} survivor(s): " + ", ".join(f"`{c}`" for c in state.survivors)
                             + ("" if state.finished else " (the race has not finished)") + "."),
              RaceBlock("p", f"Saving: {tokens} tokens generated against about {full} for a full sweep "
                             f"({tokens / full:.0%}; the full sweep's count extrapolates each eliminated config's tokens "
                             f"from its rows to all {n}; bench/race.py measures both); generation wall time "
                             f"{wall:.1f} s."),
              RaceBlock("table", header=["round", "rows used", "racing", "leader", "eliminated"],
                        rows=[[str(r.round), f"{r.rows_used} of {n}", str(len(r.survivors_before)), f"`{r.leader}`",
                               ", ".join(f"`{c}`" for c in r.eliminated) or "–"] for r in state.rounds])]
    gone = [(r, v) for r in state.rounds for v in r.verdicts if v["config"] in r.eliminated]
    if gone:
        blocks.append(RaceBlock("table", header=["eliminated config", "round", "rows", f"{state.metric} on its rows",
                                                 "diff to leader [95% CI]", "Holm p"],
                                rows=[[f"`{v['config']}`", str(r.round), f"{r.rows_used} of {n}",
                                       f"{_num(v['score'])} ({r.rows_used} rows)",
                                       f"{_num(v['diff'])} [{_num(v['ci_low'])}, {_num(v['ci_high'])}]",
                                       _num(v["p_holm"], 3)] for r, v in gone]))
    return blocks


def race_section(cfg: ExperimentConfig, plots_dir: Path) -> list[RaceBlock]:
    """The race section's blocks (its plot drawn into plots_dir), rendered alike by report.md and report.html;
    nothing when no target raced."""
    states = race_states(cfg) if cfg.generation.strategy == "race" else {}
    plot = plots_dir / PLOT
    if not states:
        plot.unlink(missing_ok=True)
        return []
    first = next(iter(states.values()))
    intro = (f"generation.strategy race on **{first.metric}**: rounds of test rows, every surviving config "
             f"generating each round's rows with the seeds of the full sweep; rule `{first.alpha_rule}`: "
             f"{first.rule}. With {first.planned_rounds} planned rounds and alpha {first.alpha:g}, each "
             f"round tests at {first.alpha_round:.4g}. Survivors are finished on every row (their files are the "
             "full sweep's); an eliminated config keeps only the rows it used and is in no results table: its "
             "score below is on those rows, against the round's leader on the same rows (eval_results/race.csv).")
    plots_dir.mkdir(parents=True, exist_ok=True)
    plot_survivors(states, plot)
    blocks = [RaceBlock("p", intro), RaceBlock("plot", path=plot)]
    for name, state in states.items():
        blocks += _target_blocks(name, state)
    return blocks


def race_markdown(blocks: list[RaceBlock]) -> list[str]:
    """report.md's `## Race` lines."""
    if not blocks:
        return []
    lines = ["## Race", ""]
    for b in blocks:
        if b.kind == "h3":
            lines += [f"### {b.text}", ""]
        elif b.kind == "p":
            lines += [b.text, ""]
        elif b.kind == "plot":
            lines += [f"![survivors per round](plots/{b.path.name})", ""]
        else:
            lines += [markdown_table(b.header, b.rows), ""]
    return lines
