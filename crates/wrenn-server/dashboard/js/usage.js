// Usage: what is reserved now, and the team's daily CPU and memory use as charts.

import { ApiError, describe, get } from "./api.js";
import { barChart, chartBlock } from "./chart.js";
import { fmtMb, h, notice, replace } from "./dom.js";

function tile(label, value) {
  return h("div", { class: "panel tile" }, h("div", { class: "muted small" }, label), h("div", { class: "value" }, value));
}

const num = (v) => {
  if (v === 0) return "0";
  if (v >= 100) return v.toFixed(0);
  if (v >= 1) return v.toFixed(1);
  return v.toPrecision(2);
};

/** Renders the usage page into `main`. */
export function usagePage(main, { onUnauthorized }) {
  const tiles = h("div", { class: "tiles" });
  const charts = h("div", { class: "charts", id: "usage-charts" }, h("p", { class: "muted" }, "Loading usage…"));
  const fail = (box, err) => {
    if (err instanceof ApiError && err.status === 401) return onUnauthorized();
    replace(box, notice("error", describe(err)));
  };
  main.append(
    h("h1", {}, "Usage"),
    tiles,
    h("section", { class: "panel", "aria-labelledby": "daily-h" }, h("h2", { id: "daily-h" }, "Daily usage, last 30 days"), charts));
  get("/capsules/stats?range=24h")
    .then((st) => replace(tiles,
      tile("Running capsules", st.current.running_count),
      tile("vCPUs reserved", st.current.vcpus_reserved),
      tile("Memory reserved", fmtMb(st.current.memory_mb_reserved)),
      tile("Peak running (30 days)", st.peaks.running_count)))
    .catch((err) => fail(tiles, err));
  get("/capsules/usage")
    .then((u) => {
      const days = u.points || [];
      const total = (k) => days.reduce((a, p) => a + p[k], 0);
      replace(charts,
        chartBlock("CPU minutes per day", `${num(total("cpu_minutes"))} in total`,
          barChart({ label: "CPU minutes per day", cls: "cpu", bars: days.map((p) => ({ label: p.date, v: p.cpu_minutes })), fmtY: num })),
        chartBlock("Memory (GiB-hours) per day", `${num(total("ram_mb_minutes") / 61440)} in total`,
          barChart({ label: "Memory GiB-hours per day", cls: "ram", bars: days.map((p) => ({ label: p.date, v: p.ram_mb_minutes / 61440 })), fmtY: num })));
    })
    .catch((err) => fail(charts, err));
  return null;
}
