// Runs in <head> before the first paint: applies the theme chosen earlier, if any.
// Without a stored choice the page follows the system setting (prefers-color-scheme).
(function () {
  "use strict";
  var choice = null;
  try { choice = window.localStorage.getItem("visiondeck.theme"); } catch (e) { /* private mode */ }
  if (choice === "light" || choice === "dark") {
    document.documentElement.setAttribute("data-theme", choice);
  }
})();
