// The upload control: choose files, drop them on the zone (or anywhere on the page), or
// paste an image from the clipboard. Calls onFiles(File[]) once per gesture.

function imagesFromClipboard(data) {
  const files = [];
  for (const item of data ? data.items || [] : []) {
    if (item.kind === "file") {
      const file = item.getAsFile();
      if (file) files.push(file);
    }
  }
  return files;
}

export function attachUploader(onFiles) {
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("file-input");
  input.addEventListener("change", () => {
    if (input.files && input.files.length) onFiles(Array.from(input.files));
    input.value = ""; // the same file may be chosen again
  });
  let depth = 0;
  const over = (on) => zone.classList.toggle("dragging", on);
  window.addEventListener("dragenter", (event) => {
    event.preventDefault();
    depth += 1;
    over(true);
  });
  window.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) over(false);
  });
  // without this, a file dropped beside the zone would replace the page with the image
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => {
    event.preventDefault();
    depth = 0;
    over(false);
    const files = Array.from(event.dataTransfer ? event.dataTransfer.files : []);
    if (files.length) onFiles(files);
  });
  document.addEventListener("paste", (event) => {
    const target = event.target;
    if (target && (target.tagName === "INPUT" || target.tagName === "TEXTAREA")
        && target.type !== "file") return; // pasting text into a field stays text
    const files = imagesFromClipboard(event.clipboardData);
    if (files.length) {
      event.preventDefault();
      onFiles(files.map((f, i) => (f.name && f.name !== "image.png") ? f
        : new File([f], `pasted-${Date.now()}-${i}.${(f.type.split("/")[1] || "png")}`, { type: f.type })));
    }
  });
}
