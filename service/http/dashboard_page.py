"""The HTML of GET /dashboard: no external assets; its script polls /dashboard/data each second."""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>rate limiter node</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  .sub { color: #666; margin-bottom: 1em; }
  .cards { display: flex; flex-wrap: wrap; gap: .8em; margin-bottom: 1em; }
  .card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6em 1em;
          min-width: 9em; }
  .card .label { color: #666; font-size: .85em; }
  .card .value { font-size: 1.6em; font-weight: 600; }
  .ok { color: #1a7f37; } .bad { color: #cf222e; }
  table { border-collapse: collapse; background: #fff; margin-bottom: 1em; }
  th, td { border: 1px solid #ddd; padding: .3em .7em; text-align: left; }
  th { background: #f0f0f0; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  canvas { background: #fff; border: 1px solid #ddd; border-radius: 6px; }
  .cols { display: flex; flex-wrap: wrap; gap: 2em; }
</style>
</head>
<body>
<h1>Node <span id="node">…</span> <span id="status" class="sub"></span></h1>
<div class="sub">replica <span id="replica"></span> · kafka <span id="kafka"></span>
  · topic <span id="topic"></span> · rules <span id="rules"></span>
  · updated <span id="updated">never</span></div>
<div class="cards">
  <div class="card"><div class="label">admitted / s</div>
    <div class="value ok" id="admitted-rate">–</div></div>
  <div class="card"><div class="label">denied / s</div>
    <div class="value bad" id="denied-rate">–</div></div>
  <div class="card"><div class="label">admitted (total)</div>
    <div class="value" id="admitted-total">–</div></div>
  <div class="card"><div class="label">denied (total)</div>
    <div class="value" id="denied-total">–</div></div>
  <div class="card"><div class="label">sync lag p50 / p99 (ms)</div>
    <div class="value"><span id="lag-p50">–</span> / <span id="lag-p99">–</span></div></div>
  <div class="card"><div class="label">event-loop lag p50 / p99 (ms)</div>
    <div class="value"><span id="loop-p50">–</span> / <span id="loop-p99">–</span></div></div>
  <div class="card"><div class="label">merged records</div>
    <div class="value" id="lag-count">–</div></div>
  <div class="card"><div class="label">tracked keys</div>
    <div class="value" id="tracked">–</div></div>
  <div class="card"><div class="label">unpublished keys</div>
    <div class="value" id="buffered">–</div></div>
</div>
<canvas id="chart" width="720" height="140"></canvas>
<div class="cols">
<div>
<h2>Peers seen</h2>
<table id="peers"><thead><tr><th>node</th><th>replica</th><th>last delta</th>
  <th>records</th></tr></thead><tbody></tbody></table>
<div id="no-peers" class="sub"></div>
</div>
<div>
<h2>Top keys by consumption</h2>
<table id="top-keys"><thead><tr><th>key</th><th>rule</th><th>consumed</th><th>tokens</th>
  <th>writers</th></tr></thead><tbody></tbody></table>
<div id="top-note" class="sub"></div>
</div>
</div>
<script>
"use strict";
const history = [];
function text(id, value) { document.getElementById(id).textContent = value; }
function fmt(v) { return v === null || v === undefined ? "–" : String(v); }
function rows(tableId, items, cells) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...items.map(item => {
    const tr = document.createElement("tr");
    for (const [value, numeric] of cells(item)) {
      const td = document.createElement("td");
      td.textContent = fmt(value);
      if (numeric) td.className = "num";
      tr.appendChild(td);
    }
    return tr;
  }));
}
function chart() {
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const top = Math.max(1, ...history.map(h => Math.max(h[0], h[1])));
  const step = canvas.width / 59;
  [["#1a7f37", 0], ["#cf222e", 1]].forEach(([color, i]) => {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    history.forEach((h, x) => {
      const y = canvas.height - 10 - (h[i] / top) * (canvas.height - 20);
      if (x === 0) ctx.moveTo(x * step, y); else ctx.lineTo(x * step, y);
    });
    ctx.stroke();
  });
  ctx.fillStyle = "#666";
  ctx.fillText("admitted/s (green), denied/s (red), last 60 polls; max " + top, 6, 12);
}
function render(d) {
  text("node", d.node);
  text("status", d.ready ? "ready · " + d.mode : "not ready");
  text("replica", d.replica);
  text("kafka", d.standalone ? "none (standalone)" : d.kafka + (d.broker_up ? " (up)" : " (down)"));
  text("topic", d.topic);
  text("rules", d.rules.map(r => r.name + " " + r.capacity + "@" + r.rate + "/s").join(", "));
  text("admitted-rate", d.rates.admitted_per_s);
  text("denied-rate", d.rates.denied_per_s);
  text("admitted-total", d.decisions.admitted);
  text("denied-total", d.decisions.denied);
  text("lag-p50", fmt(d.sync_lag.p50_ms));
  text("lag-p99", fmt(d.sync_lag.p99_ms));
  text("lag-count", d.sync_lag.count);
  text("loop-p50", fmt(d.loop_lag.p50_ms));
  text("loop-p99", fmt(d.loop_lag.p99_ms));
  text("tracked", d.tracked_keys);
  text("buffered", d.buffered);
  rows("peers", d.peers, p => [[p.node, false], [p.replica, false],
    [p.last_delta_s_ago.toFixed(1) + " s ago", true], [p.records, true]]);
  text("no-peers", d.standalone ? "standalone: no peers" : (d.peers.length ? "" : "none yet"));
  rows("top-keys", d.top_keys, k => [[k.key, false], [k.rule, false], [k.consumed, true],
    [k.tokens, true], [k.writers, true]]);
  text("top-note", d.top_keys_truncated ? "among the first keys scanned" : "");
  text("updated", new Date(d.time_ms).toLocaleTimeString());
  history.push([d.rates.admitted_per_s, d.rates.denied_per_s]);
  if (history.length > 60) history.shift();
  chart();
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
}
async function poll() {
  try {
    const response = await fetch("dashboard/data" + location.search, {cache: "no-store"});
    render(await response.json());
  } catch (error) {
    text("status", "unreachable: " + error);
  }
}
poll();
setInterval(poll, 1000);
</script>
</body>
</html>
"""
