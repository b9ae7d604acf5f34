// Monitor page: draws GET /monitor/summary (served by the monitoring module when it is on)
// and refreshes it every 30 seconds while the page is visible. A multi-label model's
// summary (`task: "multilabel"`) is a table of each label's live rate against its
// reference rate instead of the class mix and drift tests.
import { getJSON } from "./api.js";
import { clear, h, localTime, percent } from "./dom.js";
import { confidenceChart, mixChart, volumeChart } from "./charts.js";

const REFRESH_MS = 30000;
const status = document.getElementById("monitor-status");
const panel = document.getElementById("monitor");

function tile(title, value, note, extraClass = "") {
  return h("div", { className: `tile ${extraClass}` }, h("span", { className: "tile-title" }, title),
    h("strong", { className: "tile-value" }, value), h("span", { className: "muted" }, note));
}

function number(v, digits = 3) {
  return typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "—";
}

// the monitor's verdict (summary.status when the server gives one, else the alarm flag)
const VERDICTS = {
  drift: ["Alarm", "alarm"], ok: ["No drift", "ok"],
  warming_up: ["Warming up", "wait"], no_data: ["No data yet", "wait"],
};

function signed(v) {
  if (typeof v !== "number" || !Number.isFinite(v)) return "—";
  return `${v > 0 ? "+" : v < 0 ? "−" : "±"}${percent(Math.abs(v))}`;
}

function rateBar(value, extraClass) {
  const bar = h("span", { className: `rate-bar ${extraClass}` });
  bar.style.width = `${typeof value === "number" ? Math.max(0, Math.min(1, value)) * 100 : 0}%`;
  return bar;
}

function drawLabels(summary) {
  const w = summary.window;
  const ref = summary.reference;
  const seen = summary.labels.filter((l) => l.positives > 0).length;
  clear(document.getElementById("monitor-tiles")).append(
    tile("Window", `${w.size} / ${w.capacity}`,
      w.source === "history" ? "newest predictions in the history" : "since this server started"),
    tile("Labels seen", `${seen} of ${summary.labels.length}`, "passed on at least one image"),
    tile("Reference images", ref ? String(ref.n) : "—",
      ref ? ref.source : "this Bundle has no reference statistics"),
  );
  const rows = clear(document.getElementById("label-rate-rows"));
  for (const l of summary.labels) {
    rows.append(h("tr", { dataset: { label: l.label } },
      h("th", { scope: "row" }, l.label),
      h("td", { className: "num" }, String(l.positives)),
      h("td", { className: "num" }, percent(l.live_rate)),
      h("td", { className: "num" }, percent(l.reference_rate)),
      h("td", { className: "num" }, signed(l.difference)),
      h("td", { className: "rate-cell", attrs: { "aria-hidden": "true" } },
        h("span", { className: "rate-bars" }, rateBar(l.live_rate, "live"),
          rateBar(l.reference_rate, "reference")))));
  }
  document.getElementById("monitor-single").hidden = true;
  document.getElementById("monitor-labels").hidden = false;
  status.textContent = `${summary.model.name} ${summary.model.version} · updated ${new Date().toLocaleTimeString()}`;
  panel.hidden = false;
}

function draw(summary) {
  if (summary.task === "multilabel") return drawLabels(summary);
  document.getElementById("monitor-single").hidden = false;
  document.getElementById("monitor-labels").hidden = true;
  const w = summary.window;
  const acc = summary.live_accuracy;
  const conf = summary.confidence;
  const [verdict, tone] = VERDICTS[summary.status || (summary.alarm ? "drift" : "ok")]
    || [String(summary.status), "wait"];
  const over = summary.drift.filter((d) => d.alarm).length;
  const accNote = [acc.labelled ? `${acc.labelled} labelled predictions` : "no true label given yet"];
  if (typeof acc.reference === "number") accNote.push(`reference ${percent(acc.reference)}`);
  clear(document.getElementById("monitor-tiles")).append(
    tile("Drift", verdict, `${over} of ${summary.drift.length} tests over threshold`
      + (summary.accuracy_alarm ? "; accuracy below its floor" : ""), tone),
    tile("Window", `${w.size} / ${w.capacity}`, w.since ? `since ${localTime(w.since)}` : "empty"),
    tile("Mean confidence", percent(conf.live_mean), `reference ${percent(conf.reference_mean)}`),
    tile("Live accuracy", acc.accuracy === null || acc.accuracy === undefined ? "—"
      : percent(acc.accuracy), accNote.join(" · ")),
  );
  volumeChart(document.getElementById("chart-volume"), summary.volume);
  mixChart(document.getElementById("chart-mix"), summary.class_mix.reference, summary.class_mix.live);
  confidenceChart(document.getElementById("chart-confidence"), conf.series, conf.reference_mean);
  const rows = clear(document.getElementById("drift-rows"));
  if (!summary.drift.length) {
    rows.append(h("tr", {}, h("td", { colSpan: 5, className: "empty" }, "No drift test has run yet.")));
  }
  for (const d of summary.drift) {
    rows.append(h("tr", { className: d.alarm ? "alarm" : "" },
      h("td", {}, d.feature), h("td", {}, d.method),
      h("td", { className: "num" }, number(d.score)), h("td", { className: "num" }, number(d.threshold)),
      h("td", {}, h("span", { className: d.alarm ? "badge alarm" : "badge ok" }, d.alarm ? "drift" : "ok"))));
  }
  status.textContent = `${summary.model.name} ${summary.model.version} · updated ${new Date().toLocaleTimeString()}`;
  panel.hidden = false;
}

async function refresh() {
  try {
    draw(await getJSON("/monitor/summary"));
  } catch (error) {
    panel.hidden = true;
    if (error.status === 404 && error.code !== "no_reference") {
      status.textContent = "Monitoring is not enabled for this server.";
      status.dataset.state = "off";
    } else {
      // e.g. no_reference: monitoring is on but the Bundle has no reference statistics
      status.textContent = `No monitoring figures: ${error.message}.${error.hint ? ` ${error.hint}.` : ""}`;
      status.dataset.state = "error";
    }
    return;
  }
  status.dataset.state = "on";
}

refresh();
setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
