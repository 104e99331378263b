// What every part of the UI shares: the key, the API call, and small helpers for the page.
// Everything a user supplies is put into the page with textContent, never as HTML.

export const KEY_STORE = "imgsvc.key";
export const LINK_SECONDS = 3600;

export const $ = (id) => document.getElementById(id);

export const session = {
  key: sessionStorage.getItem(KEY_STORE) || localStorage.getItem(KEY_STORE) || "",
  // What a refused key does (app.js: sign out); set once the page is wired.
  onRefused: () => {},
};

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

export async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${session.key}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 204) return null;
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    if (response.status === 401 && session.key) session.onRefused("Your key was not accepted; sign in again.");
    throw new ApiError(response.status, body);
  }
  return body;
}

// A JSON body's request: PATCH, PUT or POST.
export function send(path, method, body) {
  return api(path, { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

export const imagePath = (imageId, rest = "") => `/images/${encodeURIComponent(imageId)}${rest}`;

export function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.classList.add("shown");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("shown"), 2500);
}

// Copy `text`, and say so in `status` (a modal dialog sits above the page's toast) or the toast;
// where the clipboard is refused, `field` (if any) holds the text, selected, for the user to copy.
export async function copy(text, what, { status = null, field = null } = {}) {
  const say = (message) => { if (status) status.textContent = message; else toast(message); };
  if (field) field.value = text;
  try {
    await navigator.clipboard.writeText(text);
    say(`${what} copied`);
  } catch (_) {
    if (field) field.select();
    say(`Copy the selected ${what.toLowerCase()}`);
  }
}

export function element(tag, className = "", text = "") {
  const created = document.createElement(tag);
  if (className) created.className = className;
  if (text) created.textContent = text;
  return created;
}

export function button(className, label, onClick) {
  const created = element("button", className, label);
  created.type = "button";
  created.addEventListener("click", onClick);
  return created;
}

export function formatBytes(n) {
  if (n == null) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// Text made safe inside HTML (an attribute's quotes included), for the code the UI lets people
// copy (embed code, srcsets); the page itself only ever sets textContent.
export const escapeHtml = (text) => String(text).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);

export const nameOf = (record, imageId = "") => (record && (record.file_name || record.image_id)) || imageId;

// `when` (ISO 8601) as the reader's locale writes a date and time.
export const formatDate = (when) => (when ? new Date(when).toLocaleString() : "");
