// Small SVG charts: a line chart over time and a bar chart over days. Colours come from CSS
// classes (app.css), so the markup carries no inline styles.

import { h, s } from "./dom.js";

const W = 380;
const H = 190;
const PAD = { left: 58, right: 14, top: 10, bottom: 24 };

function niceMax(v) {
  if (!(v > 0)) return 1;
  const mag = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * mag) return m * mag;
  return 10 * mag;
}

function frame(label, yMax, fmtY) {
  const svg = s("svg", {
    class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label,
  });
  const innerH = H - PAD.top - PAD.bottom;
  for (let i = 0; i <= 4; i++) {
    const y = PAD.top + innerH - (innerH * i) / 4;
    svg.append(
      s("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: y, y2: y }),
      s("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end" }, fmtY((yMax * i) / 4)),
    );
  }
  return svg;
}

/**
 * A line chart of `points` ([{t: seconds, v: number}]) drawn in CSS class `cls`.
 * `fixedMax` pins the y axis (e.g. 100 for percentages); the x axis covers the samples, and at
 * least `span` seconds.
 */
export function lineChart({ label, cls, points, fmtY, fixedMax, span }) {
  const values = points.map((p) => p.v);
  const yMax = fixedMax || niceMax(Math.max(0, ...values) * 1.1);
  const svg = frame(label, yMax, fmtY);
  const innerW = W - PAD.left - PAD.right;
  const innerH = H - PAD.top - PAD.bottom;
  const tEnd = points.length ? points[points.length - 1].t : Date.now() / 1000;
  const tStart = Math.min(points.length ? points[0].t : tEnd, tEnd - (span || 60));
  const x = (t) => PAD.left + (innerW * (t - tStart)) / Math.max(tEnd - tStart, 1);
  const y = (v) => PAD.top + innerH - (innerH * Math.min(v, yMax)) / yMax;
  const clock = tEnd - tStart < 600
    ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
    : { hour: "2-digit", minute: "2-digit" };
  for (const [t, anchor] of [[tStart, "start"], [tEnd, "end"]]) {
    svg.append(s("text", { x: x(t), y: H - 6, "text-anchor": anchor },
      new Date(t * 1000).toLocaleTimeString(undefined, clock)));
  }
  if (points.length >= 1) {
    const d = points.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join("");
    const base = PAD.top + innerH;
    svg.append(
      s("path", { class: `area ${cls}`, d: `${d}L${x(tEnd).toFixed(1)},${base}L${x(points[0].t).toFixed(1)},${base}Z` }),
      s("path", { class: `line ${cls}`, d, "data-points": points.length }),
    );
  }
  return svg;
}

/** A bar chart of `bars` ([{label: "YYYY-MM-DD", v: number}]) in CSS class `cls`. */
export function barChart({ label, cls, bars, fmtY }) {
  const yMax = niceMax(Math.max(0, ...bars.map((b) => b.v)) * 1.1);
  const svg = frame(label, yMax, fmtY);
  const innerW = W - PAD.left - PAD.right;
  const innerH = H - PAD.top - PAD.bottom;
  const slot = innerW / Math.max(bars.length, 1);
  const every = Math.max(1, Math.ceil(bars.length / 5));
  bars.forEach((b, i) => {
    const bh = (innerH * b.v) / yMax;
    const rect = s("rect", {
      class: `bar ${cls}`, x: PAD.left + i * slot + slot * 0.15, y: PAD.top + innerH - bh,
      width: Math.max(slot * 0.7, 1), height: Math.max(bh, 0),
    }, s("title", {}, `${b.label}: ${fmtY(b.v)}`));
    svg.append(rect);
    if (i === bars.length - 1 || ((bars.length - 1 - i) % every === 0 && bars.length - 1 - i >= every)) {
      svg.append(s("text", { x: PAD.left + i * slot + slot / 2, y: H - 6, "text-anchor": "middle" }, b.label.slice(5)));
    }
  });
  return svg;
}

/** A titled chart block with the latest value on the right. */
export function chartBlock(title, now, svg) {
  return h("figure", { class: "chart-block" },
    h("figcaption", { class: "chart-title" }, h("span", {}, title), h("span", { class: "now" }, now)),
    svg);
}
