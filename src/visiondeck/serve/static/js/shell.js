// What every page shares: the light/dark toggle and the API key field (when required).
import { setApiKey, apiKey, getJSON } from "./api.js";

const THEME_KEY = "visiondeck.theme";
const root = document.documentElement;
const systemDark = window.matchMedia("(prefers-color-scheme: dark)");

export function currentTheme() {
  const chosen = root.getAttribute("data-theme");
  if (chosen === "light" || chosen === "dark") return chosen;
  return systemDark.matches ? "dark" : "light";
}

function store(value) {
  try {
    if (value === null) window.localStorage.removeItem(THEME_KEY);
    else window.localStorage.setItem(THEME_KEY, value);
  } catch (e) { /* storage off: the choice lasts for this page only */ }
}

function showTheme() {
  const button = document.getElementById("theme-toggle");
  if (!button) return;
  const dark = currentTheme() === "dark";
  button.setAttribute("aria-pressed", String(dark));
  document.getElementById("theme-label").textContent = dark ? "Light mode" : "Dark mode";
}

function toggleTheme() {
  const next = currentTheme() === "dark" ? "light" : "dark";
  const system = systemDark.matches ? "dark" : "light";
  if (next === system) {
    // back to what the system asks for: forget the choice, follow the system again
    root.removeAttribute("data-theme");
    store(null);
  } else {
    root.setAttribute("data-theme", next);
    store(next);
  }
  showTheme();
}

function setUpApiKey() {
  const form = document.getElementById("api-key-form");
  if (!form) return;
  const input = document.getElementById("api-key");
  const state = document.getElementById("api-key-state");
  input.value = apiKey();
  state.textContent = apiKey() ? "key set" : "this server needs an API key";
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setApiKey(input.value.trim());
    state.textContent = "checking…";
    try {
      await getJSON("/predictions?limit=1");
      state.textContent = "key accepted";
    } catch (error) {
      state.textContent = error.status === 404 ? "key set" : error.message;
    }
  });
}

document.getElementById("theme-toggle")?.addEventListener("click", toggleTheme);
systemDark.addEventListener("change", showTheme);
showTheme();
setUpApiKey();
