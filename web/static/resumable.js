// Large files go up in parts (the API's resumable uploads): each part on its own request, sent
// again after a failure with a growing wait, so a dropped connection costs one part, not the
// file. The browser keeps each upload's image id (localStorage, by the file's name, size and
// modification time): after a reload the list says which uploads wait, and choosing the same
// file again sends only the parts that had not arrived.

import { $, api, element, send as sendJson, session } from "./api.js";
import { markArrived, schedulePoll, upsert } from "./gallery.js";

export const MULTIPART_FROM = 16 * 1024 * 1024;
const STORE = "imgsvc.resumable";
const ATTEMPTS = 8;
const FIRST_WAIT_MS = 500;
const LONGEST_WAIT_MS = 30_000;
const TRANSIENT = [0, 408, 429, 500, 502, 503, 504];  // 0: the connection went

const account = () => session.key.split("_").slice(0, 2).join("_");  // the key's public id
const fingerprint = (file) => `${account()}|${file.name}|${file.size}|${file.lastModified}`;

function saved() {
  try { return JSON.parse(localStorage.getItem(STORE) || "{}"); } catch (_) { return {}; }
}

function remember(file, imageId) {
  const all = saved();
  all[fingerprint(file)] = { image_id: imageId, name: file.name, size: file.size, at: Date.now() };
  localStorage.setItem(STORE, JSON.stringify(all));
}

function forget(file) {
  const all = saved();
  delete all[fingerprint(file)];
  localStorage.setItem(STORE, JSON.stringify(all));
}

// The uploads a reload interrupted: a line each, until the same file is chosen again.
export function showPaused() {
  for (const [key, upload] of Object.entries(saved())) {
    if (!key.startsWith(`${account()}|`) || document.querySelector(`#uploads li[data-resume="${CSS.escape(key)}"]`)) continue;
    const row = element("li", "paused");
    row.dataset.resume = key;
    const name = element("span", "file", upload.name);
    const note = element("span", "state", "paused: choose it again to resume");
    note.title = note.textContent;
    row.append(name, note);
    $("uploads").append(row);
    $("uploads-clear").hidden = false;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The upload's state from the API, or null once it holds none (completed, deleted, released).
async function state(imageId) {
  try {
    return await api(`/images/${encodeURIComponent(imageId)}/upload-parts`);
  } catch (error) {
    if ([404, 410].includes(error.status)) return null;
    throw error;
  }
}

// Resume the file's upload, or begin one. True once the parts are joined; the row says how far.
export async function uploadInParts({ file, bar, label, row }, type) {
  const previous = saved()[fingerprint(file)];
  let answer = previous ? await state(previous.image_id) : null;
  if (!answer) {
    answer = await sendJson("/images/upload-url", "POST", {
      content_length: file.size, content_type: type, file_name: file.name, multipart: true,
    });
    remember(file, answer.image_id);
  }
  document.querySelector(`#uploads li[data-resume="${CSS.escape(fingerprint(file))}"]`)?.remove();
  row.dataset.imageId = answer.image_id;
  upsert(Object.assign({}, answer, { status: "awaiting_upload" }));
  const parts = new Map(answer.parts.map((p) => [p.number, p]));
  let sent = answer.parts.filter((p) => p.received).reduce((n, p) => n + p.length, 0);
  const show = (extra = 0) => {
    const percent = Math.floor(((sent + extra) / file.size) * 100);
    bar.value = percent;
    label.textContent = `${percent}%`;
  };
  show();
  for (const part of answer.parts) {
    if (part.received) continue;
    await sendPart(file, answer, parts, part.number, show, label);
    sent += part.length;
    show();
  }
  const record = await sendJson(`/images/${encodeURIComponent(answer.image_id)}/upload-complete`, "POST", {});
  forget(file);
  bar.value = 100;
  label.textContent = "uploaded";
  label.classList.add("done");
  markArrived(answer.image_id);  // its bytes are in: being made
  upsert(record);
  schedulePoll();
  return true;
}

// One part, until it arrives: a lost connection or a busy server waits 0.5 s, 1 s, 2 s... (at
// most 30 s) and tries again; an aged URL is replaced by a fresh one; anything else fails.
async function sendPart(file, answer, parts, number, show, label) {
  let wait = FIRST_WAIT_MS;
  for (let attempt = 1; ; attempt++) {
    const part = parts.get(number);
    const start = (number - 1) * answer.part_size;
    const status = await put(part.url, file.slice(start, start + part.length), show);
    if (status >= 200 && status < 300) return;
    if (status === 403) {  // its URL aged out (or the upload went): fresh URLs, or the end
      const fresh = await state(answer.image_id);
      if (!fresh) throw new Error("the upload is gone (deleted, or its reservation ran out)");
      for (const p of fresh.parts) parts.set(p.number, p);
    } else if (!TRANSIENT.includes(status)) {
      throw new Error(`part ${number} was refused (HTTP ${status})`);
    }
    if (attempt >= ATTEMPTS) throw new Error(`part ${number}: gave up after ${ATTEMPTS} tries`);
    label.textContent = `retrying part ${number} in ${Math.round(wait / 1000)} s`;
    await sleep(wait);
    wait = Math.min(wait * 2, LONGEST_WAIT_MS);
  }
}

// XMLHttpRequest, for its upload progress; the status (0: the connection went).
function put(url, body, show) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url);
    xhr.upload.onprogress = (event) => show(event.loaded);
    xhr.onload = () => resolve(xhr.status);
    xhr.onerror = () => resolve(0);
    xhr.ontimeout = () => resolve(0);
    xhr.send(body);
  });
}
