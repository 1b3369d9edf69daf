"""The report's plots: one PNG per decoding factor and metric (every model a line, 95% CI bars)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import DecodingConfig, ExperimentConfig, expand_sweep
from ..files import atomic_path
from .tables import Scored, table_metrics, target_label, value_of

FACTORS = ("top_k", "num_beams", "temperature")
FACTOR_NOTES = {
    "top_k": "top_k (0 = no filter; ignored by greedy and beam search)",
    "num_beams": "num_beams (1 = no beam search; beam search ignores top_k and temperature)",
    "temperature": "temperature (0 = greedy)",
}


@dataclass
class Plot:
    """One PNG of plots/: a decoding factor against a metric."""
    factor: str
    metric: str
    label: str
    path: Path


def draw_plots(cfg: ExperimentConfig, scored: list[Scored], metrics: list[tuple[str, str]],
               plots_dir: Path) -> list[Plot]:
    """Every factor x metric plot with something to show, in report order; a plot of an earlier run (a metric
    or factor since dropped) is deleted, so it cannot pass for a current one."""
    drawn = []
    for factor in FACTORS:
        for m, label in metrics:
            out = plots_dir / f"{factor}_{m}.png"
            if plot_factor(cfg, scored, factor, m, label, out):
                drawn.append(Plot(factor, m, label, out))
    ours = {f"{f}_{m}.png" for f in FACTORS for m, _ in table_metrics()}
    current = {p.path for p in drawn}
    for stale in plots_dir.glob("*.png") if plots_dir.is_dir() else []:
        if stale.name in ours and stale not in current:
            stale.unlink()
    return drawn


def factor_slice(cfg: ExperimentConfig, factor: str) -> list[DecodingConfig]:
    """The configs on the line through the defaults along `factor` (the centre included), by value.

    In one_at_a_time mode these are the centre plus the configs that vary `factor`; in grid mode
    the grid points whose other factors sit at their defaults."""
    d = cfg.generation.defaults
    others = [f for f in FACTORS if f != factor]
    points = [dc for dc in expand_sweep(cfg.generation)
              if all(float(getattr(dc, f)) == float(getattr(d, f)) for f in others)]
    return sorted(points, key=lambda dc: getattr(dc, factor))


def plot_factor(cfg: ExperimentConfig, scored: list[Scored], factor: str, metric: str, label: str,
                out: Path) -> bool:
    """One PNG: metric vs factor value, one line per model, 95% CI error bars. False if no data."""
    from matplotlib.figure import Figure  # Figure renders with the Agg canvas; no pyplot state

    points = factor_slice(cfg, factor)
    if len(points) < 2:
        return False
    fig = Figure(figsize=(7.0, 4.4), dpi=120)
    ax = fig.add_subplot()
    xs_all = [float(getattr(dc, factor)) for dc in points]
    span = (max(xs_all) - min(xs_all)) or 1.0
    drawn = 0
    # A fine-tuned model and its base share a colour; the base is dashed with hollow markers.
    families = list(dict.fromkeys(s.target.model.name for s in scored))
    colours = {name: f"C{i % 10}" for i, name in enumerate(families)}
    for i, s in enumerate(scored):
        xs, ys, err_lo, err_hi = [], [], [], []
        for dc in points:
            y, lo, hi = value_of(s, dc.name, metric)
            if y is None:
                continue
            xs.append(float(getattr(dc, factor)))
            ys.append(y)
            err_lo.append(y - lo if lo is not None else 0.0)
            err_hi.append(hi - y if hi is not None else 0.0)
        if not xs:
            continue
        # A small sideways offset per model keeps overlapping error bars readable.
        offset = (i - (len(scored) - 1) / 2) * 0.012 * span
        ax.errorbar([x + offset for x in xs], ys, yerr=[err_lo, err_hi], label=target_label(s.target),
                    marker="o", markersize=5, capsize=3, linewidth=1.6, color=colours[s.target.model.name],
                    linestyle="--" if s.target.is_base else "-",
                    markerfacecolor="white" if s.target.is_base else None)
        drawn += 1
    if not drawn:
        return False
    centre = float(getattr(cfg.generation.defaults, factor))
    ax.axvline(centre, color="0.6", linestyle=":", linewidth=1, zorder=0)
    # Bottom left of the line: inside the axes wherever the centre lies, clear of the legend.
    ax.annotate("defaults", (centre, 0.0), xycoords=("data", "axes fraction"), xytext=(-3, 4),
                textcoords="offset points", fontsize=8, color="0.4", ha="right")
    if metric == "human":  # the whole rating scale, so small differences do not look large
        h = cfg.evaluation.human
        ax.set_ylim(h.scale_min - 0.2, h.scale_max + 0.2)
    ax.set_xticks(sorted(set(xs_all)))
    ax.set_xticklabels([f"{x:g}" for x in sorted(set(xs_all))])
    ax.set_xlabel(FACTOR_NOTES[factor])
    ax.set_ylabel(f"{label}" + (" (95% CI)" if metric != "human" else " (mean rating)"))
    d = cfg.generation.defaults
    fixed = ", ".join(f"{f} {getattr(d, f):g}" for f in FACTORS if f != factor)
    ax.set_title(f"{label} vs {factor}  (others at defaults: {fixed})", fontsize=10)
    ax.grid(True, alpha=0.3)
    # Outside the axes: with six lines a legend inside would hide points.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return True


