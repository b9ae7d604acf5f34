// Three small charts as inline SVG (no chart library): bars over time, paired horizontal
// bars (reference vs live), and a line over time with a reference level. Sizes are in the
// viewBox; CSS scales the SVG to its container. Labels are text nodes, never HTML.

const NS = "http://www.w3.org/2000/svg";
const W = 420;

function s(tag, attrs = {}, text = null) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== null) node.textContent = text;
  return node;
}

function svg(height, label) {
  return s("svg", { viewBox: `0 0 ${W} ${height}`, role: "img", "aria-label": label,
    class: "chart-svg", preserveAspectRatio: "xMidYMid meet" });
}

function clock(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso)
    : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function empty(container, text) {
  container.replaceChildren(Object.assign(document.createElement("p"),
    { className: "muted empty", textContent: text }));
}

/** Counts per time bucket: [{t, count}]. */
export function volumeChart(container, points) {
  if (!points.length) return empty(container, "No prediction in the window yet.");
  const H = 200, left = 40, right = 8, top = 12, bottom = 26;
  const max = Math.max(1, ...points.map((p) => p.count));
  const total = points.reduce((a, p) => a + p.count, 0);
  const chart = svg(H, `Predictions per minute: ${total} in ${points.length} minutes, at most ${max} a minute`);
  const plotW = W - left - right, plotH = H - top - bottom;
  const step = plotW / points.length;
  chart.append(s("line", { x1: left, x2: W - right, y1: top + plotH, y2: top + plotH, class: "axis" }));
  chart.append(s("text", { x: left - 6, y: top + 4, "text-anchor": "end", class: "tick" }, String(max)));
  chart.append(s("text", { x: left - 6, y: top + plotH, "text-anchor": "end", class: "tick" }, "0"));
  points.forEach((p, i) => {
    const height = (p.count / max) * plotH;
    const width = Math.max(1, Math.min(step * 0.8, 28));
    const bar = s("rect", { x: left + i * step + (step - width) / 2, y: top + plotH - height,
      width, height, class: "volume-bar" });
    bar.append(s("title", {}, `${clock(p.t)}: ${p.count}`));
    chart.append(bar);
  });
  chart.append(s("text", { x: left, y: H - 8, class: "tick" }, clock(points[0].t)));
  chart.append(s("text", { x: W - right, y: H - 8, "text-anchor": "end", class: "tick" },
    clock(points[points.length - 1].t)));
  container.replaceChildren(chart);
}

/** Share of each class: reference (training data) and live (recent predictions). */
export function mixChart(container, reference, live) {
  const classes = Array.from(new Set([...Object.keys(reference), ...Object.keys(live)]))
    .sort((a, b) => (reference[b] || 0) - (reference[a] || 0));
  if (!classes.length) return empty(container, "No class mix yet.");
  const row = 30, top = 26, label = 86, right = 52;
  const H = top + classes.length * row + 6;
  const chart = svg(H, `Class mix of ${classes.length} classes, reference against live`);
  const plotW = W - label - right;
  chart.append(s("rect", { x: label, y: 6, width: 12, height: 8, class: "mix-ref" }));
  chart.append(s("text", { x: label + 16, y: 14, class: "tick" }, "reference"));
  chart.append(s("rect", { x: label + 90, y: 6, width: 12, height: 8, class: "mix-live" }));
  chart.append(s("text", { x: label + 106, y: 14, class: "tick" }, "live"));
  classes.forEach((name, i) => {
    const y = top + i * row;
    const ref = reference[name] || 0, now = live[name] || 0;
    const shown = name.length > 12 ? `${name.slice(0, 11)}…` : name;
    chart.append(s("text", { x: label - 8, y: y + 15, "text-anchor": "end", class: "label" }, shown));
    const a = s("rect", { x: label, y: y + 2, width: ref * plotW, height: 10, class: "mix-ref" });
    a.append(s("title", {}, `${name}: reference ${(ref * 100).toFixed(1)} %`));
    const b = s("rect", { x: label, y: y + 13, width: now * plotW, height: 10, class: "mix-live" });
    b.append(s("title", {}, `${name}: live ${(now * 100).toFixed(1)} %`));
    chart.append(a, b);
    chart.append(s("text", { x: W - right + 6, y: y + 16, class: "tick" },
      `${(now * 100).toFixed(1)} %`));
  });
  container.replaceChildren(chart);
}

/** Mean confidence per bucket [{t, mean}] with the reference mean as a dashed line. */
export function confidenceChart(container, series, referenceMean) {
  if (!series.length) return empty(container, "No confidence figures yet.");
  const H = 200, left = 40, right = 8, top = 12, bottom = 26;
  const plotW = W - left - right, plotH = H - top - bottom;
  const y = (v) => top + (1 - Math.max(0, Math.min(1, v))) * plotH;
  const x = (i) => left + (series.length === 1 ? plotW / 2 : (i / (series.length - 1)) * plotW);
  const last = series[series.length - 1].mean;
  const chart = svg(H, `Mean confidence over ${series.length} buckets, latest ${(last * 100).toFixed(1)} %`);
  for (const v of [0, 0.5, 1]) {
    chart.append(s("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: v ? "grid" : "axis" }));
    chart.append(s("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "tick" }, `${v * 100} %`));
  }
  if (referenceMean !== null && referenceMean !== undefined) {
    const ref = s("line", { x1: left, x2: W - right, y1: y(referenceMean), y2: y(referenceMean),
      class: "reference-line" });
    ref.append(s("title", {}, `reference mean ${(referenceMean * 100).toFixed(1)} %`));
    chart.append(ref);
  }
  chart.append(s("polyline", { points: series.map((p, i) => `${x(i)},${y(p.mean)}`).join(" "),
    class: "confidence-line" }));
  series.forEach((p, i) => {
    const dot = s("circle", { cx: x(i), cy: y(p.mean), r: 3, class: "confidence-dot" });
    dot.append(s("title", {}, `${clock(p.t)}: ${(p.mean * 100).toFixed(1)} %`));
    chart.append(dot);
  });
  chart.append(s("text", { x: left, y: H - 8, class: "tick" }, clock(series[0].t)));
  chart.append(s("text", { x: W - right, y: H - 8, "text-anchor": "end", class: "tick" },
    clock(series[series.length - 1].t)));
  container.replaceChildren(chart);
}
