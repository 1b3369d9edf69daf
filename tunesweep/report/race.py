"""The report's race section (generation.strategy race): which rule ran, the survivors per round (a table and
a plot), the eliminated configs with the rows they used, and the tokens generated against a full sweep's.

Read from llm_responses/<target>/race.json (the race's own record, written after every round); an eliminated
config's score is always printed with its row count, and never in the results tables (score leaves it out).
"""

from __future__ import annotations

from pathlib import Path

from ..config import ExperimentConfig
from ..files import atomic_path
from ..layout import read_race_state
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


def race_section(cfg: ExperimentConfig, plots_dir: Path) -> tuple[list[str], list[Path]]:
    """(report.md lines, plots written) of the race; nothing when no target raced."""
    states = race_states(cfg) if cfg.generation.strategy == "race" else {}
    stale = plots_dir / PLOT
    if not states:
        stale.unlink(missing_ok=True)
        return [], []
    first = next(iter(states.values()))
    lines = ["## Race", "",
             f"generation.strategy race on **{first.metric}**: rounds of test rows, every surviving config "
             f"generating each round's rows with the seeds of the full sweep; rule `{first.alpha_rule}`: "
             f"{first.rule}. With {first.planned_rounds} planned rounds and alpha {first.alpha:g}, each "
             f"round tests at {first.alpha_round:.4g}. Survivors are finished on every row (their files are the "
             "full sweep's); an eliminated config keeps only the rows it used and is in no results table: its "
             "score below is on those rows, against the round's leader on the same rows (eval_results/race.csv).", ""]
    plots_dir.mkdir(parents=True, exist_ok=True)
    plot_survivors(states, stale)
    lines += [f"![survivors per round](plots/{PLOT})", ""]
    for name, state in states.items():
        n = state.rows_total
        tokens = state.tokens()
        full = state.full_sweep_tokens()
        wall = sum(state.round_wall_s) + (state.finish_wall_s or 0.0)
        lines += [f"### {name}", "",
                  f"{len(state.configs)} configs, {len(state.rounds)} of {state.planned_rounds} planned "
                  f"rounds, {len(state.survivors)} survivor(s): "
                  + ", ".join(f"`{c}`" for c in state.survivors)
                  + ("" if state.finished else " (the race has not finished)") + ".", "",
                  f"Saving: {tokens} tokens generated against about {full} for a full sweep "
                  f"({tokens / full:.0%}; the full sweep's count extrapolates each eliminated config's tokens from "
                  f"its rows to all {n}; bench/race.py measures both); generation wall time {wall:.1f} s.", "",
                  "| round | rows used | racing | leader | eliminated |", "|---|---|---|---|---|"]
        for r in state.rounds:
            out = ", ".join(f"`{c}`" for c in r.eliminated) or "–"
            lines.append(f"| {r.round} | {r.rows_used} of {n} | {len(r.survivors_before)} | `{r.leader}` | {out} |")
        lines.append("")
        gone = [(r, v) for r in state.rounds for v in r.verdicts if v["config"] in r.eliminated]
        if gone:
            lines += [f"| eliminated config | round | rows | {state.metric} on its rows | diff to leader [95% CI] "
                      "| Holm p |", "|---|---|---|---|---|---|"]
            for r, v in gone:
                lines.append(f"| `{v['config']}` | {r.round} | {r.rows_used} of {n} | {_num(v['score'])} "
                             f"({r.rows_used} rows) | {_num(v['diff'])} [{_num(v['ci_low'])}, {_num(v['ci_high'])}] "
                             f"| {_num(v['p_holm'], 3)} |")
            lines.append("")
    return lines, [stale]
