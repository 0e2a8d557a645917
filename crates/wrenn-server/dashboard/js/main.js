// Entry point: sign-in, the page frame, the hash router and the live event feed.

import { ApiError, describe, followEvents, get, session } from "./api.js";
import { h, notice, replace } from "./dom.js";
import { capsulesPage } from "./capsules.js";
import { capsulePage } from "./capsule.js";
import { templatesPage } from "./templates.js";
import { usagePage } from "./usage.js";
import { keysPage } from "./keys.js";

const app = document.getElementById("app");

/** Live capsule updates from the event stream; views subscribe with `live.on(fn)`. */
export const live = {
  listeners: new Set(),
  on(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  },
  emit(event) {
    for (const fn of this.listeners) fn(event);
  },
};

const PAGES = [
  { path: "capsules", label: "Capsules", page: capsulesPage },
  { path: "templates", label: "Templates", page: templatesPage },
  { path: "usage", label: "Usage", page: usagePage },
  { path: "keys", label: "API keys", page: keysPage },
];

let stopEvents = null;
let cleanup = null;
let liveBadge = null;

function signIn(message) {
  if (stopEvents) stopEvents();
  stopEvents = null;
  if (cleanup) cleanup();
  cleanup = null;
  const input = h("input", {
    id: "api-key", name: "api-key", type: "password", autocomplete: "off", required: true,
    placeholder: "wrn_…", spellcheck: "false",
  });
  const status = h("div", { "aria-live": "polite" }, message ? notice("error", message) : null);
  const submit = h("button", { class: "primary", type: "submit" }, "Sign in");
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      const key = input.value.trim();
      if (!key) return;
      submit.disabled = true;
      session.set(key);
      try {
        await get("/capsules");
        start();
        document.getElementById("main")?.focus({ preventScroll: true });
      } catch (err) {
        session.clear();
        replace(status, notice("error", err instanceof ApiError && err.status === 401
          ? "That API key was not accepted. Check it and try again."
          : describe(err)));
        submit.disabled = false;
        input.focus();
      }
    },
  },
  h("label", { for: "api-key" }, "API key", input),
  h("p", { class: "muted small" },
    "The key stays in this browser tab only (session storage) and is sent with every request. ",
    "Create one on the server with ", h("code", {}, "wrenn key create"), "."),
  status,
  submit);
  replace(app, h("main", { id: "main", class: "signin" },
    h("div", { class: "panel" },
      h("h1", {}, h("img", { src: "icon.svg", alt: "", width: 28, height: 28, class: "logo" }), " Sign in to Wrenn"),
      form)));
  input.focus();
}

function frame() {
  liveBadge = h("span", { class: "live", id: "live", "aria-live": "polite" }, "connecting");
  const links = PAGES.map((p) => h("li", {}, h("a", { href: `#/${p.path}`, "data-page": p.path }, p.label)));
  const main = h("main", { id: "main", tabindex: "-1" });
  replace(app,
    h("header", { class: "top" },
      h("a", { class: "brand", href: "#/capsules" }, h("img", { src: "icon.svg", alt: "" }), "Wrenn"),
      h("nav", { class: "main", "aria-label": "Main" }, h("ul", {}, links)),
      h("span", { class: "spacer" }),
      liveBadge,
      h("button", { type: "button", onclick: () => { session.clear(); location.hash = ""; signIn(); } }, "Sign out")),
    main);
  return main;
}

function setLive(state) {
  if (!liveBadge) return;
  liveBadge.className = `live ${state}`;
  liveBadge.textContent = state === "on" ? "live" : "reconnecting";
}

function route() {
  if (!session.key()) return signIn();
  let main = document.getElementById("main");
  if (!main || !document.querySelector("header.top")) main = frame();
  if (cleanup) cleanup();
  cleanup = null;
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  const [section, id] = parts;
  const current = PAGES.find((p) => p.path === section) || PAGES[0];
  for (const a of document.querySelectorAll("nav.main a")) {
    if (a.dataset.page === current.path) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  main.replaceChildren();
  const ctx = { live, onUnauthorized: () => signIn("The API key was not accepted any more. Sign in again.") };
  try {
    cleanup = section === "capsules" && id ? capsulePage(main, id, ctx) : current.page(main, ctx);
  } catch (err) {
    main.append(notice("error", describe(err)));
  }
  document.title = `${current.label} · Wrenn`;
}

function start() {
  if (!stopEvents) {
    stopEvents = followEvents((ev) => live.emit(ev), setLive);
  }
  if (!location.hash.startsWith("#/")) history.replaceState(null, "", "#/capsules");
  route();
}

window.addEventListener("hashchange", () => {
  route();
  document.getElementById("main")?.focus({ preventScroll: true });
});
// The skip link moves the focus without touching the hash (the hash is the router's).
document.querySelector(".skip")?.addEventListener("click", (e) => {
  e.preventDefault();
  document.getElementById("main")?.focus();
});
if (session.key()) start();
else signIn();
