// The live dashboard: polls /dashboard/data and redraws the cards, tables and Vega-Lite
// charts (window.vegaEmbed, from /dashboard/assets/vega.js). No build step, no CDN.

const fmt = (v, digits = 3) =>
  v === null || v === undefined || Number.isNaN(v) ? "–" : Number(v).toPrecision(digits);
const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(2) + " %");
const ms = (v) => (v === null || v === undefined ? "–" : v.toFixed(1));
const text = (id, value) => { document.getElementById(id).textContent = value; };
const duration = (s) => {
  if (s === null || s === undefined) return "–";
  for (const [unit, size] of [["d", 86400], ["h", 3600], ["min", 60]]) {
    if (s >= size) return (s / size).toFixed(1) + " " + unit;
  }
  return s.toFixed(0) + " s";
};

function table(id, columns, rows, empty) {
  const el = document.getElementById(id);
  el.replaceChildren();
  if (!rows.length) {
    const row = el.insertRow();
    const cell = row.insertCell();
    cell.className = "none";
    cell.textContent = empty;
    return;
  }
  const head = el.createTHead().insertRow();
  for (const c of columns) {
    const th = document.createElement("th");
    th.textContent = c;
    head.appendChild(th);
  }
  const body = el.createTBody();
  for (const r of rows) {
    const row = body.insertRow();
    for (const v of r) {
      const cell = row.insertCell();
      if (v && typeof v === "object") { cell.textContent = v.text; cell.className = v.cls || ""; }
      else cell.textContent = v;
    }
  }
}

const time = { field: "time", type: "temporal", title: null, axis: { format: "%H:%M:%S" } };
const base = { width: "container", height: 160, data: { name: "rows" }, config: { view: { stroke: null } } };
const specs = {
  "chart-rate": { ...base, mark: { type: "area", line: true, opacity: 0.3 },
    encoding: { x: time, y: { field: "rps", type: "quantitative", title: "req/s" } } },
  // The budget's rule is added with its value at the first draw (latencySpec).
  "chart-latency": { ...base, layer: [
    { mark: { type: "line", point: true },
      encoding: { x: time, y: { field: "ms", type: "quantitative", title: "ms" },
                  color: { field: "percentile", type: "nominal", title: null } } },
  ] },
  "chart-rates": { ...base, mark: { type: "line", point: true },
    encoding: { x: time, y: { field: "value", type: "quantitative", title: "share", axis: { format: "%" } },
                color: { field: "rate", type: "nominal", title: null } } },
  "chart-kpis": { data: { name: "rows" }, config: { view: { stroke: null } },
    facet: { field: "kpi", type: "nominal", title: null }, columns: 4,
    spec: { width: 200, height: { step: 18 }, mark: "bar",
      encoding: { y: { field: "arm", type: "nominal", title: null },
                  x: { field: "value", type: "quantitative", title: null },
                  color: { field: "version", type: "nominal", legend: null },
                  tooltip: [{ field: "arm" }, { field: "kpi" }, { field: "value", format: ".4g" }] } },
    resolve: { scale: { x: "independent" } } },
};
const views = {};

function withBudget(budget) {
  const spec = specs["chart-latency"];
  if (spec.layer.length === 1) {
    spec.layer.push({ data: { values: [{ budget }] },
      mark: { type: "rule", color: "#c2410c", strokeDash: [4, 4] },
      encoding: { y: { field: "budget", type: "quantitative" } } });
  }
}

// A chart is embedded with its first rows (an empty one would have no extent to draw), then
// only its data changes.
async function chart(id, rows, waiting) {
  const el = document.getElementById(id);
  if (!views[id]) {
    if (!rows.length) {
      el.textContent = waiting;
      el.className = "chart none";
      return;
    }
    el.textContent = "";
    el.className = "chart";
    const spec = { ...specs[id], data: { name: "rows", values: rows } };
    const result = await window.vegaEmbed(el, spec, { renderer: "svg", actions: false });
    views[id] = result.view;
  } else {
    await views[id].data("rows", rows).runAsync();
  }
  el.dataset.rendered = "1";
}

function render(d) {
  text("serving-version", d.serving_version || "none loaded");
  text("budget", d.budget_ms + " ms");
  text("refresh", d.refresh_s + " s");
  text("updated", new Date(d.at * 1000).toLocaleTimeString());
  withBudget(d.budget_ms);
  const newest = d.series.length ? d.series[d.series.length - 1] : null;
  text("rate", newest ? fmt(newest.rps) : "–");
  // Latency and rates: of the newest interval that had feed requests.
  const last = [...d.series].reverse().find((p) => p.rps > 0) || null;
  const lat = last ? [last.p50_ms, last.p95_ms, last.p99_ms].map(ms).join(" / ") + " ms" : "–";
  text("latency", lat);
  document.getElementById("latency").className =
    "value " + (last && last.p99_ms !== null ? (last.p99_ms > d.budget_ms ? "bad" : "ok") : "");
  text("errors", last ? pct(last.error_rate) : "–");
  text("degraded", last ? pct(last.degraded_rate) : "–");
  text("total-requests", d.totals.requests.toLocaleString());

  const points = d.series.map((p) => ({ ...p, time: p.t * 1000 }));
  const latency = points.flatMap((p) => ["p50", "p95", "p99"]
    .filter((q) => p[q + "_ms"] !== null)
    .map((q) => ({ time: p.time, percentile: q, ms: p[q + "_ms"] })));
  const rates = points.flatMap((p) => [["errors", p.error_rate], ["degraded", p.degraded_rate],
    ["over budget", p.over_budget_rate]]
    .filter(([, v]) => v !== null).map(([rate, value]) => ({ time: p.time, rate, value })));
  const kpis = d.kpis.map((k) => ({ ...k, arm: k.version + " / " + k.variant }));

  table("kpis", ["version", "variant", "kpi", "value"],
    d.kpis.map((k) => [k.version, k.variant, k.kpi, fmt(k.value, 4)]),
    "no KPIs yet: they are computed from the feed and event logs every kpi_refresh_s");
  table("versions", ["version", "state", "published (UTC)", "dataset", "models"],
    d.versions.map((v) => [v.version, v.current ? { text: "current", cls: "ok" } : (v.retired_at ? "retired" : "kept"),
      (v.published_at || "").slice(0, 19).replace("T", " "), v.dataset_version || "–",
      [v.retrieval_model, v.ranker].filter(Boolean).join(" + ")]),
    "store " + d.store);
  table("experiments", ["experiment", "variant", "feeds"],
    d.experiments.map((e) => [e.experiment, e.variant, e.feeds.toLocaleString()]),
    "no feed served under an experiment");
  table("drift", ["version", "variant", "feature", "PSI", "drifted"],
    d.drift.map((r) => [r.version, r.variant, r.feature, fmt(r.psi),
      r.drifted ? { text: "yes", cls: "bad" } : { text: "no", cls: "ok" }]),
    "no drift measured yet (the profile fills as feeds are served)");
  table("freshness", ["what", "age"],
    Object.entries(d.freshness).map(([name, age]) => [name.replaceAll("_", " "), duration(age)]),
    "nothing to age yet");
  const live = "waiting for the first sampled interval";
  return Promise.all([
    chart("chart-rate", points, live),
    chart("chart-latency", latency, "waiting for feed requests"),
    chart("chart-rates", rates, "waiting for feed requests"),
    chart("chart-kpis", kpis, ""),
  ]);
}

let polls = 0;
async function poll() {
  let refresh = 5;
  try {
    const response = await fetch("/dashboard/data", { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const d = await response.json();
    refresh = d.refresh_s;
    await render(d);
    polls += 1;
    document.body.dataset.polls = String(polls);
    text("status", "");
  } catch (err) {
    text("status", "update failed: " + err.message);
    document.getElementById("status").className = "status bad";
  }
  setTimeout(poll, refresh * 1000);
}

poll();
