#pragma once

#include <string_view>

namespace strait::server {

// The admin's "/" page (live_graph.h): one self-contained HTML document, inline SVG and script, no
// external assets, so it works offline and behind a port-forward. It draws /graph/events (falling back to
// polling /graph?format=json) and fetches /clusters, /listeners and /certs for the tables below.
// <!--ENDPOINTS--> is replaced by the admin's endpoint list.
inline constexpr std::string_view kLiveGraphPage = R"HTML(<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Strait: live service map</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:16px;align-items:baseline}
header h1{font-size:18px;margin:0} header .sub{opacity:.75}
#status{margin-left:auto;font-size:12px;padding:2px 8px;border-radius:10px;background:#555}
#status.live{background:#1f8a4c} #status.stale{background:#b3261e}
main{padding:12px 20px} section{background:#fff;border:1px solid #dde1e7;border-radius:6px;margin:0 0 14px;padding:10px 14px}
h2{font-size:15px;margin:2px 0 8px} table{border-collapse:collapse;width:100%} td,th{text-align:left;padding:3px 8px;border-bottom:1px solid #eef0f3;font-size:13px;vertical-align:top}
th{color:#5a6275;font-weight:600} .muted{color:#7a8194} code{font-size:12px}
svg{width:100%;height:auto;display:block} .node rect{fill:#fff;stroke:#8a93a6;rx:6}
.node.self rect{fill:#1d2330;stroke:#1d2330} .node.self text{fill:#fff;font-weight:600}
.node text{font-size:12px;fill:#1d2330} .node .ident{font-size:10px;fill:#6b7385}
.edge path{fill:none;stroke:#4a78c2;stroke-width:2} .edge.tcp path{stroke:#8a5cc2;stroke-dasharray:6 3}
.edge.bad path{stroke:#c2412d} .edge-label{font-size:11px;fill:#1d2330;paint-order:stroke;stroke:#fff;stroke-width:4px;stroke-linejoin:round}
.edge-label.err{fill:#b3261e}
.col{font-size:12px;fill:#7a8194;font-weight:600;text-transform:uppercase;letter-spacing:.05em}
</style></head>
<body>
<header><h1>Strait</h1><span class="sub" id="self">this workload</span><span class="sub" id="stamp"></span><span id="status">connecting</span></header>
<main>
<section><h2>Live service map <span class="muted">(last 60 s: rate, error rate, latency p50/p99; TCP: connections and bytes)</span></h2>
<svg id="graph" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 1100 200" role="img" aria-label="service map"></svg>
</section>
<section><h2>Recent errors</h2><table id="errors"><tr><td class="muted">none in the last minute</td></tr></table></section>
<section><h2>Clusters</h2><table id="clusters"><tr><td class="muted">loading</td></tr></table></section>
<section><h2>Listeners</h2><table id="listeners"><tr><td class="muted">loading</td></tr></table></section>
<section><h2>Certificates</h2><table id="certs"><tr><td class="muted">loading</td></tr></table></section>
<section><h2>Admin endpoints</h2><table id="endpoints">
<!--ENDPOINTS-->
</table></section>
</main>
<script>
"use strict";
const NS = "http://www.w3.org/2000/svg";
function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;","\"":"&quot;"})[c]); }
function bytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1048576).toFixed(1) + " MiB";
}
function ms(v) { return v === null ? "-" : (v < 10 ? v.toFixed(2) : v.toFixed(0)) + "ms"; }
function pct(v) { return (v * 100).toFixed(v > 0 && v < 0.1 ? 1 : 0) + "%"; }
// Long names keep both ends ("outbound|9080||rev\u2026svc.cluster.local"): the port and the host's tail.
function short(s, n) { const h = Math.ceil((n - 1) / 2); return s.length > n ? s.slice(0, h) + "\u2026" + s.slice(s.length - (n - 1 - h)) : s; }
// The label of an edge: what an operator reads first.
function edgeLabel(e) {
  const parts = [];
  if (e.protocol === "tcp") {
    parts.push(e.connections + " cx", "in " + bytes(e.bytes_in), "out " + bytes(e.bytes_out));
    if (e.errors) parts.push(e.errors + " failed");
    return [parts.join(" \u00b7 ")];
  }
  const first = e.rps.toFixed(2) + " rps \u00b7 " + pct(e.error_rate) + " err";
  const second = "p50 " + ms(e.p50_ms) + " \u00b7 p99 " + ms(e.p99_ms) + " \u00b7 " + e.requests + " req";
  return [first, second];
}
function render(g) {
  document.getElementById("self").textContent = g.self;
  document.getElementById("stamp").textContent = new Date(g.timestamp_ms).toLocaleTimeString();
  const svg = document.getElementById("graph");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const callers = g.nodes.filter(n => n.role === "caller"), callees = g.nodes.filter(n => n.role === "callee");
  const rowH = 96, rows = Math.max(callers.length, callees.length, 1), H = 60 + rows * rowH;
  svg.setAttribute("viewBox", "0 0 1100 " + H);
  const W = 220, X = {caller: 10, self: 440, callee: 870}, pos = {};
  svg.appendChild(el("text", {x: X.caller, y: 18, class: "col"}, "callers"));
  svg.appendChild(el("text", {x: X.self, y: 18, class: "col"}, "this workload"));
  svg.appendChild(el("text", {x: X.callee, y: 18, class: "col"}, "callees"));
  const place = (list, x) => list.forEach((n, i) => {
    const y = 40 + (H - 40) * (i + 0.5) / list.length - 22;
    pos[n.id] = {x, y};
  });
  place(callers, X.caller); place(callees, X.callee);
  pos.self = {x: X.self, y: 40 + (H - 40) / 2 - 22};
  const edges = el("g", {id: "edges"});
  svg.appendChild(edges);
  // Edges sharing a peer (HTTP and TCP from one caller) or a side of this workload fan out, so neither
  // their lines nor their labels sit on each other.
  const perPeer = {}, perSide = {inbound: [], outbound: []};
  for (const e of g.edges) {
    const peer = e.direction === "inbound" ? e.from : e.to;
    (perPeer[peer] = perPeer[peer] || []).push(e);
    perSide[e.direction].push(e);
  }
  const spread = (list, e, room) => {
    const n = list.length, k = list.indexOf(e);
    return (k - (n - 1) / 2) * Math.min(12, room / Math.max(1, n - 1));
  };
  for (const e of g.edges) {
    const a = pos[e.from], b = pos[e.to];
    if (!a || !b) continue;
    const inbound = e.direction === "inbound", peer = inbound ? e.from : e.to;
    const dPeer = spread(perPeer[peer], e, 36), dSelf = spread(perSide[e.direction], e, 36);
    const x1 = a.x + W, y1 = a.y + 22 + (inbound ? dPeer : dSelf), x2 = b.x, y2 = b.y + 22 + (inbound ? dSelf : dPeer);
    const mx = (x1 + x2) / 2;
    const bad = e.error_rate > 0;
    const grp = el("g", {class: "edge " + e.protocol + (bad ? " bad" : ""), "data-direction": e.direction,
                         "data-peer": e.peer, "data-protocol": e.protocol, "data-requests": e.requests,
                         "data-errors": e.errors});
    grp.appendChild(el("path", {d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`,
                                "marker-end": "url(#arrow)"}));
    // The label sits by the edge's end at the peer, where edges never cross: the first edge of a peer
    // above it, the next ones below.
    const lines = edgeLabel(e), k = perPeer[peer].indexOf(e), yPeer = inbound ? y1 : y2;
    const lx = inbound ? x1 + 8 : x2 - 8;
    const ly = k === 0 ? yPeer - 8 - (lines.length - 1) * 14 : yPeer + 16 + (k - 1) * 30;
    lines.forEach((t, i) => grp.appendChild(el("text", {x: lx, y: ly + i * 14, "text-anchor": inbound ? "start" : "end",
        class: "edge-label" + (bad && i === 0 ? " err" : "")}, t)));
    edges.appendChild(grp);
  }
  const defs = el("defs", {});
  const m = el("marker", {id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto"});
  m.appendChild(el("path", {d: "M0,0 L10,5 L0,10 z", fill: "#4a78c2"}));
  defs.appendChild(m); svg.insertBefore(defs, svg.firstChild);
  const node = (n, role) => {
    const p = pos[n.id], grp = el("g", {class: "node " + role, "data-id": n.id});
    grp.appendChild(el("rect", {x: p.x, y: p.y, width: W, height: 44}));
    grp.appendChild(el("text", {x: p.x + 8, y: p.y + (n.identity ? 18 : 26)}, short(n.label, 31)));
    if (n.identity) grp.appendChild(el("text", {x: p.x + 8, y: p.y + 34, class: "ident"}, short(n.identity, 42)));
    const t = el("title", {}, n.label + (n.identity ? "\n" + n.identity : ""));
    grp.appendChild(t);
    svg.appendChild(grp);
  };
  callers.forEach(n => node(n, "caller")); callees.forEach(n => node(n, "callee"));
  node({id: "self", label: g.self, identity: ""}, "self");
  if (!g.edges.length) svg.appendChild(el("text", {x: 550, y: H - 12, "text-anchor": "middle", class: "col"}, "no traffic in the last minute"));
  const errs = document.getElementById("errors");
  errs.innerHTML = g.recent_errors.length ? "<tr><th>time</th><th>edge</th><th>code</th><th>flags</th></tr>" +
    g.recent_errors.map(r => `<tr><td>${new Date(r.timestamp_ms).toLocaleTimeString()}</td><td>${esc(r.edge)}</td>` +
      `<td>${r.code || "no response"}</td><td>${esc(r.flags || "-")}</td></tr>`).join("") :
    "<tr><td class=\"muted\">none in the last minute</td></tr>";
}
function status(text, cls) { const s = document.getElementById("status"); s.textContent = text; s.className = cls; }
let polling = null;
function poll() {
  fetch("/graph?format=json").then(r => r.json()).then(g => { render(g); status("polling", "live"); })
    .catch(() => status("admin unreachable", "stale"));
}
// "/?events=N": take N events and stop (a headless browser waits for open streams to end).
const limit = parseInt(new URLSearchParams(location.search).get("events") || "0", 10) || 0;
function connect() {
  if (!window.EventSource) { polling = setInterval(poll, 2000); poll(); return; }
  const es = new EventSource("/graph/events" + (limit ? "?count=" + limit : ""));
  let seen = 0;
  es.onmessage = ev => { render(JSON.parse(ev.data)); status("live", "live"); seen++; };
  es.onerror = () => {
    if (limit && seen >= limit) { es.close(); status("stopped after " + seen + " events", ""); return; }
    status("reconnecting", "stale");
    if (es.readyState === EventSource.CLOSED && !polling) { polling = setInterval(poll, 2000); }
  };
}
function table(id, head, rows) {
  document.getElementById(id).innerHTML = rows.length ?
    "<tr>" + head.map(h => `<th>${esc(h)}</th>`).join("") + "</tr>" +
    rows.map(r => "<tr>" + r.map(c => `<td>${esc(c)}</td>`).join("") + "</tr>").join("") :
    "<tr><td class=\"muted\">none</td></tr>";
}
function side() {
  fetch("/clusters?format=json").then(r => r.json()).then(j => table("clusters", ["cluster", "hosts"],
    j.cluster_statuses.map(c => [c.name, c.host_statuses.map(h => h.address.socket_address.address + ":" +
      h.address.socket_address.port_value + " " + h.health_status.eds_health_status).join(", ")]))).catch(() => {});
  fetch("/listeners?format=json").then(r => r.json()).then(j => table("listeners", ["listener", "address"],
    j.listener_statuses.map(l => [l.name, l.local_address.socket_address.address + ":" +
      l.local_address.socket_address.port_value]))).catch(() => {});
  fetch("/certs").then(r => r.json()).then(j => {
    const rows = [];
    for (const c of (j.certificates || [])) {
      for (const k of ["cert_chain", "ca_cert"]) for (const d of (c[k] || [])) {
        const sans = (d.subject_alt_names || []).map(s => s.uri || s.dns || "").join(" ");
        rows.push([k === "ca_cert" ? "CA" : "chain", sans, d.serial_number || "", d.expiration_time || ""]);
      }
    }
    table("certs", ["kind", "identity (SANs)", "serial", "expires"], rows);
  }).catch(() => {});
}
connect(); side(); if (!limit) setInterval(side, 10000);
</script>
</body></html>
)HTML";

}  // namespace strait::server
