// The capsules page: a create form and the live list (kept current from the event stream).

import { ApiError, del, describe, get, post } from "./api.js";
import { fmtAgo, fmtMb, h, notice, replace, statusBadge } from "./dom.js";

const HIDDEN = new Set(["stopped", "error"]);

/** Buttons for the actions allowed in `cap.status`; `report(err|null, text)` shows results. */
export function capsuleActions(cap, report, { onDestroyed } = {}) {
  const act = (label, fn, cls) => h("button", {
    type: "button", class: cls, "data-action": label.toLowerCase(),
    "aria-label": `${label} ${cap.id}`,
    onclick: async (e) => {
      e.target.disabled = true;
      try {
        await fn();
        report(null, `${label}: request accepted for ${cap.id}.`);
      } catch (err) {
        report(err);
      } finally {
        e.target.disabled = false;
      }
    },
  }, label);
  const buttons = [];
  if (cap.status === "running") buttons.push(act("Pause", () => post(`/capsules/${cap.id}/pause`)));
  if (cap.status === "paused") buttons.push(act("Resume", () => post(`/capsules/${cap.id}/resume`)));
  if (!HIDDEN.has(cap.status) && cap.status !== "stopping") {
    buttons.push(act("Destroy", async () => {
      if (!confirm(`Destroy capsule ${cap.id}? Its files and processes are lost.`)) throw new Error("Destroy cancelled.");
      await del(`/capsules/${cap.id}`);
      if (onDestroyed) onDestroyed();
    }, "danger"));
  }
  return h("div", { class: "actions" }, buttons);
}

function createForm(templates, report) {
  const field = (label, input) => h("label", {}, label, input);
  const template = h("select", { name: "template", id: "new-template" },
    templates.map((t) => h("option", { value: t.name, selected: t.name === "minimal" || undefined }, t.name)));
  const num = (name, value, min, max, step) => h("input", { type: "number", name, id: `new-${name}`, value, min, max, step });
  const vcpus = num("vcpus", 1, 1, 64, 1);
  const memory = num("memory_mb", 512, 64, 262144, 64);
  const timeout = num("timeout_sec", 0, 0, 86400, 1);
  const submit = h("button", { class: "primary", type: "submit" }, "Create capsule");
  return h("form", {
    class: "row", "aria-label": "Create a capsule",
    onsubmit: async (e) => {
      e.preventDefault();
      submit.disabled = true;
      try {
        const cap = await post("/capsules", {
          template: template.value,
          vcpus: Number(vcpus.value),
          memory_mb: Number(memory.value),
          timeout_sec: Number(timeout.value),
        });
        report(null, h("span", {}, "Created ", h("a", { href: `#/capsules/${cap.id}` }, cap.id), "; it is starting."));
      } catch (err) {
        report(err);
      } finally {
        submit.disabled = false;
      }
    },
  },
  field("Template", template),
  field("vCPUs", vcpus),
  field("Memory (MiB)", memory),
  field("Inactivity timeout (s, 0 = none)", timeout),
  submit);
}

/** Renders the capsules page into `main`; returns its cleanup. */
export function capsulesPage(main, { live, onUnauthorized }) {
  const capsules = new Map();
  const messages = h("div", { "aria-live": "polite" });
  const report = (err, text) => {
    if (err instanceof ApiError && err.status === 401) return onUnauthorized();
    if (err && err.message === "Destroy cancelled.") return;
    replace(messages, err ? notice("error", describe(err)) : notice("ok", text));
  };
  const formBox = h("div", {}, h("p", { class: "muted" }, "Loading templates…"));
  const tbody = h("tbody");
  const table = h("table", { id: "capsule-table" },
    h("caption", { class: "muted small" }, "Status updates arrive live from the server's event stream."),
    h("thead", {}, h("tr", {},
      ["Capsule", "Status", "Template", "vCPUs", "Memory", "Created", "Actions"].map((c) =>
        h("th", { scope: "col", class: ["vCPUs", "Memory"].includes(c) ? "num" : undefined }, c)))),
    tbody);

  const render = () => {
    const rows = [...capsules.values()]
      .filter((c) => !HIDDEN.has(c.status))
      .sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
    if (!rows.length) {
      replace(tbody, h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No capsules yet. Create one above.")));
      return;
    }
    replace(tbody, rows.map((c) => h("tr", { "data-id": c.id },
      h("td", {}, h("a", { href: `#/capsules/${c.id}`, class: "mono" }, c.id)),
      h("td", {}, statusBadge(c.status)),
      h("td", {}, c.template),
      h("td", { class: "num" }, c.vcpus),
      h("td", { class: "num" }, fmtMb(c.memory_mb)),
      h("td", { title: c.created_at }, fmtAgo(c.created_at)),
      h("td", {}, capsuleActions(c, report)))));
  };

  main.append(
    h("h1", {}, "Capsules"),
    h("section", { class: "panel", "aria-labelledby": "create-h" }, h("h2", { id: "create-h" }, "New capsule"), formBox),
    messages,
    h("section", { class: "panel", "aria-labelledby": "list-h" }, h("h2", { id: "list-h" }, "Your capsules"), table),
  );

  // The list, then events; after a reconnect (a new `connected` event) the list is re-read,
  // since events may have been missed meanwhile.
  const load = () => get("/capsules")
    .then((list) => {
      const seen = new Set(list.map((c) => c.id));
      for (const id of capsules.keys()) if (!seen.has(id)) capsules.delete(id);
      for (const c of list) capsules.set(c.id, { ...capsules.get(c.id), ...c });
      render();
    })
    .catch(report);
  const stop = live.on((ev) => {
    if (ev.event === "connected") {
      load();
    } else if (ev.sandbox && ev.sandbox.id) {
      capsules.set(ev.sandbox.id, { ...capsules.get(ev.sandbox.id), ...ev.sandbox });
      render();
    }
  });
  get("/snapshots")
    .then((ts) => replace(formBox, createForm(ts, report)))
    .catch((err) => replace(formBox, notice("error", `Templates could not be listed: ${describe(err)}`)));
  load();
  const tick = setInterval(render, 30000);
  return () => {
    stop();
    clearInterval(tick);
  };
}
