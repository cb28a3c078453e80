// slo-hub console. Reads the hub's authenticated API only: the feed
// (/v1/console/stream, NDJSON), the audit trail, a user's connections, and
// /v1/logout for the buttons. The admin key lives in sessionStorage.
"use strict";

const $ = (s) => document.querySelector(s);
const KEY = "slo-hub-admin-key";
const WINDOW_MS = 15 * 60 * 1000;
const state = { samples: [], audit: [], pusher: [], feed: null };
window.sloConsole = state; // for tests and the curious

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function api(path, opts = {}) {
  const headers = Object.assign({}, opts.headers, { authorization: "Bearer " + sessionStorage.getItem(KEY) });
  return fetch(path, Object.assign({}, opts, { headers }));
}

function setState(s, text) {
  $("#state").dataset.state = s;
  $("#state").textContent = text;
}

// ---- sign in / out ----------------------------------------------------------

function showSignIn(message) {
  $("#signin").hidden = false;
  $("#main").hidden = true;
  $("#signout").hidden = true;
  $("#signin-error").textContent = message || "";
  setState("signed-out", "signed out");
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  if (state.feed) state.feed.abort();
  showSignIn(message);
}

$("#signin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("#key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  $("#key").value = "";
  start();
});
$("#signout").addEventListener("click", () => signOut());

// ---- the feed -------------------------------------------------------------

async function start() {
  if (!sessionStorage.getItem(KEY)) return showSignIn();
  const ctl = new AbortController();
  state.feed = ctl;
  let r;
  try {
    r = await api("/v1/console/stream", { signal: ctl.signal });
  } catch (e) {
    return retry();
  }
  if (r.status === 401 || r.status === 403) {
    const body = await r.json().catch(() => ({}));
    return signOut(r.status === 403
      ? "This key lacks the scope admin: " + (body.message || "")
      : "The hub did not accept this key: " + (body.message || ""));
  }
  if (!r.ok) return retry();
  $("#signin").hidden = true;
  $("#main").hidden = false;
  $("#signout").hidden = false;
  setState("live", "live");
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line) handle(JSON.parse(line));
      }
    }
  } catch (e) {
    if (ctl.signal.aborted) return;
  }
  retry();
}

function retry() {
  if (!sessionStorage.getItem(KEY)) return;
  setState("reconnecting", "reconnecting…");
  setTimeout(start, 2000);
}

function handle(m) {
  if (m.type === "hello") {
    state.samples = m.samples;
    state.audit = [];
    $("#audit tbody").replaceChildren();
    for (const e of m.audit.slice().reverse()) addAudit(e, false);
    const sel = $("#pusher-app");
    sel.replaceChildren(...m.pusher_apps.map((a) => el("option", { value: a, textContent: "app " + a })));
    if (!m.pusher_apps.length) sel.append(el("option", { textContent: "no Pusher app configured" }));
    setState("live", m.node ? "live · node " + m.node.slice(0, 8) : "live");
    draw();
  } else if (m.type === "sample") {
    state.samples.push(m.sample);
    const cutoff = m.sample.t - WINDOW_MS;
    while (state.samples.length && state.samples[0].t < cutoff) state.samples.shift();
    draw();
  } else if (m.type === "audit") {
    addAudit(m.entry, true);
  } else if (m.type === "pusher") {
    addPusher(m);
  }
}

// ---- plots (SVG) ------------------------------------------------------------

const COLORS = ["--s1", "--s2", "--s3", "--s4", "--s5", "--s6"].map(
  (v) => getComputedStyle(document.documentElement).getPropertyValue(v).trim() || "#3563e9");

function plot(svg, series, unit) {
  const W = 300, H = 120, L = 30, B = 14, T = 6;
  const now = state.samples.length ? state.samples[state.samples.length - 1].t : Date.now();
  // The last 15 minutes, or since the hub started (at least one minute).
  const first = state.samples.length ? state.samples[0].t : now;
  const span = Math.min(WINDOW_MS, Math.max(60 * 1000, now - first));
  const t0 = now - span;
  let max = 0;
  for (const s of series) for (const [, v] of s.points) if (v != null) max = Math.max(max, v);
  max = max > 0 ? niceMax(max) : 1;
  const x = (t) => L + ((t - t0) / span) * (W - L - 4);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const parts = [
    `<line class="axis" x1="${L}" y1="${H - B}" x2="${W}" y2="${H - B}"/>`,
    `<line class="axis" x1="${L}" y1="${T}" x2="${L}" y2="${H - B}"/>`,
    `<text x="${L - 3}" y="${T + 8}" text-anchor="end">${fmt(max)}${unit}</text>`,
    `<text x="${L - 3}" y="${H - B}" text-anchor="end">0</text>`,
    `<text x="${L}" y="${H - 2}">−${Math.round(span / 60000)} min</text>`,
    `<text x="${W - 2}" y="${H - 2}" text-anchor="end">now</text>`,
  ];
  series.forEach((s, i) => {
    let d = "", pen = false;
    for (const [t, v] of s.points) {
      if (v == null) { pen = false; continue; }
      d += (pen ? "L" : "M") + x(t).toFixed(1) + " " + y(v).toFixed(1);
      pen = true;
    }
    // A presentation attribute, not a style one: the CSP allows no inline style.
    parts.push(`<path d="${d}" stroke="${COLORS[i % COLORS.length]}"/>`);
  });
  svg.innerHTML = parts.join("");
}

function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}
const fmt = (v) => (v >= 1000 ? (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k" : String(+v.toFixed(2)));

function draw() {
  const s = state.samples;
  plot($("#plot-conn"), [{ points: s.map((x) => [x.t, x.connections]) }], "");
  const sources = [...new Set(s.flatMap((x) => Object.keys(x.logouts)))].sort();
  plot($("#plot-logouts"), sources.map((src) => ({ points: s.map((x) => [x.t, x.logouts[src] || 0]) })), "/s");
  $("#legend-logouts").replaceChildren(...sources.map((src, i) =>
    el("span", {}, el("i", { style: `background:${COLORS[i % COLORS.length]}` }), src)));
  const total = s.reduce((n, x) => n + Object.values(x.logouts).reduce((a, b) => a + b, 0), 0);
  $("#plot-logouts").dataset.total = total;
  plot($("#plot-latency"), [
    { points: s.map((x) => [x.t, x.fanout_p50_ms]) },
    { points: s.map((x) => [x.t, x.fanout_p99_ms]) },
  ], "ms");
  plot($("#plot-acks"), [{ points: s.map((x) => [x.t, x.delivered ? (100 * x.acked) / x.delivered : null]) }], "%");
}

// ---- audit trail --------------------------------------------------------------

function target(e) {
  const t = e.target || {};
  return [t.sub && "sub " + t.sub, t.sid && "sid " + t.sid].filter(Boolean).join(" · ") || "—";
}
function caller(c) {
  switch (c.kind) {
    case "api_key": return "key " + c.name;
    case "user": return "user " + c.sub + (c.client ? " (" + c.client + ")" : "");
    case "issuer": return "issuer " + c.iss;
    case "client": return "client " + c.client_id;
    case "pusher_app": return "Pusher app " + c.app;
    default: return "hub";
  }
}
function reached(e) {
  const o = e.outcome || {};
  if (o.delivered != null) return `${o.delivered} socket${o.delivered === 1 ? "" : "s"}` + (o.acked != null ? `, ${o.acked} acked` : "");
  if (o.revoked) return `${o.revoked.web_sessions} web, ${o.revoked.native_sessions || 0} native`;
  if (o.result) return o.result;
  return "";
}

function addAudit(e, fresh) {
  state.audit.unshift(e);
  const row = el("tr", {
    class: "entry" + (fresh ? " fresh" : ""),
    "data-source": e.source, "data-sub": (e.target && e.target.sub) || "", "data-id": e.id,
  },
  el("td", { textContent: new Date(e.at_ms).toLocaleTimeString() }),
  el("td", { textContent: e.action.replaceAll("_", " ") }),
  el("td", { textContent: e.source }),
  el("td", { textContent: caller(e.caller) }),
  el("td", { textContent: target(e) }),
  el("td", { textContent: reached(e) }));
  row.addEventListener("click", () => {
    const next = row.nextElementSibling;
    if (next && next.classList.contains("detail")) return next.remove();
    row.after(el("tr", { class: "detail" }, el("td", { colSpan: 6 }, el("pre", { textContent: JSON.stringify(e, null, 2) }))));
  });
  $("#audit tbody").prepend(row);
  applyFilter(row);
  const rows = $("#audit tbody").querySelectorAll("tr.entry");
  if (rows.length > 500) rows[rows.length - 1].remove();
}

function applyFilter(row) {
  const f = $("#audit-filter").value.trim().toLowerCase();
  row.hidden = f !== "" && !row.textContent.toLowerCase().includes(f);
}
$("#audit-filter").addEventListener("input", () => document.querySelectorAll("#audit tbody tr.entry").forEach(applyFilter));

// ---- user lookup ------------------------------------------------------------------

$("#lookup-form").addEventListener("submit", (ev) => { ev.preventDefault(); lookup(); });

async function lookup() {
  const sub = $("#lookup").value.trim();
  const out = $("#lookup-result");
  if (!sub) return;
  const r = await api("/v1/users/" + encodeURIComponent(sub) + "/connections");
  const v = await r.json();
  if (!r.ok) return out.replaceChildren(el("p", { class: "error", textContent: v.message || r.status }));
  const issuers = new Set(v.sockets.map((s) => s.iss).filter(Boolean));
  v.sessions.forEach((t) => issuers.add(t.iss));
  const table = el("table", { id: "sockets" },
    el("thead", {}, el("tr", {}, ...["Protocol", "Session", "Client", "Origin", "Since", ""].map((h) => el("th", { textContent: h })))),
    el("tbody", {}, ...v.sockets.map((s) => el("tr", { "data-sid": s.sid || "" },
      el("td", { textContent: s.protocol + (s.node ? " · " + s.node.slice(0, 6) : "") }),
      el("td", { textContent: s.sid || "—" }),
      el("td", { textContent: s.client_ip, title: s.user_agent || "" }),
      el("td", { textContent: s.origin || "—" }),
      el("td", { textContent: new Date(s.connected_since_ms).toLocaleTimeString() }),
      el("td", {}, s.sid && s.iss ? el("button", { class: "danger", textContent: "Log out session",
        onclick: () => logout({ sid: s.sid, iss: s.iss }, "session " + s.sid) }) : null)))));
  const tree = el("div", { class: "tree" }, ...v.sessions.map((t) => el("div", {},
    el("div", { class: "muted", textContent: "Sessions at " + t.iss }),
    el("ul", {}, ...t.native_sessions.map((n) => el("li", { class: n.alive ? "" : "dead" },
      "native " + n.id + " (" + n.client + ")",
      el("ul", {}, ...n.web_sessions.map((w) => el("li", { class: w.alive ? "" : "dead",
        textContent: "web " + w.id + " · " + w.clients.join(", ") }))))),
      ...t.web_sessions.map((w) => el("li", { class: w.alive ? "" : "dead", textContent: "web " + w.id }))))));
  out.replaceChildren(
    el("p", { class: "muted", textContent: `${v.sockets.length} socket(s) on ${v.nodes.answered} of ${v.nodes.asked} node(s)` }),
    table,
    el("div", { class: "actions" }, ...[...issuers].map((iss) => el("button", {
      class: "danger", id: "logout-user", textContent: issuers.size > 1 ? "Log out this user at " + iss : "Log out this user",
      onclick: () => logout({ sub, iss }, "user " + sub) }))),
    tree);
}

async function logout(body, what) {
  if (!window.confirm || !confirm("Log out " + what + "? Every tab of it is told now.")) return;
  const r = await api("/v1/logout", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(Object.assign({ reason: "logged out from the console", wait_for_acks_ms: 1000 }, body)),
  });
  const v = await r.json();
  $("#lookup-result").prepend(el("p", { class: r.ok ? "muted" : "error",
    textContent: r.ok ? `Logged out ${what}: ${v.delivered} socket(s) told, ${v.acked ?? 0} acknowledged.` : v.message }));
  setTimeout(lookup, 300);
}

// ---- Pusher debug -------------------------------------------------------------------

function addPusher(m) {
  if ($("#pusher-app").value !== m.app) return;
  const data = typeof m.data === "string" ? m.data : JSON.stringify(m.data);
  $("#pusher-events").prepend(el("li", {},
    el("span", { class: "muted", textContent: new Date(m.t).toLocaleTimeString() + " " }),
    el("b", { textContent: m.channel }), " ", el("code", { textContent: m.event }), " ",
    el("span", { textContent: data })));
  const items = $("#pusher-events").children;
  if (items.length > 300) items[items.length - 1].remove();
}

document.querySelectorAll(".tabs button").forEach((b) => b.addEventListener("click", () => {
  document.querySelectorAll(".tabs button").forEach((x) => x.classList.toggle("active", x === b));
  $("#tab-user").hidden = b.dataset.tab !== "user";
  $("#tab-pusher").hidden = b.dataset.tab !== "pusher";
}));

start();
