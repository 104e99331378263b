// The image-service web UI: plain modern JavaScript against the public API, no build step.
// Everything a user supplies is put into the page with textContent, never as HTML.
"use strict";

const KEY_STORE = "imgsvc.key";
const PAGE = 60;              // images per gallery page
const POLL_MS = 1000;         // while anything is pending
const PARALLEL_UPLOADS = 3;
const LINK_SECONDS = 3600;
const TILE_WIDTH = 256;       // CSS pixels a gallery tile's image takes at most (app.css)

const $ = (id) => document.getElementById(id);
const state = {
  key: sessionStorage.getItem(KEY_STORE) || localStorage.getItem(KEY_STORE) || "",
  cards: new Map(),           // image_id -> {li, record, thumbFor}; li.dataset.order sorts them
  cursor: null,
  pollTimer: null,
  queue: [],                  // files waiting for an upload slot
  active: 0,
  // Straight to S3 where the deployment offers it (the page says which upload modes it does).
  presigned: (document.querySelector('meta[name="upload-modes"]')?.content || "").split(",").includes("presigned"),
};

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
  }
}

async function api(path, options = {}) {
  const headers = Object.assign({ Authorization: `Bearer ${state.key}` }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 204) return null;
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (!response.ok) {
    if (response.status === 401 && state.key) signOut("Your key was not accepted; sign in again.");
    throw new ApiError(response.status, body);
  }
  return body;
}

function toast(text) {
  const el = $("toast");
  el.textContent = text;
  el.classList.add("shown");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("shown"), 2500);
}

// Signing in --------------------------------------------------------------------------------------

async function signIn(key) {
  state.key = key.trim();
  $("sign-in-error").hidden = true;
  try {
    await api("/images?limit=1");
  } catch (error) {
    state.key = "";
    const message = error.status === 401 ? "That key was not accepted." : `Could not sign in: ${error.message}`;
    showSignIn(message);
    return;
  }
  // Kept in this tab only, unless the user asked to be remembered on this browser.
  const remembered = $("remember").checked || localStorage.getItem(KEY_STORE) === state.key;
  (remembered ? localStorage : sessionStorage).setItem(KEY_STORE, state.key);
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("whoami").hidden = false;
  $("user-label").textContent = `key ${state.key.split("_").slice(0, 2).join("_")}…`;
  await loadGallery();
}

function signOut(message) {
  flushDeletes();  // deletes the user saw happen go out with the key they were made with
  state.key = "";
  sessionStorage.removeItem(KEY_STORE);
  localStorage.removeItem(KEY_STORE);
  clearTimeout(state.pollTimer);
  state.cards.clear();
  $("gallery").replaceChildren();
  $("uploads").replaceChildren();
  $("link-box").hidden = true;
  showSignIn(message);
}

function showSignIn(message) {
  $("app").hidden = true;
  $("whoami").hidden = true;
  $("sign-in").hidden = false;
  const error = $("sign-in-error");
  error.hidden = !message;
  error.textContent = message || "";
}

// Uploading ---------------------------------------------------------------------------------------

function enqueue(files) {
  for (const file of files) {
    const row = document.createElement("li");
    const name = element("span", "file");
    name.textContent = file.name;
    name.title = file.name;
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    const label = element("span", "state");
    label.textContent = "waiting";
    row.append(name, bar, label);
    $("uploads").append(row);
    state.queue.push({ file, bar, label, row });
  }
  pump();
}

function pump() {
  while (state.active < PARALLEL_UPLOADS && state.queue.length) {
    const item = state.queue.shift();
    state.active += 1;
    upload(item).finally(() => { state.active -= 1; pump(); });
  }
}

// Straight to S3 where the deployment offers presigned uploads (the API only authorises them),
// else through the API. `state.presigned` also turns false at an answer saying they are not offered.
async function upload(item) {
  if (state.presigned) {
    let reserved = null;
    try {
      reserved = await reserve(item.file);
    } catch (error) {
      uploadFailed(item.row, item.label, error.message);
      return;
    }
    if (reserved) return send(item, "PUT", reserved.url, reserved.headers, 200, reserved);
  }
  return send(item, "POST", `/images?file_name=${encodeURIComponent(item.file.name)}`, {
    Authorization: `Bearer ${state.key}`,
    "Content-Type": item.file.type || "application/octet-stream",
  }, 202);
}

// A presigned upload's URL for a new image, or null where the deployment does not offer them
// (or the file is no image format we can name: the API then says why it refuses it).
async function reserve(file) {
  const type = await sniffType(file);
  if (!type) return null;
  try {
    return await api("/images/upload-url", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ content_length: file.size, content_type: type, file_name: file.name }),
    });
  } catch (error) {
    if (["upload_mode_disabled", "method_not_allowed"].includes(error.code) || error.status === 404) {
      state.presigned = false;
      return null;
    }
    throw error;
  }
}

// The type the bytes are, as the service will decide it (a name or the browser's guess may lie).
async function sniffType(file) {
  const head = new Uint8Array(await file.slice(0, 12).arrayBuffer());
  const starts = (...bytes) => bytes.every((b, i) => head[i] === b);
  const text = (from, to) => String.fromCharCode(...head.slice(from, to));
  if (starts(0xff, 0xd8, 0xff)) return "image/jpeg";
  if (starts(0x89, 0x50, 0x4e, 0x47)) return "image/png";
  if (text(0, 4) === "GIF8") return "image/gif";
  if (text(0, 4) === "RIFF" && text(8, 12) === "WEBP") return "image/webp";
  if (starts(0x49, 0x49, 0x2a, 0x00) || starts(0x4d, 0x4d, 0x00, 0x2a)) return "image/tiff";
  if (text(4, 8) === "ftyp") {
    const brand = text(8, 12);
    if (["avif", "avis"].includes(brand)) return "image/avif";
    if (["heic", "heix", "hevc", "hevx", "heim", "heis", "mif1", "msf1"].includes(brand)) return "image/heif";
  }
  return null;
}

// XMLHttpRequest, not fetch: only it reports upload progress. `reserved`: the image a presigned
// upload completes (S3 answers no JSON of ours).
function send({ file, bar, label, row }, method, url, headers, expected, reserved = null) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    label.textContent = "0%";
    xhr.upload.onprogress = (event) => {
      if (!event.lengthComputable) return;
      const percent = Math.floor((event.loaded / event.total) * 100);
      bar.value = percent;
      label.textContent = `${percent}%`;
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      const image = reserved ? Object.assign({}, reserved, { status: "pending" }) : body;
      if (xhr.status === expected && image) {
        bar.value = 100;
        label.textContent = "uploaded";
        label.classList.add("done");
        row.dataset.imageId = image.image_id;
        upsert(image);
        schedulePoll();
      } else {
        uploadFailed(row, label, (body && body.message) || `failed (HTTP ${xhr.status})`);
        if (xhr.status === 401) signOut("Your key was not accepted; sign in again.");
      }
      resolve();
    };
    xhr.onerror = () => {
      uploadFailed(row, label, "network error");
      resolve();
    };
    xhr.send(file);
  });
}

// A refused upload: its bar goes (the bytes were sent, but nothing was stored) and the API's reason
// takes its place on one line, in full in the tooltip.
function uploadFailed(row, label, reason) {
  row.classList.add("failed");
  label.textContent = reason;
  label.title = reason;
  label.classList.add("failed");
}

// The gallery -------------------------------------------------------------------------------------

async function loadGallery() {
  state.cursor = null;
  const page = await api(`/images?limit=${PAGE}`);
  for (const record of page.images) upsert(record);
  $("empty").hidden = state.cards.size > 0;
  setCursor(page.next_cursor);
  schedulePoll();
}

async function loadMore() {
  if (!state.cursor) return;
  const page = await api(`/images?limit=${PAGE}&cursor=${encodeURIComponent(state.cursor)}`);
  for (const record of page.images) upsert(record);
  setCursor(page.next_cursor);
}

function setCursor(cursor) {
  state.cursor = cursor;
  $("more").hidden = !cursor;
}

// What the user stores against their quotas, beside the gallery's title: read with the gallery
// and whenever the images change (an upload finished, a delete sent).
async function showUsage() {
  let usage;
  try {
    usage = await api("/usage");
  } catch (_) {
    return;  // the gallery works without it
  }
  const images = `${usage.images} image${usage.images === 1 ? "" : "s"}`;
  const of = usage.quota_bytes ? ` of ${formatBytes(usage.quota_bytes)}` : "";
  const count = usage.quota_images ? ` (at most ${usage.quota_images})` : "";
  $("usage-text").textContent = `${images}${count} · ${formatBytes(usage.bytes)}${of}`;
  const bar = $("usage-bar");
  bar.hidden = !usage.quota_bytes;
  if (usage.quota_bytes) {
    bar.max = usage.quota_bytes;
    bar.value = Math.min(usage.bytes, usage.quota_bytes);
  }
}

function schedulePoll() {
  clearTimeout(state.pollTimer);
  const waiting = ["pending", "awaiting_upload"];
  const pending = [...state.cards.values()].filter((c) => waiting.includes(c.record.status)).length;
  if (!pending && state.key) showUsage();  // once things settle, not on every poll
  $("live").textContent = pending ? `${pending} processing…` : "";
  if (pending && state.key) state.pollTimer = setTimeout(poll, POLL_MS);
}

// Pending images are re-read from the first page (uploads are newest, so they are on it).
async function poll() {
  try {
    const page = await api(`/images?limit=${PAGE}`);
    for (const record of page.images) upsert(record);
  } catch (error) {
    if (error.status === 401) return;
  }
  schedulePoll();
}

function upsert(record) {
  let card = state.cards.get(record.image_id);
  if (!card) {
    card = buildCard(record.image_id);
    card.li.dataset.order = orderOf(record);
    state.cards.set(record.image_id, card);
    place(card.li);
  }
  card.record = record;
  render(card);
  $("empty").hidden = state.cards.size > 0;
}

// The listing's own order, newest first: (creation time, id), which a re-upload keeps. Sorting
// each card into place keeps the gallery in that order however it arrives (pages, polls, uploads).
function orderOf(record) {
  return `${record.created_at || "~"}#${record.image_id}`;  // "~": not known yet, so newest
}

function place(li) {
  const gallery = $("gallery");
  const older = [...gallery.children].find((other) => other.dataset.order < li.dataset.order);
  gallery.insertBefore(li, older || null);
}

function element(tag, className) {
  const created = document.createElement(tag);
  created.className = className;
  return created;
}

function buildCard(imageId) {
  const li = element("li", "card");
  li.dataset.imageId = imageId;
  const thumb = element("div", "thumb");
  const meta = element("div", "meta");
  const name = element("div", "name");
  const badge = element("span", "badge");
  const details = element("div", "details muted");
  const reason = element("div", "reason");
  meta.append(name, badge, details, reason);
  const actions = element("div", "actions");
  const visibility = button("visibility", "Make public", () => toggleVisibility(imageId));
  const embed = button("embed", "Copy embed code", () => copyEmbed(imageId));
  embed.hidden = true;
  actions.append(
    button("copy-link", "Copy link", () => copyLink(imageId)),
    button("build-link", "Link builder", () => openBuilder(imageId)),
    visibility,
    embed,
    button("delete", "Delete", () => removeImage(imageId)),
  );
  li.append(thumb, meta, actions);
  return { li, thumb, name, badge, details, reason, visibility, embed, record: null, thumbFor: null };
}

function button(className, label, onClick) {
  const created = element("button", className);
  created.type = "button";
  created.textContent = label;
  created.addEventListener("click", onClick);
  return created;
}

function render(card) {
  const r = card.record;
  card.li.dataset.status = r.status;
  card.name.textContent = r.file_name || r.image_id;
  card.badge.textContent = r.status;
  card.badge.className = `badge ${r.status}`;
  const size = r.width && r.height ? `${r.width}×${r.height} · ` : "";
  card.details.textContent = `${size}${formatBytes(r.bytes)}`;
  card.reason.textContent = r.status === "failed" && r.error ? r.error.message : "";
  card.visibility.textContent = r.public ? "Make private" : "Make public";
  card.visibility.setAttribute("aria-pressed", r.public ? "true" : "false");
  card.embed.hidden = !(r.public && r.public_urls);
  // The mean colour tints the tile while the thumbnail loads (the stylesheet drops it after).
  card.thumb.style.setProperty("--placeholder", (r.placeholder && r.placeholder.color) || "");
  if (r.status === "ready" && r.thumbnail_url && card.thumbFor !== r.etag) {
    card.thumbFor = r.etag;
    showThumbnail(card, r.thumbnail_url, r.thumbnail_srcset);
  }
  if (r.status !== "ready") {
    card.thumb.replaceChildren();
    card.thumb.classList.remove("loaded");
    card.thumbFor = null;
  }
}

// <img> cannot send the API key: the listing gives each ready image signed links to its stored
// renditions, with their widths (srcset: the browser takes the smallest that fills the tile at
// its pixel ratio), so the gallery makes no request per image and nothing is made or charged for
// it. A link that fails is retried with the next listing's.
function showThumbnail(card, url, srcset) {
  const img = document.createElement("img");
  img.alt = card.record.file_name || card.record.image_id;
  img.addEventListener("load", () => card.thumb.classList.add("loaded"));
  img.addEventListener("error", () => {
    if (img.srcset) { img.removeAttribute("srcset"); return; }  // the plain src is tried next
    card.thumbFor = null;
  });
  if (srcset) {
    img.sizes = `${TILE_WIDTH}px`;
    img.srcset = srcset;
  }
  img.src = url;
  card.thumb.classList.remove("loaded");
  card.thumb.replaceChildren(img);
}

function formatBytes(n) {
  if (n == null) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

async function copyLink(imageId) {
  let link;
  try {
    link = await api(`/images/${encodeURIComponent(imageId)}/url?rendition=original&expires_in=${LINK_SECONDS}`);
  } catch (error) {
    toast(`No link: ${error.message}`);
    return;
  }
  const absolute = new URL(link.url, location.origin).href;
  $("link-box").hidden = false;
  $("link-output").value = absolute;
  $("link-output").dataset.imageId = imageId;
  $("link-note").textContent = `expires ${new Date(link.expires_at).toLocaleString()}`;
  try {
    await navigator.clipboard.writeText(absolute);
    toast("Link copied");
  } catch (_) {
    $("link-output").select();
    toast("Copy the selected link");
  }
}

// The link builder: a variant's parameters, a live preview and its signed URL. The preview is the
// variant itself (made and stored on first request, counted like any): it is asked for once a
// field is changed and left alone for a moment, never while typing, and a newer one replaces it.
const PREVIEW_DELAY_MS = 400;
const builder = { imageId: null, timer: null, serial: 0, objectUrl: null };

function builderQuery() {
  const form = $("builder-form");
  const query = new URLSearchParams({ expires_in: String(LINK_SECONDS) });
  for (const name of ["w", "h", "fit", "format", "q", "blur", "sharpen", "bg"]) {
    const value = form.elements[name].value.trim();
    if (value) query.set(name, value);
  }
  if (query.get("fit") === "contain") query.delete("fit");
  if (form.elements.fit.value === "cover") query.set("crop", form.elements.crop.value);
  if (form.elements.rotate.value !== "0") query.set("rotate", form.elements.rotate.value);
  for (const flag of ["flip", "flop", "trim", "watermark"]) {
    if (form.elements[flag].checked) query.set(flag, "true");
  }
  return query;
}

function openBuilder(imageId) {
  const card = state.cards.get(imageId);
  builder.imageId = imageId;
  $("builder-name").textContent = (card && card.record && card.record.file_name) || imageId;
  $("builder").showModal();
  schedulePreview(0);
}

function schedulePreview(delay = PREVIEW_DELAY_MS) {
  const form = $("builder-form");
  form.elements.crop.disabled = form.elements.fit.value !== "cover";
  clearTimeout(builder.timer);
  builder.timer = setTimeout(preview, delay);
}

async function preview() {
  const serial = ++builder.serial;
  const current = () => serial === builder.serial && $("builder").open;
  const problem = $("builder-error");
  let link;
  try {
    link = await api(`/images/${encodeURIComponent(builder.imageId)}/url?${builderQuery()}`);
  } catch (error) {
    if (!current()) return;
    problem.textContent = error.message;
    problem.hidden = false;
    $("builder-url").value = "";
    return;
  }
  if (!current()) return;
  const url = new URL(link.url, location.origin).href;
  $("builder-url").value = url;
  $("builder-status").textContent = "";
  $("builder-facts").textContent = "making the preview…";
  // Fetched, not just shown: its size and type are part of what the builder tells.
  const response = await fetch(url).catch(() => null);
  if (!current()) return;
  if (!response || !response.ok) {
    let body = null;
    try { body = response && (await response.json()); } catch (_) { /* not JSON */ }
    problem.textContent = (body && body.message) || "The preview could not be made.";
    problem.hidden = false;
    $("builder-facts").textContent = "";
    return;
  }
  const blob = await response.blob();
  if (!current()) return;
  problem.hidden = true;
  const img = $("builder-preview");
  if (builder.objectUrl) URL.revokeObjectURL(builder.objectUrl);
  builder.objectUrl = URL.createObjectURL(blob);
  img.alt = `preview of ${$("builder-name").textContent}`;
  img.onload = () => {
    const type = (blob.type || "").replace("image/", "").toUpperCase();
    $("builder-facts").textContent = `${img.naturalWidth}×${img.naturalHeight} · ${type} · ${formatBytes(blob.size)}`;
  };
  img.src = builder.objectUrl;
}

async function copyBuilt() {
  const url = $("builder-url").value;
  if (!url) return;
  // Said in the dialog: a modal dialog sits above the page's toast.
  try {
    await navigator.clipboard.writeText(url);
    $("builder-status").textContent = "URL copied";
  } catch (_) {
    $("builder-url").select();
    $("builder-status").textContent = "Copy the selected URL";
  }
}

// Public images have permanent URLs anyone may load (and any CDN keep): making one private stops
// them at once; making it public again gives new ones.
async function toggleVisibility(imageId) {
  const card = state.cards.get(imageId);
  if (!card || !card.record) return;
  try {
    const updated = await api(`/images/${encodeURIComponent(imageId)}`, {
      method: "PATCH",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ public: !card.record.public }),
    });
    card.record = Object.assign({}, card.record, updated);
    render(card);
    toast(updated.public ? "Public: anyone with its URLs can see it" : "Private: its public URLs stopped working");
  } catch (error) {
    toast(`Not changed: ${error.message}`);
  }
}

function embedCode(record) {
  const urls = record.public_urls || {};
  const src = urls["256"] || Object.values(urls).find((u) => !u.includes("/original.")) || urls.original;
  const alt = (record.file_name || record.image_id).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
  const size = record.width && record.height ? ` data-width="${record.width}" data-height="${record.height}"` : "";
  return `<img src="${src}" alt="${alt}" loading="lazy"${size}>`;
}

async function copyEmbed(imageId) {
  const card = state.cards.get(imageId);
  if (!card || !card.record || !card.record.public_urls) return;
  const code = embedCode(card.record);
  $("link-box").hidden = false;
  $("link-output").value = code;
  $("link-output").dataset.imageId = imageId;
  $("link-note").textContent = "embed code: the image's public URL, for good";
  try {
    await navigator.clipboard.writeText(code);
    toast("Embed code copied");
  } catch (_) {
    $("link-output").select();
    toast("Copy the selected embed code");
  }
}

// Deleting: asked first, naming the image; then the card goes at once and the request waits
// UNDO_MS, so "Undo" only has to bring the card back. A page closed meanwhile sends it on its way
// out (keepalive), so a delete the user saw happen is not lost.
const UNDO_MS = 5000;
const pendingDeletes = new Map();   // image_id -> {timer, card}

function removeImage(imageId) {
  const card = state.cards.get(imageId);
  const name = (card && card.record && (card.record.file_name || card.record.image_id)) || imageId;
  const dialog = $("confirm-delete");
  $("confirm-delete-name").textContent = name;
  dialog.returnValue = "";
  dialog.onclose = () => { if (dialog.returnValue === "delete") deleteLater(imageId, name); };
  dialog.showModal();
}

function deleteLater(imageId, name) {
  const card = state.cards.get(imageId);
  if (card) card.li.hidden = true;
  $("empty").hidden = [...state.cards.values()].some((c) => !c.li.hidden);
  const timer = setTimeout(() => sendDelete(imageId), UNDO_MS);
  pendingDeletes.set(imageId, { timer, card });
  $("undo-text").textContent = `Deleted ${name}`;
  $("undo").dataset.imageId = imageId;
  $("undo").hidden = false;
  clearTimeout(deleteLater.hide);
  deleteLater.hide = setTimeout(() => { $("undo").hidden = true; }, UNDO_MS);
}

function undoDelete() {
  const imageId = $("undo").dataset.imageId;
  const pending = pendingDeletes.get(imageId);
  $("undo").hidden = true;
  if (!pending) return;
  clearTimeout(pending.timer);
  pendingDeletes.delete(imageId);
  if (pending.card) pending.card.li.hidden = false;
  $("empty").hidden = state.cards.size > 0;
  toast("Not deleted");
}

async function sendDelete(imageId) {
  const pending = pendingDeletes.get(imageId);
  pendingDeletes.delete(imageId);
  try {
    await api(`/images/${encodeURIComponent(imageId)}`, { method: "DELETE" });
  } catch (error) {
    if (pending && pending.card) pending.card.li.hidden = false;
    toast(`Not deleted: ${error.message}`);
    return;
  }
  if (pending && pending.card) pending.card.li.remove();
  state.cards.delete(imageId);
  $("empty").hidden = state.cards.size > 0;
  schedulePoll();
}

function flushDeletes() {
  for (const [imageId, pending] of pendingDeletes) {
    clearTimeout(pending.timer);
    fetch(`/images/${encodeURIComponent(imageId)}`, {
      method: "DELETE", keepalive: true, headers: { Authorization: `Bearer ${state.key}` },
    });
  }
  pendingDeletes.clear();
}

// The demo users' keys file (make run writes it; the page names where): picked here, read in the
// browser, never sent anywhere; a user is chosen from it and its key fills the field.
function showDemoKeys() {
  const where = document.querySelector('meta[name="demo-keys"]')?.content;
  if (!where) return;
  $("demo-keys-file").textContent = where;
  $("demo-keys").hidden = false;
}

async function pickKeys(file) {
  const pick = $("key-pick");
  let keys;
  try {
    keys = JSON.parse(await file.text()).keys;
    if (!keys || typeof keys !== "object") throw new Error("no keys");
  } catch (_) {
    showSignIn("That file holds no demo keys.");
    return;
  }
  pick.replaceChildren(...Object.entries(keys).map(([userId, key], n) => {
    const option = document.createElement("option");
    option.value = String(key);
    option.textContent = `demo user ${n + 1} (${userId.slice(0, 8)}…)`;
    return option;
  }));
  pick.hidden = false;
  $("api-key").value = pick.value;
}

// Wiring ------------------------------------------------------------------------------------------

function wire() {
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("api-key").value);
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("more").addEventListener("click", () => loadMore());
  $("builder-form").addEventListener("change", () => schedulePreview());
  $("undo-button").addEventListener("click", undoDelete);
  $("keys-file").addEventListener("change", (event) => { if (event.target.files[0]) pickKeys(event.target.files[0]); });
  $("key-pick").addEventListener("change", () => { $("api-key").value = $("key-pick").value; });
  showDemoKeys();
  window.addEventListener("pagehide", flushDeletes);
  $("builder-copy").addEventListener("click", copyBuilt);
  $("builder").addEventListener("close", () => { builder.serial++; clearTimeout(builder.timer); });
  $("file-input").addEventListener("change", (event) => {
    enqueue([...event.target.files]);
    event.target.value = "";
  });
  const zone = $("drop-zone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => { event.preventDefault(); zone.classList.add("over"); });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    enqueue([...event.dataTransfer.files]);
  });
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") $("file-input").click();
  });
  if (state.key) signIn(state.key);
  else showSignIn("");
}

wire();
