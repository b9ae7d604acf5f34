// The page's only way to the server: the JSON API, with the API key when one is set.
// Every error becomes an ApiError whose message is the server's {"detail", "hint"}.

const KEY = "visiondeck.apiKey";

export function apiKey() {
  try { return window.localStorage.getItem(KEY) || ""; } catch (e) { return ""; }
}

export function setApiKey(value) {
  try {
    if (value) window.localStorage.setItem(KEY, value);
    else window.localStorage.removeItem(KEY);
  } catch (e) { /* storage off */ }
}

export function authHeaders() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

export class ApiError extends Error {
  constructor(status, body) {
    super(describe(status, body));
    this.status = status;
    this.code = body && body.error ? String(body.error) : `http_${status}`;
    this.hint = body && body.hint ? String(body.hint) : "";
    this.detail = body ? body.detail : null;
  }
}

/** A sentence for people from an error body (detail may be a string or validation list). */
export function describe(status, body) {
  if (status === 0) return "the server could not be reached";
  if (!body || typeof body !== "object") return `the server answered ${status}`;
  let detail = body.detail;
  if (Array.isArray(detail)) detail = detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  return String(detail || body.error || `the server answered ${status}`);
}

async function readBody(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) {
    try { return await response.json(); } catch (e) { return null; }
  }
  return null;
}

export async function getJSON(path) {
  let response;
  try {
    response = await fetch(path, { headers: authHeaders() });
  } catch (e) {
    throw new ApiError(0, null);
  }
  const body = await readBody(response);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export async function sendJSON(method, path, data) {
  let response;
  try {
    response = await fetch(path, {
      method, headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify(data),
    });
  } catch (e) {
    throw new ApiError(0, null);
  }
  const body = await readBody(response);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

/**
 * POST one file as multipart `file`, reporting upload progress (0..1) as it goes.
 * Resolves with the parsed JSON body; rejects with an ApiError.
 */
export function uploadFile(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable && onProgress) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      if (onProgress) onProgress(1);
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr.response);
      else reject(new ApiError(xhr.status, xhr.response));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, null)));
    xhr.addEventListener("abort", () => reject(new ApiError(0, null)));
    const form = new FormData();
    form.append("file", file, file.name || "pasted.png");
    xhr.send(form);
  });
}

/** Fetch `path` (with the key) and save the answer as a file called `filename`. */
export async function download(path, filename) {
  let response;
  try {
    response = await fetch(path, { headers: authHeaders() });
  } catch (e) {
    throw new ApiError(0, null);
  }
  if (!response.ok) throw new ApiError(response.status, await readBody(response));
  saveBlob(await response.blob(), filename);
  return response;
}

export function saveBlob(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 30000);
}
