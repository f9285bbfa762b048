// tapewatch chart page: one asset and one range at a time, from /api/history, then live
// updates from /api/live (Server-Sent Events). A report (`tapewatch report`) inlines the same
// data as window.TAPEWATCH_REPORT and neither fetches nor listens.
//
// window.tapewatch says what the page shows, for people poking at it and for the browser
// test: `ready`, the regime spans drawn on the price chart (`bands`), the points each panel
// holds (`panels`), and how many live updates arrived (`updates`).
"use strict";
(() => {
  const T = (window.tapewatch = {
    ready: false, asset: null, range: null, bands: [], panels: {}, updates: 0, error: null,
  });
  const report = window.TAPEWATCH_REPORT || null;
  const PALETTE = ["#d62728", "#9467bd", "#ff7f0e", "#1f77b4", "#2ca02c", "#8c564b", "#e377c2"];
  const LINES = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];
  const MINUTE = 60000;
  let meta = null;
  let data = null;
  let charts = [];

  const $ = (sel) => document.querySelector(sel);
  const color = (regime) =>
    regime === "neutral" ? null : PALETTE[Math.max(0, meta.regimes.indexOf(regime)) % PALETTE.length];
  const utc = (ms) => new Date(ms).toISOString().replace("T", " ").slice(0, 16) + " UTC";

  function si(v) {
    if (v == null) return "";
    const a = Math.abs(v);
    if (a >= 1e9) return +(v / 1e9).toPrecision(4) + "B";
    if (a >= 1e6) return +(v / 1e6).toPrecision(4) + "M";
    if (a >= 1e4) return +(v / 1e3).toPrecision(4) + "k";
    if (a > 0 && a < 0.01) return v.toExponential(1);
    return +v.toPrecision(3) + "";
  }

  function age(ms) {
    const m = Math.round(ms / MINUTE);
    if (m < 60) return m + " min";
    if (m < 48 * 60) return (m / 60).toFixed(1) + " h";
    return (m / 1440).toFixed(1) + " d";
  }

  async function getJSON(url) {
    const res = await fetch(url);
    const body = await res.json();
    if (!res.ok) throw new Error(body.error || res.statusText);
    return body;
  }

  // -- navigation -------------------------------------------------------------------------
  function buttons(sel, items, current, pick) {
    const nav = $(sel);
    nav.replaceChildren();
    for (const item of items) {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = item;
      b.setAttribute("aria-pressed", String(item === current));
      b.onclick = () => pick(item);
      nav.append(b);
    }
  }

  function nav() {
    buttons("#assets", meta.assets, T.asset, (a) => { T.asset = a; load(); });
    buttons("#ranges", meta.ranges, T.range, (r) => { T.range = r; load(); });
  }

  // -- regimes ----------------------------------------------------------------------------
  function spans() {
    const out = [];
    const changes = data.changes || [];
    const end = data.end + MINUTE;
    changes.forEach((c, i) => {
      const from = Math.max(c.since, data.start);
      const to = i + 1 < changes.length ? changes[i + 1].since : end;
      if (to > from) out.push({ regime: c.regime, from, to, change: c });
    });
    return out;
  }

  function current() {
    const box = $("#regime");
    const changes = data.changes || [];
    const c = changes[changes.length - 1];
    box.replaceChildren();
    if (!c) {
      box.textContent = "No regime recorded in this range yet.";
      return;
    }
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = c.regime;
    name.style.background = (color(c.regime) || "#999") + "33";
    const since = document.createElement("span");
    since.textContent = ` since ${utc(c.since)} (${age(data.end + MINUTE - c.since)})` +
      (c.previous ? `, was ${c.previous}` : "");
    const desc = document.createElement("div");
    desc.textContent = c.description || "";
    const reasons = document.createElement("ul");
    for (const r of c.reasons || []) {
      const li = document.createElement("li");
      li.textContent = r.op === "missing"
        ? `${r.signal}: missing`
        : `${r.signal} = ${si(r.value)} (${r.op} ${si(r.threshold)})`;
      reasons.append(li);
    }
    box.append(name, since, desc, reasons);
  }

  function legend() {
    const box = $("#legend");
    box.replaceChildren();
    for (const regime of meta.regimes) {
      const c = color(regime);
      if (!c) continue;
      const s = document.createElement("span");
      const i = document.createElement("i");
      i.style.background = c + "55";
      s.append(i, regime);
      box.append(s);
    }
  }

  // Regime spans behind a chart; on the price chart they are also recorded in T.bands.
  function shade(record) {
    return {
      hooks: {
        drawClear: [(u) => {
          const { left, top, width, height } = u.bbox;
          if (record) T.bands = [];
          for (const s of spans()) {
            const x0 = Math.max(u.valToPos(s.from / 1000, "x", true), left);
            const x1 = Math.min(u.valToPos(s.to / 1000, "x", true), left + width);
            if (!(x1 > x0)) continue;
            if (record) T.bands.push({ regime: s.regime, left: x0, right: x1 });
            const c = color(s.regime);
            if (!c) continue;
            u.ctx.save();
            u.ctx.fillStyle = c + "33";
            u.ctx.fillRect(x0, top, x1 - x0, height);
            u.ctx.restore();
          }
        }],
      },
    };
  }

  // The ±2 band of a z axis.
  function zBand() {
    return {
      hooks: {
        draw: [(u) => {
          const { left, width } = u.bbox;
          u.ctx.save();
          u.ctx.strokeStyle = "#888";
          u.ctx.setLineDash([4, 4]);
          for (const z of [-2, 2]) {
            const y = u.valToPos(z, "z", true);
            u.ctx.beginPath();
            u.ctx.moveTo(left, y);
            u.ctx.lineTo(left + width, y);
            u.ctx.stroke();
          }
          u.ctx.restore();
        }],
      },
    };
  }

  // -- charts -----------------------------------------------------------------------------
  // The price chart spans the page; the panels sit two abreast on a wide screen.
  const width = (panel) => {
    const full = $("main").clientWidth - 20;
    return Math.max(300, panel && full > 1100 ? full / 2 - 30 : full - (panel ? 20 : 0));
  };

  function column(name) {
    return data.values[name] || data.t.map(() => null);
  }

  function chart(el, title, series, z, height, record) {
    const x = data.t.map((t) => t / 1000);
    const opts = {
      width: width(!record),
      height,
      // Times in UTC, as every time tapewatch publishes.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      plugins: [shade(record), ...(z ? [zBand()] : [])],
      // The whole range, to the minute after its end: a regime entered after the newest closed
      // minute still shows, as a sliver at the right edge.
      scales: { x: { time: true, range: () => [data.start / 1000, (data.end + MINUTE) / 1000] }, ...(z ? { z: { range: (u, lo, hi) => [Math.min(lo ?? -3, -3), Math.max(hi ?? 3, 3)] } } : {}) },
      series: [{}],
      axes: [{}, { values: (u, v) => v.map(si), size: 60 }],
      legend: { live: true },
    };
    const columns = [x];
    series.forEach((name, i) => {
      opts.series.push({ label: name, stroke: LINES[i % LINES.length], width: 1.5, spanGaps: false });
      columns.push(column(name));
    });
    if (z) {
      opts.series.push({ label: z, stroke: "#444", dash: [2, 3], scale: "z", width: 1 });
      opts.axes.push({ scale: "z", side: 1, grid: { show: false }, label: "z", size: 40 });
      columns.push(column(z));
    }
    const u = new uPlot(opts, columns, el);
    u.tapewatch = { title, names: [...series, ...(z ? [z] : [])] };
    return u;
  }

  function countPanels() {
    T.panels = {};
    for (const u of charts.slice(1)) {
      let n = 0;
      for (const col of u.data.slice(1)) n += col.filter((v) => v != null).length;
      T.panels[u.tapewatch.title] = n;
    }
  }

  function draw() {
    for (const u of charts) u.destroy();
    charts = [];
    $("#panels").replaceChildren();
    current();
    legend();
    if (!data.t.length) {
      $("#price").replaceChildren(Object.assign(document.createElement("div"), {
        className: "empty", textContent: "No signal history for this asset yet.",
      }));
      T.bands = [];
      T.panels = {};
      return;
    }
    $("#price").replaceChildren();
    const price = chart($("#price"), "price", ["price"], null, 260, true);
    price.over.addEventListener("click", () => {
      const t = price.posToVal(price.cursor.left, "x") * 1000;
      const hit = spans().find((s) => s.from <= t && t < s.to);
      if (hit) showEvent(hit.change);
    });
    charts.push(price);
    for (const p of meta.panels) {
      const box = document.createElement("div");
      box.className = "panel";
      box.dataset.panel = p.key;
      const h = document.createElement("h3");
      h.textContent = p.title;
      box.append(h);
      $("#panels").append(box);
      charts.push(chart(box, p.key, p.series, p.z, 150, false));
    }
    countPanels();
  }

  function showEvent(change) {
    $("#event pre").textContent = JSON.stringify(change, null, 2);
    $("#event").hidden = false;
    T.shown = change;
  }

  async function load() {
    T.ready = false;
    nav();
    try {
      data = report
        ? report.data[T.asset]
        : await getJSON(`/api/history?asset=${encodeURIComponent(T.asset)}&range=${T.range}`);
      T.error = null;
    } catch (err) {
      T.error = String(err.message || err);
      $("#status").textContent = T.error;
      return;
    }
    draw();
    if (!report) history.replaceState(null, "", `?asset=${T.asset}&range=${T.range}`);
    T.readyAt = performance.now(); // ms since the navigation began
    T.ready = true;
  }

  // -- live -------------------------------------------------------------------------------
  function listen() {
    const source = new EventSource("/api/live");
    source.onopen = () => { $("#status").textContent = "live"; };
    source.onerror = () => { $("#status").textContent = "reconnecting…"; };
    source.addEventListener("sample", (ev) => {
      const s = JSON.parse(ev.data);
      if (!T.ready || s.asset !== T.asset || !data.t.length || s.minute <= data.t[data.t.length - 1]) return;
      data.t.push(s.minute);
      data.end = Math.max(data.end, s.minute);
      for (const name of Object.keys(data.values)) data.values[name].push(s.values[name] ?? null);
      for (const u of charts) {
        u.setData([data.t.map((t) => t / 1000), ...u.tapewatch.names.map(column)]);
      }
      countPanels();
      current();
      T.updates += 1;
    });
    source.addEventListener("regime", (ev) => {
      const c = JSON.parse(ev.data);
      if (!T.ready || c.asset !== T.asset) return;
      data.changes.push(c);
      data.end = Math.max(data.end, c.since);
      current();
      for (const u of charts) u.setData(u.data); // the range grows to the change: rescale
      T.updates += 1;
    });
  }

  async function main() {
    $("#close-event").onclick = () => { $("#event").hidden = true; };
    try {
      meta = report ? report.meta : await getJSON("/api/assets");
    } catch (err) {
      T.error = String(err.message || err);
      $("#status").textContent = T.error;
      return;
    }
    if (!meta.history) {
      $("#status").textContent = "signal history is off (state.signal_history)";
      return;
    }
    // ?asset=ETH&range=7d opens that view: a link to a view is a URL.
    const query = new URLSearchParams(location.search);
    T.asset = meta.assets.includes(query.get("asset")) ? query.get("asset") : meta.assets[0];
    T.range = meta.ranges.includes(query.get("range")) ? query.get("range") : meta.default_range;
    if (report) $("#status").textContent = "report: " + meta.report;
    await load();
    if (!report) listen();
    window.addEventListener("resize", () => {
      charts.forEach((u, i) => u.setSize({ width: width(i > 0), height: u.height }));
    });
  }

  document.addEventListener("DOMContentLoaded", main);
})();
