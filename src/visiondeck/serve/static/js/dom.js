// Small DOM helpers. Text from the server (class names, file names) is only ever inserted
// as text (textContent / text nodes), never parsed as HTML.

/** h("div", {className: "x", attrs: {"aria-label": "y"}, on: {click: f}}, child, "text") */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  const { attrs, on, dataset, ...rest } = props || {};
  for (const [name, value] of Object.entries(rest)) {
    if (value !== undefined && value !== null) node[name] = value;
  }
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
  }
  for (const [name, value] of Object.entries(dataset || {})) node.dataset[name] = String(value);
  for (const [event, handler] of Object.entries(on || {})) node.addEventListener(event, handler);
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(node) {
  while (node.firstChild) node.firstChild.remove();
  return node;
}

/** 0.8734 → "87.3 %" */
export function percent(p, digits = 1) {
  if (p === null || p === undefined || Number.isNaN(p)) return "—";
  return `${(p * 100).toFixed(digits)} %`;
}

export function bytes(n) {
  if (n >= 1048576) return `${(n / 1048576).toFixed(1)} MB`;
  if (n >= 1024) return `${(n / 1024).toFixed(0)} kB`;
  return `${n} B`;
}

export function localTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

/** The JSON the server rendered into <script type="application/json" id="page-data">. */
export function pageData() {
  const node = document.getElementById("page-data");
  try { return JSON.parse(node.textContent); } catch (e) { return {}; }
}

let counter = 0;
export function uid(prefix) {
  counter += 1;
  return `${prefix}-${counter}`;
}

/** A label set as chips (text only): History's predicted and true sets, stored cards. */
export function chipList(labels, label = "Labels") {
  return h("ul", { className: "chips", attrs: { "aria-label": label } },
    labels.map((name) => h("li", { className: "chip", dataset: { label: name } }, name)));
}
