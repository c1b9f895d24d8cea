// The console's only door to the control service: every call carries the signed-in
// token (sessionStorage) as `Authorization: Bearer …`; errors come back as the API's
// `{"error": {"code", "message", "field"}}` and are thrown as ApiError.

const TOKEN_KEY = "switchyard.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(t) {
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const h = { Accept: "application/json", ...extra };
  const t = token();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || "http";
    this.field = e.field;
    this.problems = e.problems || [];
  }
}

async function call(method, path, body) {
  const init = { method, headers: headers() };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let parsed = null;
  try { parsed = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) throw new ApiError(r.status, parsed);
  return parsed;
}

export const get = (path) => call("GET", path);
export const post = (path, body = {}) => call("POST", path, body);

// Who is signed in and which actions their role allows (`GET /api/v1/whoami`, the
// access table's answer). Buttons a role may not use are disabled; the server refuses a
// forged call anyway. Fetched again whenever the token changes.
let me = null;
let meFor = null;

export async function loadIdentity() {
  const t = token();
  if (meFor === t && me) return me;
  meFor = t;
  try { me = await get("/api/v1/whoami"); } catch (_) { me = null; }
  return me;
}

export function identity() {
  return me;
}

// Whether the signed-in role may use a console action (`incident_decision`,
// `rollout_command`, `stack_op`, `policy_apply`, …); unknown identity: no.
export function may(action) {
  return !!(me && me.actions && me.actions[action]);
}

// Server-sent events read with fetch() so the token travels in a header (EventSource
// cannot set one). Reconnects after a drop; `onState(true|false)` reports the link.
export function stream(onEvent, onState) {
  let stopped = false;
  let controller = null;
  async function once() {
    controller = new AbortController();
    const r = await fetch("/api/v1/stream", { headers: headers({ Accept: "text/event-stream" }), signal: controller.signal });
    if (!r.ok || !r.body) throw new ApiError(r.status, null);
    onState(true);
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value.replace(/\r\n/g, "\n");
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length === 0) continue; // keep-alive comment
        let payload = {};
        try { payload = JSON.parse(data.join("\n")); } catch (_) { /* ignore */ }
        onEvent(name, payload);
      }
    }
  }
  (async () => {
    while (!stopped) {
      try { await once(); } catch (_) { /* dropped: retry */ }
      onState(false);
      if (!stopped) await new Promise((res) => setTimeout(res, 1000));
    }
  })();
  return () => { stopped = true; if (controller) controller.abort(); };
}
