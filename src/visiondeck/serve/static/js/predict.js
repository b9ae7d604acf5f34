// Predict page: every image chosen, dropped or pasted gets a card at once (preview), is
// uploaded with its own progress bar (three at a time), and shows its ranked classes.
import { saveBlob } from "./api.js";
import { pageData } from "./dom.js";
import { PredictionCard } from "./card.js";
import { attachUploader } from "./uploader.js";

const PARALLEL = 3;
const data = pageData();
const list = document.getElementById("results");
const bar = document.getElementById("batch-bar");
const overall = document.getElementById("batch-progress");
const status = document.getElementById("batch-status");
const cards = [];
const waiting = [];
let running = 0;
let finished = 0;

function report() {
  const total = cards.length;
  overall.max = Math.max(1, total);
  overall.value = finished;
  const failed = cards.filter((c) => c.node.classList.contains("failed")).length;
  status.textContent = `${finished} of ${total} done` + (failed ? ` (${failed} rejected)` : "");
  bar.hidden = total === 0;
}

function pump() {
  while (running < PARALLEL && waiting.length) {
    const card = waiting.shift();
    running += 1;
    card.run().finally(() => {
      running -= 1;
      if (cards.includes(card)) finished += 1; // not when "Clear" removed it meanwhile
      report();
      pump();
    });
  }
}

function add(files) {
  for (const file of files) {
    const card = new PredictionCard({ file, data });
    cards.push(card);
    list.prepend(card.node);
    waiting.push(card);
  }
  report();
  pump();
}

document.getElementById("export-json").addEventListener("click", () => {
  const rows = cards.map((c) => ({
    file: c.file.name,
    ok: Boolean(c.prediction),
    prediction: c.prediction && { ...c.prediction, label_token: undefined },
    error: c.node.classList.contains("failed") ? c.status.textContent : null,
  }));
  const body = JSON.stringify({ exported_at: new Date().toISOString(), model: data.model,
    results: rows }, null, 2);
  saveBlob(new Blob([body], { type: "application/json" }), "visiondeck-results.json");
});

document.getElementById("clear-results").addEventListener("click", () => {
  for (const card of cards) {
    if (card.preview) URL.revokeObjectURL(card.preview);
    card.node.remove();
  }
  cards.length = 0;
  waiting.length = 0;
  finished = 0;
  report();
});

attachUploader(add);
