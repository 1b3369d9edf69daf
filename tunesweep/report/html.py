"""eval_results/report.html: the study as one self-contained page that opens from disk, offline.

Called by the report stage after report.md, with what that stage has already read (the scored
tables, the plots it drew, the generation manifests, metrics.json, perplexity.csv). It reads the
files only the page needs on top of those, each optional:

- eval_results/comparisons.csv: paired differences to the centre config / the base model (any
  columns; shown as they are, with a note when absent or unreadable);
- eval_results/rows/<target>.csv: each row's own scores (written by the score stage);
- llm_responses/<target>/<config>.jsonl: the answers, finish reasons and token counts;
- alpaca_data/test.jsonl, alpaca_data/split.json, finetuned_models/<model>/tunesweep.json:
  the instruction and input of each row, and provenance (dataset, training backend, dates).

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
import csv
import datetime as dt
import html
import json
import logging
import re
from pathlib import Path
from typing import Iterable, Optional

import yaml

from .. import __version__
from ..config import ExperimentConfig, expand_sweep
from ..errors import UserError
from ..files import read_json, read_jsonl
from ..layout import COMPARISON_COLUMNS, TableReader, Workdir, check_vouched, read_target_responses
from ..provenance import library_versions
from .plots import FACTORS
from .tables import (Scored, agreement_text, best_in_table, bertscore_empty_line, decimals_for, fidelity_text, invariance_text, bertscore_line, centre_config, metric_settings, scoring_versions, target_label,
                     to_number as _num)
from .tables import VERDICT_INTRO, MetricVerdict, noise_note, p_text

log = logging.getLogger(__name__)

SCORE_DECIMALS = 4
ROW_DECIMALS = 4

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


def _results_section(cfg: ExperimentConfig, scored: list[Scored], metrics: list[tuple[str, str]],
                     perplexity, metrics_json: Optional[dict] = None,
                     found: Optional[dict[str, list[MetricVerdict]]] = None) -> str:
    configs = expand_sweep(cfg.generation)
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
    if perplexity is not None and len(perplexity):
        out.append("<h3>Perplexity of the test references</h3><p>Response tokens only (prompt masked); "
                   "lower is better; 95% bootstrap interval over test rows. From <code>eval_results/perplexity.csv</code>.</p>")
        rows = []
        for _, r in perplexity.iterrows():
            lo, hi = _num(r.get("ppl_ci_low")), _num(r.get("ppl_ci_high"))
            ci = f" [{_fmt(lo, 3)}, {_fmt(hi, 3)}]" if lo is not None and hi is not None else ""
            rows.append("<tr>" + _td(r.get("model"), None, "cfg") + _td(_fmt(r.get("perplexity"), 3) + ci,
                        r.get("perplexity"), "num") + _td(_fmt(r.get("nll")), r.get("nll"), "num")
                        + _td("–" if _num(r.get("tokens")) is None else int(r["tokens"]), r.get("tokens"), "num")
                        + _td(r.get("checkpoint", "")) + "</tr>")
        out.append(_table(["model", "perplexity", "NLL/token", "tokens", "checkpoint"], rows,
                          attrs=' data-table="perplexity"', numeric=(1, 2, 3)))
    out.append("</section>")
    return "".join(out)


def _comparisons_section(path: Path) -> str:
    head = ['<section id="comparisons"><h2>Paired comparisons</h2>']
    if not path.is_file():
        return "".join(head + ["<p class=note>No <code>eval_results/comparisons.csv</code> in this study: "
                               "nothing to show (the score stage writes it where paired comparisons are "
                               "computed).</p></section>"])
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = TableReader(fh)
            columns = list(reader.fieldnames or [])
            records = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("%s: not shown in report.html (%s)", path, exc)
        return "".join(head + [f"<p class=note>{esc(path.name)} could not be read ({esc(exc)}); "
                               "it is left out.</p></section>"])
    if not columns or not records:
        return "".join(head + [f"<p class=note>{esc(path.name)} has no rows.</p></section>"])
    unknown = [c for c in columns if c not in COMPARISON_COLUMNS]
    missing = [c for c in COMPARISON_COLUMNS if c not in columns]
    head.append("<p>From <code>eval_results/comparisons.csv</code>: per model, metric and config, the paired "
                "difference (config minus the centre config (versus centre), minus the model's best config for that metric "
                "(versus best), or fine-tuned minus base (versus base)) with its paired-bootstrap 95% interval, "
                "two-sided bootstrap p and Holm-adjusted p. Rows whose interval excludes 0 are marked (the interval is "
                "not Holm-adjusted: p_holm below 0.05 is the corrected verdict).</p>")
    if missing or unknown:
        head.append(f"<p class=note>Columns differ from the expected ones ({esc(', '.join(COMPARISON_COLUMNS))}): "
                    f"{'missing ' + esc(', '.join(missing)) if missing else ''}"
                    f"{'; ' if missing and unknown else ''}{'extra ' + esc(', '.join(unknown)) if unknown else ''}. "
                    "Shown as they are.</p>")
    head.append('<div class="controls"><label>filter <input type="search" id="cmp-filter" '
                'placeholder="model, metric, config…"></label> <label><input type="checkbox" id="cmp-sig"> '
                'only intervals that exclude 0</label> <span id="cmp-count"></span></div>')
    numeric_cols = set()
    for c in columns:
        values = [(r.get(c) or "").strip() for r in records]
        if any(values) and all(_num(v) is not None for v in values if v):
            numeric_cols.add(c)
    # Holm's m per family (model, metric, versus): an adjusted p is printed no finer than m * 2 / resamples.
    family: dict[tuple, int] = {}
    for r in records:
        if _num(r.get("p")) is not None:
            key = (r.get("model"), r.get("metric"), r.get("versus"))
            family[key] = family.get(key, 0) + 1
    rows = []
    for r in records:
        lo, hi = _num(r.get("ci_low")), _num(r.get("ci_high"))
        sig = lo is not None and hi is not None and (lo > 0 or hi < 0)
        cells = []
        for c in columns:
            value = (r.get(c) or "").strip()
            if c in numeric_cols and value:
                f = float(value)
                m = family.get((r.get("model"), r.get("metric"), r.get("versus")), 1) if c == "p_holm" else 1
                text = p_text(f, r.get("resamples"), m) if c in ("p", "p_holm") else f"{f:.3g}" if c.startswith("p_") \
                    else f"{f:+.4f}" if c in ("diff", "ci_low", "ci_high") else f"{f:.0f}" if c == "resamples" else f"{f:.4f}"
                cells.append(_td(text, f, "num"))
            else:
                cells.append(_td(value or "–"))
        rows.append(f'<tr{" class=sig data-sig=1" if sig else ""}>{"".join(cells)}</tr>')
    body = _table(columns, rows, attrs=' id="cmp-table"',
                  numeric=[i for i, c in enumerate(columns) if c in numeric_cols])
    return "".join(head + [body, "</section>"])


def _plots_section(plots: list[Path]) -> str:
    out = ['<section id="plots"><h2>Effect of each decoding factor</h2>',
           "<p>One plot per factor and metric: the factor's values with the other two at their defaults, "
           "every model as a line (base models dashed), 95% bootstrap interval bars.</p>"]
    if not plots:
        return "".join(out + ["<p class=note>No plots (no factor has two or more values).</p></section>"])
    by_factor: dict[str, list[Path]] = {}
    for p in plots:
        factor = next((f for f in FACTORS if p.stem.startswith(f + "_")), "other")
        by_factor.setdefault(factor, []).append(p)
    for factor, paths in by_factor.items():
        out.append(f"<h3>{esc(factor)}</h3><div class=plots>")
        for p in paths:
            if not p.is_file():
                continue
            out.append(f'<figure><img alt="{esc(p.stem)}" src="{png_data_uri(p)}">'
                       f"<figcaption>{esc(p.name)}</figcaption></figure>")
        out.append("</div>")
    return "".join(out + ["</section>"])


def _optional_json(path: Path) -> Optional[dict]:
    try:
        data = read_json(path) if path.is_file() else None
    except (OSError, ValueError) as exc:
        log.warning("%s: not read for report.html (%s)", path, exc)
        return None
    return data if isinstance(data, dict) else None


def _settings_section(cfg: ExperimentConfig, scored: list[Scored], manifests: dict, metrics_json: Optional[dict],
                      generated: str) -> str:

    work, paths = cfg.path, Workdir(cfg.path)
    out = ['<section id="settings"><h2>Settings and provenance</h2>']
    split = _optional_json(paths.split_meta) or {}
    g = cfg.generation
    facts = [
        ("study", cfg.name), ("workdir", str(work)), ("report written", generated),
        ("tunesweep", __version__), ("seed", cfg.seed), ("prompt template", cfg.template),
        ("dataset", cfg.dataset.source),
        ("split", ", ".join(f"{k} {split[k]}" for k in ("train_rows", "test_rows", "seed") if k in split) or "–"),
        ("generation", f"backend {g.backend}, max_new_tokens {g.max_new_tokens}, sweep mode {g.mode}, centre "
                       f"{centre_config(cfg).name}"),
        ("BERTScore", bertscore_line(cfg, metrics_json).replace("**", "")),
    ]
    out.append("<dl class=facts>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts) + "</dl>")

    # One row per scored target: where its weights came from, how it was trained and generated, when.
    rows = []
    training_versions: dict[str, list] = {}
    for s in scored:
        m = s.target.model
        record = None if s.target.is_base else _optional_json(paths.model_record(m.name))
        for lib, v in ((record or {}).get("versions") or {}).items():
            if v not in training_versions.setdefault(lib, []):
                training_versions[lib].append(v)
        if s.target.is_base:
            trained = "not fine-tuned"
        elif record:
            method = record.get("method") or ("full" if m.lora is None else "lora")
            how = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}.get(method, method)
            if m.lora is not None:
                how += f" r {m.lora.r}"
            trained = f"{record.get('backend', m.backend)}, {how}, {record.get('global_step', '?')} steps"
        else:
            trained = f"{m.backend} (no tunesweep.json)"
        man = manifests.get(s.target.name) or {}
        runs = man.get("runs") or []
        rows.append("<tr>" + "".join(_td(v) for v in (
            target_label(s.target), m.base, trained, (record or {}).get("finished_at", "–"),
            (man.get("checkpoint_hash") or "–")[:12], man.get("backend", "–"),
            runs[-1].get("started", "–") if runs else "–", man.get("test_rows", "–"),
            "–" if s.target.is_base else fidelity_text(record), invariance_text(man.get("batch_invariance")),
            agreement_text(man.get("replica_agreement")) or "–")) + "</tr>")
    out.append("<h3>Models</h3><p>Merge fidelity: the merged checkpoint against base + adapter (tunesweep.json). "
               "Batch invariance: the greedy config regenerated for the first test rows alone and in reversed "
               "order in the same engine. Replica agreement: on Ray replicas, a check sample regenerated by one "
               "engine (manifest.json).</p>")
    out.append(_table(["model", "base checkpoint", "training", "trained (UTC)", "checkpoint sha256",
                       "generation backend", "generated (UTC)", "test rows", "merge fidelity", "batch invariance",
                       "replica agreement"], rows, attrs=' data-table="models"'))

    rows = []
    for dc in expand_sweep(g):
        rows.append("<tr>" + _td(dc.name, None, "cfg") + _td(dc.mode) + _td(dc.varied or "centre")
                    + _td(", ".join(dc.ignored) or "–") + _td(dc.top_k, dc.top_k, "num")
                    + _td(dc.num_beams, dc.num_beams, "num") + _td(f"{dc.temperature:g}", dc.temperature, "num")
                    + "</tr>")
    out.append("<h3>Decoding configs</h3><p>The mode that took effect and the parameters it ignores "
               "(beam search has no top_k or temperature; greedy has no top_k).</p>")
    out.append(_table(["config", "mode", "varies", "ignores", "top_k", "num_beams", "temperature"], rows,
                      attrs=' data-table="configs"', numeric=(4, 5, 6)))

    sources = {"training": {k: " / ".join(map(str, v)) for k, v in training_versions.items()},
               "generation": {}, "scoring": scoring_versions(metrics_json), "report": library_versions()}
    for man in manifests.values():
        for lib, v in (man.get("versions") or {}).items():
            seen = sources["generation"].setdefault(lib, "")
            if str(v) not in seen.split(" / "):
                sources["generation"][lib] = f"{seen} / {v}" if seen else str(v)
    libs = sorted(set().union(*(set(v) for v in sources.values())))
    rows = ["<tr>" + _td(lib, None, "cfg") + "".join(_td(sources[k].get(lib, "–")) for k in sources) + "</tr>"
            for lib in libs]
    out.append("<h3>Library versions</h3>")
    out.append(_table(["library"] + [f"at {k}" for k in sources], rows, attrs=' data-table="versions"'))
    if metrics_json is not None:
        out.append(_details("metric settings (eval_results/metrics.json)",
                            _pre(json.dumps(metric_settings(metrics_json), indent=2, ensure_ascii=False,
                                            default=str))))
    out.append(_details("the experiment config", _pre(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))))
    return "".join(out + ["</section>"])


# --- the explorer's data ---------------------------------------------------------------------------

def _read_row_scores(path: Path, metrics: list[str]) -> dict:
    """{(config, id): {metric: value}} from eval_results/rows/<target>.csv; empty when absent."""
    out = {}
    if not path.is_file():
        return out
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            for rec in TableReader(fh):
                out[(rec.get("config"), rec.get("id"))] = {m: _num(rec.get(m)) for m in metrics if m in rec}
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        log.warning("%s: per-row scores not shown (%s)", path, exc)
        return {}
    return out


def explorer_data(cfg: ExperimentConfig, scored: list[Scored], metrics: list[tuple[str, str]]) -> dict:
    """Every answer of every target x config for every test row, with its finish reason, token count
    and per-row scores; rows carry instruction, input and reference. Columnar: one list per
    (target, config) in row order, so the page stays a few MB at full study size."""
    paths = Workdir(cfg.path)
    configs = expand_sweep(cfg.generation)
    text_metrics = [(m, label) for m, label in metrics if m != "human"]
    test_path = paths.split_file("test")
    try:
        test = {r.get("id"): r for r in read_jsonl(test_path)} if test_path.is_file() else {}
    except UserError as exc:
        log.warning("%s", exc)
        test = {}
    ids: list = []
    rows: list[dict] = []
    seen: set = set()
    resp, finish, ntok, scores = {}, {}, {}, {}
    targets = []
    loaded: dict[str, dict[str, dict]] = {}
    for s in scored:
        # What score read, checked the same way (the manifest vouches for every file; references come
        # from alpaca_data/test.jsonl): the page never shows another run's answers beside this run's tables.
        tr = read_target_responses(cfg.path, s.target.name, [dc.name for dc in configs], fields=("response",), cfg=cfg)
        per = {config: {r["id"]: r for r in recs} for config, recs in tr.records.items()}
        for r in next(iter(tr.records.values()), []):
            if r["id"] not in seen:
                seen.add(r["id"])
                ids.append(r["id"])
                t = test.get(r["id"], {})
                rows.append({"id": str(r["id"]), "instruction": t.get("instruction", r.get("prompt", "")),
                             "input": t.get("input", ""), "reference": r["reference"]})
        if per:
            loaded[s.target.name] = per
            targets.append({"name": s.target.name, "label": target_label(s.target), "base": s.target.is_base})
    for t in targets:
        name = t["name"]
        per = loaded[name]
        row_scores = _read_row_scores(check_vouched(cfg.path, paths.row_scores(name)), [m for m, _ in text_metrics])
        resp[name], finish[name], ntok[name], scores[name] = {}, {}, {}, {m: {} for m, _ in text_metrics}
        for config, by_id in per.items():
            recs = [by_id.get(i) for i in ids]
            resp[name][config] = [None if r is None else r["response"] for r in recs]
            finish[name][config] = [None if r is None else r.get("finish_reason") for r in recs]
            ntok[name][config] = [None if r is None else r.get("num_tokens") for r in recs]
            for m, _ in text_metrics:
                vals = [row_scores.get((config, str(i)), {}).get(m) for i in ids]
                if any(v is not None for v in vals):
                    scores[name][m][config] = [None if v is None else round(v, ROW_DECIMALS) for v in vals]
    return {
        "study": cfg.name,
        "centre": centre_config(cfg).name,
        "configs": [{"name": dc.name, "mode": dc.mode, "varies": dc.varied or "centre"} for dc in configs],
        "targets": targets,
        "metrics": [[m, label] for m, label in text_metrics],
        "row_scores": any(scores[t["name"]][m] for t in targets for m, _ in text_metrics),
        "rows": rows,
        "resp": resp, "finish": finish, "ntok": ntok, "scores": scores,
    }


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

def build_html(cfg: ExperimentConfig, scored: list[Scored], metrics: list[tuple[str, str]], plots: list[Path],
               manifests: dict, metrics_json: Optional[dict], perplexity,
               found: Optional[dict[str, list[MetricVerdict]]] = None) -> str:
    """`found`: the verdicts report.md opens with (tables.verdicts); the page opens with the same sentences."""
    generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    data = explorer_data(cfg, scored, metrics)
    n_rows = len(data["rows"])
    configs = expand_sweep(cfg.generation)
    summary = (f"{len(scored)} model(s) × {len(configs)} decoding configs × {n_rows} test rows, "
               f"{cfg.generation.mode} sweep around {centre_config(cfg).name}. Report written {generated}.")
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in (
        ("verdict", "verdict"), ("results", "results"), ("plots", "plots"), ("comparisons", "comparisons"), ("explorer", "explorer"),
        ("settings", "settings")))
    body = [
        f"<header><h1>{esc(cfg.name)}</h1><p>{esc(summary)}</p><nav>{nav}</nav></header>",
        "<main>",
        _verdict_section(scored, found or {}),
        _results_section(cfg, scored, metrics, perplexity, metrics_json, found),
        _plots_section(plots),
        _comparisons_section(Workdir(cfg.path).comparisons),
        _explorer_section(data),
        _settings_section(cfg, scored, manifests, metrics_json, generated),
        "</main>",
        f"<footer>tunesweep {esc(__version__)} · one self-contained file: it needs no network.</footer>",
    ]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(cfg.name)}: tunesweep report</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + f"\n<script>{_JS}</script>\n</body></html>\n")


# --- the page's own style and script (written for tunesweep; no third-party code) ------------------

_CSS = """
:root{--fg:#1d2125;--muted:#5f6b76;--line:#d8dde2;--bg:#fff;--soft:#f4f6f8;--a:#1f5fbf;--b:#b3461f;
--del:#fbd3d0;--ins:#cdeccd;--best:#0b5d1e}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{padding:14px 24px 8px;border-bottom:1px solid var(--line);background:var(--soft)}
header h1{margin:0 0 4px;font-size:22px}header p{margin:0 0 6px;color:var(--muted)}
nav a{margin-right:16px;color:var(--a);text-decoration:none;font-weight:600}
main{padding:0 24px 40px}section{margin-top:26px}h2{font-size:19px;border-bottom:2px solid var(--line);padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}h4{margin:0 0 2px;font-size:12px;text-transform:uppercase;color:var(--muted);letter-spacing:.04em}
code,pre,.cfg{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
pre{background:var(--soft);padding:10px;overflow:auto;max-height:420px}
.note{color:var(--muted);font-style:italic}.muted{color:var(--muted)}
.tablewrap{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:4px 0 10px}th,td{border:1px solid var(--line);padding:4px 8px;vertical-align:top;text-align:left}
thead th{background:var(--soft);position:sticky;top:0}
table.sortable thead th{cursor:pointer;user-select:none;white-space:nowrap}
table.sortable thead th::after{content:" ↕";color:#aab3bb;font-size:11px}
table.sortable thead th[aria-sort=ascending]::after{content:" ▲";color:var(--fg)}
table.sortable thead th[aria-sort=descending]::after{content:" ▼";color:var(--fg)}
td.num,th.num{text-align:right;white-space:nowrap}.ci{color:var(--muted);font-size:12px}
td.best .v{font-weight:700;color:var(--best)}tr.sig td{background:#f2f8ee}
.facts{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px}.facts dt{font-weight:600}.facts dd{margin:0}
.plots{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;border:1px solid var(--line);padding:6px}
figure img{max-width:440px;width:100%;height:auto;display:block}figcaption{font-size:12px;color:var(--muted)}
.controls{margin:6px 0;display:flex;flex-wrap:wrap;gap:14px;align-items:center}
input[type=search]{padding:4px 6px;min-width:220px}select{padding:3px;max-width:100%}
.ex-layout{display:grid;grid-template-columns:300px 1fr;gap:16px;align-items:start}
.ex-side{position:sticky;top:6px;max-height:calc(100vh - 12px);display:flex;flex-direction:column;gap:6px}
.ex-side label.block{display:flex;flex-direction:column;font-size:12px;color:var(--muted)}
.ex-side label.block input[type=checkbox]{align-self:flex-start}
#ex-list{list-style:none;margin:0;padding:0;overflow:auto;border:1px solid var(--line);flex:1;min-height:160px}
#ex-list li{padding:5px 7px;border-bottom:1px solid var(--line);cursor:pointer;font-size:12.5px}
#ex-list li:hover{background:var(--soft)}#ex-list li.sel{background:#e3ecfa;border-left:3px solid var(--a)}
#ex-list .rid{font-family:ui-monospace,Menlo,Consolas,monospace;color:var(--muted);font-size:11px}
#ex-list .badge{float:right;color:var(--b);font-size:11px}
.ex-rowbox{border:1px solid var(--line);background:var(--soft);padding:8px 12px}
.ex-rowhead{margin-bottom:6px}.ex-rowhead button{margin-left:6px}.ex-field{margin:6px 0}
.text,.resp{white-space:pre-wrap;word-break:break-word}
.resp:empty::before{content:"(empty answer)";color:var(--muted);font-style:italic}
#ex-grid{width:100%;table-layout:fixed}#ex-grid th.cfgcol{width:250px}#ex-grid td{min-width:220px}
#ex-grid th.cfg{overflow-wrap:anywhere}footer{padding:10px 24px;color:var(--muted);border-top:1px solid var(--line)}
.ex-side label.inline{font-size:12px;color:var(--muted)}
#ex-grid tr.is-a th,#ex-grid tr.is-a td{box-shadow:inset 3px 0 var(--a)}
#ex-grid tr.is-b th,#ex-grid tr.is-b td{box-shadow:inset 3px 0 var(--b)}
.meta{margin-top:4px;font-size:11.5px;color:var(--muted)}.meta .len{color:#9b1c1c;font-weight:600}
.same{color:var(--muted);font-size:11px;margin-left:4px}
.tag{display:inline-block;padding:0 6px;border-radius:3px;color:#fff;font-weight:700;font-size:12px}
.tag-a{background:var(--a)}.tag-b{background:var(--b)}
#ex-diff{margin:8px 0}.diffbox{border:1px solid var(--line);padding:6px 10px;margin-bottom:6px}
.diffbox h4{margin-bottom:4px}.d-del{background:var(--del);text-decoration:line-through}.d-ins{background:var(--ins)}
body.focus main>section:not(#explorer),body.focus #explorer>p:not(:last-of-type){display:none}
@media (max-width:900px){.ex-layout{grid-template-columns:1fr}.ex-side{position:static;max-height:none}}
"""

_JS = r"""
(function () {
  "use strict";
  // Every piece of data reaches the page through textContent or a form control's value, never as markup.
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function byId(id) { return document.getElementById(id); }

  // --- sortable tables: click a header (or Enter on it) to sort by that column, again to reverse ---
  function sortTable(table, col) {
    var th = table.tHead.rows[0].cells[col];
    var dir = th.getAttribute("aria-sort") === "ascending" ? "descending" : "ascending";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
    var body = table.tBodies[0];
    var keyed = Array.prototype.map.call(body.rows, function (r, i) {
      var cell = r.cells[col], v = cell ? cell.getAttribute("data-v") : null;
      var num = v === null || v === "" ? NaN : parseFloat(v);
      return { r: r, i: i, num: num, hasV: v !== null, text: cell ? cell.textContent : "" };
    });
    var numeric = keyed.some(function (k) { return !isNaN(k.num); });
    var sign = dir === "ascending" ? 1 : -1;
    keyed.sort(function (x, y) {
      var c;
      if (numeric) {
        var xn = isNaN(x.num), yn = isNaN(y.num);
        if (xn || yn) c = xn && yn ? 0 : xn ? 1 : -1;  // no value: always last
        else c = sign * (x.num - y.num);
      } else {
        c = sign * x.text.localeCompare(y.text, undefined, { numeric: true });
      }
      return c || x.i - y.i;
    });
    keyed.forEach(function (k) { body.appendChild(k.r); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    if (!table.tHead) return;
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.tabIndex = 0;
      th.title = "sort by this column";
      th.addEventListener("click", function () { sortTable(table, i); });
      th.addEventListener("keydown", function (ev) { if (ev.key === "Enter") sortTable(table, i); });
    });
  });

  // --- comparisons: filter by text, or only intervals that exclude 0 ---
  var cmp = byId("cmp-table");
  if (cmp) {
    var applyCmp = function () {
      var q = byId("cmp-filter").value.trim().toLowerCase(), sigOnly = byId("cmp-sig").checked, shown = 0;
      var rows = cmp.tBodies[0].rows;
      for (var i = 0; i < rows.length; i++) {
        var ok = (!q || rows[i].textContent.toLowerCase().indexOf(q) >= 0) &&
                 (!sigOnly || rows[i].getAttribute("data-sig") === "1");
        rows[i].hidden = !ok;
        if (ok) shown++;
      }
      byId("cmp-count").textContent = shown + " of " + rows.length + " rows";
    };
    byId("cmp-filter").addEventListener("input", applyCmp);
    byId("cmp-sig").addEventListener("change", applyCmp);
    applyCmp();
  }

  // --- the response explorer ---
  var dataNode = byId("explorer-data");
  if (!dataNode) return;
  var D = JSON.parse(dataNode.textContent);
  var rows = D.rows, targets = D.targets, configs = D.configs, metrics = D.metrics;
  if (!rows.length || !targets.length) {
    byId("ex-row").textContent = "No responses to show.";
    return;
  }
  var index = {};
  rows.forEach(function (r, i) { index[r.id] = i; });
  var S = { row: 0, a: D.centre, b: null, order: "test", scope: "", query: "", onlyDiff: false, markAll: false,
            view: "" };
  var other = configs.filter(function (c) { return c.name !== D.centre; });
  S.b = (other.find(function (c) { return c.mode === "greedy"; }) || other[0] || configs[0]).name;

  function resp(t, c, i) { var x = D.resp[t] && D.resp[t][c]; return x ? x[i] : null; }
  function scopeTargets() {
    return S.scope ? targets.filter(function (t) { return t.name === S.scope; }) : targets;
  }

  // Words with the whitespace after each, so a diff shows the text as it was written.
  function words(text) {
    var out = [], re = /(\S+)(\s*)/g, m, lead = /^\s+/.exec(text);
    if (lead) out.push({ w: "", s: lead[0] });
    while ((m = re.exec(text)) !== null) out.push({ w: m[1], s: m[2] });
    return out;
  }
  // Longest common subsequence of words; ops are [kind, word] with kind "=", "-" (only in a) or "+" (only in b).
  function diffWords(a, b) {
    var x = words(a), y = words(b), n = x.length, m = y.length;
    if (n * m > 4000000) return null;
    var w = m + 1, L = new Uint32Array((n + 1) * w);
    for (var i = n - 1; i >= 0; i--) {
      for (var j = m - 1; j >= 0; j--) {
        L[i * w + j] = x[i].w === y[j].w ? L[(i + 1) * w + j + 1] + 1 : Math.max(L[(i + 1) * w + j], L[i * w + j + 1]);
      }
    }
    var ops = [], p = 0, q = 0;
    while (p < n && q < m) {
      if (x[p].w === y[q].w) { ops.push(["=", y[q]]); p++; q++; }
      else if (L[(p + 1) * w + q] >= L[p * w + q + 1]) { ops.push(["-", x[p]]); p++; }
      else { ops.push(["+", y[q]]); q++; }
    }
    for (; p < n; p++) ops.push(["-", x[p]]);
    for (; q < m; q++) ops.push(["+", y[q]]);
    return ops;
  }
  function renderOps(box, ops, keep) {
    ops.forEach(function (op) {
      if (keep.indexOf(op[0]) < 0) return;
      var text = op[1].w + op[1].s;
      if (op[0] === "=") box.appendChild(document.createTextNode(text));
      else {
        box.appendChild(el("span", op[0] === "-" ? "d-del" : "d-ins", op[1].w));
        // A removed last word has no space after it: keep it apart from what follows.
        box.appendChild(document.createTextNode(op[1].s || (op[0] === "-" ? " " : "")));
      }
    });
  }

  // How much the configs of a row disagree: 1 - mean pairwise Jaccard similarity of their word sets,
  // averaged over the models in scope. Words are numbered once, each answer becomes a sorted array of
  // word numbers, and pairs are intersected by merging: at full size (3 x 13 x 300) every row is scored
  // when this order is chosen.
  var cache = {}, vocab = new Map(), wordSets = {};
  function wordSet(t, c, i) {
    var key = t + "\u0001" + c + "\u0001" + i;
    if (key in wordSets) return wordSets[key];
    var r = resp(t, c, i), seen = new Set();
    if (r === null || r === undefined) return (wordSets[key] = null);
    r.toLowerCase().split(/\s+/).forEach(function (x) {
      if (!x) return;
      if (!vocab.has(x)) vocab.set(x, vocab.size);
      seen.add(vocab.get(x));
    });
    return (wordSets[key] = Int32Array.from(seen).sort());
  }
  function jaccard(a, b) {
    var p = 0, q = 0, inter = 0;
    while (p < a.length && q < b.length) {
      if (a[p] === b[q]) { inter++; p++; q++; } else if (a[p] < b[q]) p++; else q++;
    }
    var union = a.length + b.length - inter;
    return union ? inter / union : 1;
  }
  function disagreement(i) {
    var key = "d|" + S.scope + "|" + i;
    if (key in cache) return cache[key];
    var total = 0, counted = 0, distinct = 0;
    scopeTargets().forEach(function (t) {
      var sets = [], texts = new Set();
      configs.forEach(function (c) {
        var s = wordSet(t.name, c.name, i);
        if (s === null) return;
        texts.add(resp(t.name, c.name, i));
        sets.push(s);
      });
      distinct += texts.size;
      var sum = 0, pairs = 0;
      for (var a = 0; a < sets.length; a++) {
        for (var b = a + 1; b < sets.length; b++) { sum += jaccard(sets[a], sets[b]); pairs++; }
      }
      if (pairs) { total += 1 - sum / pairs; counted++; }
    });
    return (cache[key] = { value: counted ? total / counted : 0, distinct: distinct });
  }
  function spread(i, metric) {
    var key = "s|" + metric + "|" + S.scope + "|" + i;
    if (key in cache) return cache[key];
    var total = 0, counted = 0;
    scopeTargets().forEach(function (t) {
      var per = D.scores[t.name] && D.scores[t.name][metric], lo = Infinity, hi = -Infinity;
      if (!per) return;
      configs.forEach(function (c) {
        var v = per[c.name] ? per[c.name][i] : null;
        if (v === null || v === undefined) return;
        lo = Math.min(lo, v); hi = Math.max(hi, v);
      });
      if (hi >= lo) { total += hi - lo; counted++; }
    });
    return (cache[key] = counted ? total / counted : null);
  }
  var haystacks = null;
  function matches(i, q) {
    if (!haystacks) {
      haystacks = rows.map(function (r, k) {
        var parts = [r.id, r.instruction, r.input, r.reference];
        targets.forEach(function (t) { configs.forEach(function (c) { parts.push(resp(t.name, c.name, k) || ""); }); });
        return parts.join("\n").toLowerCase();
      });
    }
    return haystacks[i].indexOf(q) >= 0;
  }
  function abDiffer(i) {
    return scopeTargets().some(function (t) { return resp(t.name, S.a, i) !== resp(t.name, S.b, i); });
  }

  function visibleRows() {
    var q = S.query.trim().toLowerCase(), out = [];
    for (var i = 0; i < rows.length; i++) {
      if (q && !matches(i, q)) continue;
      if (S.onlyDiff && !abDiffer(i)) continue;
      out.push(i);
    }
    if (S.order === "disagree") {
      out.sort(function (x, y) { return disagreement(y).value - disagreement(x).value || x - y; });
    } else if (S.order.indexOf("spread:") === 0) {
      var m = S.order.slice(7);
      out.sort(function (x, y) { return (spread(y, m) || 0) - (spread(x, m) || 0) || x - y; });
    }
    return out;
  }
  function badge(i) {
    if (S.order === "disagree") {
      var d = disagreement(i);
      return d.value.toFixed(2) + " · " + d.distinct + " distinct";
    }
    if (S.order.indexOf("spread:") === 0) {
      var s = spread(i, S.order.slice(7));
      return s === null ? "" : "spread " + s.toFixed(3);
    }
    return "";
  }

  var LIST_MAX = 500, listed = [];
  function renderList() {
    var list = byId("ex-list"), vis = visibleRows();
    listed = vis;
    list.textContent = "";
    vis.slice(0, LIST_MAX).forEach(function (i) {
      var li = el("li", i === S.row ? "sel" : "");
      li.setAttribute("data-row", rows[i].id);
      var b = badge(i);
      if (b) li.appendChild(el("span", "badge", b));
      li.appendChild(el("div", "rid", rows[i].id));
      var snippet = rows[i].instruction.length > 110 ? rows[i].instruction.slice(0, 110) + "…" : rows[i].instruction;
      li.appendChild(el("div", "", snippet));
      li.addEventListener("click", function () { select(i); });
      list.appendChild(li);
    });
    byId("ex-count").textContent = vis.length + " of " + rows.length + " rows" +
      (vis.length > LIST_MAX ? " (first " + LIST_MAX + " listed; search to narrow)" : "");
  }
  function markSelected() {
    Array.prototype.forEach.call(byId("ex-list").children, function (li) {
      li.className = li.getAttribute("data-row") === rows[S.row].id ? "sel" : "";
    });
  }

  function fmt(v, d) { return v === null || v === undefined ? "–" : Number(v).toFixed(d); }
  function renderRow() {
    var i = S.row, r = rows[i];
    byId("ex-rowid").textContent = r.id;
    byId("ex-rowpos").textContent = "(" + (i + 1) + " of " + rows.length + " in test order)";
    byId("ex-instruction").textContent = r.instruction;
    byId("ex-input").textContent = r.input;
    byId("ex-input").parentNode.hidden = !r.input;
    byId("ex-reference").textContent = r.reference;

    // A versus B, one box per model: words only in A struck through, words only in B marked.
    var diff = byId("ex-diff");
    diff.textContent = "";
    targets.forEach(function (t) {
      var a = resp(t.name, S.a, i), b = resp(t.name, S.b, i), box = el("div", "diffbox");
      box.setAttribute("data-target", t.name);
      var h = el("h4", "", t.label + ": A → B ");
      box.appendChild(h);
      var body = el("div", "text");
      if (a === null || b === null || a === undefined || b === undefined) {
        body.textContent = "(no answer for A or B)";
      } else if (a === b) {
        h.appendChild(el("span", "muted", "(identical)"));
        body.textContent = a;
      } else {
        var ops = diffWords(a, b);
        if (ops === null) body.textContent = "(too long to compare word by word)";
        else {
          var del = ops.filter(function (o) { return o[0] === "-"; }).length;
          var ins = ops.filter(function (o) { return o[0] === "+"; }).length;
          h.appendChild(el("span", "muted", "(" + del + " words only in A, " + ins + " only in B)"));
          renderOps(body, ops, ["=", "-", "+"]);
        }
      }
      box.appendChild(body);
      diff.appendChild(box);
    });

    // Every config (rows) x every model (columns).
    var grid = byId("ex-grid");
    grid.textContent = "";
    var head = grid.createTHead().insertRow();
    var corner = el("th", "cfgcol", "config");
    head.appendChild(corner);
    targets.forEach(function (t) { head.appendChild(el("th", "", t.label)); });
    var body = grid.createTBody();
    configs.forEach(function (c) {
      var tr = body.insertRow();
      tr.className = c.name === S.a ? "is-a" : c.name === S.b ? "is-b" : "";
      tr.setAttribute("data-config", c.name);
      var th = el("th", "cfg");
      th.appendChild(el("div", "", c.name));
      var sub = el("div", "muted", c.mode + (c.varies === "centre" ? " · centre" : " · varies " + c.varies));
      th.appendChild(sub);
      if (c.name === S.a) th.appendChild(el("span", "tag tag-a", "A"));
      if (c.name === S.b) th.appendChild(el("span", "tag tag-b", "B"));
      tr.appendChild(th);
      targets.forEach(function (t) {
        var td = el("td", "ex-cell");
        td.setAttribute("data-target", t.name);
        td.setAttribute("data-config", c.name);
        var text = resp(t.name, c.name, i), box = el("div", "resp");
        if (text === null || text === undefined) {
          td.appendChild(el("div", "note", "no answer for this row"));
          tr.appendChild(td);
          return;
        }
        var a = resp(t.name, S.a, i);
        if (S.markAll && c.name !== S.a && typeof a === "string" && a !== text) {
          var ops = diffWords(a, text);
          if (ops) renderOps(box, ops, ["=", "+"]); else box.textContent = text;
        } else {
          box.textContent = text;
        }
        td.appendChild(box);
        var meta = el("div", "meta"), fin = D.finish[t.name][c.name][i], nt = D.ntok[t.name][c.name][i];
        meta.appendChild(el("span", fin === "length" ? "len" : "", fin === null || fin === undefined ? "?" : fin));
        meta.appendChild(document.createTextNode(" · " + (nt === null || nt === undefined ? "?" : nt) + " tokens"));
        metrics.forEach(function (m) {
          var per = D.scores[t.name][m[0]], v = per && per[c.name] ? per[c.name][i] : null;
          if (per && per[c.name]) meta.appendChild(document.createTextNode(" · " + m[1] + " " + fmt(v, 3)));
        });
        if (c.name !== S.a && typeof a === "string" && a === text) meta.appendChild(el("span", "same", "= A"));
        td.appendChild(meta);
        tr.appendChild(td);
      });
    });
  }

  function writeHash() {
    var h = "#row=" + encodeURIComponent(rows[S.row].id) + "&a=" + encodeURIComponent(S.a) +
            "&b=" + encodeURIComponent(S.b) + (S.view ? "&view=" + encodeURIComponent(S.view) : "");
    if (location.hash !== h) {
      try { history.replaceState(null, "", h); } catch (e) { /* some file: pages refuse; the view still works */ }
    }
  }
  function readHash() {
    var h = location.hash.replace(/^#/, ""), names = configs.map(function (c) { return c.name; });
    if (!h) return false;
    var found = false;
    h.split("&").forEach(function (part) {
      var kv = part.split("="), k = kv[0], v;
      try { v = decodeURIComponent(kv.slice(1).join("=")); } catch (e) { return; }
      if (k === "row" && v in index) { S.row = index[v]; found = true; }
      if (k === "a" && names.indexOf(v) >= 0) S.a = v;
      if (k === "b" && names.indexOf(v) >= 0) S.b = v;
      if (k === "view") S.view = v === "explorer" ? v : "";
      if (k === "order") S.order = v;  // test, disagree or spread:<metric>; an unknown one keeps test order
    });
    document.body.classList.toggle("focus", S.view === "explorer");
    return found;
  }
  function select(i) {
    S.row = i;
    markSelected();
    renderRow();
    writeHash();
  }
  function step(d) {
    var pos = listed.indexOf(S.row);
    var next = pos < 0 ? listed[0] : listed[Math.min(listed.length - 1, Math.max(0, pos + d))];
    if (next !== undefined) select(next);
  }

  // Controls.
  function fill(box, items, value) {
    items.forEach(function (it) {
      var o = el("option", "", it[1]);
      o.value = it[0];
      box.appendChild(o);
    });
    box.value = value;
  }
  var linked = readHash();
  var cfgItems = configs.map(function (c) { return [c.name, c.name + " (" + c.mode + ")"]; });
  fill(byId("ex-a"), cfgItems, S.a);
  fill(byId("ex-b"), cfgItems, S.b);
  var orders = [["test", "test order"], ["disagree", "configs disagree most (answers differ)"]];
  metrics.forEach(function (m) {
    if (targets.some(function (t) { return D.scores[t.name][m[0]] && Object.keys(D.scores[t.name][m[0]]).length; }))
      orders.push(["spread:" + m[0], "largest " + m[1] + " spread across configs"]);
  });
  if (!orders.some(function (o) { return o[0] === S.order; })) S.order = "test";
  fill(byId("ex-order"), orders, S.order);
  fill(byId("ex-scope"), [["", "all models"]].concat(targets.map(function (t) { return [t.name, t.label]; })), "");

  byId("ex-search").addEventListener("input", function (ev) { S.query = ev.target.value; renderList(); });
  byId("ex-order").addEventListener("change", function (ev) { S.order = ev.target.value; renderList(); });
  byId("ex-scope").addEventListener("change", function (ev) { S.scope = ev.target.value; renderList(); });
  byId("ex-onlydiff").addEventListener("change", function (ev) { S.onlyDiff = ev.target.checked; renderList(); });
  byId("ex-markall").addEventListener("change", function (ev) { S.markAll = ev.target.checked; renderRow(); });
  byId("ex-a").addEventListener("change", function (ev) { S.a = ev.target.value; if (S.onlyDiff) renderList(); renderRow(); writeHash(); });
  byId("ex-b").addEventListener("change", function (ev) { S.b = ev.target.value; if (S.onlyDiff) renderList(); renderRow(); writeHash(); });
  byId("ex-focus").addEventListener("click", function () {
    S.view = S.view ? "" : "explorer";
    document.body.classList.toggle("focus", S.view === "explorer");
    writeHash();
  });
  byId("ex-prev").addEventListener("click", function () { step(-1); });
  byId("ex-next").addEventListener("click", function () { step(1); });
  window.addEventListener("hashchange", function () {
    if (readHash()) {
      byId("ex-a").value = S.a; byId("ex-b").value = S.b;
      if (byId("ex-order").value !== S.order) { byId("ex-order").value = S.order; S.order = byId("ex-order").value || "test"; }
      renderList(); renderRow();
    }
  });

  renderList();
  renderRow();
  if (linked && !S.view) byId("explorer").scrollIntoView();  // a link to a row opens on the explorer
  // For measuring: milliseconds from navigation start until the page is fully drawn.
  document.documentElement.setAttribute("data-ready-ms", String(Math.round(performance.now())));
})();
"""
