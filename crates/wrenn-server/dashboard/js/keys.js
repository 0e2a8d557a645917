// API keys: list, create (the secret is shown once), revoke.

import { ApiError, del, describe, get, post } from "./api.js";
import { fmtTime, h, notice, replace } from "./dom.js";

/** Renders the API keys page into `main`. */
export function keysPage(main, { onUnauthorized }) {
  const messages = h("div", { "aria-live": "polite", id: "keys-messages" });
  const body = h("div", {}, h("p", { class: "muted" }, "Loading keys…"));
  const say = (err, ...text) => {
    if (err instanceof ApiError && err.status === 401) return onUnauthorized();
    replace(messages, err ? notice("error", describe(err)) : notice("ok", ...text));
  };

  async function load() {
    let keys;
    try {
      keys = await get("/api-keys");
    } catch (err) {
      if (err instanceof ApiError && err.status === 404 && err.message.includes("route")) {
        replace(body, notice("info",
          "This server does not offer key management yet: GET /v1/api-keys answered 404 (no such route). ",
          "Create keys on the server with ", h("code", {}, "wrenn key create --team NAME"), "."));
        return;
      }
      replace(body, notice("error", describe(err)));
      return;
    }
    const name = h("input", { id: "key-name", type: "text", required: true, maxlength: 64 });
    const submit = h("button", { type: "submit", class: "primary" }, "Create key");
    replace(body,
      h("form", {
        class: "row", "aria-label": "Create an API key",
        onsubmit: async (e) => {
          e.preventDefault();
          submit.disabled = true;
          try {
            const k = await post("/api-keys", { name: name.value.trim() });
            const secret = h("code", { id: "new-key" }, k.key);
            say(null, h("strong", {}, `Key "${k.name}" created. Copy it now: it is shown only once.`),
              h("div", { class: "secret" }, secret,
                h("button", { type: "button", onclick: () => navigator.clipboard?.writeText(k.key) }, "Copy")));
            name.value = "";
            load();
          } catch (err) {
            say(err);
          } finally {
            submit.disabled = false;
          }
        },
      }, h("label", {}, "Name", name), submit),
      h("table", { id: "key-table" },
        h("thead", {}, h("tr", {}, ["Name", "Prefix", "Created", "Last used", ""].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, keys.length ? keys.map((k) => h("tr", { "data-id": k.id },
          h("td", {}, k.name),
          h("td", { class: "mono" }, `${k.prefix}…`),
          h("td", {}, fmtTime(k.created_at)),
          h("td", {}, k.last_used_at ? fmtTime(k.last_used_at) : "never"),
          h("td", {}, h("button", {
            type: "button", class: "danger", "aria-label": `Revoke key ${k.name}`,
            onclick: async () => {
              if (!confirm(`Revoke key "${k.name}"? Programs using it stop working at once.`)) return;
              try {
                await del(`/api-keys/${encodeURIComponent(k.id)}`);
                say(null, `Revoked key "${k.name}".`);
                load();
              } catch (err) {
                say(err);
              }
            },
          }, "Revoke"))))
          : h("tr", {}, h("td", { colspan: 5, class: "empty" }, "No keys.")))));
  }

  main.append(
    h("h1", {}, "API keys"),
    messages,
    h("section", { class: "panel", "aria-labelledby": "keys-h" }, h("h2", { id: "keys-h" }, "Your team's keys"), body));
  load();
  return null;
}
