// A file browser for one capsule: list a directory, go into folders, download, upload, delete.

import { call, describe, post, saveResponse } from "./api.js";
import { fmtBytes, fmtTime, h, notice, replace } from "./dom.js";

function join(dir, name) {
  return dir.endsWith("/") ? `${dir}${name}` : `${dir}/${name}`;
}

function parent(dir) {
  const cut = dir.replace(/\/+$/, "").lastIndexOf("/");
  return cut <= 0 ? "/" : dir.slice(0, cut);
}

/** The file browser of capsule `id`, starting at `start`; returns {el, refresh}. */
export function filesPanel(id, start = "/") {
  let dir = start;
  const messages = h("div", { "aria-live": "polite" });
  const pathInput = h("input", { id: "files-path", type: "text", value: dir, spellcheck: "false" });
  const tbody = h("tbody");
  const upload = h("input", { type: "file", id: "files-upload", multiple: true });
  const say = (err, text) => replace(messages, err ? notice("error", describe(err)) : notice("ok", text));

  async function list(to) {
    try {
      const body = await post(`/capsules/${id}/files/list`, { path: to, depth: 1 });
      dir = to;
      pathInput.value = dir;
      const entries = [...body.entries].sort((a, b) =>
        (a.type === "directory") === (b.type === "directory") ? a.name.localeCompare(b.name) : a.type === "directory" ? -1 : 1);
      const rows = entries.map((e) => h("tr", { "data-name": e.name },
        h("td", {}, e.type === "directory"
          ? h("button", { type: "button", class: "link", onclick: () => list(e.path) }, `${e.name}/`)
          : h("span", { class: "mono" }, e.name + (e.symlink_target ? ` → ${e.symlink_target}` : ""))),
        h("td", { class: "num" }, e.type === "directory" ? "—" : fmtBytes(e.size)),
        h("td", { class: "mono small" }, e.permissions),
        h("td", { class: "small" }, fmtTime(e.modified_at)),
        h("td", {}, h("div", { class: "actions" },
          e.type !== "directory" ? h("button", { type: "button", "aria-label": `Download ${e.name}`, onclick: () => download(e) }, "Download") : null,
          h("button", { type: "button", class: "danger", "aria-label": `Delete ${e.name}`, onclick: () => remove(e) }, "Delete")))));
      replace(tbody, rows.length ? rows : h("tr", {}, h("td", { colspan: 5, class: "empty" }, "This folder is empty.")));
    } catch (err) {
      say(err);
    }
  }

  async function download(e) {
    try {
      const resp = await call("POST", `/capsules/${id}/files/stream/read`, { json: { path: e.path }, raw: true });
      await saveResponse(resp, e.name);
      say(null, `Downloaded ${e.path}.`);
    } catch (err) {
      say(err);
    }
  }

  async function remove(e) {
    if (!confirm(`Delete ${e.path}${e.type === "directory" ? " and everything in it" : ""}?`)) return;
    try {
      await post(`/capsules/${id}/files/remove`, { path: e.path });
      say(null, `Deleted ${e.path}.`);
      list(dir);
    } catch (err) {
      say(err);
    }
  }

  async function send() {
    const files = [...upload.files];
    if (!files.length) return say(new Error("Choose a file to upload first."));
    try {
      for (const f of files) {
        const form = new FormData();
        form.append("path", join(dir, f.name));
        form.append("file", f, "upload");
        await call("POST", `/capsules/${id}/files/write`, { body: form });
      }
      say(null, `Uploaded ${files.map((f) => join(dir, f.name)).join(", ")}.`);
      upload.value = "";
      list(dir);
    } catch (err) {
      say(err);
    }
  }

  const el = h("div", {},
    h("form", { class: "path-bar", onsubmit: (e) => { e.preventDefault(); list(pathInput.value.trim() || "/"); } },
      h("label", { for: "files-path", class: "visually-hidden" }, "Folder"),
      h("button", { type: "button", onclick: () => list(parent(dir)), "aria-label": "Parent folder" }, "↑ Up"),
      pathInput,
      h("button", { type: "submit" }, "Open")),
    h("div", { class: "file-list" },
      h("table", { id: "file-table" },
        h("thead", {}, h("tr", {}, ["Name", "Size", "Mode", "Modified", "Actions"].map((c) =>
          h("th", { scope: "col", class: c === "Size" ? "num" : undefined }, c)))),
        tbody)),
    h("div", { class: "row" },
      h("label", { for: "files-upload" }, "Upload into this folder", upload),
      h("button", { type: "button", id: "files-upload-button", onclick: send }, "Upload")),
    messages);
  list(dir);
  return { el, refresh: () => list(dir) };
}
