// streamscore ops page: polls the dashboard's JSON endpoints every 2 s. No dependencies.
"use strict";

const REFRESH_MS = 2000;
const state = { drift: [], selected: null, history: [] };

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

function fmtNum(v, digits) {
  if (v === null || v === undefined || v === "" || Number.isNaN(Number(v))) return "–";
  const n = Number(v);
  if (digits !== undefined) return n.toFixed(digits);
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(2) + "M";
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return Number.isInteger(n) ? String(n) : n.toFixed(3);
}

function fmtTime(ms) {
  if (!ms) return "–";
  const d = new Date(Number(ms));
  return Number.isNaN(d.getTime()) ? String(ms) : d.toLocaleTimeString();
}

function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 1 ? (s * 1000).toFixed(1) + " ms" : s.toFixed(2) + " s";
}

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

// ------------------------------------------------------------------ drift table
function renderDrift(items) {
  state.drift = items;
  const tbody = $("drift-table").tBodies[0];
  tbody.replaceChildren();
  $("drift-empty").hidden = items.length > 0;
  const rank = { drift: 0, warning: 1, ok: 2 };
  items.sort((a, b) => (rank[a.status] ?? 3) - (rank[b.status] ?? 3) || a.key.localeCompare(b.key));
  if (!state.selected || !items.some((i) => i.key === state.selected)) state.selected = items.length ? items[0].key : null;
  for (const it of items) {
    const tr = el("tr", { "data-key": it.key, "data-status": it.status || "" },
      el("td", {}, it.model), el("td", {}, it.version), el("td", {}, it.feature), el("td", {}, it.statistic),
      el("td", {}, fmtNum(it.value, 4)), el("td", {}, fmtNum(it.threshold, 4)),
      el("td", { class: "status-" + (it.status || "unknown") }, it.status),
      el("td", {}, fmtNum(it.n)), el("td", {}, fmtTime(it.updated_at)));
    if (it.key === state.selected) tr.classList.add("selected");
    tr.addEventListener("click", () => { state.selected = it.key; renderDrift(state.drift); });
    tbody.append(tr);
  }
  drawHistogram(items.find((i) => i.key === state.selected));
}

function binLabels(edges, n) {
  if (Array.isArray(edges) && edges.length === n && edges.some((e) => typeof e === "string")) return edges.map(String);
  if (Array.isArray(edges) && edges.length === n + 1) {
    return edges.slice(0, n).map((e) => (typeof e === "number" && Number.isFinite(e) ? String(+e.toPrecision(3)) : String(e)));
  }
  return Array.from({ length: n }, (_, i) => String(i));
}

function setupCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = Math.round(w * canvas.height / canvas.width) || canvas.height;
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}

function drawHistogram(item) {
  const canvas = $("hist");
  const { ctx, w, h } = setupCanvas(canvas);
  if (!item) { canvas.removeAttribute("data-drawn"); $("hist-title").textContent = ""; return; }
  const ref = (item.reference || []).map(Number), cur = (item.current || []).map(Number);
  const n = Math.max(ref.length, cur.length);
  $("hist-title").textContent = `${item.model} / ${item.feature}`;
  $("hist-stats").textContent = ["psi", "js", "ks", "chi2"].filter((k) => item[k] !== undefined && item[k] !== "")
    .map((k) => `${k} ${fmtNum(item[k], 3)}`).join("  ·  ");
  if (n === 0) { canvas.setAttribute("data-drawn", item.key); canvas.setAttribute("data-bins", "0"); return; }
  const norm = (a) => { const s = a.reduce((x, y) => x + y, 0) || 1; return a.map((v) => v / s); };
  const r = norm(ref), c = norm(cur);
  const top = Math.max(...r, ...c, 1e-9) * 1.1;
  const pad = { l: 40, r: 8, t: 10, b: 34 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b, bw = pw / n;
  ctx.strokeStyle = "#263040"; ctx.fillStyle = "#8a96a3"; ctx.font = "11px system-ui, sans-serif";
  for (let g = 0; g <= 4; g++) {
    const y = pad.t + ph - (ph * g) / 4;
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
    ctx.fillText(((top * g) / 4 * 100).toFixed(0) + "%", 4, y + 4);
  }
  const styles = getComputedStyle(document.documentElement);
  const bar = (vals, off, color) => {
    ctx.fillStyle = color;
    vals.forEach((v, i) => {
      const bh = (v / top) * ph;
      ctx.fillRect(pad.l + i * bw + bw * off + 1, pad.t + ph - bh, Math.max(bw * 0.42 - 1, 1), bh);
    });
  };
  bar(r, 0.05, styles.getPropertyValue("--ref").trim() || "#58a6ff");
  bar(c, 0.5, styles.getPropertyValue("--cur").trim() || "#f0883e");
  const labels = binLabels(item.edges, n), every = Math.ceil(n / 10);
  ctx.fillStyle = "#8a96a3";
  labels.forEach((lab, i) => { if (i % every === 0) ctx.fillText(String(lab).slice(0, 8), pad.l + i * bw + 2, h - pad.b + 16); });
  canvas.setAttribute("data-drawn", item.key);
  canvas.setAttribute("data-bins", String(n));
}

// ------------------------------------------------------------------ alerts, shadow
function renderAlerts(items) {
  const ol = $("alerts");
  ol.replaceChildren();
  $("alerts-empty").hidden = items.length > 0;
  for (const a of items) {
    const cleared = a.state === "cleared";
    ol.append(el("li", { "data-id": a.id, "data-feature": a.feature || "", "data-state": a.state || "" },
      el("span", { class: "sev sev-" + (a.severity || "info") + (cleared ? " cleared" : "") }, cleared ? "cleared" : (a.severity || "alert")),
      ` ${a.model || "?"}${a.version ? ":" + a.version : ""} · ${a.feature || ""} · ${a.statistic || ""} ${fmtNum(a.value, 3)} > ${fmtNum(a.threshold, 3)}`,
      el("time", {}, fmtTime(a.raised_at))));
  }
}

function renderShadow(items) {
  const tbody = $("shadow-table").tBodies[0];
  tbody.replaceChildren();
  $("shadow-empty").hidden = items.length > 0;
  for (const s of items) {
    const rate = Number(s.agreement_rate);
    tbody.append(el("tr", { "data-key": s.key },
      el("td", {}, `${s.model}${s.version ? ":" + s.version : ""}`),
      el("td", {}, `${s.shadow_model}${s.shadow_version ? ":" + s.shadow_version : ""}`),
      el("td", { class: rate >= 0.95 ? "status-ok" : rate >= 0.9 ? "status-warning" : "status-drift" },
        Number.isFinite(rate) ? (rate * 100).toFixed(2) + "%" : "–"),
      el("td", {}, fmtNum(s.n_pairs)), el("td", {}, fmtNum(s.diff_p50, 4)),
      el("td", {}, fmtNum(s.diff_p90, 4)), el("td", {}, fmtNum(s.diff_p99, 4))));
  }
}

// ------------------------------------------------------------------ metrics
function renderMetrics(m) {
  $("tput-in").textContent = fmtNum(m.events_in_per_s === null ? null : Math.round(m.events_in_per_s));
  $("tput-out").textContent = fmtNum(m.events_out_per_s === null ? null : Math.round(m.events_out_per_s));
  $("lag-total").textContent = fmtNum(m.lag_total);
  $("p99").textContent = fmtSeconds(m.e2e_p99_s);
  $("dead").textContent = fmtNum(m.dead_letters_total);
  const up = (m.targets || []).filter((t) => t.up).length;
  $("targets").textContent = `${up}/${(m.targets || []).length}`;
  const tbody = $("lag-table").tBodies[0];
  tbody.replaceChildren();
  for (const [k, v] of Object.entries(m.lag || {})) tbody.append(el("tr", {}, el("td", {}, k), el("td", {}, fmtNum(v))));
  drawThroughput(m.history || []);
}

function drawThroughput(hist) {
  const canvas = $("tput-chart");
  const { ctx, w, h } = setupCanvas(canvas);
  const pad = { l: 48, r: 8, t: 10, b: 18 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const top = Math.max(1, ...hist.map((p) => Math.max(p.in_per_s, p.out_per_s))) * 1.1;
  ctx.strokeStyle = "#263040"; ctx.fillStyle = "#8a96a3"; ctx.font = "11px system-ui, sans-serif";
  for (let g = 0; g <= 4; g++) {
    const y = pad.t + ph - (ph * g) / 4;
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
    ctx.fillText(fmtNum(Math.round((top * g) / 4)), 4, y + 4);
  }
  const line = (key, color) => {
    if (hist.length < 2) return;
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    hist.forEach((p, i) => {
      const x = pad.l + (pw * i) / (hist.length - 1), y = pad.t + ph - (p[key] / top) * ph;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke(); ctx.lineWidth = 1;
  };
  line("in_per_s", "#58a6ff");
  line("out_per_s", "#3fb950");
  canvas.setAttribute("data-points", String(hist.length));
}

const QUALITY_COLORS = ["#58a6ff", "#f0883e", "#3fb950", "#d2a8ff", "#ff7b72", "#e3b341"];

function drawQuality(items) {
  const canvas = $("quality-chart");
  $("quality-empty").hidden = items.length > 0;
  const { ctx, w, h } = setupCanvas(canvas);
  const pad = { l: 48, r: 8, t: 10, b: 20 };
  const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
  const pts = items.flatMap((it) => it.points.filter((p) => p.auc != null));
  const legend = $("quality-legend");
  legend.replaceChildren();
  canvas.setAttribute("data-series", String(items.length));
  if (!pts.length) return;
  const t0 = Math.min(...pts.map((p) => p.window_end)), t1 = Math.max(...pts.map((p) => p.window_end));
  const lo = Math.max(0, Math.floor(Math.min(...pts.map((p) => p.auc)) * 20) / 20), hi = 1;
  const x = (t) => pad.l + (t1 > t0 ? (pw * (t - t0)) / (t1 - t0) : pw / 2);
  const y = (v) => pad.t + ph - (ph * (v - lo)) / Math.max(hi - lo, 1e-9);
  ctx.strokeStyle = "#263040"; ctx.fillStyle = "#8a96a3"; ctx.font = "11px system-ui, sans-serif";
  for (let g = 0; g <= 4; g++) {
    const v = lo + ((hi - lo) * g) / 4;
    ctx.beginPath(); ctx.moveTo(pad.l, y(v)); ctx.lineTo(w - pad.r, y(v)); ctx.stroke();
    ctx.fillText(v.toFixed(2), 4, y(v) + 4);
  }
  ctx.fillText(fmtTime(t0), pad.l, h - 4);
  ctx.fillText(fmtTime(t1), w - pad.r - 60, h - 4);
  items.forEach((it, k) => {
    const color = QUALITY_COLORS[k % QUALITY_COLORS.length];
    const series = it.points.filter((p) => p.auc != null);
    ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    series.forEach((p, i) => (i === 0 ? ctx.moveTo : ctx.lineTo).call(ctx, x(p.window_end), y(p.auc)));
    ctx.stroke(); ctx.lineWidth = 1;
    series.forEach((p) => ctx.fillRect(x(p.window_end) - 2, y(p.auc) - 2, 4, 4));
    const last = series[series.length - 1];
    const swatch = el("span", { class: "sw" });
    swatch.style.background = color;
    legend.append(swatch, `${it.arm} ${last ? fmtNum(last.auc, 3) : "–"} `);
  });
}

function renderEstimates(items) {
  const tbody = $("estimate-table").tBodies[0];
  tbody.replaceChildren();
  for (const e of items) {
    tbody.append(el("tr", { "data-arm": e.arm },
      el("td", {}, e.arm), el("td", {}, `${fmtTime(e.window_start)} – ${fmtTime(e.window_end)}`),
      el("td", {}, fmtNum(e.count)), el("td", {}, fmtNum(e.est_accuracy, 3)),
      el("td", {}, fmtNum(e.est_precision, 3)), el("td", {}, fmtNum(e.est_recall, 3)),
      el("td", {}, e.calibrated_on ? `${fmtNum(e.calibrated_on)} labelled` : "no closed window yet")));
  }
}

// ------------------------------------------------------------------ loop
async function refresh() {
  const errors = [];
  const take = async (path, fn) => {
    try { fn(await getJSON(path)); } catch (e) { errors.push(`${path}: ${e.message}`); }
  };
  await Promise.all([
    take("api/drift", (b) => renderDrift(b.items)),
    take("api/alerts?n=50", (b) => renderAlerts(b.items)),
    take("api/shadow", (b) => renderShadow(b.items)),
    take("api/quality", (b) => drawQuality(b.items)),
    take("api/estimate", (b) => renderEstimates(b.items)),
    take("api/metrics", renderMetrics),
  ]);
  const status = $("status");
  status.className = errors.length ? "status error" : "status";
  status.textContent = errors.length ? errors.join(" · ") : `updated ${new Date().toLocaleTimeString()}`;
  document.body.setAttribute("data-refreshed", String(Number(document.body.getAttribute("data-refreshed") || 0) + 1));
}

refresh();
setInterval(refresh, REFRESH_MS);
window.addEventListener("resize", () => { drawHistogram(state.drift.find((i) => i.key === state.selected)); });
