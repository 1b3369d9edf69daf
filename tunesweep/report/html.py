"""eval_results/report.html: the study as one self-contained page that opens from disk, offline.

Rendered from the report model (model.py), the same one report.md is rendered from: this module reads
no file of the study. One small function per section; the page's style and script are package data
(report/assets/report.css, report.js), inlined at render so the page needs nothing beside it.

The page holds everything: tables rendered here (escaped, so they read without JavaScript too),
plots as base64 PNG, and the response explorer's data as JSON inside a
<script type="application/json"> that the page's own script renders with textContent only.
Responses are untrusted text: every piece of data is escaped for the context it lands in (HTML
text and attributes here; `<`, `>`, `&` as \\u escapes inside the JSON). No URL scheme for the
web appears anywhere in the file (it is checked by a test): text that holds one keeps it, written
with a character reference or JSON escape, so the file works offline and passes the check.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Iterable, Optional

import pandas as pd
import yaml

from .. import __version__
from ..config import DecodingConfig, RunTarget
from ..layout import COMPARISON_COLUMNS
from ..provenance import library_versions
from ..records import GenerationManifest
from .model import ReportModel
from .plots import Plot
from .tables import (Scored, agreement_text, bertscore_empty_line, bertscore_line, best_in_table, decimals_for,
                     dash as _dash, fidelity_text, invariance_text, joined_versions, metric_settings, scoring_versions,
                     target_label, to_number as _num)
from .tables import VERDICT_INTRO, MetricVerdict, judge_summary, noise_note, p_text

log = logging.getLogger(__name__)

SCORE_DECIMALS = 4

# `http` in any case, as the grep for external URLs would find it.
_HTTP = re.compile(r"(h)(t)(tp)", re.IGNORECASE)


# --- escaping ------------------------------------------------------------------------------------

def esc(value) -> str:
    """Text for HTML text or a quoted attribute: escaped, and `http` written as h&#116;tp (reads the same)."""
    text = html.escape("" if value is None else str(value), quote=True)
    return _HTTP.sub(lambda m: f"{m.group(1)}&#{ord(m.group(2))};{m.group(3)}", text)


def json_for_script(obj) -> str:
    """JSON that is safe inside <script type="application/json">: no `<`, `>` or `&` (so no `</script>`
    and no comment openers), no line separators, no `http`; JSON.parse gives back the same data."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, rep in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                    ("\u2029", "\\u2029")):
        text = text.replace(ch, rep)
    # Inside JSON, `http` can only be string content; \\u0074 decodes back to the same letter.
    return _HTTP.sub(lambda m: f"{m.group(1)}\\u{ord(m.group(2)):04x}{m.group(3)}", text)


def png_data_uri(path: Path) -> str:
    """A data: URI of a PNG. A newline is put inside any `http` that base64 happens to spell: browsers
    drop newlines from URLs before decoding, so the image is unchanged."""
    b64 = base64.b64encode(path.read_bytes()).decode("ascii")
    b64 = re.sub(r"(h)(?=ttp)", "\\1\n", b64, flags=re.IGNORECASE)
    return "data:image/png;base64," + b64


def _fmt(x, decimals: int = SCORE_DECIMALS) -> str:
    f = _num(x)
    return "–" if f is None else f"{f:.{decimals}f}"


def _attr_v(x) -> str:
    """The data-v attribute tables sort by (raw value; empty = no value)."""
    f = _num(x)
    return "" if f is None else repr(f)


# --- small HTML builders ----------------------------------------------------------------------

def _table(header: list[str], rows: Iterable[str], cls: str = "sortable", attrs: str = "",
           numeric: Iterable[int] = ()) -> str:
    numeric = set(numeric)
    ths = "".join(f'<th scope="col"{" class=num" if i in numeric else ""}>{esc(h)}</th>'
                  for i, h in enumerate(header))
    return (f'<div class="tablewrap"><table class="{cls}"{attrs}><thead><tr>{ths}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _td(text, v=None, cls: str = "") -> str:
    data = "" if v is None else f' data-v="{esc(_attr_v(v))}"'
    klass = f' class="{cls}"' if cls else ""
    return f"<td{klass}{data}>{esc(text)}</td>"


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def _pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


# --- sections ------------------------------------------------------------------------------------

def _verdict_section(scored: list[Scored], found: dict[str, list[MetricVerdict]]) -> str:
    """The answer first: the same sentences as report.md's Verdict (tables.verdicts), as text."""
    out = ['<section id="verdict"><h2>Verdict</h2>', f"<p>{esc(VERDICT_INTRO)}</p>"]
    for s in scored:
        if found.get(s.target.name):
            out.append(f"<h3>{esc(target_label(s.target))}</h3><ul>"
                       + "".join(f'<li data-metric="{esc(v.metric)}">{esc(v.sentence)}</li>' for v in found[s.target.name])
                       + "</ul>")
    return "".join(out + ["</section>"])


def _results_section(configs: list[DecodingConfig], scored: list[Scored], metrics: list[tuple[str, str]],
                     perplexity, metrics_json: Optional[dict] = None,
                     found: Optional[dict[str, list[MetricVerdict]]] = None) -> str:
    varies = {dc.name: dc.varied or "centre" for dc in configs}
    out = ['<section id="results"><h2>Results per model</h2>',
           "<p>Score and its 95% bootstrap interval per decoding config, from "
           "<code>eval_results/&lt;model&gt;.csv</code>; the best score of a column is bold only where it is "
           "detectably better than another config of that column (paired bootstrap, Holm; see Verdict). "
           "Click a column header to sort (again to reverse). Human is the mean rating (no interval).</p>"]
    for s in scored:
        # Bold only what the paired test backs: a best within noise of the others is not marked.
        marked = {v.metric for v in (found or {}).get(s.target.name, []) if v.marked}
        best = {}
        for m, _ in metrics:
            if m in marked and m in s.table.columns and s.table[m].notna().any():
                best[m] = float(s.table[m].astype(float).loc[best_in_table(s, m)])
        rows = []
        for config, row in s.table.iterrows():
            cells = [f'<td class="cfg" data-v="">{esc(config)}</td>', _td(row.get("mode", "")),
                     _td(varies.get(config, "?"))]
            for m, _ in metrics:
                y = _num(row.get(m))
                decimals = decimals_for(m)
                klass = "num best" if y is not None and m in best and y == best[m] else "num"
                lo, hi = _num(row.get(f"{m}_ci_low")), _num(row.get(f"{m}_ci_high"))
                ci = f' <span class="ci">[{_fmt(lo, decimals)}, {_fmt(hi, decimals)}]</span>' \
                    if lo is not None and hi is not None else ""
                cells.append(f'<td class="{klass}" data-metric="{esc(m)}" data-v="{esc(_attr_v(y))}">'
                             f'<span class="v">{esc(_fmt(y, decimals))}</span>{ci}</td>')
            rows.append(f'<tr data-config="{esc(config)}">{"".join(cells)}</tr>')
        header = ["config", "mode", "varies"] + [label for _, label in metrics]
        out.append(f"<h3>{esc(target_label(s.target))}</h3>")
        out.append(_table(header, rows, attrs=f' data-results="{esc(s.target.name)}"',
                          numeric=range(3, 3 + len(metrics))))
        noise = noise_note((found or {}).get(s.target.name) or [], dict(metrics))
        if noise:
            out.append(f'<p class="note noise">{esc(noise)}</p>')
        empty = bertscore_empty_line(metrics_json, s.target.name) if any(m == "bertscore" for m, _ in metrics) else None
        if empty:
            out.append(f"<p class=note>{esc(empty.replace('`', ''))}</p>")
    out.append(_perplexity_table(perplexity))
    out.append("</section>")
    return "".join(out)


def _perplexity_table(perplexity) -> str:
    """The results section's last table: perplexity.csv, when there is one."""
    if perplexity is None or not len(perplexity):
        return ""
    rows = []
    for _, r in perplexity.iterrows():
        lo, hi = _num(r.get("ppl_ci_low")), _num(r.get("ppl_ci_high"))
        ci = f" [{_fmt(lo, 3)}, {_fmt(hi, 3)}]" if lo is not None and hi is not None else ""
        rows.append("<tr>" + _td(r.get("model"), None, "cfg") + _td(_fmt(r.get("perplexity"), 3) + ci,
                    r.get("perplexity"), "num") + _td(_fmt(r.get("nll")), r.get("nll"), "num")
                    + _td("–" if _num(r.get("tokens")) is None else int(r["tokens"]), r.get("tokens"), "num")
                    + _td(r.get("checkpoint", "")) + "</tr>")
    return ("<h3>Perplexity of the test references</h3><p>Response tokens only (prompt masked); "
            "lower is better; 95% bootstrap interval over test rows. From <code>eval_results/perplexity.csv</code>.</p>"
            + _table(["model", "perplexity", "NLL/token", "tokens", "checkpoint"], rows,
                     attrs=' data-table="perplexity"', numeric=(1, 2, 3)))


def _comparisons_section(comparisons: Optional[pd.DataFrame]) -> str:
    """comparisons.csv as the model read it (tables.read_comparisons: vouched for, every expected column)."""
    head = ['<section id="comparisons"><h2>Paired comparisons</h2>']
    if comparisons is None:
        return "".join(head + ["<p class=note>No <code>eval_results/comparisons.csv</code> in this study: "
                               "nothing to show (the score stage writes it where paired comparisons are "
                               "computed).</p></section>"])
    if not len(comparisons):
        return "".join(head + ["<p class=note>comparisons.csv has no rows.</p></section>"])
    columns = [str(c) for c in comparisons.columns]
    head.append("<p>From <code>eval_results/comparisons.csv</code>: per model, metric and config, the paired "
                "difference (config minus the centre config (versus centre), minus the model's best config for that metric "
                "(versus best), or fine-tuned minus base (versus base)) with its paired-bootstrap 95% interval, "
                "two-sided bootstrap p and Holm-adjusted p. Rows whose interval excludes 0 are marked (the interval is "
                "not Holm-adjusted: p_holm below 0.05 is the corrected verdict).</p>")
    unknown = [c for c in columns if c not in COMPARISON_COLUMNS]
    if unknown:
        head.append(f"<p class=note>Columns beyond the expected ones ({esc(', '.join(COMPARISON_COLUMNS))}): "
                    f"extra {esc(', '.join(unknown))}. Shown as they are.</p>")
    head.append('<div class="controls"><label>filter <input type="search" id="cmp-filter" '
                'placeholder="model, metric, config…"></label> <label><input type="checkbox" id="cmp-sig"> '
                'only intervals that exclude 0</label> <span id="cmp-count"></span></div>')
    numeric = {c for c in columns if pd.api.types.is_numeric_dtype(comparisons[c]) and comparisons[c].notna().any()}
    records = comparisons.to_dict(orient="records")
    # Holm's m per family (model, metric, versus): an adjusted p is printed no finer than m * 2 / resamples.
    family: dict[tuple, int] = {}
    for r in records:
        if _num(r.get("p")) is not None:
            key = (r.get("model"), r.get("metric"), r.get("versus"))
            family[key] = family.get(key, 0) + 1
    rows = [_comparison_row(r, columns, numeric, family.get((r.get("model"), r.get("metric"), r.get("versus")), 1))
            for r in records]
    body = _table(columns, rows, attrs=' id="cmp-table"', numeric=[i for i, c in enumerate(columns) if c in numeric])
    return "".join(head + [body, "</section>"])


def _comparison_text(column: str, f: float, resamples, family: int) -> str:
    if column in ("p", "p_holm"):
        return p_text(f, resamples, family if column == "p_holm" else 1)
    if column.startswith("p_"):
        return f"{f:.3g}"
    if column in ("diff", "ci_low", "ci_high"):
        return f"{f:+.4f}"
    return f"{f:.0f}" if column == "resamples" else f"{f:.4f}"


def _comparison_row(r: dict, columns: list[str], numeric: set[str], family: int) -> str:
    """One row of the comparisons table; `family`: the size of its Holm family."""
    lo, hi = _num(r.get("ci_low")), _num(r.get("ci_high"))
    sig = lo is not None and hi is not None and (lo > 0 or hi < 0)
    cells = []
    for c in columns:
        f = _num(r.get(c)) if c in numeric else None
        if f is not None:
            cells.append(_td(_comparison_text(c, f, r.get("resamples"), family), f, "num"))
        else:
            value = r.get(c)
            text = "" if value is None or (isinstance(value, float) and value != value) else str(value).strip()
            cells.append(_td(text or "–"))
    return f'<tr{" class=sig data-sig=1" if sig else ""}>{"".join(cells)}</tr>'


def marks(text: str) -> str:
    """The two markdown marks the shared section texts use (judge_summary, race blocks): **bold** and `code`."""
    out = esc(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def _marked_table(header: list[str], rows) -> str:
    """A table of the shared sections' cells (judge_summary, race blocks), their marks rendered."""
    return _table(header, ("<tr>" + "".join(f"<td>{marks(str(c))}</td>" for c in row) + "</tr>" for row in rows))


def _figure(path: Path, alt: str) -> str:
    return f'<figure><img alt="{esc(alt)}" src="{png_data_uri(path)}"><figcaption>{esc(path.name)}</figcaption></figure>'


def _judge_section(metrics_json: Optional[dict]) -> str:
    """The LLM judge: the report.md section's paragraphs and table (tables.judge_summary)."""
    found = judge_summary(metrics_json)
    if found is None:
        return ""
    paragraphs, header, rows = found

    body = [f"<p>{marks(paragraphs[0])}</p>", _marked_table(header, rows)]
    body += [f"<p>{marks(p)}</p>" for p in paragraphs[1:]]
    return '<section id="judge"><h2>LLM judge</h2>' + "".join(body) + "</section>"


def _race_section(blocks: list) -> str:
    """The race (report/race.py's blocks, the ones report.md renders)."""
    if not blocks:
        return ""
    out = ['<section id="race"><h2>Race</h2>']
    for b in blocks:
        if b.kind == "h3":
            out.append(f"<h3>{esc(b.text)}</h3>")
        elif b.kind == "p":
            out.append(f"<p>{marks(b.text)}</p>")
        elif b.kind == "plot":
            if b.path.is_file():
                out.append(_figure(b.path, "survivors per round"))
        else:
            out.append(_marked_table(b.header, b.rows))
    return "".join(out + ["</section>"])


def _plots_section(plots: list[Plot]) -> str:
    out = ['<section id="plots"><h2>Effect of each decoding factor</h2>',
           "<p>One plot per factor and metric: the factor's values with the other two at their defaults, "
           "every model as a line (base models dashed), 95% bootstrap interval bars.</p>"]
    if not plots:
        return "".join(out + ["<p class=note>No plots (no factor has two or more values).</p></section>"])
    by_factor: dict[str, list[Path]] = {}
    for p in plots:
        by_factor.setdefault(p.factor, []).append(p.path)
    for factor, paths in by_factor.items():
        out.append(f"<h3>{esc(factor)}</h3><div class=plots>")
        for p in paths:
            if not p.is_file():
                continue
            out.append(_figure(p, p.stem))
        out.append("</div>")
    return "".join(out + ["</section>"])


def _facts(model: ReportModel) -> str:
    """The study at a glance: where, when, which data and settings."""
    cfg, split, g = model.cfg, model.split, model.cfg.generation
    facts = [
        ("study", cfg.name), ("workdir", str(cfg.path)), ("report written", model.generated),
        ("tunesweep", __version__), ("seed", cfg.seed), ("prompt template", cfg.template),
        ("dataset", cfg.dataset.source),
        ("split", ", ".join(f"{k} {split[k]}" for k in ("train_rows", "test_rows", "seed") if k in split) or "–"),
        ("generation", f"backend {g.backend}, max_new_tokens {g.max_new_tokens}, sweep mode {g.mode}, centre "
                       f"{model.centre}"),
        ("BERTScore", bertscore_line(cfg, model.metrics_json).replace("**", "")),
    ]
    return "<dl class=facts>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts) + "</dl>"


def _trained_text(target: RunTarget, record: Optional[dict]) -> str:
    m = target.model
    if target.is_base:
        return "not fine-tuned"
    if not record:
        return f"{m.backend} (no tunesweep.json)"
    method = record.get("method") or ("full" if m.lora is None else "lora")
    how = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}.get(method, method)
    if m.lora is not None:
        how += f" r {m.lora.r}"
    return f"{record.get('backend', m.backend)}, {how}, {record.get('global_step', '?')} steps"


def _models_table(model: ReportModel) -> str:
    """One row per scored target: where its weights came from, how it was trained and generated, when."""
    rows = []
    for s in model.scored:
        record = None if s.target.is_base else model.training.get(s.target.model.name)
        man = model.manifests.get(s.target.name) or GenerationManifest.empty()
        runs = man.runs
        rows.append("<tr>" + "".join(_td(v) for v in (
            target_label(s.target), s.target.model.base, _trained_text(s.target, record),
            (record or {}).get("finished_at", "–"), (man.checkpoint_hash or "–")[:12], _dash(man.backend),
            runs[-1].get("started", "–") if runs else "–", _dash(man.test_rows),
            "–" if s.target.is_base else fidelity_text(record), invariance_text(man.batch_invariance),
            agreement_text(man.replica_agreement) or "–")) + "</tr>")
    return ("<h3>Models</h3><p>Merge fidelity: the merged checkpoint against base + adapter (tunesweep.json). "
            "Batch invariance: the greedy config regenerated for the first test rows alone and in reversed "
            "order in the same engine. Replica agreement: on Ray replicas, a check sample regenerated by one "
            "engine (manifest.json).</p>"
            + _table(["model", "base checkpoint", "training", "trained (UTC)", "checkpoint sha256",
                      "generation backend", "generated (UTC)", "test rows", "merge fidelity", "batch invariance",
                      "replica agreement"], rows, attrs=' data-table="models"'))


def _configs_table(configs: list[DecodingConfig]) -> str:
    rows = ["<tr>" + _td(dc.name, None, "cfg") + _td(dc.mode) + _td(dc.varied or "centre")
            + _td(", ".join(dc.ignored) or "–") + _td(dc.top_k, dc.top_k, "num")
            + _td(dc.num_beams, dc.num_beams, "num") + _td(f"{dc.temperature:g}", dc.temperature, "num") + "</tr>"
            for dc in configs]
    return ("<h3>Decoding configs</h3><p>The mode that took effect and the parameters it ignores "
            "(beam search has no top_k or temperature; greedy has no top_k).</p>"
            + _table(["config", "mode", "varies", "ignores", "top_k", "num_beams", "temperature"], rows,
                     attrs=' data-table="configs"', numeric=(4, 5, 6)))


def _versions_table(model: ReportModel) -> str:
    """Each library's version at every stage that recorded one (several: joined by ` / `)."""
    trained = [model.training.get(s.target.model.name) for s in model.scored if not s.target.is_base]
    sources = {"training": joined_versions(trained),
               "generation": joined_versions(m.to_json() for m in model.manifests.values()),
               "scoring": scoring_versions(model.metrics_json), "report": library_versions()}
    libs = sorted(set().union(*(set(v) for v in sources.values())))
    rows = ["<tr>" + _td(lib, None, "cfg") + "".join(_td(sources[k].get(lib, "–")) for k in sources) + "</tr>"
            for lib in libs]
    return "<h3>Library versions</h3>" + _table(["library"] + [f"at {k}" for k in sources], rows,
                                                attrs=' data-table="versions"')


def _settings_section(model: ReportModel) -> str:
    out = ['<section id="settings"><h2>Settings and provenance</h2>', _facts(model), _models_table(model),
           _configs_table(model.configs), _versions_table(model)]
    if model.metrics_json is not None:
        out.append(_details("metric settings (eval_results/metrics.json)",
                            _pre(json.dumps(metric_settings(model.metrics_json), indent=2, ensure_ascii=False,
                                            default=str))))
    out.append(_details("the experiment config",
                        _pre(yaml.safe_dump(model.cfg.model_dump(mode="json"), sort_keys=False))))
    return "".join(out + ["</section>"])


# --- the response explorer ------------------------------------------------------------------------

def _explorer_section(data: dict) -> str:
    note = "" if data["row_scores"] else (
        "<p class=note>No per-row scores (<code>eval_results/rows/</code> is missing: rerun "
        "<code>tunesweep score</code> to write them).</p>")
    return f"""<section id="explorer"><h2>Response explorer</h2>
<p>Pick a test row (search its text, its answers or its id) to see its instruction, input and reference, and every model ×
config answer with that row's own scores (BLEU here is sentence BLEU; ROUGE-L and BERTScore are the row's F1),
the finish reason and the tokens generated. Choose two configs A and B to see their differences word by word.
Order the rows by how much the configs disagree to find where decoding matters. The address keeps the choice
(<code>#row=&lt;id&gt;&amp;a=&lt;config&gt;&amp;b=&lt;config&gt;</code>; add <code>&amp;view=explorer</code> to show
only the explorer, <code>&amp;order=disagree</code> to list the rows where configs disagree most first).</p>{note}
<noscript><p class=note>The explorer needs JavaScript; the tables above do not.</p></noscript>
<p><button type="button" id="ex-focus">explorer only / whole report</button></p>
<div class="ex-layout">
 <aside class="ex-side">
  <label class="block">search <input type="search" id="ex-search" placeholder="text or id"></label>
  <label class="block">order <select id="ex-order"></select></label>
  <label class="block">models <select id="ex-scope"></select></label>
  <label class="inline"><input type="checkbox" id="ex-onlydiff"> only rows where A and B differ</label>
  <div id="ex-count" class="muted"></div>
  <ol id="ex-list"></ol>
 </aside>
 <div class="ex-main">
  <div id="ex-row" class="ex-rowbox">
   <div class="ex-rowhead">row <code id="ex-rowid"></code> <span id="ex-rowpos" class="muted"></span>
    <button type="button" id="ex-prev">◀ previous</button> <button type="button" id="ex-next">next ▶</button></div>
   <div class="ex-field"><h4>instruction</h4><div id="ex-instruction" class="text"></div></div>
   <div class="ex-field"><h4>input</h4><div id="ex-input" class="text"></div></div>
   <div class="ex-field"><h4>reference</h4><div id="ex-reference" class="text"></div></div>
  </div>
  <div class="controls ex-pick">
   <label><span class="tag tag-a">A</span> <select id="ex-a"></select></label>
   <label><span class="tag tag-b">B</span> <select id="ex-b"></select></label>
   <label><input type="checkbox" id="ex-markall"> mark in every answer the words not in A's</label>
  </div>
  <div id="ex-diff"></div>
  <div class="tablewrap"><table id="ex-grid"></table></div>
 </div>
</div>
<script type="application/json" id="explorer-data">{json_for_script(data)}</script>
</section>"""


# --- the page -----------------------------------------------------------------------------------

def _asset(name: str) -> str:
    """A file of report/assets/ (package data), inlined so report.html needs nothing beside it."""
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")


def build_html(model: ReportModel) -> str:
    """report.html from the report model (the same one report.md is rendered from)."""
    summary = (f"{len(model.scored)} model(s) × {len(model.configs)} decoding configs × {len(model.explorer['rows'])} "
               f"test rows, {model.cfg.generation.mode} sweep around {model.centre}. Report written {model.generated}.")
    anchors = ["verdict", "results", "plots"] + (["race"] if model.race else []) + ["comparisons", "explorer", "settings"]
    nav = "".join(f'<a href="#{a}">{esc(a)}</a>' for a in anchors)
    body = [
        f"<header><h1>{esc(model.cfg.name)}</h1><p>{esc(summary)}</p><nav>{nav}</nav></header>",
        "<main>",
        _verdict_section(model.scored, model.verdicts),
        _results_section(model.configs, model.scored, model.metrics, model.perplexity, model.metrics_json,
                         model.verdicts),
        _plots_section(model.plots),
        _race_section(model.race),
        _comparisons_section(model.comparisons),
        _judge_section(model.metrics_json),
        _explorer_section(model.explorer),
        _settings_section(model),
        "</main>",
        f"<footer>tunesweep {esc(__version__)} · one self-contained file: it needs no network.</footer>",
    ]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(model.cfg.name)}: tunesweep report</title><style>{_asset('report.css')}</style></head>\n"
            "<body>\n" + "\n".join(body) + f"\n<script>{_asset('report.js')}</script>\n</body></html>\n")
