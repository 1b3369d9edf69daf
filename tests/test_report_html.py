"""eval_results/report.html in a real browser (headless Chromium), on the files of a real pipeline run.

The end-to-end run (conftest.e2e_run: split, finetune, generate with vLLM, clean, score, report) is
shared with test_pipeline.py. `hostile` copies its workdir, rewrites one response_raw to hold markup,
and reruns the real clean, score (which writes comparisons.csv) and report stages on the copy. Chromium
opens each report.html from disk; the tests read the DOM it rendered (--dump-dom) and compare it
with the CSV and JSONL files, and a screenshot of the explorer is written for a person to look at.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tunesweep.config import expand_sweep, load_config
from tunesweep.report.html import _asset, _comparisons_section, esc, json_for_script, png_data_uri

CENTRE = "top_k_50_num_beams_1_temp_0.8"
HOSTILE_CONFIG = "top_k_10_num_beams_1_temp_0.8"
HOSTILE = ('<script>alert(1)</script> then </script><img src=x onerror="alert(2)"> & <b>bold</b> '
           "\u2028 see HTTP://example.org")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


# --- the browser ---------------------------------------------------------------------------------

def find_chromium() -> str | None:
    if os.environ.get("TUNESWEEP_CHROMIUM"):
        return os.environ["TUNESWEEP_CHROMIUM"]
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        pytest.skip("no Chromium found (looked for " + ", ".join(BROWSERS) + " and $TUNESWEEP_CHROMIUM): `make setup` "
                    "installs Debian's chromium where it can run apt-get (root or sudo); this machine could not")
    return path


def browse(chromium: str, page: Path, fragment: str = "", *flags: str, timeout: int = 90) -> subprocess.CompletedProcess:
    """Run headless Chromium on file://page#fragment with a throwaway profile; its console goes to stderr."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
               "--disable-extensions", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", *flags, page.resolve().as_uri() + fragment]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    # Console errors (an exception in the page's script) show up as CONSOLE lines on stderr.
    assert "Uncaught" not in res.stderr, [line for line in res.stderr.splitlines() if "CONSOLE" in line]
    return res


def dump_dom(chromium: str, page: Path, fragment: str = "") -> "Node":
    res = browse(chromium, page, fragment, "--dump-dom")
    root = parse(res.stdout)
    assert root.find(lambda n: n.tag == "html" and n.attrs.get("data-ready-ms")), "the page's script did not finish"
    return root


# --- a small DOM from the dumped HTML (stdlib only) ----------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    @property
    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text for c in self.children)

    def iter(self):
        for c in self.children:
            if isinstance(c, Node):
                yield c
                yield from c.iter()

    def find_all(self, pred) -> list["Node"]:
        return [n for n in self.iter() if pred(n)]

    def find(self, pred) -> "Node | None":
        return next((n for n in self.iter() if pred(n)), None)

    def has_class(self, name: str) -> bool:
        return name in (self.attrs.get("class") or "").split()


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#document", {})

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_endtag(self, tag):
        n = self.cur
        while n is not self.root and n.tag != tag:
            n = n.parent
        if n is not self.root:
            self.cur = n.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(text: str) -> Node:
    b = _Builder()
    b.feed(text)
    b.close()
    return b.root


# --- fixtures: the real run, and a copy with a hostile response and comparisons ------------------

def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_jsonl(path: Path) -> list[dict]:
    # split("\n"), not splitlines(): a response may hold U+2028, which splitlines() splits on
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


@pytest.fixture(scope="module")
def hostile(e2e_run, tmp_path_factory):
    """A copy of the e2e workdir where one response_raw holds markup, rerun through clean, score, report."""
    from tunesweep.clean.stage import clean
    from tunesweep.report import report
    from tunesweep.evaluate.scoring import score

    work, cfg_path, _ = e2e_run
    root = tmp_path_factory.mktemp("hostile")
    copy = root / "work"
    shutil.copytree(work, copy)
    cfg_file = root / "study.yaml"
    cfg_file.write_text(cfg_path.read_text().replace(f"workdir: {work}", f"workdir: {copy}"))
    cfg = load_config(cfg_file)
    assert cfg.path == copy

    path = copy / "llm_responses" / "tiny" / f"{HOSTILE_CONFIG}.jsonl"
    recs = read_jsonl(path)
    row_id = recs[1]["id"]
    recs[1]["response_raw"] = HOSTILE
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    # As if the model had generated it: the manifest vouches for the new content (score refuses edited files).
    from tunesweep.records import generated_digest

    manifest_path = copy / "llm_responses" / "tiny" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["configs"][HOSTILE_CONFIG]["generated_sha256"] = generated_digest(path)
    manifest_path.write_text(json.dumps(manifest))

    clean(cfg)
    score(cfg)  # writes eval_results/comparisons.csv
    report(cfg)
    with open(copy / "eval_results" / "comparisons.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return copy, cfg, row_id, rows


# --- tests -----------------------------------------------------------------------------------------

def test_escaping_helpers_keep_markup_and_urls_out():
    nasty = ['</script><script>alert(1)</script>', "<!-- x", "a & b", "\u2028\u2029", "HtTpS://x", "\\http",
             'quote " and \' ', "http" * 3]
    text = json_for_script({"k": nasty})
    assert "<" not in text and ">" not in text and "&" not in text and not re.search("http", text, re.I)
    assert json.loads(text) == {"k": nasty}
    for s in nasty:
        e = esc(s)
        assert "<" not in e and '"' not in e and not re.search("http", e, re.I)
        assert html.unescape(e) == s


def test_png_data_uri_hides_an_accidental_http_in_base64(tmp_path):
    # Bytes whose base64 spells "http" in two cases; browsers drop the newline the URI gets there.
    data = base64.b64decode("iVBORw0KGgoAhttpAAAHTTPAAAAA")
    png = tmp_path / "x.png"
    png.write_bytes(data)
    uri = png_data_uri(png)
    assert not re.search("http", uri, re.I)
    assert base64.b64decode(uri.split(",", 1)[1].replace("\n", "")) == data


def test_comparisons_section_absent_extra_or_empty():
    """The page shows comparisons.csv as the report model read it (tables.read_comparisons, one policy for both
    pages: vouched for and with every expected column, else a UserError); absent, it says so."""
    import pandas as pd

    from tunesweep.layout import COMPARISON_COLUMNS

    assert "No <code>eval_results/comparisons.csv</code>" in _comparisons_section(None)
    row = {c: None for c in COMPARISON_COLUMNS} | {"model": "m", "metric": "bleu", "config": "c1", "diff": 0.01,
                                                  "extra": "x"}
    out = _comparisons_section(pd.DataFrame([row]))
    assert "extra extra" in out and "Shown as they are" in out
    assert 'id="cmp-table"' in out and "+0.0100" in out
    assert "has no rows" in _comparisons_section(pd.DataFrame(columns=list(COMPARISON_COLUMNS)))


def test_pages_name_no_url_and_link_only_inside_themselves(e2e_run, hostile):
    """No browser needed: the real run's page, and the copy whose answer holds HTTP://example.org."""
    work, _, res = e2e_run
    assert "report.html" in res.stdout
    for page in (work / "eval_results" / "report.html", hostile[0] / "eval_results" / "report.html"):
        text = page.read_text(encoding="utf-8")
        assert not re.search("http", text, re.I), f"{page} names a URL"
        links = [v for n in parse(text).iter() for k, v in n.attrs.items() if k in ("src", "href", "action")]
        assert links and all(v.startswith(("data:image/png;base64,", "#")) for v in links), "a link leaves the page"
        # The page's style and script (package data) are inlined: nothing beside the file is needed.
        assert f"<style>{_asset('report.css')}</style>" in text and f"<script>{_asset('report.js')}</script>" in text


def test_real_run_page_renders_with_comparisons(chromium, e2e_run):
    work, _, _ = e2e_run
    page = work / "eval_results" / "report.html"
    dom = dump_dom(chromium, page)
    assert dom.find(lambda n: n.tag == "section" and n.attrs.get("id") == "comparisons").text.count(
        "No eval_results/comparisons.csv") == 0
    assert dom.find(lambda n: n.attrs.get("id") == "cmp-table") is not None
    # With no row chosen in the address, the explorer opens on the first test row.
    first = read_jsonl(work / "llm_responses" / "tiny" / f"{CENTRE}.jsonl")[0]
    assert dom.find(lambda n: n.attrs.get("id") == "ex-rowid").text == first["id"]
    plots = dom.find_all(lambda n: n.tag == "img" and n.attrs.get("src", "").startswith("data:image/png;base64,"))
    assert len(plots) == len(list((work / "eval_results" / "plots").glob("*.png"))) > 0
    # Each model's checks, as its records hold them: merge fidelity (tunesweep.json), batch invariance and
    # replica agreement (manifest.json; none here: no Ray).
    from tunesweep.report.tables import fidelity_text, invariance_text

    table = dom.find(lambda n: n.tag == "table" and n.attrs.get("data-table") == "models")
    rows = {cells[0]: cells for tr in table.find_all(lambda n: n.tag == "tr")
            if (cells := [td.text.strip() for td in tr.find_all(lambda n: n.tag == "td")])}
    record = json.loads((work / "finetuned_models" / "tiny" / "tunesweep.json").read_text())
    for name in ("tiny", "tiny-base"):
        [cells] = [c for label, c in rows.items() if label.split()[0] == name]
        manifest = json.loads((work / "llm_responses" / name / "manifest.json").read_text())
        assert cells[-2] == invariance_text(manifest["batch_invariance"]) and "identical alone" in cells[-2]
        assert cells[-1] == "–"
    [tuned] = [c for label, c in rows.items() if label.split()[0] == "tiny"]
    assert tuned[-3] == fidelity_text(record) != "–"


def test_page_in_chromium_tables_explorer_and_escaping(chromium, hostile):
    work, cfg, row_id, comparisons = hostile
    page = work / "eval_results" / "report.html"
    configs = [dc.name for dc in expand_sweep(cfg.generation)]
    assert len(configs) == 13
    dom = dump_dom(chromium, page, f"#row={row_id}&a={CENTRE}&b={HOSTILE_CONFIG}")

    # 1. The results tables hold the CSV's numbers, every config in sweep order.
    for target in ("tiny", "tiny-base"):
        table = dom.find(lambda n: n.tag == "table" and n.attrs.get("data-results") == target)
        trs = table.find_all(lambda n: n.tag == "tr" and "data-config" in n.attrs)
        csv_rows = read_csv(work / "eval_results" / f"{target}.csv")
        assert [tr.attrs["data-config"] for tr in trs] == [r["config"] for r in csv_rows] == configs
        for tr, row in zip(trs, csv_rows):
            for metric in ("bleu", "rougeL", "bertscore"):
                td = tr.find(lambda n: n.tag == "td" and n.attrs.get("data-metric") == metric)
                shown = re.fullmatch(r"(-?\d+\.\d{4}) \[(-?\d+\.\d{4}), (-?\d+\.\d{4})\]", td.text.strip())
                assert shown, td.text
                for got, col in zip(shown.groups(), (metric, f"{metric}_ci_low", f"{metric}_ci_high")):
                    assert got == f"{float(row[col]):.4f}", (target, row["config"], col)
                assert float(td.attrs["data-v"]) == pytest.approx(float(row[metric]), abs=1e-6)

    # 2. The comparisons are shown: one table row per CSV row, numbers as written.
    cmp = dom.find(lambda n: n.attrs.get("id") == "cmp-table")
    body_rows = cmp.find_all(lambda n: n.tag == "tr" and n.parent.tag == "tbody")
    assert len(body_rows) == len(comparisons)
    assert body_rows[0].find_all(lambda n: n.tag == "td")[7].text == f"{float(comparisons[0]['diff']):+.4f}"

    # 3. The explorer shows the chosen row: its reference and all 13 answers of each model, with the
    # finish reason, token count and the row's own scores from eval_results/rows/<model>.csv.
    test = {r["id"]: r for r in read_jsonl(work / "alpaca_data" / "test.jsonl")}
    assert dom.find(lambda n: n.attrs.get("id") == "ex-rowid").text == row_id
    assert dom.find(lambda n: n.attrs.get("id") == "ex-reference").text == test[row_id]["output"]
    assert dom.find(lambda n: n.attrs.get("id") == "ex-instruction").text == test[row_id]["instruction"]
    for target in ("tiny", "tiny-base"):
        cells = dom.find_all(lambda n: n.tag == "td" and n.has_class("ex-cell") and n.attrs.get("data-target") == target)
        assert [c.attrs["data-config"] for c in cells] == configs
        scores = {(r["config"], r["id"]): r for r in read_csv(work / "eval_results" / "rows" / f"{target}.csv")}
        for cell in cells:
            config = cell.attrs["data-config"]
            rec = next(r for r in read_jsonl(work / "llm_responses" / target / f"{config}.jsonl") if r["id"] == row_id)
            assert cell.find(lambda n: n.has_class("resp")).text == rec["response"]
            meta = cell.find(lambda n: n.has_class("meta")).text
            assert meta.startswith(f"{rec['finish_reason']} · {rec['num_tokens']} tokens"), meta
            s = scores[(config, row_id)]
            for label, col in (("BLEU", "bleu"), ("ROUGE-L", "rougeL"), ("BERTScore", "bertscore")):
                shown = re.search(rf"{label} (-?\d+\.\d{{3}})", meta)
                assert shown and float(shown.group(1)) == pytest.approx(float(s[col]), abs=6e-4), (label, meta)

    # 4. The hostile response is text: no element came from it, and the page holds only its own scripts.
    cell = dom.find(lambda n: n.has_class("ex-cell") and n.attrs.get("data-target") == "tiny"
                    and n.attrs.get("data-config") == HOSTILE_CONFIG)
    resp = cell.find(lambda n: n.has_class("resp"))
    assert "<script>alert(1)</script>" in resp.text and "see HTTP://example.org" in resp.text
    assert not [n for n in resp.iter()], "markup from a response became elements"
    assert len(dom.find_all(lambda n: n.tag == "script")) == 2  # the JSON data and the page's own script
    assert not dom.find_all(lambda n: n.tag == "img" and n.attrs.get("src") == "x")
    # ... and A vs B shows the difference word by word (A = centre, B = the hostile config).
    box = dom.find(lambda n: n.has_class("diffbox") and n.attrs.get("data-target") == "tiny")
    inserted = "".join(n.text for n in box.find_all(lambda n: n.has_class("d-ins")))
    assert "<script>alert(1)</script>" in inserted


def test_screenshot_of_the_explorer(chromium, hostile, tmp_path_factory):
    work, cfg, row_id, _ = hostile
    shot = tmp_path_factory.mktemp("screens") / "report_explorer.png"
    browse(chromium, work / "eval_results" / "report.html",
           f"#row={row_id}&a={CENTRE}&b={HOSTILE_CONFIG}&view=explorer",
           "--hide-scrollbars", "--window-size=1500,1400", f"--screenshot={shot}")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000, "the screenshot is missing or blank"
    print(f"screenshot of the explorer: {shot}")


# Clicks and typing, as a person would do them, then the outcome written into the page for --dump-dom.
PROBE = """<script>
(function () {
  var out = {};
  function cells(t, i) { return Array.prototype.map.call(t.tBodies[0].rows, function (r) { return r.cells[i]; }); }
  try {
    var t = document.querySelector('table[data-results="tiny"]'), th = t.tHead.rows[0].cells;
    th[3].click();
    out.bleu_up = cells(t, 3).map(function (c) { return parseFloat(c.getAttribute("data-v")); });
    th[3].click();
    out.bleu_down = cells(t, 3).map(function (c) { return parseFloat(c.getAttribute("data-v")); });
    th[0].click();
    out.configs = cells(t, 0).map(function (c) { return c.textContent; });
    var s = document.getElementById("ex-search");
    s.value = __ROW_ID__; s.dispatchEvent(new Event("input"));
    out.listed = Array.prototype.map.call(document.querySelectorAll("#ex-list li"), function (li) { return li.getAttribute("data-row"); });
    document.querySelector("#ex-list li").click();
    out.row = document.getElementById("ex-rowid").textContent;
    out.hash = location.hash;
    var b = document.getElementById("ex-b");
    b.value = __B__; b.dispatchEvent(new Event("change"));
    out.b_row = document.querySelector("#ex-grid tr.is-b").getAttribute("data-config");
    s.value = ""; s.dispatchEvent(new Event("input"));
    var o = document.getElementById("ex-order");
    o.value = "disagree"; o.dispatchEvent(new Event("change"));
    out.badges = document.querySelectorAll("#ex-list li .badge").length;
  } catch (e) { out.error = String(e); }
  var pre = document.createElement("pre"); pre.id = "probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>"""


def test_sorting_search_and_choices_respond_in_chromium(chromium, e2e_run, tmp_path):
    work, cfg_path, _ = e2e_run
    configs = [dc.name for dc in expand_sweep(load_config(cfg_path).generation)]
    row_id = read_jsonl(work / "llm_responses" / "tiny" / f"{CENTRE}.jsonl")[3]["id"]
    page = tmp_path / "probe.html"
    probe = PROBE.replace("__ROW_ID__", json.dumps(row_id)).replace("__B__", json.dumps(configs[5]))
    page.write_text((work / "eval_results" / "report.html").read_text(encoding="utf-8")
                    .replace("</body></html>", probe + "</body></html>"), encoding="utf-8")
    dom = dump_dom(chromium, page)
    out = json.loads(dom.find(lambda n: n.attrs.get("id") == "probe").text)
    assert "error" not in out, out
    assert out["bleu_up"] == sorted(out["bleu_up"]) and out["bleu_down"] == sorted(out["bleu_down"], reverse=True)
    # By name, numbers as numbers: top_k 10 < 25 < 40 < 50 < 75 whatever the sweep order was.
    assert sorted(out["configs"]) == sorted(configs) and out["configs"] != configs
    top_k = [c for c in out["configs"] if c.endswith("_num_beams_1_temp_0.8")]
    assert top_k == [f"top_k_{k}_num_beams_1_temp_0.8" for k in (10, 25, 40, 50, 75)]
    assert out["listed"] == [row_id] and out["row"] == row_id  # found by its id, then picked
    assert out["hash"].startswith(f"#row={row_id}&")
    assert out["b_row"] == configs[5]
    assert out["badges"] == len(read_jsonl(work / "llm_responses" / "tiny" / f"{CENTRE}.jsonl"))


def test_the_page_assets_ship_as_package_data():
    """report.html's style and script are files of tunesweep/report/assets/ (inlined into the page at render):
    pyproject's package-data must name every one, since a non-editable install ships only what it names (built
    without the entry, the wheel has none of them)."""
    import fnmatch
    import tomllib

    from tunesweep.report import html as html_page

    repo = Path(__file__).resolve().parent.parent
    patterns = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["tunesweep.report"]
    assets = sorted(p.name for p in (repo / "tunesweep" / "report" / "assets").iterdir())
    assert {"report.css", "report.js"} <= set(assets)
    for name in assets:
        assert any(fnmatch.fnmatch(f"assets/{name}", p) for p in patterns), name
        assert html_page._asset(name) == (repo / "tunesweep" / "report" / "assets" / name).read_text(encoding="utf-8")
