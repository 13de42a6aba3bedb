// tickflow analytics: charts (uPlot) drawn from the analytics API, redrawn when a control changes and every 30 s.
"use strict";

const PALETTE = ["#2563eb", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#dc2626", "#16a34a"];
const NAMED = { started: "#2563eb", completed: "#16a34a", failed: "#dc2626", "failure rate": "#dc2626",
  p50: "#16a34a", p90: "#d97706", p99: "#dc2626" };
const charts = {};

async function getJSON(url) {
  const answer = await fetch(url, { credentials: "same-origin" });
  if (!answer.ok) throw new Error(`${answer.status} ${await answer.text()}`);
  return answer.json();
}

function draw(id, seriesNames, xs, columns, opts = {}) {
  const box = document.getElementById(id);
  if (charts[id]) charts[id].destroy();
  box.dataset.points = String(xs.length);
  box.dataset.series = String(seriesNames.length);
  if (!xs.length) { box.textContent = "no data in this window"; box.classList.add("empty"); return; }
  box.textContent = ""; box.classList.remove("empty");
  const color = (name, i) => NAMED[name] || PALETTE[i % PALETTE.length];
  const series = [{}].concat(seriesNames.map((name, i) => ({
    label: name, stroke: color(name, i), width: 2, points: { show: xs.length < 60, size: 5 },
    fill: opts.bars ? color(name, i) + "99" : undefined,
    paths: opts.bars ? uPlot.paths.bars({ size: [0.8 / seriesNames.length, 60], align: 0 }) : undefined,
  })));
  const top = Math.max(0, ...columns.flat().filter(Number.isFinite));
  charts[id] = new uPlot({
    width: box.clientWidth || 600, height: 240, series,
    scales: {
      x: opts.categories ? { time: false, range: [-0.5, xs.length - 0.5] } : { time: true, range: opts.range },
      y: { range: [0, top > 0 ? top * 1.15 : 1] },
    },
    axes: [opts.categories ? { values: (u, splits) => splits.map((v) => opts.categories[Math.round(v)] ?? "") } : {},
      { size: 72 }],  // room for "100,000" on the y axis
  }, [xs, ...columns], box);
}

// Rows of {bucket_ms, <key>, ...} → x values (seconds) and one column per key of ``field``.
function pivot(rows, key, field) {
  const xs = [...new Set(rows.map((r) => r.bucket_ms))].sort((a, b) => a - b);
  const keys = [...new Set(rows.map((r) => r[key] || "(none)"))].sort();
  const at = new Map(xs.map((x, i) => [x, i]));
  const columns = keys.map(() => xs.map(() => 0));
  for (const r of rows) columns[keys.indexOf(r[key] || "(none)")][at.get(r.bucket_ms)] += r[field];
  return { xs: xs.map((x) => x / 1000), keys, columns };
}

// What the cost chart cannot show: attempts at an unknown price (drawn as 0, so the curve is a lower bound) and
// the part priced with illustrative (sample) prices.
function costNote(usage) {
  const total = (field) => usage.reduce((n, r) => n + (r[field] || 0), 0);
  const unknown = total("calls_price_unknown"), illustrative = total("calls_price_illustrative");
  const parts = [];
  if (unknown) parts.push(`${unknown} call${unknown === 1 ? "" : "s"} at unknown price (no price configured for ` +
    "the model): not in the curve, so the cost shown is a lower bound");
  if (illustrative) parts.push(`$${total("cost_illustrative_usd").toFixed(4)} of it from ${illustrative} ` +
    `call${illustrative === 1 ? "" : "s"} at illustrative prices (a sample figure, not money spent)`);
  const note = document.getElementById("cost-note");
  note.textContent = parts.join(" · ");
  note.hidden = !parts.length;
}

async function refresh() {
  const form = document.getElementById("analytics-controls");
  const until = Date.now(), since = until - Number(form.window.value);
  const q = `since_ms=${since}&until_ms=${until}&bucket=${form.bucket.value}`;
  const range = [since / 1000, until / 1000];
  try {
    const usage = await getJSON(`/analytics/usage?by=${form.by.value}&${q}`);
    const tokens = usage.map((r) => ({ ...r, tokens: r.tokens_in + r.tokens_out }));
    let p = pivot(tokens, form.by.value, "tokens");
    draw("chart-tokens", p.keys, p.xs, p.columns, { range });
    p = pivot(usage, form.by.value, "cost_usd");
    draw("chart-cost", p.keys, p.xs, p.columns, { range });
    costNote(usage);

    const runs = await getJSON(`/analytics/runs?${q}`);
    const xs = [...new Set(runs.map((r) => r.bucket_ms))].sort((a, b) => a - b);
    const sum = (field) => xs.map((x) => runs.filter((r) => r.bucket_ms === x).reduce((n, r) => n + r[field], 0));
    const started = sum("started"), completed = sum("completed"), failed = sum("failed"), cancelled = sum("cancelled");
    draw("chart-runs", ["started", "completed", "failed"], xs.map((x) => x / 1000), [started, completed, failed], { range });
    const rate = xs.map((_, i) => { const done = completed[i] + failed[i] + cancelled[i]; return done ? failed[i] / done : 0; });
    draw("chart-failures", ["failure rate"], xs.map((x) => x / 1000), [rate], { range });

    const steps = await getJSON(`/analytics/steps?since_ms=${since}&until_ms=${until}`);
    const names = steps.map((s) => `${s.workflow}/${s.step}`);
    draw("chart-steps", ["p50", "p90", "p99"], steps.map((_, i) => i),
      [steps.map((s) => s.p50_ms), steps.map((s) => s.p90_ms), steps.map((s) => s.p99_ms)], { bars: true, categories: names });
    const body = document.querySelector("#steps-table tbody");
    body.replaceChildren(...steps.map((s, i) => {
      const tr = document.createElement("tr");
      for (const v of [i, s.workflow, s.step, s.attempts, s.failures, s.p50_ms, s.p90_ms, s.p99_ms]) {
        const td = document.createElement("td"); td.textContent = String(v); tr.appendChild(td);
      }
      return tr;
    }));
    document.getElementById("flash").hidden = true;
  } catch (e) {
    flash(`Analytics unavailable: ${e.message}`, "error");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("analytics-controls").addEventListener("change", refresh);
  refresh();
  setInterval(refresh, 30_000);
});
