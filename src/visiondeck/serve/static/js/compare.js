// Compare page: images side by side (uploaded, or stored predictions chosen in History via
// ?ids=...), one shared attention-map switch and opacity, and for each image what every
// other model version of this server predicted for the same bytes (history by SHA-256).
import { getJSON } from "./api.js";
import { h, localTime, pageData } from "./dom.js";
import { PredictionCard, rankedBars } from "./card.js";
import { attachUploader } from "./uploader.js";

const PARALLEL = 3;
const data = pageData();
const grid = document.getElementById("compare-grid");
const camBox = document.getElementById("compare-cam");
const opacity = document.getElementById("compare-opacity");
const status = document.getElementById("compare-status");
const cards = [];
const waiting = [];
let running = 0;

function report() {
  const done = cards.filter((c) => c.prediction).length;
  status.textContent = cards.length ? `${done} of ${cards.length} classified` : "";
  grid.classList.toggle("one", cards.length === 1);
}

async function otherVersions(card) {
  const section = h("section", { className: "versions" },
    h("h3", {}, "Other model versions"));
  card.extra.append(section);
  if (!data.store) {
    section.append(h("p", { className: "muted" }, "this server keeps no history"));
    return;
  }
  const sha = card.prediction.image && card.prediction.image.sha256;
  try {
    const body = await getJSON(`/predictions?sha256=${sha}&limit=100`);
    const seen = new Set([card.prediction.model.version]);
    const others = [];
    for (const item of body.items) { // newest first: keep each version's latest answer
      if (!seen.has(item.model_version)) {
        seen.add(item.model_version);
        others.push(item);
      }
    }
    if (!others.length) {
      section.append(h("p", { className: "muted" },
        "No other version has classified this image yet."));
    }
    for (const item of others) {
      section.append(h("div", { className: "version", dataset: { version: item.model_version } },
        h("p", {}, h("code", {}, item.model_version), " ",
          h("span", { className: "muted" }, localTime(item.created_at)), " → ",
          h("strong", {}, item.predicted)),
        rankedBars(item.top_k, item.predicted)));
    }
  } catch (error) {
    section.append(h("p", { className: "muted" }, error.message));
  }
}

function predicted(card) {
  report();
  otherVersions(card);
  card.setOpacity(opacity.value / 100);
  if (camBox.checked) card.setCam(true);
}

function pump() {
  while (running < PARALLEL && waiting.length) {
    const card = waiting.shift();
    running += 1;
    card.run().finally(() => { running -= 1; report(); pump(); });
  }
}

function add(files) {
  for (const file of files) {
    const card = new PredictionCard({ file, data, camControls: false, labelForm: false,
      onPredicted: predicted });
    cards.push(card);
    grid.append(card.node);
    waiting.push(card);
  }
  report();
  pump();
}

async function addStored(ids) {
  for (const id of ids) {
    try {
      const record = await getJSON(`/predictions/${id}`);
      const card = new PredictionCard({ record, data, camControls: false, labelForm: false,
        onPredicted: predicted });
      cards.push(card);
      grid.append(card.node);
    } catch (error) {
      grid.append(h("article", { className: "card failed" },
        h("p", { className: "status error" }, `prediction ${id}: ${error.message}`)));
    }
  }
  report();
}

camBox.addEventListener("change", () => {
  for (const card of cards) if (card.prediction && card.file) card.setCam(camBox.checked);
});
opacity.addEventListener("input", () => {
  for (const card of cards) card.setOpacity(opacity.value / 100);
});
document.getElementById("compare-clear").addEventListener("click", () => {
  for (const card of cards) {
    if (card.preview) URL.revokeObjectURL(card.preview);
  }
  cards.length = 0;
  waiting.length = 0;
  grid.replaceChildren();
  window.history.replaceState(null, "", window.location.pathname);
  report();
});

attachUploader(add);
const ids = (new URLSearchParams(window.location.search).get("ids") || "")
  .split(",").filter((id) => /^[0-9a-f]{32}$/.test(id));
if (ids.length) addStored(ids);
