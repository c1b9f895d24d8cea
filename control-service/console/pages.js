// The console's pages. Each `render*` returns a DOM node built from API data with
// textContent only (alert labels and comments are untrusted text), and declares which
// live events make it re-render (`refreshOn`).

import { get, post, ApiError, may, identity } from "./api.js";

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function flash(message, ok = false) {
  const box = document.getElementById("flash");
  box.replaceChildren(h("div", { class: ok ? "ok" : "error" }, message));
}

function errorText(e) {
  if (e instanceof ApiError) {
    let t = `${e.message}`;
    if (e.status === 401) t = "Not signed in (401): enter a token above.";
    else if (e.status === 403) t = `Not allowed for your role (403): ${e.message}`;
    if (e.problems.length) t += ": " + e.problems.map((p) => `${p.field}: ${p.message}`).join("; ");
    return t;
  }
  return String(e);
}

// Runs an action, reports its outcome, re-renders on success.
async function act(what, fn, rerender) {
  try {
    await fn();
    flash(`${what}: done`, true);
    if (rerender) rerender();
  } catch (e) {
    flash(`${what}: ${errorText(e)}`);
  }
}

// Why a button is off: the signed-in role does not grant its action (GET /api/v1/whoami).
function forbidden(action) {
  if (may(action)) return null;
  const me = identity();
  return me && me.role ? `your role (${me.role}) may not do this` : "sign in to do this";
}

// A button for `action`, disabled (with the reason as its tooltip) when the role lacks it.
function guarded(action, props, label) {
  const why = forbidden(action);
  return h("button", { ...props, disabled: !!why, title: why || props.title, class: why ? "forbidden" : props.class }, label);
}

const pct = (x) => (x === null || x === undefined || Number.isNaN(x) ? "–" : `${(x * 100).toFixed(1)}%`);
const num = (x, d = 1) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));
const when = (ms) => (ms ? new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z") : "never");
function ago(ms) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  return s < 60 ? `${s}s ago` : s < 3600 ? `${Math.round(s / 60)}m ago` : `${Math.round(s / 3600)}h ago`;
}
const table = (head, rows, props = {}) =>
  h("div", { class: "table-wrap" },
    h("table", props, h("thead", {}, h("tr", {}, head.map((c) => h("th", {}, c)))), h("tbody", {}, rows)));

// ---- fleet ------------------------------------------------------------------------

// A node's last reported window: requests, 5xx and local replies per stack.
function nodeTraffic(t) {
  if (!t || !t.stacks) return "–";
  const parts = Object.entries(t.stacks).map(([name, c]) =>
    `${name} ${c.requests} req` + (c.status_5xx ? `, ${c.status_5xx} 5xx` : "") + (c.local_replies ? `, ${c.local_replies} local` : ""));
  return parts.length ? `${parts.join(" · ")} (${Math.round((t.window_ms || 0) / 1000)} s)` : "idle";
}

// Operator actions on a stack, through the same guardrails as `switchyard stacks …`.
function stackActions(s, rerender) {
  const why = forbidden("stack_op");
  if (why) return h("span", { class: "muted", title: why }, "read-only");
  const reason = h("input", { type: "text", placeholder: "reason", "aria-label": `reason for ${s.name}`, size: 12 });
  const percent = h("input", { type: "number", min: 0, max: 100, value: s.weight_percent, "aria-label": `weight of ${s.name}`, style: "width:4.5em" });
  const op = (name, label, extra = () => ({})) => h("button", { dataset: { stack: s.name, op: name },
    onclick: () => act(`${name} ${s.name}`, () => post(`/api/v1/stacks/${encodeURIComponent(s.name)}/${name}`, { reason: reason.value, ...extra() }), rerender) }, label);
  // Folded: sixteen stacks' worth of inputs and buttons would push the table off the page.
  return h("details", { class: "stack-actions" }, h("summary", {}, "actions"),
    h("div", { class: "actions" }, percent, op("weight", "Set weight", () => ({ percent: Number(percent.value) })),
      s.draining || s.evacuating ? op("undrain", "Undrain") : [op("drain", "Drain"), op("evacuate", "Evacuate")],
      s.healthy ? op("unhealthy", "Mark unhealthy") : op("healthy", "Mark healthy"), reason));
}

// The Envoy list: those that need a look (away, behind) first, then by node id, a page
// at a time (a fleet of hundreds stays one screen); the page shown survives re-renders.
const NODES_PER_PAGE = 20;
let nodePage = 0;

function nodeList(status, rerender) {
  const behind = (n) => n.applied_version !== status.current_version;
  const trouble = (n) => (n.connected ? 0 : 2) + (behind(n) ? 1 : 0);
  const sorted = status.nodes.slice().sort((a, b) => trouble(b) - trouble(a) || a.node_id.localeCompare(b.node_id));
  const pages = Math.max(1, Math.ceil(sorted.length / NODES_PER_PAGE));
  nodePage = Math.min(nodePage, pages - 1);
  const first = nodePage * NODES_PER_PAGE;
  const shown = sorted.slice(first, first + NODES_PER_PAGE);
  const rows = shown.map((n) =>
    h("tr", { dataset: { node: n.node_id } },
      h("td", {}, n.node_id),
      h("td", {}, n.connected ? h("span", { class: "good" }, "connected") : h("span", { class: "bad" }, "away")),
      h("td", { class: "num" }, behind(n) ? h("span", { class: "warn" }, `v${n.applied_version} (behind)`) : `v${n.applied_version}`),
      h("td", {}, ago(n.last_report_unix_ms)),
      h("td", { class: "wrap" }, nodeTraffic(n.telemetry)),
      h("td", { class: "muted" }, n.peer)));
  const away = sorted.filter((n) => !n.connected).length;
  const late = sorted.filter((n) => n.connected && behind(n)).length;
  const go = (p) => () => { nodePage = p; rerender(); };
  return [
    h("h2", {}, `Envoys (${status.nodes_current} of ${status.nodes.length} on the current version)`),
    h("p", { id: "nodes-summary", class: away || late ? "warn" : "muted" },
      `${sorted.length - away} connected, ${away} away, ${late} behind`),
    table(["node", "stream", "applied", "last report", "last window per stack", "peer"], rows, { id: "nodes" }),
    pages > 1 ? h("div", { class: "actions", id: "nodes-pager" },
      h("button", { id: "nodes-prev", disabled: nodePage === 0, onclick: go(nodePage - 1) }, "‹ previous"),
      h("span", { id: "nodes-range" }, `${first + 1}–${first + shown.length} of ${sorted.length}`),
      h("button", { id: "nodes-next", disabled: nodePage >= pages - 1, onclick: go(nodePage + 1) }, "next ›")) : null,
  ];
}

export async function fleet(rerender) {
  const [status, stacks, split] = await Promise.all([
    get("/api/v1/status"), get("/api/v1/stacks"), get("/api/v1/split?limit=1"),
  ]);
  const shares = (split.points.at(-1) || {}).shares || {};
  const rows = stacks.stacks.map((s) => {
    const w = (status.stacks || {})[s.name];
    const t = s.telemetry || {};
    const reqs = w ? w.requests : t.requests;
    const errs = w ? w.errors : t.errors;
    const rps = w && w.window_ms ? w.requests / (w.window_ms / 1000) : null;
    const kpis = Object.entries((w ? w.kpis : t.kpis) || {})
      .map(([k, n]) => `${k} ${reqs ? num((n * 1000) / reqs) : "–"}`).join(", ");
    const state = !s.healthy ? ["unhealthy", "bad"] : s.evacuating ? ["evacuating", "bad"]
      : s.draining ? ["draining", "warn"] : ["healthy", "good"];
    const checks = s.health ? `checks: ${s.health.verdict ?? "?"}` : "";
    return h("tr", { dataset: { stack: s.name } },
      h("td", {}, h("strong", {}, s.name), h("div", { class: "muted" }, s.region)),
      h("td", { class: "num", "data-col": "rps" }, rps === null ? "–" : num(rps)),
      h("td", { class: "num", "data-col": "errors" }, reqs ? pct(errs / reqs) : "–"),
      h("td", { class: "num", "data-col": "p99" }, w && w.p99_ms != null ? `${num(w.p99_ms)} ms` : "–"),
      h("td", { "data-col": "kpi" }, kpis || "–"),
      h("td", { class: "num", "data-col": "weight" }, `${s.weight_percent}%`),
      h("td", { class: "num", "data-col": "share" }, pct(shares[s.name])),
      h("td", { "data-col": "health" }, h("span", { class: state[1] }, state[0]),
        s.reason ? h("div", { class: "muted" }, s.reason) : null,
        checks ? h("div", { class: "muted", title: JSON.stringify(s.health.layers || {}) }, checks) : null),
      h("td", { class: "muted" }, `v${s.changed_version} by ${s.changed_by || "–"}`),
      h("td", {}, stackActions(s, rerender)));
  });
  return h("section", { id: "fleet" },
    h("h2", {}, `Stacks at version `, h("span", { id: "fleet-version" }, String(stacks.version))),
    table(["stack", "req/s", "errors", "p99", "KPI per 1,000", "weight", "effective share", "health", "last change", "actions"], rows, { id: "stacks" }),
    status.nodes.length ? nodeList(status, rerender)
      : [h("h2", {}, "Envoys"), h("p", { class: "muted" }, "No Envoy has connected yet.")]);
}
fleet.refreshOn = ["version", "audit"];
fleet.poll = 5000;

// ---- traffic split over time --------------------------------------------------------

export async function traffic() {
  const [split, events, rollouts, incidents] = await Promise.all([
    get("/api/v1/split?limit=500"),
    get("/api/v1/events").catch(() => ({ events: [] })),
    get("/api/v1/rollouts").catch(() => ({ rollouts: [] })),
    get("/api/v1/incidents?limit=100").catch(() => ({ incidents: [] })),
  ]);
  const markers = [];
  for (const p of split.points) markers.push({ t: p.unix_ms, kind: p.kind, label: `v${p.version} ${p.summary}` });
  for (const e of events.events) {
    const kind = typeof e.kind === "string" ? e.kind : JSON.stringify(e.kind);
    if (e.from_ms) markers.push({ t: e.from_ms, kind: "event", label: `${kind} ${e.id} starts: ${e.description || ""}` });
    if (e.to_ms) markers.push({ t: e.to_ms, kind: "event", label: `${kind} ${e.id} ends` });
  }
  for (const r of rollouts.rollouts) {
    for (const s of r.steps || []) markers.push({ t: s.warm_started_ms, kind: "rollout", label: `${r.spec.id} step ${s.index} → ${s.share_percent}%` });
  }
  for (const i of incidents.incidents) markers.push({ t: i.opened_ms, kind: "incident", label: `incident ${i.id} on ${i.stack || i.scope}` });
  markers.sort((a, b) => a.t - b.t);

  const chartBox = h("div", { id: "split-chart" });
  const section = h("section", { id: "traffic" },
    h("h2", {}, "Traffic split over time (default route: policy weight × operator factor)"),
    chartBox,
    h("h2", {}, "Events"),
    table(["time", "kind", "what"], markers.slice(-200).reverse().map((m) =>
      h("tr", {}, h("td", {}, when(m.t)), h("td", {}, m.kind), h("td", {}, m.label)))));
  if (split.points.length && window.uPlot) {
    const now = Date.now();
    const xs = split.points.map((p) => p.unix_ms / 1000);
    xs.push(Math.max(now / 1000, xs.at(-1) + 1)); // the last split holds until now
    const series = split.stacks.map((name) => {
      const ys = split.points.map((p) => 100 * (p.shares[name] || 0));
      ys.push(ys.at(-1));
      return ys;
    });
    const palette = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
    const markerPlugin = {
      hooks: {
        draw: (u) => {
          const ctx = u.ctx;
          ctx.save();
          for (const m of markers) {
            if (m.kind !== "incident" && m.kind !== "rollout" && m.kind !== "event") continue;
            const x = u.valToPos(m.t / 1000, "x", true);
            if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
            ctx.strokeStyle = m.kind === "incident" ? "#b91c1c" : m.kind === "rollout" ? "#7c3aed" : "#6b7280";
            ctx.setLineDash([4, 4]);
            ctx.beginPath();
            ctx.moveTo(x, u.bbox.top);
            ctx.lineTo(x, u.bbox.top + u.bbox.height);
            ctx.stroke();
          }
          ctx.restore();
        },
      },
    };
    const opts = {
      width: Math.min(1100, document.body.clientWidth - 40), height: 320,
      scales: { y: { range: [0, 100] } },
      series: [{}].concat(split.stacks.map((name, i) => ({
        label: name, stroke: palette[i % palette.length], width: 2, paths: window.uPlot.paths.stepped({ align: 1 }),
        value: (u, v) => (v == null ? "–" : `${v.toFixed(1)}%`),
      }))),
      axes: [{}, { values: (u, vals) => vals.map((v) => `${v}%`) }],
      plugins: [markerPlugin],
    };
    // Mounted after the section is in the page (uPlot measures its container).
    queueMicrotask(() => new window.uPlot(opts, [xs, ...series], chartBox));
  } else {
    chartBox.append(h("p", { class: "muted" }, "No versions yet."));
  }
  return section;
}
traffic.refreshOn = ["version", "rollouts", "incidents"];

// ---- rollouts -------------------------------------------------------------------------

export async function rollouts(rerender) {
  const { rollouts } = await get("/api/v1/rollouts");
  if (!rollouts.length) return h("section", { id: "rollouts" }, h("p", { class: "muted" }, "No rollouts."));
  return h("section", { id: "rollouts" }, rollouts.map((r) => {
    const step = (r.steps || []).at(-1);
    const gates = step ? step.gates.map((g) => h("tr", {},
      h("td", {}, g.gate), h("td", { class: g.verdict === "fail" ? "bad" : g.verdict === "pass" ? "good" : "" }, String(g.verdict)),
      h("td", { class: "num" }, num(g.n, 0)), h("td", { class: "num" }, num(g.confidence, 3)),
      h("td", { class: "num" }, g.estimate == null ? "–" : num(g.estimate, 4)), h("td", {}, g.blocking ? "blocking" : ""))) : [];
    const id = r.spec.id;
    const cmd = (c) => guarded("rollout_command", { dataset: { rollout: id, command: c },
      onclick: () => act(`${c} ${id}`, () => post(`/api/v1/rollouts/${encodeURIComponent(id)}/${c}`, {}), rerender) }, c[0].toUpperCase() + c.slice(1));
    return h("div", { class: "card", dataset: { rollout: id } },
      h("h2", {}, `${id}: ${r.spec.release} over ${r.spec.stable}`),
      h("p", {}, `phase `, h("strong", { class: "phase" }, r.phase.state || String(r.phase)), ` · share ${r.share_percent}% · step ${step ? step.index + 1 : 0} of ${(r.spec.plan || []).length} · updated ${ago(r.updated_ms)}`),
      r.phase.reason ? h("p", { class: "muted" }, `why: ${JSON.stringify(r.phase.reason)}`) : null,
      r.blocked ? h("p", { class: "warn" }, `blocked: ${JSON.stringify(r.blocked)}`) : null,
      gates.length ? table(["gate", "verdict", "sample size", "confidence", "estimate", ""], gates) : h("p", { class: "muted" }, "No gate verdicts yet."),
      (r.steps || []).length > 1 ? h("p", { class: "muted" }, "steps: " + r.steps.map((st) => `${st.index + 1}: ${st.share_percent}% ${st.outcome || "running"}`).join(" · ")) : null,
      h("div", { class: "actions" }, ["pause", "resume", "promote", "abort"].map(cmd)));
  }));
}
rollouts.refreshOn = ["rollouts"];

// ---- incidents ------------------------------------------------------------------------

export async function incidents(rerender) {
  const { incidents } = await get("/api/v1/incidents?limit=50");
  if (!incidents.length) return h("section", { id: "incidents" }, h("p", { class: "muted" }, "No incidents."));
  const details = await Promise.all(incidents.slice(0, 10).map((i) => get(`/api/v1/incidents/${i.id}`).then((d) => d.incident).catch(() => null)));
  return h("section", { id: "incidents" }, incidents.map((s, n) => {
    const full = details[n];
    const comment = h("input", { type: "text", placeholder: "comment (required to reject)", "aria-label": "comment", disabled: !!forbidden("incident_decision") });
    const decide = (d) => guarded("incident_decision", { dataset: { incident: s.id, decision: d },
      onclick: () => act(`${d} incident ${s.id}`, () => post(`/api/v1/incidents/${s.id}/${d}`, { comment: comment.value }), rerender) },
      d === "approve" ? "Approve" : "Reject");
    const awaiting = s.phase === "awaiting_approval";
    return h("div", { class: "card", dataset: { incident: s.id, phase: s.phase } },
      h("h2", {}, `#${s.id} ${s.signal || ""} on ${s.stack || s.scope}`),
      h("p", {}, "phase ", h("strong", {}, String(s.phase)), ` · confidence ${s.confidence == null ? "–" : pct(s.confidence)} · opened ${when(s.opened_ms)} · ${s.triggers} trigger(s)`),
      h("p", {}, "proposed action: ", h("strong", {}, s.proposal || "none")),
      full && full.evidence ? evidence(full.evidence) : null,
      awaiting ? h("div", { class: "actions" }, comment, decide("approve"), decide("reject")) : null);
  }));
}
incidents.refreshOn = ["incidents"];

// The evidence bundle: signals with their series plotted, correlated events, the
// dependency checks behind the proposal, what moved the confidence; and the raw JSON.
function evidence(ev) {
  const charts = [];
  const signals = (ev.signals || []).map((sg) => {
    const box = h("div", { class: "series" });
    if ((sg.series || []).length > 1 && window.uPlot) {
      charts.push(() => new window.uPlot({
        width: 420, height: 120, legend: { show: false },
        series: [{}, { label: sg.signal, stroke: sg.localised ? "#b91c1c" : "#2563eb", width: 1.5 }],
        axes: [{ show: false }, { size: 50 }],
      }, [sg.series.map((p) => p[0] / 1000), sg.series.map((p) => p[1])], box));
    }
    return h("tr", {}, h("td", {}, sg.stack), h("td", {}, sg.signal), h("td", {}, String(sg.severity)),
      h("td", { class: "num" }, num(sg.observed, 4)), h("td", { class: "num" }, sg.baseline == null ? "–" : num(sg.baseline, 4)),
      h("td", { class: "num" }, num(sg.score, 2)), h("td", {}, sg.localised ? "yes" : ""), h("td", {}, box));
  });
  queueMicrotask(() => charts.forEach((c) => c()));
  const events = (ev.events || []).map((e) => h("tr", {}, h("td", {}, e.id), h("td", {}, typeof e.kind === "string" ? e.kind : JSON.stringify(e.kind)),
    h("td", {}, e.relation), h("td", {}, e.suspect ? h("span", { class: "warn" }, "suspect") : "")));
  const deps = (ev.dependencies || []).map((d) => h("tr", {}, h("td", {}, d.stack), h("td", {}, d.healthy ? "healthy" : h("span", { class: "bad" }, "unhealthy")),
    h("td", { class: "num" }, num(d.current_rps)), h("td", { class: "num" }, num(d.projected_rps)), h("td", { class: "num" }, d.limit_rps ? num(d.limit_rps) : "unknown"),
    h("td", {}, d.ok ? h("span", { class: "good" }, "ok") : h("span", { class: "bad" }, "over"))));
  return h("div", { class: "evidence" },
    ev.localisation ? h("p", {}, `localisation: ${ev.localisation}`) : null,
    ev.expected_effect ? h("p", {}, `expected effect: ${ev.expected_effect}`) : null,
    signals.length ? table(["stack", "signal", "severity", "observed", "baseline", "score", "localised", "series"], signals) : null,
    events.length ? [h("h2", {}, "Correlated events"), table(["event", "kind", "relation", ""], events)] : null,
    deps.length ? [h("h2", {}, "Dependency checks"), table(["stack", "health", "now rps", "projected rps", "limit rps", ""], deps)] : null,
    (ev.factors || []).length ? h("p", { class: "muted" }, "confidence factors: " + ev.factors.map(([f, v]) => `${f} ${v >= 0 ? "+" : ""}${num(v, 2)}`).join(", ")) : null,
    h("details", {}, h("summary", {}, "evidence bundle (JSON)"), h("pre", {}, JSON.stringify(ev, null, 2))));
}

// ---- audit ----------------------------------------------------------------------------

export async function audit() {
  const [list, verify] = await Promise.all([get("/api/v1/audit?limit=100"), get("/api/v1/audit/verify")]);
  const rows = list.entries.map((e) => {
    const d = e.draft || e;
    return h("tr", {}, h("td", { class: "num" }, e.seq), h("td", {}, when(d.at_ms || d.time_ms || d.unix_ms)),
      h("td", {}, d.actor), h("td", {}, d.kind), h("td", {}, d.subject), h("td", {}, d.summary || d.action || ""), h("td", { class: "muted" }, d.reason || ""));
  });
  return h("section", { id: "audit" },
    h("p", { id: "audit-verify", class: verify.ok ? "good" : "bad" },
      verify.ok ? `Chain verified: ${verify.entries} entries, head ${String(verify.head_hash).slice(0, 16)}…`
        : `Chain BROKEN at entry ${verify.first_broken}`),
    table(["seq", "time", "actor", "kind", "subject", "what", "why"], rows));
}
audit.refreshOn = ["audit"];

// ---- policy -----------------------------------------------------------------------------

export async function policy(rerender) {
  const [current, history] = await Promise.all([get("/api/v1/policy"), get("/api/v1/history?limit=100")]);
  const versions = history.versions.filter((v) => ["bootstrap", "policy_apply", "policy_rollback"].includes(v.kind));
  const pick = (id, sel) => h("select", { id }, versions.map((v) =>
    h("option", { value: v.version, selected: v.version === sel }, `v${v.version} ${v.policy_name || ""} (${v.actor || "–"})`)));
  const from = pick("diff-from", (versions[1] || versions[0] || {}).version);
  const to = pick("diff-to", (versions[0] || {}).version);
  const diffBox = h("pre", { class: "diff", id: "diff" });
  const showDiff = async () => {
    try {
      const d = await get(`/api/v1/policy/diff?from=${from.value}&to=${to.value}`);
      diffBox.replaceChildren(...d.lines.map((l) => h("div", { class: l.op }, (l.op === "added" ? "+ " : l.op === "removed" ? "- " : "  ") + l.text)));
      if (!d.changed) diffBox.prepend(h("div", { class: "muted" }, "(no difference)"));
    } catch (e) { flash(errorText(e)); }
  };
  const text = h("textarea", { id: "policy-text", spellcheck: "false" });
  text.value = JSON.stringify(current.policy, null, 2);
  const verdict = h("div", { id: "policy-verdict" });
  const comment = h("input", { type: "text", placeholder: "why (kept in the audit log)", "aria-label": "comment" });
  const applyWhy = forbidden("policy_apply");
  const apply = h("button", { id: "policy-apply", disabled: true, title: applyWhy }, "Apply");
  let validated = null;
  text.addEventListener("input", () => { apply.disabled = true; validated = null; });
  const validate = async () => {
    try {
      const v = await post("/api/v1/policy/validate", { policy: text.value });
      validated = v.valid ? text.value : null;
      apply.disabled = !v.valid || !!applyWhy;
      verdict.replaceChildren(v.valid
        ? h("p", { class: "good" }, `valid: stacks ${v.stacks.join(", ")}`, v.warnings.map((w) => h("div", { class: "warn" }, `${w.field}: ${w.message}`)))
        : h("div", { class: "bad" }, `invalid (${v.errors.length}):`, v.errors.map((e) => h("div", {}, `${e.field}: ${e.message}`))));
    } catch (e) { flash(errorText(e)); }
  };
  apply.addEventListener("click", () => act("apply policy", () =>
    post("/api/v1/policy/apply", { policy: validated, comment: comment.value, expected_version: history.current_version }), rerender));
  queueMicrotask(showDiff);
  return h("section", { id: "policy" },
    h("h2", {}, `In force: v${current.info.version} (policy ${current.info.policy_name || "unnamed"}, digest ${String(current.info.policy_digest).slice(0, 12)})`),
    h("h2", {}, "Versions"),
    table(["version", "kind", "time", "actor", "comment"], versions.map((v) =>
      h("tr", {}, h("td", {}, `v${v.version}`), h("td", {}, v.kind), h("td", {}, when(v.created_unix_ms)), h("td", {}, v.actor), h("td", {}, v.comment)))),
    h("h2", {}, "Diff"),
    h("div", { class: "actions" }, "from ", from, " to ", to, h("button", { onclick: showDiff }, "Show diff")),
    diffBox,
    h("h2", {}, "Edit, validate, apply"),
    text,
    h("div", { class: "actions" }, h("button", { id: "policy-validate", onclick: validate }, "Validate"), comment, apply),
    verdict);
}
policy.refreshOn = [];

// ---- explain -------------------------------------------------------------------------------

export async function explain() {
  const hdrs = h("textarea", { id: "explain-headers", placeholder: ":path: /checkout\nuser-agent: Mozilla/5.0\nx-country: DE" });
  hdrs.style.minHeight = "8rem";
  const cookie = h("input", { type: "text", id: "explain-cookie", placeholder: "cookie header value", "aria-label": "cookie" });
  const source = h("input", { type: "text", id: "explain-source", placeholder: "client IP", "aria-label": "client IP" });
  const out = h("div", { id: "explain-result" });
  const run = async () => {
    const headers = hdrs.value.split("\n").map((l) => l.trim()).filter(Boolean).map((l) => {
      const i = l.indexOf(":", l.startsWith(":") ? 1 : 0);
      return i < 0 ? [l, ""] : [l.slice(0, i).trim(), l.slice(i + 1).trim()];
    });
    const body = { headers };
    if (cookie.value.trim()) body.cookie = cookie.value.trim();
    if (source.value.trim()) body.source = source.value.trim();
    try {
      const r = await post("/api/v1/explain", body);
      const d = r.decision;
      out.replaceChildren(
        h("p", {}, "decision: ", h("strong", { id: "explain-decision" }, d.kind === "stack" ? `${d.stack} (${d.how})` : d.kind === "queue" ? `queued to the intake (degraded mode; meant for ${d.intended || "–"})` : `local reply ${d.status} ${d.message}`)),
        h("p", {}, `rule: ${r.rule.id} (#${r.rule.index}${r.rule.default ? ", the default" : ""}) at version ${r.version}`),
        h("h2", {}, `Affinity cookie (${r.affinity.cookie_name})`),
        h("p", { id: "explain-affinity", dataset: { verdict: r.affinity.verdict || r.affinity.cookie } }, r.affinity.explanation),
        h("h2", {}, "Classification"), h("pre", {}, JSON.stringify(r.classification, null, 2)),
        h("h2", {}, "Stacks of the rule"),
        table(["stack", "role", "policy weight", "factor", "healthy", "eligible", "share"], r.targets.map((t) =>
          h("tr", {}, h("td", {}, t.stack), h("td", {}, t.role), h("td", { class: "num" }, t.policy_weight), h("td", { class: "num" }, `${t.factor_percent}%`),
            h("td", {}, t.healthy ? "yes" : "no"), h("td", {}, t.eligible ? "yes" : h("span", { class: "bad" }, t.why_not)), h("td", { class: "num" }, t.share == null ? "" : pct(t.share))))),
        h("p", { class: "muted" }, r.note));
    } catch (e) { out.replaceChildren(h("p", { class: "bad" }, errorText(e))); }
  };
  return h("section", { id: "explain" },
    h("h2", {}, "Why did this request go there?"),
    h("p", { class: "muted" }, "Paste request headers (one per line, name: value), the cookie and the client address. Computed by the filter's own router against the policy and stack states in force."),
    hdrs, h("div", { class: "actions" }, cookie, source, h("button", { id: "explain-run", onclick: run }, "Explain")), out);
}
explain.refreshOn = [];
