
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
