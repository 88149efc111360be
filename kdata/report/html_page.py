"""The page template of ``report.html`` (``kdata.report.html`` fills the ``__NAME__`` placeholders).

Plain HTML and CSS, and a few lines of vanilla JavaScript that read the embedded JSON, draw one
tile per sampled row (thumbnail, decision or reason, teacher class, web label, score, a quarantined
row's error) and filter and sort them. Nothing is fetched: the Content-Security-Policy allows only
inline script and style and ``data:`` images. Every string from the data goes through ``textContent``, never
``innerHTML``, so sample ids and reasons cannot inject markup.
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 16px 40px; color: #222; }
h1 { font-size: 22px; margin: 18px 0 4px; } h2 { font-size: 17px; margin: 26px 0 8px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 8px 0; }
dl.meta dt { color: #666; } dl.meta dd { margin: 0; font-family: ui-monospace, monospace; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: 3px 10px; text-align: left; }
td:last-child { text-align: right; font-variant-numeric: tabular-nums; }
tr[data-key="kept"] td { font-weight: bold; }
.filters { display: flex; flex-wrap: wrap; gap: 8px 16px; align-items: center; margin: 8px 0 12px;
           position: sticky; top: 0; background: #fff; padding: 8px 0; border-bottom: 1px solid #eee; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(132px, 1fr)); gap: 10px; }
#grid.texts { grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); }
.tile { display: flex; flex-direction: column; margin: 0; border: 2px solid #ccc; border-radius: 4px; padding: 4px;
        font-size: 11px; overflow-wrap: anywhere; }
.tile.kept { border-color: #1f77b4; } .tile.rejected { border-color: #d62728; }
.tile.quarantined { border-color: #999; }
.tile img, .tile .noimg { width: 96px; height: 96px; object-fit: contain; image-rendering: pixelated;
                           align-self: center; background: #f4f4f4; }
.tile .noimg { display: flex; align-items: center; justify-content: center; color: #888; }
.tile .snippet { margin: 0 0 4px; max-height: 12em; overflow: auto; white-space: pre-wrap; font-family: serif;
                 font-size: 12px; }
.tile b { font-size: 12px; } .tile code { color: #666; } .tile .error { color: #8a1c1c; }
[hidden] { display: none !important; }
#sampling, #shown-count { color: #555; }
</style>
</head>
<body>
<header>
<h1>__NAME__</h1>
<p>What a kdata curation run kept and rejected, and why. The data card is
<a href="__CARD__">__CARD__</a>; the decision of every input sample is in <code>decisions.parquet</code>.</p>
<dl class="meta">__META__</dl>
</header>
<main>
<section id="stages"><h2>Counts at each stage</h2>
__COUNTS__
</section>
<section id="samples"><h2>Samples</h2>
<p id="sampling"></p>
<div class="filters">
<label>decision <select id="f-decision"><option value="">all</option></select></label>
<label>reason <select id="f-reason"><option value="">all</option></select></label>
<label>class <select id="f-class"><option value="">all</option></select></label>
<label>sort <select id="f-sort">
<option value="group">by decision: best-ranked kept, most clearly rejected first</option>
<option value="score-desc">score, high first</option>
<option value="score-asc">score, low first</option>
<option value="conf-desc">teacher confidence, high first</option>
<option value="conf-asc">teacher confidence, low first</option>
</select></label>
<label>sample id <input id="f-id" type="search" size="14"></label>
<span id="shown-count"></span>
</div>
<div id="grid"></div>
</section>
<section id="class-balance"><h2>Class balance (rows per class)</h2>
__BALANCE__
</section>
</main>
<script type="application/json" id="kdata-data">__DATA__</script>
<script>
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("kdata-data").textContent);
  var rows = data.rows, groups = data.groups, shown = data.shown;
  var $ = function (id) { return document.getElementById(id); };
  var fDec = $("f-decision"), fReason = $("f-reason"), fClass = $("f-class"), fSort = $("f-sort"), fId = $("f-id");
  var grid = $("grid"), order = ["kept", "rejected", "quarantined"];
  if (data.text) { grid.className = "texts"; }

  function add(select, value, label) {
    var o = document.createElement("option");
    o.value = value; o.textContent = label; select.appendChild(o);
  }
  function text(parent, tag, value) {
    var e = document.createElement(tag); e.textContent = value; parent.appendChild(e); return e;
  }
  function num(v, nd) { return v === null || v === undefined ? "–" : Number(v).toFixed(nd); }

  order.forEach(function (d) {
    if (rows.some(function (r) { return r.decision === d; })) { add(fDec, d, d); }
  });
  Object.keys(groups).forEach(function (g) { add(fReason, g, g + " (" + groups[g] + ")"); });
  var present = {};
  rows.forEach(function (r) { if (r.cls !== null) { present[r.cls] = true; } });
  data.classes.concat(Object.keys(present).sort()).forEach(function (c) {
    if (present[c]) { add(fClass, c, c); delete present[c]; }
  });
  $("sampling").textContent = "A random sample of each group is shown (the same rows every time): " +
    Object.keys(groups).map(function (g) { return g + " " + (shown[g] || 0) + " of " + groups[g]; }).join(", ") +
    ". Score: " + (data.score || "none") + " (higher is kept first)." + (data.note ? " " + data.note : "");

  rows.forEach(function (r, i) {
    var fig = document.createElement("figure");
    fig.className = "tile " + r.decision;
    fig.dataset.decision = r.decision; fig.dataset.group = r.group; fig.dataset.cls = r.cls === null ? "" : r.cls;
    if (r.thumb) {
      var img = document.createElement("img"); img.src = r.thumb; img.alt = r.id; fig.appendChild(img);
    } else if (r.text !== null && r.text !== undefined) { text(fig, "p", r.text).className = "snippet";
    } else { text(fig, "div", data.text ? "no text" : "no image").className = "noimg"; }
    var cap = document.createElement("figcaption");
    text(cap, "b", r.decision === "kept" ? "kept" + (r.rank === null ? "" : " #" + r.rank) : (r.reason || r.decision));
    text(cap, "div", "teacher: " + (r.cls === null ? "–" : r.cls) + (r.label ? " · label: " + r.label : ""));
    text(cap, "div", "score " + num(r.score, 3) + " · p " + num(r.conf, 2) + " · KL " + num(r.kl, 2));
    if (r.error) { text(cap, "div", "error: " + r.error).className = "error"; }
    text(cap, "code", r.id);
    fig.appendChild(cap);
    r.el = fig; r.pos = i;
  });

  function key(r, k) { var v = r[k]; return v === null || v === undefined ? null : v; }
  function compare(a, b) {
    var s = fSort.value, k = s.indexOf("conf") === 0 ? "conf" : "score", dir = /-asc$/.test(s) ? 1 : -1;
    if (s === "group") { return a.pos - b.pos; }
    var x = key(a, k), y = key(b, k);
    if (x === null || y === null) { return (x === null) - (y === null) || a.pos - b.pos; }
    return dir * (x - y) || a.pos - b.pos;
  }
  function apply() {
    var d = fDec.value, g = fReason.value, c = fClass.value, q = fId.value.trim().toLowerCase(), n = 0;
    rows.slice().sort(compare).forEach(function (r) {
      var ok = (!d || r.decision === d) && (!g || r.group === g) && (!c || r.cls === c) &&
        (!q || r.id.toLowerCase().indexOf(q) >= 0);
      r.el.hidden = !ok; n += ok ? 1 : 0;
      grid.appendChild(r.el);
    });
    $("shown-count").textContent = n + " of " + rows.length + " sampled rows shown";
  }
  [fDec, fReason, fClass, fSort].forEach(function (s) { s.addEventListener("change", apply); });
  fId.addEventListener("input", apply);
  apply();
})();
</script>
</body>
</html>
"""
