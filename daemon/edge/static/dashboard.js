// dario dashboard: polls /analytics every 5 s and draws it; no libraries, no network beyond the daemon.
"use strict";
(() => {
  const KEY_STORAGE = "dario-api-key";
  const POLL_MS = 5000;
  const PALETTE = ["#3b82f6", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#ec4899", "#84cc16", "#a3a3a3"];
  const WINDOW_WORDS = { "requests": "requests", "tokens": "tokens", "input-tokens": "input tokens", "output-tokens": "output tokens" };
  const WINDOW_SHORT = { "requests": "req", "tokens": "tok", "input-tokens": "in", "output-tokens": "out" };
  const STATUSES = new Set(["ok", "cooling", "exhausted", "needs_login", "disabled", "waiting_for_keyring"]);
  const SERVING = new Set(["ok", "cooling", "exhausted"]);  // the others cannot serve: no headroom bar
  // The analytics group key of requests no account served (refused before routing, e.g. an unknown model).
  const NO_ACCOUNT = "(none)";
  const accountLabel = (a) => (a === null || a === undefined || a === NO_ACCOUNT ? "no account" : String(a));

  const $ = (id) => document.getElementById(id);
  const state = { window: "1h", group: "account", data: null, timer: null, inflight: false, chart: null, needKey: false };

  // ---- storage (private mode / disabled storage must not break the page) ----
  const store = {
    get(k) { try { return window.localStorage.getItem(k) || ""; } catch (_) { return ""; } },
    set(k, v) { try { if (v) window.localStorage.setItem(k, v); else window.localStorage.removeItem(k); } catch (_) { /* ignore */ } },
  };
  state.window = ["1h", "24h", "7d"].includes(store.get("dario-window")) ? store.get("dario-window") : "1h";
  state.group = store.get("dario-group") === "model" ? "model" : "account";

  // ---- formatting ----
  const num = (v) => (typeof v === "number" && isFinite(v) ? v : 0);
  function compact(n) {
    if (typeof n !== "number" || !isFinite(n)) return "—";
    const units = ["", "k", "M", "G", "T"];
    let v = Math.abs(n), i = 0;
    while (v >= 999.5 && i < units.length - 1) { v /= 1000; i++; }
    const sign = n < 0 ? "-" : "";
    if (i === 0) return sign + Math.round(v);
    return sign + (v < 9.95 ? v.toFixed(1).replace(/\.0$/, "") : v.toFixed(0)) + units[i];
  }
  function money(v) {
    if (typeof v !== "number" || !isFinite(v)) return "—";
    return Math.abs(v) >= 1 ? "$" + v.toFixed(2) : "$" + v.toFixed(4);
  }
  // A share of the prompt, "96%"; a non-zero share below 1% is "<1%", not "0%".
  function pct(v) {
    if (typeof v !== "number" || !isFinite(v)) return "—";
    const p = v * 100;
    return p > 0 && p < 0.5 ? "<1%" : Math.round(p) + "%";
  }
  const usedCache = (g) => !!g && num(g.cache_read_tokens) + num(g.cache_write_tokens) > 0;
  function ms(v) {
    if (typeof v !== "number" || !isFinite(v)) return "—";
    return v < 1000 ? Math.round(v) + " ms" : (v / 1000).toFixed(1) + " s";
  }
  function duration(s) {
    if (typeof s !== "number" || !isFinite(s)) return "—";
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    let m = Math.round(s / 60);
    if (m < 60) return m + " min";
    let h = Math.floor(m / 60); m %= 60;
    if (h < 24) return m ? `${h} h ${m} min` : `${h} h`;
    const d = Math.floor(h / 24); h %= 24;
    return h ? `${d} d ${h} h` : `${d} d`;
  }
  const pad2 = (n) => String(n).padStart(2, "0");
  function clock(epoch, withDate) {
    const d = new Date(epoch * 1000);
    const t = `${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
    return withDate ? `${d.getMonth() + 1}/${d.getDate()} ${t}` : t;
  }
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") e.className = v; else if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    return e;
  }

  // ---- fetching ----
  function setStatus(text, bad) { const s = $("status"); s.textContent = text; s.classList.toggle("bad", !!bad); }

  async function load() {
    if (state.inflight) return;
    state.inflight = true;
    try {
      const headers = { "accept": "application/json" };
      const key = store.get(KEY_STORAGE);
      if (key) headers["x-api-key"] = key;
      let res;
      try {
        res = await fetch(`/analytics?window=${encodeURIComponent(state.window)}`, { headers, cache: "no-store" });
      } catch (_) {
        setStatus("dariod is not answering", true);
        return;
      }
      if (res.status === 401) {
        $("auth").hidden = false;
        state.needKey = true;
        if (!state.data) render();  // so the accounts box does not claim there are none
        setStatus(key ? "that API key was refused" : "API key needed", true);
        return;
      }
      if (!res.ok) { setStatus(`dariod answered HTTP ${res.status}`, true); return; }
      let data;
      try { data = await res.json(); } catch (_) { setStatus("unreadable answer from dariod", true); return; }
      $("auth").hidden = true;
      state.needKey = false;
      state.data = data && typeof data === "object" ? data : {};
      render();
      setStatus("updated " + clock(Date.now() / 1000) + ":" + pad2(new Date().getSeconds()), false);
    } finally {
      state.inflight = false;
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    state.timer = setTimeout(async () => { if (!document.hidden) await load(); schedule(); }, POLL_MS);
  }

  // ---- rendering ----
  function render() {
    const d = state.data || {};
    const prob = $("problem");
    prob.hidden = !d.problem;
    prob.textContent = d.problem ? String(d.problem) : "";
    const byAccount = new Map((Array.isArray(d.by_account) ? d.by_account : []).map((g) => [String(g.key), g]));
    if (state.data) renderAccounts(Array.isArray(d.accounts) ? d.accounts : [], byAccount);
    else $("accounts").replaceChildren(el("p", { class: "empty" },
      state.needKey ? "Enter the API key above to see the accounts." : "Waiting for dariod…"));
    renderTotals(d.totals || {});
    renderForecast(d.forecast || {}, Date.now() / 1000);
    drawChart();
    renderByModel(Array.isArray(d.by_model) ? d.by_model : []);
    renderByClient(Array.isArray(d.by_client) ? d.by_client : []);
    renderRecent(Array.isArray(d.recent) ? d.recent : []);
  }

  function renderAccounts(accounts, byAccount) {
    const box = $("accounts");
    if (!accounts.length) {
      box.replaceChildren(el("p", { class: "empty" }, "No accounts yet. Add one with: dario-ctl login"));
      return;
    }
    const now = Date.now() / 1000;
    box.replaceChildren(...accounts.map((a) => {
      const status = STATUSES.has(a.status) ? a.status : "ok";
      const h = SERVING.has(status) && typeof a.headroom === "number" && isFinite(a.headroom)
        ? Math.max(0, Math.min(1, a.headroom)) : null;
      const colour = status === "ok" ? (h !== null && h < 0.2 ? "var(--warn)" : "var(--ok)")
        : status === "cooling" || status === "waiting_for_keyring" ? "var(--warn)"
        : status === "disabled" ? "var(--off)" : "var(--bad)";
      const fill = el("div", { style: h === null ? "" : `width:${(h * 100).toFixed(1)}%;background:${colour}` });
      const windows = Object.entries(a.windows || {})
        .filter(([, w]) => w && w.remaining !== null && w.remaining !== undefined)
        // A limit dario keeps itself (the upstream sends no rate-limit headers) is marked as such.
        .map(([k, w]) => `${WINDOW_SHORT[k] || k} ${compact(w.remaining)}`
          + `${w.limit ? "/" + (w.source === "estimated" ? "~" : "") + compact(w.limit) : ""}`
          + (w.source === "declared" || w.source === "estimated" ? ` (${w.source})` : ""));
      const meta = [];
      meta.push(h === null ? "headroom unknown" : `${Math.round(h * 100)}% headroom`);
      if (a.in_flight) meta.push(`${a.in_flight} in flight`);
      const convs = num(a.conversations);  // prompt-cache conversations this account holds now
      if (convs) meta.push(`${convs} conversation${convs === 1 ? "" : "s"}`);
      if (windows.length) meta.push(windows.join(" · "));
      const note = [];
      if (a.reason) note.push(String(a.reason));
      if (typeof a.until === "number" && a.until > now) note.push("back in " + duration(a.until - now));
      const usage = byAccount.get(String(a.alias ?? ""));
      const cache = usedCache(usage)
        ? el("div", { class: "meta cache" }, `cache ${pct(usage.cache_read_share)} read · saved ${money(usage.cache_saved_usd)}`)
        : null;
      return el("div", { class: "account", "data-alias": String(a.alias ?? "") },
        el("div", { class: "top" },
          el("span", { class: "name", title: String(a.alias ?? "") }, String(a.alias ?? "")),
          el("span", { class: `badge s-${status}` }, status.replace("_", " ")),
          a.preferred ? el("span", { class: "meta" }, "preferred") : null),
        el("div", { class: "bar" + (h === null ? " unknown" : ""), role: "meter", "aria-valuemin": "0",
          "aria-valuemax": "100", "aria-valuenow": h === null ? null : String(Math.round(h * 100)) }, fill),
        el("div", { class: "meta" }, meta.join(" · ")),
        cache,
        note.length ? el("div", { class: "meta" }, note.join(" · ")) : null);
    }));
  }

  function renderTotals(t) {
    const stat = (k, v, cls) => el("div", { class: "stat" }, el("div", { class: "v" + (cls ? " " + cls : "") }, v), el("div", { class: "k" }, k));
    $("totals").replaceChildren(
      stat("requests", compact(num(t.requests))),
      stat("errors", compact(num(t.errors)), num(t.errors) ? "s-exhausted" : ""),
      stat("input", compact(num(t.input_tokens))),
      stat("output", compact(num(t.output_tokens))),
      stat("cache write", compact(num(t.cache_write_tokens))),
      stat("cache read", compact(num(t.cache_read_tokens))),
      // Share of prompt tokens read from the cache, and what that saved against the input price.
      stat("cached", pct(t.cache_read_share)),
      stat("saved", money(t.cache_saved_usd)),
      stat("cost", money(t.cost_usd)));  // null: a model without a price was used, so the total is unknown
  }

  // Same wording as `dario-ctl usage` (dario.ctl.usage_view.forecast_sentences).
  function forecastSentences(forecast, now) {
    const out = [];
    for (const alias of Object.keys(forecast).sort()) {
      const entries = (forecast[alias] || []).filter((e) => e && e.remaining !== null && e.remaining !== undefined);
      if (!entries.length) continue;
      const runningOut = entries.filter((e) => e.runs_out_at !== null && e.runs_out_at !== undefined && e.before_reset)
        .sort((a, b) => a.runs_out_at - b.runs_out_at);
      for (const e of runningOut) {
        const what = WINDOW_WORDS[e.window] || e.window;
        const left = e.runs_out_at - now;
        const head = e.remaining <= 0 ? `${alias}: ${what} are used up`
          : left < 1 ? `${alias}: ${what} run out now` : `${alias}: ${what} run out in ${duration(left)}`;
        const tail = e.reset === null || e.reset === undefined ? "reset time unknown"
          : e.reset - now < 1 ? "reset due now" : `reset in ${duration(e.reset - now)}`;
        out.push({ text: `${head}, ${tail}`, warn: true });
      }
      if (runningOut.length) continue;
      const frac = (e) => (e.limit ? e.remaining / e.limit : Infinity);
      const tightest = entries.reduce((best, e) => (frac(e) < frac(best) ? e : best), entries[0]);
      let line = `${alias}: ${WINDOW_WORDS[tightest.window] || tightest.window} fine at current burn`;
      if (tightest.reset !== null && tightest.reset !== undefined) {
        const left = tightest.reset - now;
        line += left < 1 ? " (resets now)" : ` (resets in ${duration(left)})`;
      }
      out.push({ text: line, warn: false });
    }
    return out;
  }

  function renderForecast(forecast, now) {
    const lines = forecastSentences(forecast, now);
    const ul = $("forecast");
    if (!lines.length) {
      ul.replaceChildren(el("li", { class: "empty" }, "No rate-limit information yet: it arrives with the first request."));
      return;
    }
    ul.replaceChildren(...lines.map((l) => el("li", { class: l.warn ? "warn" : "" }, l.text)));
  }

  function renderByModel(rows) {
    const table = $("bymodel");
    if (!rows.length) { table.replaceChildren(el("tbody", {}, el("tr", {}, el("td", { class: "empty l" }, "No requests in this window.")))); return; }
    // "opt" columns give way on a narrow window, so model, errors and cost stay on screen (dashboard.css).
    const optional = new Set(["cache w", "cache r", "p95", "ttft p50"]);
    const head = el("thead", {}, el("tr", {}, ...["model", "requests", "errors", "input", "output", "cache w", "cache r", "cost", "p50", "p95", "ttft p50"]
      .map((h, i) => el("th", { class: i ? (optional.has(h) ? "opt" : "") : "l" }, h))));
    const body = el("tbody", {}, ...rows.map((r) => el("tr", {},
      el("td", { class: "l model" }, String(r.key ?? "")),
      el("td", {}, compact(num(r.requests))),
      el("td", { class: num(r.errors) ? "err" : "" }, compact(num(r.errors))),
      ...[r.input_tokens, r.output_tokens].map((v) => el("td", {}, compact(num(v)))),
      ...[r.cache_write_tokens, r.cache_read_tokens].map((v) => el("td", { class: "opt" }, compact(num(v)))),
      el("td", {}, money(r.cost_usd)),
      el("td", {}, ms(r.p50_latency_ms)),
      ...[r.p95_latency_ms, r.p50_ttft_ms].map((v) => el("td", { class: "opt" }, ms(v))))));
    table.replaceChildren(head, body);
  }

  function renderByClient(rows) {
    const table = $("byclient");
    if (!rows.length) { table.replaceChildren(el("tbody", {}, el("tr", {}, el("td", { class: "empty l" }, "No requests in this window.")))); return; }
    const optional = new Set(["errors", "input", "output"]);
    const head = el("thead", {}, el("tr", {}, ...["client", "requests", "errors", "input", "output", "cost", "cached", "saved"]
      .map((h, i) => el("th", { class: i ? (optional.has(h) ? "opt" : "") : "l" }, h))));
    const body = el("tbody", {}, ...rows.map((r) => el("tr", { "data-client": String(r.key ?? "") },
      el("td", { class: "l model" }, String(r.key ?? "")),
      el("td", {}, compact(num(r.requests))),
      el("td", { class: "opt" + (num(r.errors) ? " err" : "") }, compact(num(r.errors))),
      ...[r.input_tokens, r.output_tokens].map((v) => el("td", { class: "opt" }, compact(num(v)))),
      el("td", {}, money(r.cost_usd)),
      el("td", {}, pct(r.cache_read_share)),
      el("td", {}, money(r.cache_saved_usd)))));  // null: a model without a price, so unknown
    table.replaceChildren(head, body);
  }

  function renderRecent(rows) {
    const table = $("recent");
    if (!rows.length) { table.replaceChildren(el("tbody", {}, el("tr", {}, el("td", { class: "empty l" }, "No requests yet.")))); return; }
    const cols = ["time", "client", "account", "model", "status", "in", "out", "cache", "latency", "ttft", "cost"];
    const optional = new Set(["client", "cache", "latency", "ttft"]);
    const head = el("thead", {}, el("tr", {}, ...cols.map((h, i) =>
      el("th", { class: (i < 4 ? "l" : "") + (optional.has(h) ? " opt" : "") }, h))));
    const body = el("tbody", {}, ...rows.map((r) => {
      const bad = num(r.status) >= 400 || r.error_type;
      return el("tr", {},
        el("td", { class: "l" }, typeof r.ts === "number" ? clock(r.ts, state.window === "7d") + ":" + pad2(new Date(r.ts * 1000).getSeconds()) : "—"),
        el("td", { class: "l opt" }, String(r.client ?? "—")),
        el("td", { class: r.account === null || r.account === undefined ? "l meta" : "l" }, accountLabel(r.account)),
        el("td", { class: "l model" }, String(r.model ?? "—")),
        el("td", { class: bad ? "err" : "" }, r.error_type ? `${r.status} ${r.error_type}` : String(r.status ?? "")),
        el("td", {}, compact(num(r.input_tokens))),
        el("td", {}, compact(num(r.output_tokens))),
        el("td", { class: "opt" }, compact(num(r.cache_write_5m) + num(r.cache_write_1h) + num(r.cache_read))),
        el("td", { class: "opt" }, ms(r.latency_ms)),
        el("td", { class: "opt" }, ms(r.ttft_ms)),
        el("td", {}, money(r.cost_usd)));
    }));
    table.replaceChildren(head, body);
  }

  // ---- chart (canvas, drawn by hand) ----
  function chartModel() {
    const d = state.data || {};
    const series = d.series || {};
    const bucket = num(series.bucket_s) || 60;
    const points = Array.isArray(series.points) ? series.points : [];
    const until = typeof d.until === "number" ? d.until : Date.now() / 1000;
    const since = typeof d.since === "number" ? d.since : until - 3600;
    const start = Math.floor(since / bucket) * bucket;
    const n = Math.max(1, Math.floor((until - start) / bucket) + 1);
    const groups = new Map();
    for (const p of points) {
      const i = Math.floor((num(p.t) - start) / bucket);
      if (i < 0 || i >= n) continue;
      // Requests no account served used no tokens; a band for them would only draw a line over the stack.
      if (p.account === NO_ACCOUNT || p.account === null || p.account === undefined) continue;
      if (!(num(p.input_tokens) + num(p.output_tokens) > 0)) continue;
      const key = String((state.group === "model" ? p.model : p.account) ?? "—");
      if (!groups.has(key)) groups.set(key, new Array(n).fill(0));
      groups.get(key)[i] += num(p.input_tokens) + num(p.output_tokens);
    }
    // Biggest first, so colours stay stable-ish and the legend reads in order of weight.
    const keys = [...groups.keys()].sort((a, b) => groups.get(b).reduce((x, y) => x + y, 0) - groups.get(a).reduce((x, y) => x + y, 0));
    return { start, bucket, n, keys, groups };
  }

  function drawChart() {
    const canvas = $("chart");
    const ctx = canvas.getContext && canvas.getContext("2d");
    if (!ctx) return;
    const css = getComputedStyle(document.documentElement);
    const colText = css.getPropertyValue("--muted").trim() || "#888";
    const colLine = css.getPropertyValue("--line").trim() || "#ddd";
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || 600, h = canvas.clientHeight || 240;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";

    const m = chartModel();
    const pad = { l: 46, r: 10, t: 10, b: 22 };
    const pw = Math.max(10, w - pad.l - pad.r), ph = Math.max(10, h - pad.t - pad.b);
    // Stacked: the top line is the total, each band one account/model.
    const totals = new Array(m.n).fill(0);
    for (const k of m.keys) m.groups.get(k).forEach((v, i) => { totals[i] += v; });
    const max = Math.max(0, ...totals);
    const niceMax = max > 0 ? niceCeil(max) : 1;
    const x = (i) => pad.l + (m.n === 1 ? pw / 2 : (i / (m.n - 1)) * pw);
    const y = (v) => pad.t + ph - (v / niceMax) * ph;
    state.chart = { m, x, pad, pw, ph, w, h, totals };

    // grid and y labels
    ctx.strokeStyle = colLine; ctx.fillStyle = colText; ctx.lineWidth = 1; ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (let g = 0; g <= 4; g++) {
      const v = (niceMax * g) / 4, yy = Math.round(y(v)) + 0.5;
      ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(pad.l + pw, yy); ctx.stroke();
      if (max > 0) ctx.fillText(compact(v), pad.l - 6, yy);
    }
    // x labels
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    const withDate = m.bucket >= 3600;
    const ticks = Math.min(6, m.n);
    for (let t = 0; t < ticks; t++) {
      const i = ticks === 1 ? 0 : Math.round((t / (ticks - 1)) * (m.n - 1));
      ctx.fillText(clock(m.start + i * m.bucket, withDate), Math.min(Math.max(x(i), pad.l + 16), pad.l + pw - 16), pad.t + ph + 6);
    }

    const legend = $("legend");
    if (max <= 0) {
      ctx.textAlign = "center"; ctx.textBaseline = "middle"; ctx.fillStyle = colText; ctx.font = "13px system-ui, sans-serif";
      const msg = "No tokens in this window", tw = ctx.measureText(msg).width;
      ctx.clearRect(pad.l + pw / 2 - tw / 2 - 8, pad.t + ph / 2 - 10, tw + 16, 20);  // not struck through by the grid line
      ctx.fillText(msg, pad.l + pw / 2, pad.t + ph / 2);
      legend.replaceChildren();
      return;
    }
    const base = new Array(m.n).fill(0);
    m.keys.forEach((k, idx) => {
      const vals = m.groups.get(k), colour = PALETTE[idx % PALETTE.length];
      const top = vals.map((v, i) => base[i] + v);
      ctx.beginPath();
      top.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
      for (let i = m.n - 1; i >= 0; i--) ctx.lineTo(x(i), y(base[i]));
      ctx.closePath();
      ctx.globalAlpha = 0.22; ctx.fillStyle = colour; ctx.fill(); ctx.globalAlpha = 1;
      ctx.beginPath();
      top.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
      ctx.strokeStyle = colour; ctx.lineWidth = 1.6; ctx.lineJoin = "round"; ctx.stroke();
      top.forEach((v, i) => { base[i] = v; });
    });
    legend.replaceChildren(...m.keys.map((k, idx) => {
      const sum = m.groups.get(k).reduce((a, b) => a + b, 0);
      return el("span", {}, el("i", { style: `background:${PALETTE[idx % PALETTE.length]}` }), `${k} ${compact(sum)}`);
    }));
  }

  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const f of [1, 2, 2.5, 5, 10]) if (v <= f * p) return f * p;
    return 10 * p;
  }

  function onHover(ev) {
    const tip = $("tip"), c = state.chart;
    if (!c || !c.totals.some((v) => v > 0)) { tip.style.display = "none"; return; }
    const rect = $("chart").getBoundingClientRect();
    const px = ev.clientX - rect.left;
    if (px < c.pad.l - 4 || px > c.pad.l + c.pw + 4) { tip.style.display = "none"; return; }
    const i = c.m.n === 1 ? 0 : Math.max(0, Math.min(c.m.n - 1, Math.round(((px - c.pad.l) / c.pw) * (c.m.n - 1))));
    const rows = c.m.keys.map((k, idx) => [k, c.m.groups.get(k)[i], PALETTE[idx % PALETTE.length]]).filter((r) => r[1] > 0);
    tip.replaceChildren(el("div", { class: "meta" }, clock(c.m.start + i * c.m.bucket, c.m.bucket >= 3600) + " · " + compact(c.totals[i]) + " tokens"),
      ...rows.map(([k, v, col]) => el("div", {}, el("span", { style: `color:${col}` }, "■ "), `${k}: ${compact(v)}`)));
    tip.style.display = "block";
    const left = Math.min(c.x(i) + 12, c.w - tip.offsetWidth - 4);
    tip.style.left = Math.max(0, left) + "px";
    tip.style.top = "8px";
  }

  // ---- controls ----
  function syncButtons() {
    for (const b of document.querySelectorAll("#windows button")) b.setAttribute("aria-pressed", String(b.dataset.window === state.window));
    for (const b of document.querySelectorAll("#groupby button")) b.setAttribute("aria-pressed", String(b.dataset.group === state.group));
  }
  $("windows").addEventListener("click", (ev) => {
    const b = ev.target.closest("button"); if (!b) return;
    state.window = b.dataset.window; store.set("dario-window", state.window); syncButtons(); load(); schedule();
  });
  $("groupby").addEventListener("click", (ev) => {
    const b = ev.target.closest("button"); if (!b) return;
    state.group = b.dataset.group; store.set("dario-group", state.group); syncButtons(); drawChart();
  });
  $("keyform").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("keyinput");
    store.set(KEY_STORAGE, input.value.trim());
    input.value = "";
    load();
  });
  $("chart").addEventListener("mousemove", onHover);
  $("chart").addEventListener("mouseleave", () => { $("tip").style.display = "none"; });
  window.addEventListener("resize", () => drawChart());
  document.addEventListener("visibilitychange", () => { if (!document.hidden) load(); });

  syncButtons();
  render();
  load();
  schedule();
})();
