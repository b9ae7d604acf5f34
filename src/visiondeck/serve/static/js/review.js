// Review page: the queue of GET /review/queue, one prediction at a time. Digit keys label
// (PUT /predictions/{id}/label, the same route and rule as every label form), arrows move,
// C shows the attention map of the kept original (POST /explain).
import { ApiError, apiKey, authHeaders, getJSON, sendJSON, setApiKey, uploadFile } from "./api.js";
import { clear, h, localTime, pageData, percent } from "./dom.js";
import { rankedBars } from "./card.js";

const PAGE = 50;
const PREFETCH_AT = 5; // fetch the next page when this few items are left
const data = pageData();
const classes = data.classes || [];
const form = document.getElementById("review-filters");
const article = document.getElementById("review-item");
const empty = document.getElementById("review-empty");
const stack = document.getElementById("review-stack");
const image = document.getElementById("review-image");
const heat = document.getElementById("review-heat");
const camBox = document.getElementById("review-cam");
const camStatus = document.getElementById("review-cam-status");
const labelState = document.getElementById("review-label-state");
const position = document.getElementById("review-position");
const counts = { waiting: 0, labelled: 0 };
let originals = false; // whether the server keeps uploads (the queue's answer says)
let items = [];
let index = 0;
let more = true;
let loading = null;
let generation = 0; // bumps on every new query: late answers of an old one are dropped
let shown = null; // {id, blob, url, explained}
let saving = false; // one label at a time: a second key press waits for the first answer

function filters() {
  const f = form.elements;
  const q = new URLSearchParams({ status: f.status.value, sort: f.sort.value });
  if (f.version.value.trim()) q.set("model_version", f.version.value.trim());
  if (f.since.value) q.set("since", new Date(`${f.since.value}T00:00:00`).toISOString());
  if (f.until.value) {
    const end = new Date(`${f.until.value}T00:00:00`);
    end.setDate(end.getDate() + 1); // the whole "to" day is included
    q.set("until", end.toISOString());
  }
  return q;
}

/** Rows of the queue already fetched that still match its status (the next offset). */
function stillMatching() {
  const status = form.elements.status.value;
  if (status === "all") return items.length;
  return items.filter((item) => Boolean(item.label) === (status === "labelled")).length;
}

function fetchMore() {
  if (loading || !more) return loading;
  const mine = generation;
  const q = filters();
  q.set("limit", String(PAGE));
  q.set("offset", String(stillMatching()));
  loading = getJSON(`/review/queue?${q}`).then((body) => {
    if (mine !== generation) return;
    const known = new Set(items.map((item) => item.id));
    items.push(...body.items.filter((item) => !known.has(item.id)));
    more = body.items.length === PAGE;
    counts.waiting = body.waiting;
    counts.labelled = body.labelled;
    originals = body.images.originals;
    showCounts();
  }).finally(() => { if (mine === generation) loading = null; });
  return loading;
}

function showCounts() {
  document.getElementById("count-waiting").textContent = String(counts.waiting);
  document.getElementById("count-labelled").textContent = String(counts.labelled);
  position.textContent = items.length ? `· ${Math.min(index + 1, items.length)} of ${items.length}${more ? "+" : ""} in this queue` : "";
}

function message(text, hint) {
  article.hidden = true;
  clear(empty).append(h("p", {}, text), hint ? h("p", { className: "muted" }, hint) : null);
  empty.hidden = false;
}

async function reload() {
  generation += 1;
  items = [];
  index = 0;
  more = true;
  loading = null;
  labelState.textContent = "";
  const mine = generation;
  try {
    await fetchMore();
    if (mine !== generation) return; // a newer query took over
    show();
  } catch (error) {
    if (mine !== generation) return;
    message(error.message, error.hint);
  }
  document.body.dataset.reviewLoaded = String(mine); // for tests: this query is drawn
}

function facts(item) {
  const rows = [["margin", item.margin.toFixed(3)], ["entropy", `${item.entropy.toFixed(3)} nats`],
    ["model", item.model_version], ["time", localTime(item.created_at)],
    ["label", item.label || "none yet"]];
  return rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { dataset: { fact: k } }, v)]);
}

function show() {
  if (index >= items.length) {
    const waiting = form.elements.status.value === "waiting";
    message(waiting ? "Nothing is waiting for a label under these filters." : "No prediction matches these filters.",
      items.length ? "Press ← to go back." : "");
    showCounts();
    return;
  }
  const item = items[index];
  empty.hidden = true;
  article.hidden = false;
  article.dataset.id = item.id;
  article.dataset.label = item.label || "";
  article.dataset.predicted = item.predicted;
  document.getElementById("review-predicted").textContent = item.predicted;
  document.getElementById("review-confidence").textContent = percent(item.confidence);
  const flags = clear(document.getElementById("review-flags"));
  if (item.unknown) flags.append(h("span", { className: "badge warn small" }, "unlike training"));
  if (item.drifted) flags.append(h("span", { className: "badge warn small" }, "drifted"));
  clear(document.getElementById("review-facts")).append(...facts(item));
  clear(document.getElementById("review-bars")).append(rankedBars(item.top_k, item.predicted));
  for (const button of document.querySelectorAll(".review-class")) {
    button.classList.toggle("chosen", button.dataset.class === item.label);
    button.setAttribute("aria-pressed", String(button.dataset.class === item.label));
  }
  showCounts();
  loadImage(item);
  if (items.length - index <= PREFETCH_AT) fetchMore()?.catch(() => {});
}

async function loadImage(item) {
  if (shown && shown.url) URL.revokeObjectURL(shown.url);
  shown = { id: item.id, blob: null, url: null, explained: null };
  setCamOff();
  stack.classList.remove("no-preview");
  image.removeAttribute("src");
  image.alt = `the image predicted ${item.predicted}`;
  camBox.disabled = true;
  const current = shown;
  let blob = null;
  let original = false;
  for (const [path, wanted] of [[`/predictions/${item.id}/image`, originals],
    [`/predictions/${item.id}/thumbnail`, item.has_thumbnail]]) {
    if (!wanted) continue;
    try {
      const response = await fetch(path, { headers: authHeaders() });
      if (response.ok) {
        blob = await response.blob();
        original = path.endsWith("/image");
        break;
      }
    } catch (e) { /* next source */ }
  }
  if (current !== shown) return; // moved on meanwhile
  if (!blob) {
    stack.classList.add("no-preview");
    camStatus.textContent = "";
    return;
  }
  current.blob = original ? blob : null;
  current.url = URL.createObjectURL(blob);
  image.src = current.url;
  stack.dataset.source = original ? "original" : "thumbnail";
  camBox.disabled = !(original && data.explain);
  camStatus.textContent = !data.explain ? "explanations are off on this server"
    : original ? "" : "the original image was not kept: no attention map";
}

function setCamOff() {
  if (!heat.hidden) camStatus.textContent = "";
  camBox.checked = false;
  heat.hidden = true;
  article.classList.remove("cam-on");
  if (shown && shown.url) image.src = shown.url;
}

async function toggleCam(on) {
  if (!on || !shown || !shown.blob) { setCamOff(); return; }
  camBox.checked = true;
  const current = shown;
  if (!current.explained) {
    camStatus.textContent = "computing…";
    try {
      current.explained = await uploadFile("/explain?format=json", current.blob);
    } catch (error) {
      camStatus.textContent = `no attention map: ${error.message}`;
      camBox.checked = false;
      return;
    }
  }
  if (current !== shown || !camBox.checked) return;
  image.src = `data:image/png;base64,${current.explained.image_png_base64}`;
  heat.src = `data:image/png;base64,${current.explained.heatmap_png_base64}`;
  heat.style.opacity = "0.5";
  heat.hidden = false;
  article.classList.add("cam-on");
  camStatus.textContent = `where the model looked for “${current.explained.class}”`;
}

async function label(name) {
  const item = items[index];
  if (!item || saving) return;
  saving = true;
  labelState.textContent = "saving…";
  try {
    const body = await sendJSON("PUT", `/predictions/${item.id}/label`, { label: name });
    // the queue may have been reloaded meanwhile: its own copy of the row is what counts
    // (absent when it was read after this label, and then its counts are already right)
    const current = items.find((row) => row.id === item.id);
    if (current && !current.label && body.label) { counts.waiting -= 1; counts.labelled += 1; }
    if (current) current.label = body.label;
    labelState.textContent = `saved “${body.label}” for the prediction before this one`;
    labelState.dataset.saved = item.id;
    if (current && items[index] === current) move(1); // not when the reviewer moved on
    else showCounts();
  } catch (error) {
    const e = error instanceof ApiError ? error : new ApiError(0, null);
    labelState.textContent = [401, 403].includes(e.status)
      ? `Not saved: ${e.message}. Labelling here needs a key with the admin scope.`
      : `Not saved: ${e.message}`;
  } finally {
    saving = false;
  }
}

function move(step) {
  index = Math.max(0, Math.min(items.length, index + step));
  show();
}

function typing(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || ["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName));
}

document.addEventListener("keydown", (event) => {
  if (event.altKey || event.ctrlKey || event.metaKey || typing(event.target)) return;
  if (/^[0-9]$/.test(event.key)) {
    const i = event.key === "0" ? 9 : Number(event.key) - 1;
    if (i < classes.length && !article.hidden) { event.preventDefault(); label(classes[i]); }
  } else if (event.key === "ArrowRight") {
    event.preventDefault(); move(1);
  } else if (event.key === "ArrowLeft") {
    event.preventDefault(); move(-1);
  } else if ((event.key === "c" || event.key === "C") && !camBox.disabled) {
    event.preventDefault(); toggleCam(!camBox.checked);
  }
});
document.getElementById("review-classes").addEventListener("click", (event) => {
  const button = event.target.closest(".review-class");
  if (button) label(button.dataset.class);
});
document.getElementById("review-prev").addEventListener("click", () => move(-1));
document.getElementById("review-next").addEventListener("click", () => move(1));
camBox.addEventListener("change", () => toggleCam(camBox.checked));
form.addEventListener("submit", (event) => { event.preventDefault(); reload(); });
form.addEventListener("reset", () => setTimeout(reload, 0));

const keyForm = document.getElementById("review-key-form");
if (keyForm) {
  const input = document.getElementById("review-key");
  input.value = apiKey();
  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    document.getElementById("review-key-state").textContent = input.value.trim() ? "key set" : "no key";
    reload();
  });
}

reload();
