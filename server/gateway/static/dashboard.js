// The authpool dashboard: polls /_dashboard/state every second (the session cookie goes along,
// same origin only) and redraws. A large pool comes listed in part (the server picks the accounts
// that need attention first); the filter box narrows the list on the server. Countdowns tick
// every second from the server's clock. Text is always set with textContent, never parsed as HTML.
"use strict";

let state = null;
let offset = 0; // server clock minus this browser's clock, in seconds

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function now() { return Date.now() / 1000 + offset; }

function span(seconds) {
  if (seconds <= 0) return "";
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}`;
  return `${Math.floor(s / 86400)}d`;
}

function sum(values) { return (values || []).reduce((a, b) => a + b, 0); }

function chart(series) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("viewBox", "0 0 180 28");
  svg.setAttribute("role", "img");
  if (!series) return svg;
  const top = Math.max(1, ...series.requests, ...series.refreshes);
  const bar = (cls, i, value) => {
    if (!value) return;
    const r = document.createElementNS(ns, "rect");
    const h = Math.max(1, Math.round(26 * value / top));
    r.setAttribute("class", cls);
    r.setAttribute("x", String(i * 3));
    r.setAttribute("y", String(28 - h));
    r.setAttribute("width", "2");
    r.setAttribute("height", String(h));
    svg.append(r);
  };
  series.requests.forEach((v, i) => bar("req", i, v));
  series.rate_limited.forEach((v, i) => bar("rl", i, v));
  series.refreshes.forEach((v, i) => bar("ref", i, v));
  svg.setAttribute("aria-label", `last hour: ${sum(series.requests)} requests, ${sum(series.rate_limited)} 429s, ` +
                   `${sum(series.refreshes)} token calls`);
  return svg;
}

function quota(windows) {
  const names = Object.keys(windows || {});
  if (!names.length) return "";
  const wrap = el("span");
  for (const name of names) {
    const used = windows[name].used_percent;
    const bar = el("span", { class: "bar", title: `${name}: ${used}% used` }, el("i"));
    bar.firstChild.style.width = `${Math.min(100, used)}%`;
    wrap.append(`${name} `, bar, ` ${Math.round(used)}% `);
  }
  return wrap;
}

function row(a) {
  const t = now();
  const series = state.series[a.id];
  const state_ = a.refresh_failing ? "refresh-failing" : a.state;
  const until = a.state === "cooling" && a.cooling_until ? a.cooling_until : null;
  const token = a.kind !== "oauth" ? "API key" : (a.token_expires_at === null ? "" :
    (a.token_expires_at <= t ? "expired" : span(a.token_expires_at - t)));
  return el("tr", { "data-account": a.name },
    el("td", {}, a.name),
    el("td", { class: `state ${state_}` }, a.refresh_failing ? `renewal failing: ${a.refresh_failing}` : a.state),
    el("td", { class: "countdown", "data-until": until === null ? "" : String(until) }, until ? span(until - t) : ""),
    el("td", {}, quota(a.windows)),
    el("td", {}, token),
    el("td", {}, chart(series)),
    el("td", {}, series ? sum(series.requests) : 0),
    el("td", {}, series ? sum(series.rate_limited) : 0),
    el("td", {}, series ? sum(series.refreshes) : 0),
    el("td", { class: "error" }, a.last_error || ""));
}

function providerLine(p) {
  const parts = [`${p.ready} ready`];
  if (p.cooling) parts.push(`${p.cooling} cooling`);
  if (p.refresh_failing) parts.push(`${p.refresh_failing} failing to renew`);
  if (p.needs_reauth) parts.push(`${p.needs_reauth} need re-auth`);
  if (p.disabled) parts.push(`${p.disabled} disabled`);
  return el("div", { class: "provider", "data-provider": p.provider }, el("strong", {}, p.provider), ": " + parts.join(" · "));
}

function eventLine(e) {
  const when = new Date(e.at * 1000).toLocaleTimeString();
  const bits = [when, e.kind, e.account || e.provider || "-", e.outcome || ""];
  if (e.status) bits.push(String(e.status));
  if (e.latency_ms !== undefined) bits.push(`${Math.round(e.latency_ms)} ms`);
  if (e.until) bits.push(`until ${new Date(e.until * 1000).toLocaleTimeString()}`);
  if (e.detail) bits.push(`(${e.detail})`);
  return el("li", {}, bits.join("  "));
}

function draw() {
  if (!state) return;
  const providers = document.getElementById("providers");
  providers.replaceChildren(...state.providers.map(providerLine));
  if (!state.providers.length) providers.append(el("p", {}, `No accounts yet in ${state.home}.`));
  const rows = state.providers.flatMap(p => p.accounts).map(row);
  document.querySelector("#accounts tbody").replaceChildren(...rows);
  const l = state.listed;
  const matched = l.filter ? ` matching "${l.filter}"` : "";
  document.getElementById("listed").textContent = l.shown < l.matching
    ? `showing ${l.shown} of ${l.matching} accounts${matched}: those that need attention first, then cooling, ` +
      `ready, disabled; filter to find others`
    : (l.filter ? `${l.matching} of ${l.total} accounts match` : "");
  document.getElementById("events").replaceChildren(...state.events.slice().reverse().map(eventLine));
}

function tick() {
  const t = now();
  for (const cell of document.querySelectorAll("td.countdown")) {
    const until = Number(cell.dataset.until);
    if (until) cell.textContent = span(until - t);
  }
}

async function poll() {
  try {
    const q = document.getElementById("filter").value.trim();
    const url = q ? `/_dashboard/state?q=${encodeURIComponent(q)}` : "/_dashboard/state";
    const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) { window.location.assign("/"); return; }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    state = await r.json();
    offset = state.now - Date.now() / 1000;
    draw();
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    document.getElementById("updated").textContent = `cannot reach the gateway (${err.message}); retrying`;
  }
}

// The next poll is asked for a second after the last one ended (never two at once on a slow
// gateway), and not while the tab is hidden.
async function loop() {
  if (!document.hidden) await poll();
  setTimeout(loop, 1000);
}

// A new filter is asked for once typing pauses, not at the next second.
let typing = null;
document.getElementById("filter").addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(poll, 250);
});

loop();
setInterval(tick, 1000);
