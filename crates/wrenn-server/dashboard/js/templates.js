// Templates and snapshots: list them, snapshot a capsule into a new template, delete one.

import { ApiError, del, describe, get, post } from "./api.js";
import { fmtBytes, fmtMb, fmtTime, h, notice, replace } from "./dom.js";

/** Renders the templates page into `main`; returns its cleanup. */
export function templatesPage(main, { live, onUnauthorized }) {
  const messages = h("div", { "aria-live": "polite" });
  const tbody = h("tbody");
  const formBox = h("div", {}, h("p", { class: "muted" }, "Loading capsules…"));
  const say = (err, text) => {
    if (err instanceof ApiError && err.status === 401) return onUnauthorized();
    replace(messages, err ? notice("error", describe(err)) : notice("ok", text));
  };

  async function load() {
    try {
      const list = await get("/snapshots");
      replace(tbody, list.length ? list.map((t) => h("tr", { "data-name": t.name },
        h("td", { class: "mono" }, t.name),
        h("td", {}, t.type === "snapshot" ? "snapshot" : "base"),
        h("td", { class: "num" }, t.vcpus ?? "—"),
        h("td", { class: "num" }, t.memory_mb ? fmtMb(t.memory_mb) : "—"),
        h("td", { class: "num" }, fmtBytes(t.size_bytes)),
        h("td", {}, fmtTime(t.created_at)),
        h("td", {}, t.protected || t.platform
          ? h("span", { class: "muted small" }, t.protected ? "built in" : "platform")
          : h("button", {
            type: "button", class: "danger", "aria-label": `Delete template ${t.name}`,
            onclick: async () => {
              if (!confirm(`Delete template ${t.name}? Capsules cannot be created from it any more.`)) return;
              try {
                await del(`/snapshots/${encodeURIComponent(t.name)}`);
                say(null, `Deleted template ${t.name}.`);
                load();
              } catch (err) {
                say(err);
              }
            },
          }, "Delete"))))
        : h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No templates.")));
    } catch (err) {
      say(err);
    }
  }

  async function loadForm() {
    try {
      const caps = (await get("/capsules")).filter((c) => c.status === "running" || c.status === "paused");
      if (!caps.length) {
        replace(formBox, h("p", { class: "muted" }, "Start a capsule first: a snapshot saves a running or paused capsule's files as a new template."));
        return;
      }
      const capsule = h("select", { id: "snap-capsule" }, caps.map((c) => h("option", { value: c.id }, `${c.id} (${c.template}, ${c.status})`)));
      const name = h("input", { id: "snap-name", type: "text", placeholder: "optional", pattern: "[A-Za-z0-9][A-Za-z0-9_.\\-]*", spellcheck: "false" });
      const submit = h("button", { type: "submit", class: "primary" }, "Snapshot");
      replace(formBox, h("form", {
        class: "row",
        onsubmit: async (e) => {
          e.preventDefault();
          submit.disabled = true;
          say(null, "Saving the snapshot: this takes a few seconds…");
          try {
            const body = { sandbox_id: capsule.value };
            if (name.value.trim()) body.name = name.value.trim();
            const t = await post("/snapshots", body);
            say(null, `Saved template ${t.name}.`);
            name.value = "";
            load();
          } catch (err) {
            say(err);
          } finally {
            submit.disabled = false;
          }
        },
      }, h("label", {}, "Capsule", capsule), h("label", {}, "Template name", name), submit));
    } catch (err) {
      say(err);
    }
  }

  main.append(
    h("h1", {}, "Templates and snapshots"),
    h("section", { class: "panel", "aria-labelledby": "snap-h" }, h("h2", { id: "snap-h" }, "Snapshot a capsule"), formBox),
    messages,
    h("section", { class: "panel", "aria-labelledby": "tpl-h" }, h("h2", { id: "tpl-h" }, "Templates"),
      h("table", { id: "template-table" },
        h("thead", {}, h("tr", {}, ["Name", "Kind", "vCPUs", "Memory", "Size", "Created", ""].map((c) =>
          h("th", { scope: "col", class: ["vCPUs", "Memory", "Size"].includes(c) ? "num" : undefined }, c)))),
        tbody)));
  load();
  loadForm();
  return live.on((ev) => { if (ev.event && ev.event.startsWith("template.")) load(); });
}
