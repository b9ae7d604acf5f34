// One image and what the model says about it: preview, upload progress, ranked classes,
// the Grad-CAM overlay with an opacity slider, and the true-label form.
// Used by Predict (one card per uploaded file) and Compare (one column per image).
// A multi-label model's answer (`task: "multilabel"`) shows its passing labels as chips
// (each one opens its own overlay), every label's probability against its threshold, and
// a label form of check boxes that sends the true set.
import { ApiError, authHeaders, sendJSON, uploadFile } from "./api.js";
import { bytes, h, clear, percent, uid } from "./dom.js";

/** Ranked bars for a top-k list [{class, probability}]. */
export function rankedBars(topK, predicted) {
  return h("ol", { className: "bars", attrs: { "aria-label": "Classes by probability" } },
    topK.map((item) => {
      const fill = h("span", { className: "bar-fill" });
      fill.style.width = `${Math.max(0, Math.min(1, item.probability)) * 100}%`;
      return h("li", { className: item.class === predicted ? "bar top" : "bar" },
        h("span", { className: "bar-label", title: item.class }, item.class),
        h("span", { className: "bar-track", attrs: { "aria-hidden": "true" } }, fill),
        h("span", { className: "bar-value" }, percent(item.probability)));
    }));
}

/** Every label of a multi-label answer [{class, probability, threshold, passed}], in class
 * order: its probability as a bar, its threshold as a mark on the bar and as text. */
export function labelBars(labels) {
  return h("ol", { className: "bars label-bars",
    attrs: { "aria-label": "Every label: probability against its threshold" } },
  labels.map((item) => {
    const fill = h("span", { className: "bar-fill" });
    fill.style.width = `${Math.max(0, Math.min(1, item.probability)) * 100}%`;
    const mark = h("span", { className: "bar-mark" });
    mark.style.left = `${Math.max(0, Math.min(1, item.threshold)) * 100}%`;
    return h("li", { className: item.passed ? "bar top passed" : "bar",
      dataset: { label: item.class, passed: item.passed },
      attrs: { title: `${item.class}: ${percent(item.probability)}, threshold ${percent(item.threshold)}` } },
    h("span", { className: "bar-label" }, item.class),
    h("span", { className: "bar-track", attrs: { "aria-hidden": "true" } }, fill, mark),
    h("span", { className: "bar-value" }, percent(item.probability)),
    h("span", { className: "bar-threshold muted" },
      `${item.passed ? "≥" : "<"} ${percent(item.threshold)}`));
  }));
}

/** True for a multi-label answer (or a stored multi-label row). */
export function isMultilabel(prediction) {
  return prediction.task === "multilabel" || Array.isArray(prediction.predicted_labels);
}

export class PredictionCard {
  /** `file`: a File to upload, or null with `record` (a stored prediction). */
  constructor({ file = null, record = null, data, camControls = true, labelForm = true,
                onPredicted = null }) {
    this.file = file;
    this.data = data;
    this.onPredicted = onPredicted;
    this.prediction = null;
    this.camOn = false;
    this.opacity = 0.5;
    this.explained = new Map(); // class ("" = predicted) → explain response
    this.camClass = "";
    const name = file ? (file.name || "pasted image") : `prediction ${record.id.slice(0, 8)}`;
    this.base = h("img", { className: "base", alt: `the image ${name}` });
    this.heat = h("img", { className: "heat", alt: "", hidden: true });
    this.base.addEventListener("error", () => this.figure.classList.add("no-preview"));
    this.figure = h("div", { className: "cam-stack" }, this.base, this.heat,
      h("span", { className: "no-preview-text" }, "no preview"));
    this.progress = h("progress", { className: "upload-progress", max: 1, value: 0,
      attrs: { "aria-label": `upload of ${name}` } });
    this.status = h("p", { className: "status", attrs: { role: "status" } });
    this.results = h("div", { className: "results" });
    this.extra = h("div", { className: "extra" });
    this.node = h("article", { className: "card pending", attrs: { "aria-label": name } },
      h("header", { className: "card-head" },
        h("h2", { className: "file-name", title: name }, name),
        file ? h("span", { className: "muted" }, bytes(file.size)) : null),
      this.figure, this.progress, this.status, this.results);
    if (camControls) this.node.append(this.buildCamControls());
    if (labelForm) this.node.append(this.labelSlot = h("div", { className: "label-slot" }));
    this.node.append(this.extra);
    if (file) {
      this.preview = URL.createObjectURL(file);
      this.base.src = this.preview;
    } else {
      this.progress.hidden = true;
      this.loadThumbnail(record.id);
      this.show(fromRecord(record));
    }
  }

  buildCamControls() {
    const id = uid("cam");
    this.camBox = h("input", { type: "checkbox", id, className: "cam-toggle", disabled: true,
      on: { change: () => this.setCam(this.camBox.checked) } });
    this.opacityInput = h("input", { type: "range", min: 0, max: 100, value: 50,
      className: "cam-opacity", id: `${id}-opacity`, disabled: true,
      on: { input: () => this.setOpacity(this.opacityInput.value / 100) } });
    this.classSelect = h("select", { className: "cam-class", id: `${id}-class`, disabled: true,
      on: { change: () => { this.camClass = this.classSelect.value; this.setCam(true); } } },
      h("option", { value: "" },
        this.data.task === "multilabel" ? "most probable label" : "predicted class"),
      (this.data.classes || []).map((c) => h("option", { value: c }, c)));
    this.camStatus = h("span", { className: "cam-status muted", attrs: { role: "status" } });
    return h("div", { className: "cam-controls" },
      h("label", { className: "switch", htmlFor: id }, this.camBox, h("span", {}, "Attention map (Grad-CAM)")),
      h("label", { htmlFor: `${id}-opacity` }, "Opacity"), this.opacityInput,
      h("label", { htmlFor: `${id}-class` }, "for"), this.classSelect, this.camStatus);
  }

  async run() {
    const limit = this.data.max_upload_bytes;
    if (this.file.size > limit) {
      this.fail(`Too big: ${bytes(this.file.size)}; this server takes images up to ${bytes(limit)}.`,
        "Resize or compress the image, then try again.");
      return;
    }
    if (this.file.size === 0) {
      this.fail("The file is empty.", "Choose the image again.");
      return;
    }
    this.status.textContent = "Uploading…";
    try {
      const body = await uploadFile("/predict", this.file, (p) => {
        this.progress.value = p;
        if (p >= 1) this.status.textContent = "Classifying…";
      });
      this.show(body);
    } catch (error) {
      const e = error instanceof ApiError ? error : new ApiError(0, null);
      this.fail(`Rejected: ${e.message}`, e.hint, e.code);
    }
  }

  fail(message, hint, code = "rejected") {
    this.node.classList.remove("pending");
    this.node.classList.add("failed");
    this.node.dataset.error = code;
    this.progress.hidden = true;
    this.status.className = "status error";
    this.status.setAttribute("role", "alert");
    this.status.textContent = message;
    if (hint) this.status.append(h("span", { className: "hint" }, ` ${hint}`));
    if (this.camBox) this.camBox.disabled = true;
  }

  show(prediction) {
    this.prediction = prediction;
    this.node.classList.remove("pending");
    this.node.classList.add("done");
    this.node.dataset.predicted = prediction.predicted;
    this.node.dataset.id = prediction.id;
    this.progress.value = 1;
    this.progress.hidden = true;
    this.status.className = "status";
    this.status.textContent = "";
    const multilabel = isMultilabel(prediction);
    const canExplain = Boolean(this.data.explain && this.file && this.camBox);
    if (multilabel) {
      this.status.append(this.labelChips(prediction, canExplain));
    } else {
      this.status.append(h("strong", { className: "predicted" }, prediction.predicted), " ",
        h("span", { className: "confidence" }, percent(prediction.confidence)));
    }
    clear(this.results).append(multilabel && Array.isArray(prediction.labels)
      ? labelBars(prediction.labels) : rankedBars(prediction.top_k, prediction.predicted));
    if (prediction.unknown) {
      this.results.append(h("p", { className: "badge warn" },
        "Unlike the training images: this answer may be unreliable."));
    }
    const meta = [`model ${prediction.model.version}`];
    if (prediction.latency_ms !== undefined) meta.push(`${prediction.latency_ms.toFixed(1)} ms`);
    if (prediction.created_at) meta.push(new Date(prediction.created_at).toLocaleString());
    this.results.append(h("p", { className: "meta muted" }, meta.join(" · ")));
    if (this.camBox) {
      this.camBox.disabled = !canExplain;
      this.opacityInput.disabled = this.classSelect.disabled = !canExplain;
      if (!this.data.explain) this.camStatus.textContent = "explanations are off on this server";
      else if (!this.file) this.camStatus.textContent = "the original image is not stored; upload it to see its map";
    }
    if (this.labelSlot && prediction.label_token) {
      this.labelSlot.append(multilabel ? this.buildLabelSetForm() : this.buildLabelForm());
    }
    if (this.onPredicted) this.onPredicted(this);
  }

  /** The passing labels as chips with their probabilities (threshold in the title); a
   * chip is a button that shows that label's overlay when explanations can run. */
  labelChips(prediction, canExplain) {
    const passing = prediction.predicted_labels || [];
    if (!passing.length) {
      return h("p", { className: "no-labels" }, "No label passes its threshold.");
    }
    // an answer's `labels` carry thresholds; a stored row has its top_k probabilities only
    const entries = new Map((prediction.labels || prediction.top_k || [])
      .map((item) => [item.class, item]));
    this.chips = passing.map((name) => {
      const entry = entries.get(name);
      const value = entry ? percent(entry.probability) : "";
      const title = entry && entry.threshold !== undefined
        ? `${name}: probability ${value}, threshold ${percent(entry.threshold)}` : name;
      const inside = [h("span", { className: "chip-name" }, name), " ",
        h("span", { className: "chip-value" }, value)];
      return canExplain
        ? h("button", { type: "button", className: "chip", title,
          dataset: { label: name }, attrs: { "aria-pressed": "false",
            "aria-label": `${name} ${value}: show where the model looked for it` },
          on: { click: () => this.explainLabel(name) } }, inside)
        : h("span", { className: "chip", title, dataset: { label: name } }, inside);
    });
    return h("ul", { className: "chips label-chips", attrs: { "aria-label": "Predicted labels" } },
      this.chips.map((chip) => h("li", {}, chip)));
  }

  /** Show (or, when it is shown already, hide) the overlay of one label. */
  explainLabel(name) {
    if (this.camOn && this.camClass === name) {
      this.setCam(false);
      return;
    }
    this.camClass = name;
    if (this.classSelect) this.classSelect.value = name;
    this.setCam(true);
  }

  /** Multi-label: one check box per label, ticked with the predicted set; sends the set. */
  buildLabelSetForm() {
    const names = Array.isArray(this.prediction.labels)
      ? this.prediction.labels.map((item) => item.class) : (this.data.classes || []);
    const chosen = new Set(this.prediction.predicted_labels || []);
    const boxes = names.map((name) => h("input", { type: "checkbox", id: uid("truth"),
      value: name, checked: chosen.has(name) }));
    const state = h("span", { className: "label-state muted", attrs: { role: "status" } });
    const form = h("form", { className: "label-form label-set-form" },
      h("fieldset", {},
        h("legend", {}, "True labels"),
        h("ul", { className: "label-choices" }, boxes.map((box) =>
          h("li", {}, box, h("label", { htmlFor: box.id }, box.value))))),
      h("button", { type: "submit", className: "secondary" }, "Save"), state);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      state.className = "label-state muted";
      state.textContent = "saving…";
      const labels = boxes.filter((box) => box.checked).map((box) => box.value);
      try {
        const body = await sendJSON("PUT", `/predictions/${this.prediction.id}/label`,
          { labels, token: this.prediction.label_token });
        const saved = body.labels || [];
        state.textContent = saved.length ? `saved: ${saved.join(", ")}`
          : "saved: none of the labels";
        this.node.dataset.label = body.label || "";
      } catch (error) {
        state.className = "label-state error";
        state.textContent = error.hint ? `${error.message} (${error.hint})` : error.message;
      }
    });
    return form;
  }

  buildLabelForm() {
    const id = uid("label");
    const select = h("select", { id, name: "label" },
      h("option", { value: "" }, "— choose —"),
      (this.data.classes || []).map((c) => h("option", { value: c }, c)));
    const state = h("span", { className: "label-state muted", attrs: { role: "status" } });
    const form = h("form", { className: "label-form" },
      h("label", { htmlFor: id }, "True label"), select,
      h("button", { type: "submit", className: "secondary" }, "Save"), state);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      state.textContent = "saving…";
      try {
        const body = await sendJSON("PUT", `/predictions/${this.prediction.id}/label`,
          { label: select.value || null, token: this.prediction.label_token });
        state.textContent = body.label ? `saved: ${body.label}` : "label cleared";
        this.node.dataset.label = body.label || "";
      } catch (error) {
        state.textContent = error.message;
      }
    });
    return form;
  }

  async setCam(on) {
    this.camOn = on;
    if (this.camBox) this.camBox.checked = on;
    if (!on) {
      this.heat.hidden = true;
      this.base.src = this.preview;
      this.node.classList.remove("cam-on");
      this.pressChip(null);
      return;
    }
    if (!this.file || !this.prediction) return;
    const key = this.camClass;
    if (!this.explained.has(key)) {
      if (this.camStatus) this.camStatus.textContent = "computing…";
      try {
        const query = key ? `&class=${encodeURIComponent(key)}` : "";
        this.explained.set(key, await uploadFile(`/explain?format=json${query}`, this.file));
      } catch (error) {
        this.camOn = false;
        if (this.camBox) this.camBox.checked = false;
        if (this.camStatus) this.camStatus.textContent = `no attention map: ${error.message}`;
        this.node.dataset.camError = error.code || "failed";
        return;
      }
    }
    if (!this.camOn) return; // switched off while it was computed
    const result = this.explained.get(key);
    this.base.src = `data:image/png;base64,${result.image_png_base64}`;
    this.heat.src = `data:image/png;base64,${result.heatmap_png_base64}`;
    this.heat.style.opacity = String(this.opacity);
    this.heat.hidden = false;
    this.node.classList.add("cam-on");
    this.node.dataset.camClass = result.class;
    this.pressChip(result.class);
    if (this.camStatus) this.camStatus.textContent = `where the model looked for “${result.class}”`;
  }

  pressChip(name) {
    for (const chip of this.chips || []) {
      if (chip.tagName === "BUTTON") chip.setAttribute("aria-pressed", String(chip.dataset.label === name));
    }
  }

  setOpacity(value) {
    this.opacity = value;
    if (this.opacityInput) this.opacityInput.value = String(Math.round(value * 100));
    this.heat.style.opacity = String(value);
  }

  async loadThumbnail(id) {
    try {
      const response = await fetch(`/predictions/${id}/thumbnail`, { headers: authHeaders() });
      if (!response.ok) throw new Error("no thumbnail");
      this.preview = URL.createObjectURL(await response.blob());
      this.base.src = this.preview;
    } catch (e) {
      this.figure.classList.add("no-preview");
    }
  }
}

/** A stored history row in the shape of a /predict answer. */
export function fromRecord(r) {
  return {
    id: r.id, predicted: r.predicted, confidence: r.confidence, unknown: r.unknown,
    top_k: r.top_k, model: { name: r.model_name, version: r.model_version },
    predicted_labels: r.predicted_labels, true_labels: r.true_labels,
    latency_ms: r.latency_ms, image: { sha256: r.image_sha256, width: r.image_width,
      height: r.image_height }, created_at: r.created_at, label: r.label,
  };
}
