"""The report stage: eval_results/report.md, report.html and plots/*.png from the scored results.

Reads only files of the stages before it (the contracts of DESIGN.md), once, into the report model
(model.py); this module renders report.md from it, one small function per section, and html.py renders
report.html from the same model. Writes the report and one plot per factor x metric (all models as lines,
the centre point in every factor's line, 95% CI error bars). Everything is rewritten on each run: it
takes a second, and a report that could lag behind its tables would be worse.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

import pandas as pd
import yaml

from ..config import DecodingConfig, ExperimentConfig, ModelConfig, RunTarget
from ..files import sha256_file, write_text
from ..layout import Workdir, format_cell, markdown_table as md_table
from ..provenance import library_versions
from ..records import ConfigEntry, GenerationManifest, cleaning_configs, cleaning_rules, scored_targets
from .race import race_markdown, race_section
from .html import build_html
from .model import ReportModel, base_compared_metrics, build_model, tested_metrics
from .plots import Plot, draw_plots
from .tables import (Scored, judge_summary, agreement_text, best_in_table, bertscore_empty_line, bertscore_line, decimals_for,
                     dash as _dash, fidelity_text, invariance_text, joined_versions, metric_settings,
                     scoring_versions, target_label, to_number, value_of)
from .tables import (ALPHA, MetricVerdict, comparison_rows as _cmp_rows, family_size, holm_p_text, noise_note, p_text,
                     signed_diff, significant as _significant, VERDICT_INTRO)

log = logging.getLogger(__name__)

DECIMALS = 4


def fmt(x, decimals: int = DECIMALS) -> str:
    return format_cell(to_number(x), decimals, blank="–")


def fmt_ci(score, low, high, decimals: int = DECIMALS) -> str:
    """'0.1234 [0.1000, 0.1500]'; the bracket is left out when there is no interval (bootstrap 0)."""
    if to_number(score) is None:
        return "–"
    if to_number(low) is None or to_number(high) is None:
        return fmt(score, decimals)
    return f"{fmt(score, decimals)} [{fmt(low, decimals)}, {fmt(high, decimals)}]"


# --- sections ------------------------------------------------------------------------------------

MIN_ROWS_FOR_CI = 10


def few_rows_note(metrics_json: Optional[dict]) -> Optional[str]:
    rows = [int(t.rows) for t in scored_targets(metrics_json).values() if t.rows]
    if rows and min(rows) < MIN_ROWS_FOR_CI:
        return (f"**Only {min(rows)} test rows: with fewer than {MIN_ROWS_FOR_CI}, the confidence intervals and "
                "paired tests of this report are not meaningful.**")
    return None


def _verdict_section(scored: list[Scored], found: dict[str, list[MetricVerdict]]) -> list[str]:
    """The answer first: per model, the best config of each metric and whether it is detectably better (the
    same sentences as report.html's Verdict, from tables.verdicts)."""
    lines = ["## Verdict", "", VERDICT_INTRO, ""]
    for s in scored:
        if found.get(s.target.name):
            lines += [f"**{target_label(s.target)}**", ""] + [f"- {v.sentence}" for v in found[s.target.name]] + [""]
    return lines


def _results_section(scored: list[Scored], metrics: list[tuple[str, str]], configs: list[DecodingConfig],
                     metrics_json: Optional[dict] = None,
                     found: Optional[dict[str, list[MetricVerdict]]] = None) -> list[str]:
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
        noise = noise_note((found or {}).get(s.target.name) or [], dict(metrics))
        if noise:
            lines += [noise, ""]
        empty = bertscore_empty_line(metrics_json, s.target.name) if any(m == "bertscore" for m, _ in metrics) else None
        if empty:
            lines += [empty, ""]
    return lines


def _diff_text(row: dict, family: int) -> str:
    """'`config` (+0.0620 [+0.0120, +0.1240], Holm p 0.031)'; `family`: the comparisons Holm adjusted over."""
    return f"`{row['config']}` ({signed_diff(row)}, Holm p {holm_p_text(row, family)})"


def _names(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def verdict_sentence(rows: list[dict], centre: str) -> str:
    """In words, from comparisons.csv rows (versus centre) of one model and metric: which configs differ
    from the centre after Holm correction, in which direction, and by how much."""
    if not rows:
        return "no paired comparison in `comparisons.csv`."
    if all(to_number(r.get("p_holm")) is None for r in rows):
        return "no paired test (evaluation.bootstrap = 0): differences are not judged."
    n, family = len(rows), family_size(rows)
    higher = [r for r in rows if _significant(r, family) and to_number(r["diff"]) > 0]
    lower = [r for r in rows if _significant(r, family) and to_number(r["diff"]) < 0]
    if not higher and not lower:
        smallest = min((r for r in rows if to_number(r.get("p_holm")) is not None),
                       key=lambda r: to_number(r["p_holm"]))
        return (f"after Holm correction over {n} comparisons, no config differs detectably from the centre "
                f"`{centre}` (smallest adjusted p {holm_p_text(smallest, family)}).")
    parts = []
    if higher:
        parts.append(f"{_names([_diff_text(r, family) for r in higher])} score{'s' if len(higher) == 1 else ''} "
                     f"higher than the centre `{centre}`")
    if lower:
        parts.append(f"{_names([_diff_text(r, family) for r in lower])} score{'s' if len(lower) == 1 else ''} lower")
    rest = n - len(higher) - len(lower)
    tail = f"; the other {rest} do not differ detectably" if rest else ""
    return f"after Holm correction over {n} comparisons, " + "; ".join(parts) + tail + "."


def _comparisons_section(scored: list[Scored], metrics: list[tuple[str, str]], comparisons: Optional[pd.DataFrame],
                         centre: str) -> list[str]:
    lines = ["## Which configs differ from the centre", ""]
    if comparisons is None:
        return lines + ["(`eval_results/comparisons.csv` not found: rerun `tunesweep score` to get paired comparisons.)",
                        ""]
    lines += [f"From `eval_results/comparisons.csv`: each config minus the centre config `{centre}` on the same test "
              "rows, a paired bootstrap of the difference (the same resampled rows for both configs), its 95% "
              "percentile interval (not adjusted) and a two-sided bootstrap p-value; a config counts as different "
              f"when its Holm-adjusted p (over the model's comparisons for that metric) is below {ALPHA:g}. A bootstrap "
              "p moves in steps of 2/B for B resamples and Holm multiplies the smallest of m comparisons by m, so an "
              "adjusted p below m·2/B is printed as that bound (`< 0.012` for B = 2000, m = 12), and a bound above "
              f"{ALPHA:g} does not count as a difference.", ""]
    for s in scored:
        rows = []
        for m, label in metrics:
            cmp = _cmp_rows(comparisons, s.target.name, m, "centre")
            if m == "human":
                continue  # ratings have no per-row scores to pair
            rows.append([label, verdict_sentence(cmp, centre)])
        if rows:
            lines += [f"### {target_label(s.target)}", "", md_table(["metric", "versus the centre"], rows), ""]
    return lines


def _best_section(scored: list[Scored], metrics: list[tuple[str, str]],
                  comparisons: Optional[pd.DataFrame] = None) -> list[str]:
    lines = ["## Best config per model and metric", "",
             "Highest score (the first in sweep order on a tie). Judged by a paired test, not by overlapping "
             "intervals: every other config minus the best on the same resampled rows (`comparisons.csv`, versus "
             f"best), Holm-corrected over the model's comparisons for that metric; `detectably worse` counts the "
             f"configs whose adjusted p is below {ALPHA:g}, and `not distinguishable from the best` names the "
             "others. The best is picked on the same data, so its lead is if anything overstated.", ""]
    rows = []
    for s in scored:
        for m, label in metrics:
            if m not in s.table.columns or s.table[m].isna().all():
                continue
            cmp = _cmp_rows(comparisons, s.target.name, m, "best")
            best = cmp[0]["reference"] if cmp else best_in_table(s, m)
            y, lo, hi = value_of(s, best, m)
            if not cmp or all(to_number(r.get("p_holm")) is None for r in cmp):
                worse, tied = "–", ("no paired test" if m != "human" else "– (ratings are not paired)")
            else:
                worse = f"{sum(_significant(r, family_size(cmp)) for r in cmp)} of {len(cmp)}"
                same = [f"`{r['config']}`" for r in cmp if not _significant(r, family_size(cmp))]
                tied = ", ".join(same) if same else "none"
            rows.append([target_label(s.target), label, f"`{best}`", fmt_ci(y, lo, hi, decimals_for(m)), worse, tied])
    lines += [md_table(["model", "metric", "best config", "score [95% CI]", "detectably worse",
                        "not distinguishable from the best"], rows), ""]
    return lines


def _finetune_gain_section(cfg: ExperimentConfig, scored: list[Scored], metrics: list[tuple[str, str]],
                           perplexity: Optional[pd.DataFrame], comparisons: Optional[pd.DataFrame],
                           centre: str) -> list[str]:
    by_name = {s.target.name: s for s in scored}
    pairs = [(by_name[m.name], by_name[f"{m.name}-base"]) for m in cfg.models
             if m.name in by_name and f"{m.name}-base" in by_name]
    if not pairs:
        return []
    lines = ["## What fine-tuning bought", "",
             f"Fine-tuned minus base at the centre config `{centre}` (perplexity: lower is better, so a "
             "negative difference is a gain). The paired 95% interval and Holm p (over the configs of that "
             "model and metric) are from `comparisons.csv` (versus base).", ""]
    rows = []
    for ft, base in pairs:
        for m, label in metrics:
            a, _, _ = value_of(ft, centre, m)
            b, _, _ = value_of(base, centre, m)
            if a is None and b is None:
                continue
            diff = a - b if a is not None and b is not None else None
            d = decimals_for(m)
            family = _cmp_rows(comparisons, ft.target.name, m, "base")
            paired = [r for r in family if r["config"] == centre]
            lo, hi, p = ((to_number(paired[0].get(k)) for k in ("ci_low", "ci_high", "p_holm")) if paired
                         else (None, None, None))
            resamples = paired[0].get("resamples") if paired else None
            ci = f"[{lo:+.{d}f}, {hi:+.{d}f}]" if lo is not None and hi is not None else "–"
            rows.append([ft.target.name, label, fmt(a, d), fmt(b, d), "–" if diff is None else f"{diff:+.{d}f}", ci,
                         p_text(p, resamples, family_size(family))])
        if perplexity is not None:
            ppl = perplexity.set_index("model")["perplexity"]
            a, b = to_number(ppl.get(ft.target.name)), to_number(ppl.get(base.target.name))
            if a is not None or b is not None:
                diff = a - b if a is not None and b is not None else None
                rows.append([ft.target.name, "perplexity", fmt(a, 3), fmt(b, 3),
                             "–" if diff is None else f"{diff:+.3f}", "–", "–"])
    lines += [md_table(["model", "metric", "fine-tuned", "base", "difference", "paired 95% CI", "Holm p"], rows), ""]
    return lines


def _plots_section(plots: list[Plot]) -> list[str]:
    lines = ["## Effect of each decoding factor", "",
             "One plot per factor and metric: the factor's values with the other two at their defaults "
             "(the centre point is on every line), every model as a line (base models dashed, hollow "
             "markers), 95% bootstrap CI error bars; models are nudged sideways a little so their bars "
             "do not hide each other.", ""]
    for p in plots:
        lines += [f"![{p.label} vs {p.factor}](plots/{p.path.name})", ""]
    if not plots:
        lines += ["(No factor has two or more values in this sweep: nothing to plot.)", ""]
    return lines


def _training_section(models: list[ModelConfig], training: dict[str, Optional[dict]]) -> list[str]:
    """Per fine-tuned model: backend and why, steps, time, trained tokens/s after warm-up, peak memory."""
    rows = []
    for m in models:
        rec = training.get(m.name)
        if rec is None:
            continue
        t = rec.get("throughput") or {}
        speed = (f"{t['tokens_per_s']:,.0f} (last {t['measured_steps']} steps; {t['warmup_steps_excluded']} warm-up "
                 "excluded)" if t.get("tokens_per_s") else "–")
        peak = (f"{t['peak_memory_bytes'] / 2**30:.2f} GiB ({t['peak_memory_kind']})"
                if t.get("peak_memory_bytes") else "–")
        check = rec.get("post_merge_check") or {}
        fidelity = fidelity_text(rec)
        rows.append([m.name, f"{rec.get('backend')} ({rec.get('backend_reason')})", rec.get("method"),
                     rec.get("global_step"), fmt(rec.get("train_runtime_s"), 1), speed, peak,
                     fmt(rec.get("final_loss"), 4), f"{check.get('ended_with_eos', '–')}/{check.get('prompts', '–')}",
                     fidelity, rec.get("device")])
    if not rows:
        return []
    return ["## Fine-tuning", "",
            "From each `finetuned_models/<model>/tunesweep.json`. Tokens/s counts the non-padding input tokens the "
            "trainer saw per second of optimizer steps, after the first warm-up steps (compilation, allocator "
            "warm-up) and without checkpoint writing; peak memory is the accelerator's peak allocation, or the "
            "training process's peak RSS on a CPU. Merge fidelity compares the merged checkpoint with base + "
            "adapter on the post-merge check's prompts: the share of identical greedy answers, the mean KL of "
            "the next-token distributions and the largest logit difference.", "",
            md_table(["model", "backend (why)", "method", "steps", "train time (s)", "trained tokens/s", "peak memory",
                      "final loss", "EOS check", "merge fidelity", "device"], rows), ""]


def _perplexity_section(perplexity: Optional[pd.DataFrame], path: Path, targets: dict[str, RunTarget]) -> list[str]:
    lines = ["## Perplexity", ""]
    if perplexity is None:
        return lines + [f"(`{path.name}` not found: perplexity was not computed.)", ""]
    lines += ["Test-set perplexity of the reference answers (response tokens only, prompt masked); lower is better. "
              "The 95% interval is a bootstrap over test rows (the same resampled rows as the text metrics) of "
              "exp(sum of the rows' NLL / sum of their tokens).", ""]
    rows = []
    for _, r in perplexity.iterrows():
        t = targets.get(str(r["model"]))
        rows.append([target_label(t) if t else r["model"],
                     fmt_ci(r.get("perplexity"), r.get("ppl_ci_low"), r.get("ppl_ci_high"), 3), fmt(r.get("nll")),
                     "–" if to_number(r.get("tokens")) is None else int(r["tokens"]), f"`{r.get('checkpoint', '')}`"])
    return lines + [md_table(["model", "perplexity [95% CI]", "NLL/token", "tokens", "checkpoint"], rows), ""]


CLEAN_COUNTS = ("echo", "cut", "special", "empty", "length_capped")


def _cleaning_section(scored: list[Scored], cleaning: dict[str, Optional[dict]]) -> list[str]:
    lines = ["## Cleaning statistics", "",
             "Rows whose raw response had the prompt echoed (`echo`), a new template section cut off (`cut`), "
             "special tokens removed (`special`), nothing left (`empty`), or stopped at the token cap "
             "(`length_capped`); from `llm_responses/<model>/cleaning.json`, summed over configs.", ""]
    rows, details, rules = [], [], None
    for s in scored:
        data = cleaning.get(s.target.name)
        if data is None:
            rows.append([target_label(s.target), "not cleaned"] + ["–"] * len(CLEAN_COUNTS))
            continue
        rules = rules or cleaning_rules(data)
        per = cleaning_configs(data)
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


def _throughput_section(scored: list[Scored], manifests: dict[str, GenerationManifest]) -> list[str]:
    lines = ["## Generation throughput", "",
             "From `llm_responses/<model>/manifest.json`: wall time and generated tokens summed over configs.", ""]
    rows, details = [], []
    for s in scored:
        data = manifests.get(s.target.name)
        if data is None:
            rows.append([target_label(s.target), "no manifest", "–", "–", "–", "–", "–"])
            continue
        per = data.entries()
        wall = sum(to_number(c.wall_s) or 0.0 for c in per.values())
        tokens = sum(int(to_number(c.tokens) or 0) for c in per.values())
        rows.append([target_label(s.target), data.backend or "?", _dash(data.test_rows), len(per),
                     f"{wall:.1f}", tokens, f"{tokens / wall:.1f}" if wall else "–"])
        for config, c in per.items():
            details.append([s.target.name, f"`{config}`", _dash(c.mode), _dash(c.rows),
                            fmt(c.wall_s, 2), _dash(c.tokens), fmt(c.tokens_per_s, 1)])
    lines += [md_table(["model", "backend", "test rows", "configs", "wall s", "tokens", "tokens/s"], rows), ""]
    invariance = [f"- {name}: {invariance_text(m.batch_invariance)}" for name, m in manifests.items()]
    if invariance:
        lines += ["Batch invariance (manifest `batch_invariance`): the greedy config regenerated for the first test "
                  "rows in the same engine, each row alone and in reversed order; the share of rows whose generated "
                  "token ids equal the sweep's.", "", *invariance, ""]
    agreement = [f"- {name}: {text}" for name, m in manifests.items()
                 if (text := agreement_text(m.replica_agreement))]
    if agreement:
        lines += ["Replica agreement (manifest `replica_agreement`): the rows of a check sample regenerated by one "
                  "engine after the sweep on Ray replicas; the share of rows identical to the replicas' per config "
                  "(docs/scaling.md: how to get exact agreement on GPUs).", "", *agreement, ""]
    if details:
        lines += ["<details><summary>per config</summary>", "",
                  "Configs generated together in one call share its wall time by tokens and show its tokens/s.", "",
                  md_table(["model", "config", "mode", "rows", "wall s", "tokens", "tokens/s"], details), "",
                  "</details>", ""]
    return lines


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
    first = next(iter(manifests.values()), GenerationManifest.empty())
    rows = []
    for dc in configs:
        m = first.entry(dc.name) or ConfigEntry()
        rows.append([f"`{dc.name}`", dc.mode, dc.varied or "centre", ", ".join(dc.ignored) or "–",
                     _effective_text(m.effective), m.note or "–"])
    return lines + [md_table(["config", "mode", "varies", "ignores", "effective", "note"], rows), ""]


def _human_section(summary: Optional[dict], cells: Optional[pd.DataFrame]) -> list[str]:
    """human.json's summary and human.csv's cells (the model reads human.csv only beside a summary)."""
    if summary is None:
        return []
    a = summary.get("agreement", {})
    lo, hi = summary.get("scale", ["?", "?"])
    lines = ["## Human evaluation", "",
             f"{summary.get('ratings')} ratings on a {lo}-{hi} scale of {summary.get('items_rated')} of "
             f"{summary.get('items_in_sheet')} items in the blinded sheet, by {len(summary.get('raters', {}))} "
             f"rater(s); {summary.get('blank_skipped', 0)} blank ratings skipped. The Human column is the mean "
             "rating of a model x config cell: each item's ratings averaged first, then the items.", ""]
    if cells is not None:
        rows = [[r["model"], f"`{r['config']}`", fmt_ci(r.get("human"), r.get("human_ci_low"), r.get("human_ci_high"), 2),
                 r.get("human_n")] for _, r in cells.iterrows()]
        lines += ["Per model and config: the mean over items of each item's mean rating, with a 95% bootstrap "
                  "interval over items (`eval_results/human.csv`).", "",
                  md_table(["model", "config", "human [95% CI]", "ratings"], rows), ""]
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


def judge_section(metrics_json: Optional[dict]) -> list[str]:
    """## LLM judge (tables.judge_summary: the same paragraphs and table as report.html's)."""
    found = judge_summary(metrics_json)
    if found is None:
        return []
    paragraphs, header, rows = found
    lines = ["## LLM judge", "", paragraphs[0], ""]
    lines += [md_table(header, rows), ""]
    for p in paragraphs[1:]:
        lines += [p, ""]
    return lines


def _settings_section(cfg: ExperimentConfig, metrics_json: Optional[dict], manifests: dict) -> list[str]:
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
    lines += ["### Metric settings", "", bertscore_line(cfg, metrics_json), ""]
    if metrics_json is None:
        lines += ["(`eval_results/metrics.json` not found.)", ""]
    else:
        lines += ["From `eval_results/metrics.json`:", "", "```json",
                  json.dumps(metric_settings(metrics_json), indent=2, ensure_ascii=False, default=str), "```", ""]
    lines += ["### Library versions", ""]
    sources = {"generation": joined_versions(m.to_json() for m in manifests.values()),
               "scoring": scoring_versions(metrics_json),
               "report": library_versions()}
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

def _title_section(model: ReportModel) -> list[str]:
    lines = [f"# {model.cfg.name}: results", "",
             f"{len(model.scored)} model(s) x {len(model.configs)} decoding configs ({model.cfg.generation.mode} sweep "
             f"around `{model.centre}`). Rows marked *base, not fine-tuned* are the untouched base "
             "models. Scores are corpus BLEU (sacrebleu, 0-1), ROUGE-L F1 and BERTScore F1 with 95% "
             "bootstrap confidence intervals; see Settings for every metric setting.", "",
             bertscore_line(model.cfg, model.metrics_json), ""]
    few = few_rows_note(model.metrics_json)
    return lines + [few, ""] if few else lines


def render_markdown(model: ReportModel) -> str:
    """report.md from the report model (the same one report.html is rendered from)."""
    m = model
    sections = [
        _title_section(m),
        _verdict_section(m.scored, m.verdicts),
        _results_section(m.scored, m.metrics, m.configs, m.metrics_json, m.verdicts),
        _comparisons_section(m.scored, tested_metrics(m.metrics), m.comparisons, m.centre),
        _best_section(m.scored, tested_metrics(m.metrics), m.comparisons),
        _finetune_gain_section(m.cfg, m.scored, base_compared_metrics(m.metrics), m.perplexity, m.comparisons,
                               m.centre),
        _training_section(m.cfg.models, m.training),
        _plots_section(m.plots),
        race_markdown(m.race),
        _perplexity_section(m.perplexity, m.perplexity_path, m.targets),
        _human_section(m.human_summary, m.human_cells),
        judge_section(m.metrics_json),
        _cleaning_section(m.scored, m.cleaning),
        _throughput_section(m.scored, m.manifests),
        _decoding_section(m.configs, m.manifests),
        _settings_section(m.cfg, m.metrics_json, m.manifests),
        _inputs_section(m.inputs, m.cfg.path),
    ]
    return "\n".join(line for section in sections for line in section)


def report(cfg: ExperimentConfig) -> Path:
    """Write eval_results/report.md, report.html and plots/*.png; return report.md's path."""
    paths = Workdir(cfg.path)
    # Everything is read (and every response file checked) before anything is written: a file that fails a
    # check stops the stage with neither page updated.
    model = build_model(cfg)
    model.plots = draw_plots(model.cfg, model.scored, model.metrics, paths.plots_dir)
    model.race = race_section(cfg, paths.plots_dir)
    text, page = render_markdown(model), build_html(model)
    write_text(paths.report, text)
    log.info("report: %s (%d plots in %s)", paths.report, len(model.plots), paths.plots_dir)
    write_text(paths.report_html, page)
    log.info("report: %s (%.1f MB, self-contained)", paths.report_html, len(page.encode("utf-8")) / 1e6)
    return paths.report
