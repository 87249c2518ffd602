// The status page's script: refreshes the tables from /state.json every 2 s and tails the
// logs from /logs (server-sent events). Text is only ever set with textContent: nothing a
// host reported is parsed as HTML. Compiled into the coordinator; loads nothing else.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const MAX_LINES = 500;

  function text(el, s) { el.textContent = s; return el; }
  function cell(tag, s) { return text(document.createElement(tag), s); }

  function pct(u, t) { return (u != null && t) ? Math.round(u * 100 / t) + "%" : "-"; }

  function hostCells(h) {
    const state = h.revoked ? "revoked" : !h.connected ? "disconnected" : !h.reachable ? "unreachable" : "connected";
    return [
      h.name, h.roles.join(", "), state,
      h.role_states.map((r) => r[0] + ": " + r[1]).join(", "),
      h.engine_up == null ? "-" : (h.engine_up ? "up" : "down"),
      h.heartbeat_age_s == null ? "-" : h.heartbeat_age_s.toFixed(1) + " s",
      h.cpu_ratio == null ? "-" : Math.round(h.cpu_ratio * 100) + "%",
      h.load == null ? "-" : h.load[0].toFixed(2),
      pct(h.memory_used_bytes, h.memory_total_bytes),
      pct(h.disk_used_bytes, h.disk_total_bytes),
      h.agent_version,
    ];
  }

  function fill(tbody, rows, cells, attr) {
    const fresh = document.createElement("tbody");
    for (const r of rows) {
      const tr = document.createElement("tr");
      if (attr) tr.dataset.host = r.name;
      for (const c of cells(r)) tr.appendChild(cell("td", c));
      fresh.appendChild(tr);
    }
    tbody.replaceWith(fresh);
  }

  function render(v) {
    const leaders = v.swarm_leaders.map((l) => l[0] + " (" + l[1] + ")").join(", ");
    text($("swarm-leader"), leaders || "none reported");
    text($("managers-reachable"), v.managers_reachable + " of " + v.managers_assigned);
    text($("consul-leader"), v.consul_leader ? v.consul_leader[0] : "none reported");
    text($("consul-voters"), String(v.consul_leader ? v.consul_leader[1] : 0));
    fill($("hosts").tBodies[0], v.snapshot.hosts, hostCells, true);
    fill($("audit").tBodies[0], v.audit, (e) => [new Date(e.unix_ms).toISOString(), e.kind, e.host, e.detail, e.actor], false);
    const d = v.snapshot.drill;
    const drill = $("drill");
    const status = d == null ? "no drill reported since the control plane started"
      : d.component + " · " + (d.running ? "running" : (d.passed ? "passed: " : "FAILED: ") + d.verdict);
    text($("drill-status"), status);
    let ol = $("drill-timeline");
    if (!ol) { ol = document.createElement("ol"); ol.id = "drill-timeline"; drill.appendChild(ol); }
    ol.replaceChildren(...(d ? d.timeline : []).map((e) => cell("li", e[0].toFixed(1) + " s · " + e[1])));
    const sel = $("log-host");
    const want = v.snapshot.hosts.filter((h) => h.connected).map((h) => h.name);
    const have = Array.from(sel.options).slice(1).map((o) => o.value);
    if (want.join() !== have.join()) {
      const keep = sel.value;
      while (sel.options.length > 1) sel.remove(1);
      for (const n of want) { const o = cell("option", n); o.value = n; sel.appendChild(o); }
      sel.value = keep;
    }
    text($("updated"), "updated " + new Date().toLocaleTimeString());
  }

  async function refresh() {
    try {
      const r = await fetch("/state.json", { cache: "no-store" });
      if (r.ok) render(await r.json());
      else text($("updated"), "refresh failed: HTTP " + r.status);
    } catch (e) {
      text($("updated"), "refresh failed: " + e);
    }
  }

  let source = null;
  function tail() {
    if (source) source.close();
    const host = $("log-host").value;
    const log = $("log");
    log.replaceChildren();
    source = new EventSource("/logs" + (host ? "?host=" + encodeURIComponent(host) : ""));
    source.onopen = () => text($("log-state"), "live");
    source.onerror = () => text($("log-state"), "reconnecting…");
    const add = (e, cls) => {
      const l = JSON.parse(e.data);
      const li = cell("li", l.host + "/" + l.source + " " + (l.error || l.text));
      li.className = cls;
      li.dataset.host = l.host;
      li.dataset.received = String(Date.now());
      log.appendChild(li);
      while (log.childElementCount > MAX_LINES) log.firstElementChild.remove();
      log.scrollTop = log.scrollHeight;
    };
    source.addEventListener("line", (e) => add(e, "line"));
    source.addEventListener("end", (e) => add(e, "end"));
  }

  $("log-host").addEventListener("change", tail);
  const params = new URLSearchParams(location.search);
  if (params.get("host")) {
    const o = Array.from($("log-host").options).find((o) => o.value === params.get("host"));
    if (o) $("log-host").value = o.value;
  }
  for (const td of document.querySelectorAll("#audit td[data-ms]")) {
    text(td, new Date(Number(td.dataset.ms)).toISOString());
  }
  tail();
  setInterval(refresh, 2000);
})();
