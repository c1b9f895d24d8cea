// The console shell: sign-in box, hash routes, the live event stream. A page re-renders
// when an event it cares about arrives (see `refreshOn` in pages.js), without reload.

import { setToken, token, stream, loadIdentity, identity } from "./api.js";
import * as pages from "./pages.js";

const routes = {
  fleet: pages.fleet,
  traffic: pages.traffic,
  rollouts: pages.rollouts,
  incidents: pages.incidents,
  audit: pages.audit,
  policy: pages.policy,
  explain: pages.explain,
};

let current = null;
let pollTimer = null;
let rendering = null;
let again = false;

function routeName() {
  const name = (location.hash.replace(/^#\/?/, "") || "fleet").split("/")[0];
  return routes[name] ? name : "fleet";
}

// Renders the current page; a render asked for while one runs happens after it.
async function render() {
  if (rendering) { again = true; return rendering; }
  rendering = (async () => {
    do {
      again = false;
      const name = routeName();
      const page = routes[name];
      for (const a of document.querySelectorAll("header nav a")) a.classList.toggle("active", a.getAttribute("href") === `#/${name}`);
      try {
        await loadIdentity();
        showSignedIn();
        const node = await page(render);
        document.getElementById("page").replaceChildren(node);
        document.body.dataset.rendered = String(Number(document.body.dataset.rendered || 0) + 1);
      } catch (e) {
        const msg = e.status === 401 ? "Not signed in (401): enter a token above."
          : e.status === 403 ? `Not allowed for your role (403): ${e.message}` : `Could not load ${name}: ${e.message || e}`;
        document.getElementById("page").replaceChildren(pages.h("p", { class: "bad" }, msg));
      }
      if (current !== name) {
        current = name;
        clearInterval(pollTimer);
        if (page.poll) pollTimer = setInterval(softRender, page.poll);
      }
    } while (again);
  })();
  try { await rendering; } finally { rendering = null; }
}

// Live updates and polls wait while someone types into the page (a re-render would
// wipe a half-written comment); the page catches up when the field loses focus.
let deferred = false;
function editing() {
  const a = document.activeElement;
  return !!a && document.getElementById("page").contains(a) && ["INPUT", "TEXTAREA", "SELECT"].includes(a.tagName);
}
function softRender() {
  if (editing()) deferred = true;
  else render();
}
document.getElementById("page").addEventListener("focusout", () => {
  setTimeout(() => {
    if (deferred && !editing()) { deferred = false; render(); }
  }, 0);
});

function onEvent(name, data) {
  const live = document.getElementById("live");
  live.dataset.last = name;
  if (name === "version") live.dataset.version = data.version;
  const page = routes[routeName()];
  if (name === "hello" || (page.refreshOn || []).includes(name)) softRender();
}

function onState(up) {
  const live = document.getElementById("live");
  live.className = `live ${up ? "on" : "off"}`;
  live.textContent = up ? "live" : "offline";
}

let stopStream = null;
function connect() {
  if (stopStream) stopStream();
  stopStream = stream(onEvent, onState);
}

// The header says who is signed in, as the server knows them (not what was typed).
function showSignedIn() {
  document.getElementById("signin").classList.toggle("signed-in", !!token());
  const me = identity();
  const who = document.getElementById("whoami");
  who.textContent = !me ? "" : me.authenticated ? `${me.name} (${me.role})` : "authentication off";
  who.title = me && me.authenticated ? `token ${me.credential.id}` : "";
  who.dataset.role = me && me.role ? me.role : "";
}

document.getElementById("signin").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token");
  setToken(input.value.trim());
  input.value = "";
  showSignedIn();
  connect();
  render();
});
document.getElementById("signout").addEventListener("click", () => {
  setToken("");
  showSignedIn();
  connect();
  render();
});
window.addEventListener("hashchange", () => {
  document.getElementById("flash").replaceChildren(); // an outcome belongs to its page
  render();
});

showSignedIn();
connect();
render();
