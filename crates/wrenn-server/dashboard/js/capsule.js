// One capsule: facts and actions, a live terminal, a file browser and metrics charts.

import { ApiError, describe, get, post } from "./api.js";
import { capsuleActions } from "./capsules.js";
import { chartBlock, lineChart } from "./chart.js";
import { fmtAgo, fmtBytes, fmtMb, fmtTime, h, notice, replace, statusBadge } from "./dom.js";
import { filesPanel } from "./files.js";
import { terminalPanel } from "./terminal.js";

const RANGES = { "5m": 300, "10m": 600, "1h": 3600, "2h": 7200, "6h": 21600, "24h": 86400 };
const LIVE = new Set(["running", "paused"]);

function facts(cap) {
  const fact = (k, v) => [h("dt", {}, k), h("dd", {}, v)];
  return h("dl", { class: "facts" },
    fact("Template", cap.template),
    fact("vCPUs", cap.vcpus),
    fact("Memory", fmtMb(cap.memory_mb)),
    fact("Disk", cap.disk_size_mb ? `${cap.disk_used_mb === undefined ? "?" : fmtMb(cap.disk_used_mb)} of ${fmtMb(cap.disk_size_mb)} used` : "no limit"),
    fact("Inactivity timeout", cap.timeout_sec ? `${cap.timeout_sec} s` : "none"),
    fact("Created", fmtTime(cap.created_at)),
    fact("Started", fmtTime(cap.started_at)),
    fact("Last active", fmtAgo(cap.last_active_at)));
}

function metricsPanel(id, getCap) {
  const range = h("select", { id: "metrics-range" },
    Object.keys(RANGES).map((r) => h("option", { value: r, selected: r === "10m" || undefined }, r)));
  const body = h("div", { class: "charts", id: "metrics" }, h("p", { class: "muted" }, "Loading metrics…"));
  async function load() {
    try {
      const m = await get(`/capsules/${id}/metrics?range=${range.value}`);
      const pts = m.points || [];
      const last = pts[pts.length - 1];
      const cap = getCap();
      const series = (key) => pts.map((p) => ({ t: p.timestamp_unix, v: p[key] }));
      const span = Math.min(RANGES[range.value], 30);
      replace(body,
        chartBlock("CPU", last ? `${last.cpu_pct.toFixed(1)} %` : "—",
          lineChart({ label: "CPU use, percent of the capsule's vCPUs", cls: "cpu", points: series("cpu_pct"), fixedMax: 100, fmtY: (v) => `${v.toFixed(0)}%`, span })),
        chartBlock("Memory", last ? `${fmtBytes(last.mem_bytes)} of ${fmtMb(cap.memory_mb)}` : "—",
          lineChart({ label: "Memory in use, bytes", cls: "mem", points: series("mem_bytes"), fmtY: fmtBytes, span })),
        chartBlock("Disk", last ? `${fmtBytes(last.disk_bytes)}${cap.disk_size_mb ? ` of ${fmtMb(cap.disk_size_mb)}` : ""}` : "—",
          lineChart({ label: "Disk in use, bytes", cls: "disk", points: series("disk_bytes"), fmtY: fmtBytes, span })));
      if (!pts.length) body.prepend(h("p", { class: "muted" }, "No samples yet: they appear within a few seconds."));
    } catch (err) {
      replace(body, err instanceof ApiError && err.status === 404
        ? h("p", { class: "muted" }, "Metrics are kept while the capsule is running or paused.")
        : notice("error", describe(err)));
    }
  }
  range.addEventListener("change", load);
  load();
  const timer = setInterval(load, 5000);
  return {
    el: h("div", {}, h("div", { class: "row" }, h("label", {}, "Range", range)), body),
    dispose: () => clearInterval(timer),
  };
}

/** Renders capsule `id` into `main`; returns its cleanup. */
export function capsulePage(main, id, { live, onUnauthorized }) {
  let cap = null;
  let terminal = null;
  let files = null;
  let metrics = null;
  const head = h("div", { class: "title" }, h("h1", { class: "mono" }, id));
  const info = h("section", { class: "panel", "aria-label": "Details" }, h("p", { class: "muted" }, "Loading…"));
  const messages = h("div", { "aria-live": "polite" });
  const termBox = h("div", {});
  const filesBox = h("div", {});
  const metricsBox = h("div", {});
  const report = (err, text) => {
    if (err instanceof ApiError && err.status === 401) return onUnauthorized();
    if (err && err.message === "Destroy cancelled.") return;
    replace(messages, err ? notice("error", describe(err)) : notice("ok", text));
  };

  const snapshot = async () => {
    const name = prompt("Name of the new template (letters, digits, - and _):", "");
    if (name === null) return;
    try {
      const t = await post("/snapshots", { sandbox_id: id, ...(name.trim() ? { name: name.trim() } : {}) });
      report(null, `Snapshot ${t.name || ""} is being saved; it appears under Templates.`);
    } catch (err) {
      report(err);
    }
  };

  function render() {
    replace(head,
      h("h1", { class: "mono" }, id),
      statusBadge(cap.status),
      capsuleActions(cap, report, { onDestroyed: () => { location.hash = "#/capsules"; } }),
      LIVE.has(cap.status) ? h("button", { type: "button", onclick: snapshot }, "Snapshot…") : null);
    replace(info, facts(cap));
    const running = cap.status === "running";
    if (running && !terminal) {
      terminal = terminalPanel(id);
      replace(termBox, terminal.el);
    } else if (!running && terminal) {
      terminal.dispose();
      terminal = null;
    }
    if (!running && !terminal) replace(termBox, h("p", { class: "muted" }, `The terminal and files are available while the capsule is running (it is ${cap.status}).`));
    if (running && !files) {
      files = filesPanel(id);
      replace(filesBox, files.el);
    } else if (!running && files) {
      files = null;
      replace(filesBox);
    }
    if (LIVE.has(cap.status) && !metrics) {
      metrics = metricsPanel(id, () => cap);
      replace(metricsBox, metrics.el);
    } else if (!LIVE.has(cap.status) && metrics) {
      metrics.dispose();
      metrics = null;
      replace(metricsBox, h("p", { class: "muted" }, "Metrics are kept while the capsule is running or paused."));
    }
  }

  main.append(
    h("p", {}, h("a", { href: "#/capsules" }, "← All capsules")),
    head, messages, info,
    h("section", { class: "panel", "aria-labelledby": "term-h" }, h("h2", { id: "term-h" }, "Terminal"), termBox),
    h("section", { class: "panel", "aria-labelledby": "files-h" }, h("h2", { id: "files-h" }, "Files"), filesBox),
    h("section", { class: "panel", "aria-labelledby": "metrics-h" }, h("h2", { id: "metrics-h" }, "Metrics"), metricsBox));

  const load = () => get(`/capsules/${id}`)
    .then((c) => { cap = { ...cap, ...c }; render(); })
    .catch((err) => {
      if (err instanceof ApiError && err.status === 401) return onUnauthorized();
      replace(info, notice("error", err instanceof ApiError && err.status === 404
        ? `There is no capsule ${id} in your team.`
        : describe(err)));
    });
  const stop = live.on((ev) => {
    if (ev.event === "connected" && cap) {
      load(); // events may have been missed while the stream was down
    } else if (ev.sandbox && ev.sandbox.id === id) {
      cap = { ...cap, ...ev.sandbox };
      render();
    }
  });
  load();
  return () => {
    stop();
    if (terminal) terminal.dispose();
    if (metrics) metrics.dispose();
  };
}
