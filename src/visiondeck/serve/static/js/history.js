// History page: the stored predictions with filters (kept in the address, so a filtered
// view can be bookmarked), paging, thumbnails, selection for Compare, and export.
import { download, getJSON, saveBlob } from "./api.js";
import { chipList, clear, h, localTime, pageData, percent } from "./dom.js";

const EXPORT_LIMIT = 10000;
const data = pageData();
const form = document.getElementById("filters");
const rows = document.getElementById("history-rows");
const status = document.getElementById("history-status");
const info = document.getElementById("page-info");
const prev = document.getElementById("page-prev");
const next = document.getElementById("page-next");
const compareButton = document.getElementById("compare-selected");
// "class" (single-label models) or "label" (multi-label): the form has one of the two
const FIELDS = ["class", "label", "min", "max", "since", "until", "version", "size"]
  .filter((name) => form.elements[name]);
const selected = new Set();
let page = 0;
let total = 0;

function filters() {
  const values = {};
  for (const name of FIELDS) {
    const value = form.elements[name].value.trim();
    if (value) values[name] = value;
  }
  return values;
}

/** The API's query for the current filters (dates are local days, sent as UTC instants). */
function apiQuery(values, extra) {
  const q = new URLSearchParams();
  if (values.class) q.set("class", values.class);
  if (values.label) q.set("label", values.label);
  if (values.min) q.set("min_confidence", String(Number(values.min) / 100));
  if (values.max) q.set("max_confidence", String(Number(values.max) / 100));
  if (values.since) q.set("since", new Date(`${values.since}T00:00:00`).toISOString());
  if (values.until) {
    const end = new Date(`${values.until}T00:00:00`);
    end.setDate(end.getDate() + 1); // the whole "to" day is included
    q.set("until", end.toISOString());
  }
  if (values.version) q.set("model_version", values.version);
  for (const [k, v] of Object.entries(extra)) q.set(k, String(v));
  return q.toString();
}

function pageSize() {
  return Number(form.elements.size.value) || 25;
}

/** A multi-label row's set as chips; `[]` is a set too ("none"), null no set at all. */
function labelSet(labels, none) {
  if (labels === null || labels === undefined) return h("span", { className: "muted" }, "—");
  return labels.length ? chipList(labels) : h("span", { className: "muted no-labels" }, none);
}

function row(item) {
  const multilabel = Array.isArray(item.predicted_labels);
  const chosen = multilabel ? item.predicted_labels : [item.predicted];
  const others = item.top_k.filter((t) => !chosen.includes(t.class))
    .map((t) => `${t.class} ${percent(t.probability)}`).join(", ");
  const box = h("input", { type: "checkbox", checked: selected.has(item.id),
    attrs: { "aria-label": `select the prediction of ${localTime(item.created_at)}` },
    on: { change: () => {
      if (box.checked) selected.add(item.id); else selected.delete(item.id);
      showSelection();
    } } });
  const meter = h("span", { className: "mini-fill" });
  meter.style.width = `${item.confidence * 100}%`;
  const thumb = item.thumbnail_png_base64
    ? h("img", { className: "thumb", src: `data:image/png;base64,${item.thumbnail_png_base64}`,
      alt: `thumbnail of the image predicted ${item.predicted || "no label"}` })
    : h("span", { className: "thumb none muted" }, "—");
  return h("tr", { dataset: { id: item.id, predicted: item.predicted } },
    h("td", { className: "no-print" }, box),
    h("td", {}, thumb),
    h("td", { className: "nowrap" }, h("time", { dateTime: item.created_at }, localTime(item.created_at))),
    h("td", { className: "predicted-cell" },
      multilabel ? labelSet(item.predicted_labels, "no label") : h("strong", {}, item.predicted),
      item.unknown ? h("span", { className: "badge warn small" }, "unlike training") : null),
    h("td", { className: "num nowrap" }, percent(item.confidence),
      h("span", { className: "mini-track", attrs: { "aria-hidden": "true" } }, meter)),
    h("td", { className: "muted small" }, others || "—"),
    h("td", { className: "label-cell" }, multilabel
      ? labelSet(item.true_labels, "none of the labels")
      : item.label || h("span", { className: "muted" }, "—")),
    h("td", {}, h("code", {}, item.model_version)));
}

function showSelection() {
  compareButton.disabled = selected.size < 2;
  compareButton.textContent = selected.size ? `Compare selected (${selected.size})` : "Compare selected";
}

function message(text, hint) {
  clear(rows).append(h("tr", {}, h("td", { colSpan: 8, className: "empty" }, text,
    hint ? h("span", { className: "hint" }, ` ${hint}`) : null)));
}

async function load() {
  const size = pageSize();
  status.textContent = "Loading…";
  try {
    const body = await getJSON(`/predictions?${apiQuery(filters(),
      { limit: size, offset: page * size, thumbnails: true })}`);
    total = body.total;
    if (!body.items.length) message(total ? "No rows on this page." : "No prediction matches these filters.");
    else clear(rows).append(...body.items.map(row));
    const first = body.items.length ? page * size + 1 : 0;
    info.textContent = `${first}–${page * size + body.items.length} of ${total}`;
    status.textContent = `${total} prediction${total === 1 ? "" : "s"}`;
  } catch (error) {
    total = 0;
    message(error.message, error.hint);
    info.textContent = "";
    status.textContent = "";
  }
  prev.disabled = page === 0;
  next.disabled = (page + 1) * pageSize() >= total;
}

function fromAddress() {
  const params = new URLSearchParams(window.location.search);
  // a single-label row "predicts a label" when it is its class: ?label= is ?class= there
  if (params.has("label") && !form.elements.label) params.set("class", params.get("label"));
  for (const name of FIELDS) {
    if (params.has(name)) form.elements[name].value = params.get(name);
  }
  page = Math.max(0, Number(params.get("page")) || 0);
}

function toAddress() {
  const q = new URLSearchParams(filters());
  if (page) q.set("page", String(page));
  const search = q.toString();
  window.history.replaceState(null, "", search ? `?${search}` : window.location.pathname);
}

function exportName(ext) {
  return `visiondeck-predictions-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-")}.${ext}`;
}

async function exportAs(format) {
  status.textContent = `Exporting ${format.toUpperCase()}…`;
  const query = apiQuery(filters(), { limit: EXPORT_LIMIT, format });
  try {
    let count;
    if (format === "csv") {
      const response = await download(`/predictions?${query}`, exportName("csv"));
      count = Number(response.headers.get("X-Total-Count"));
    } else {
      const body = await getJSON(`/predictions?${query}`);
      count = body.total;
      const file = { exported_at: new Date().toISOString(), filters: filters(),
        model: data.model, total: body.total, items: body.items };
      saveBlob(new Blob([JSON.stringify(file, null, 2)], { type: "application/json" }),
        exportName("json"));
    }
    status.textContent = count > EXPORT_LIMIT
      ? `Exported the newest ${EXPORT_LIMIT} of ${count}; narrow the filters for the rest.`
      : `Exported ${count} prediction${count === 1 ? "" : "s"}.`;
  } catch (error) {
    status.textContent = `Export failed: ${error.message}`;
  }
}

function printPdf() {
  const f = filters();
  const described = Object.entries(f).filter(([k]) => k !== "size")
    .map(([k, v]) => `${k} ${v}`).join(", ");
  document.getElementById("print-summary").textContent =
    `Printed ${new Date().toLocaleString()} · model ${data.model ? `${data.model.name} ${data.model.version}` : "—"}`
    + ` · ${described ? `filters: ${described}` : "no filter"} · rows ${info.textContent}`;
  window.print();
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  page = 0;
  toAddress();
  load();
});
form.addEventListener("reset", () => {
  setTimeout(() => { page = 0; toAddress(); load(); }, 0);
});
prev.addEventListener("click", () => { page = Math.max(0, page - 1); toAddress(); load(); });
next.addEventListener("click", () => { page += 1; toAddress(); load(); });
compareButton.addEventListener("click", () => {
  window.location.href = `/compare?ids=${Array.from(selected).join(",")}`;
});
document.getElementById("export-csv").addEventListener("click", () => exportAs("csv"));
document.getElementById("export-json").addEventListener("click", () => exportAs("json"));
document.getElementById("export-pdf").addEventListener("click", printPdf);
window.addEventListener("beforeprint", () => {
  if (!document.getElementById("print-summary").textContent) {
    document.getElementById("print-summary").textContent = `Printed ${new Date().toLocaleString()}`;
  }
});

fromAddress();
showSelection();
load();
