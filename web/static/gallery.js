// The gallery: the caller's images in the order and with the filters the toolbar asks for, page
// after page as the user scrolls (the listing's cursor), each a card kept live while it is pending.

import { $, api, button, element, formatBytes, imagePath, nameOf } from "./api.js";
import { copyEmbed, copyLink, isBeingDeleted, removeImages, toggleVisibility } from "./actions.js";
import { openBuilder } from "./builder.js";
import { selectCard, selectionChanged } from "./bulk.js";
import { openViewer } from "./viewer.js";

const PAGE = 60;              // images per gallery page
const POLL_MS = 1000;         // while anything is pending
const POLLED_APART = 10;      // pending images off the first page re-read one by one, at most
const TILE_WIDTH = 256;       // CSS pixels a gallery tile's image takes at most (app.css)
const SEARCH_DELAY_MS = 300;  // typing in the search box settles before the listing is asked
const AUTO_PAGES = 5;         // short filtered pages fetched in a row before the user is asked

export const gallery = {
  cards: new Map(),           // image_id -> {li, record, thumbFor, ...}; li.dataset.order sorts them
  cursor: null,
  serial: 0,                  // a newer listing makes an older one's answer stale
  query: null,                // the listing shown (its order and filters), its cursors' own
  loading: false,
  pollTimer: null,
  searchTimer: null,
  shortPages: 0,
};

// The toolbar's listing: its order ("created-desc", ...) and filters, as the API's query.
function listing() {
  const [sort, order] = $("sort").value.split("-");
  const query = new URLSearchParams({ limit: String(PAGE), sort, order });
  if ($("status-filter").value) query.set("status", $("status-filter").value);
  const text = $("search").value.trim();
  if (text) query.set("q", text);
  return query;
}

const filtered = () => Boolean($("status-filter").value || $("search").value.trim());

export async function loadGallery() {
  const serial = ++gallery.serial;
  gallery.cursor = null;
  gallery.shortPages = 0;
  gallery.query = listing();  // what the cursors of this listing belong to
  clear();
  await loadPage(serial, gallery.query);
  schedulePoll();
}

// The next page of the listing shown, whatever the toolbar says meanwhile (a search being typed
// reloads the listing once it settles).
export async function loadMore() {
  if (!gallery.cursor || gallery.loading) return;
  const query = new URLSearchParams(gallery.query);
  query.set("cursor", gallery.cursor);
  await loadPage(gallery.serial, query);
}

async function loadPage(serial, query) {
  gallery.loading = true;
  $("gallery-section").setAttribute("aria-busy", "true");
  let page;
  try {
    page = await api(`/images?${query}`);
  } catch (error) {
    $("empty").textContent = `The images could not be listed: ${error.message}`;
    $("empty").hidden = false;
    return;
  } finally {
    gallery.loading = false;
    $("gallery-section").removeAttribute("aria-busy");
  }
  if (serial !== gallery.serial) return;  // the listing changed meanwhile
  for (const record of page.images) upsert(record);
  gallery.shortPages = page.images.length ? 0 : gallery.shortPages + 1;
  setCursor(page.next_cursor);
  showEmpty();
  keepFilling();
}

// A filtered page may be short (the API reads a bounded number of images a request): while the
// end of the gallery is in view, the next page follows, up to AUTO_PAGES empty ones in a row.
function keepFilling() {
  const more = $("more");
  if (!gallery.cursor || more.hidden || gallery.shortPages >= AUTO_PAGES) return;
  const box = more.getBoundingClientRect();
  if (box.top < window.innerHeight + 400) loadMore();
}

function setCursor(cursor) {
  gallery.cursor = cursor;
  const more = $("more");
  more.hidden = !cursor;
  more.textContent = filtered() ? "Keep searching" : "Load more";
}

export function showEmpty() {
  selectionChanged();  // a card hidden or gone leaves the selection
  const shown = [...gallery.cards.values()].some((c) => !c.li.hidden);
  const empty = $("empty");
  empty.hidden = shown || Boolean(gallery.cursor);
  empty.textContent = filtered() ? "No images match." : "No images yet.";
}

function clear() {
  gallery.cards.clear();
  $("gallery").replaceChildren();
  selectionChanged();
}

export function resetGallery() {
  gallery.serial++;
  clearTimeout(gallery.pollTimer);
  clear();
  setCursor(null);
}

// Scrolling near the end of the gallery loads the next page; the button stays for keyboards.
function watchTheEnd() {
  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) loadMore();
  }, { rootMargin: "400px" });
  observer.observe($("more"));
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

// Processing, polled; an image awaiting its upload is upserted by the upload itself (one a
// reload interrupted may wait for a day: not polled meanwhile).
const WAITING = ["pending"];

export function schedulePoll() {
  clearTimeout(gallery.pollTimer);
  const pending = [...gallery.cards.values()].filter((c) => WAITING.includes(c.record.status)).length;
  if (!pending) showUsage();  // once things settle, not on every poll
  $("live").textContent = pending ? `${pending} processing…` : "";
  if (pending) gallery.pollTimer = setTimeout(poll, POLL_MS);
}

// Pending images are re-read from the newest first page (uploads are newest, so they are on it);
// any other pending card (an older image, in another order) by itself, a few at a time.
async function poll() {
  try {
    const page = await api(`/images?limit=${PAGE}`);
    const seen = new Set();
    for (const record of page.images) {
      seen.add(record.image_id);
      if (gallery.cards.has(record.image_id)) upsert(record);
    }
    const apart = [...gallery.cards.values()]
      .filter((c) => WAITING.includes(c.record.status) && !seen.has(c.record.image_id))
      .slice(0, POLLED_APART);
    for (const card of apart) upsert(await api(imagePath(card.record.image_id)));
  } catch (error) {
    if (error.status === 401) return;
  }
  schedulePoll();
}

// Images whose bytes this tab sent: their record says `awaiting_upload` until the consumer takes
// the store's event, but they are being made (shown, and polled, as pending).
const arrived = new Set();

export function markArrived(imageId) {
  arrived.add(imageId);
}

export function upsert(record) {
  if (isBeingDeleted(record.image_id)) return;  // its card waits, hidden, for the undo to run out
  if (record.status === "awaiting_upload" && arrived.has(record.image_id)) {
    record = Object.assign({}, record, { status: "pending" });
  }
  let card = gallery.cards.get(record.image_id);
  if (!card) {
    card = buildCard(record.image_id);
    card.li.dataset.order = orderOf(record);
    gallery.cards.set(record.image_id, card);
    place(card.li);
  }
  card.record = record;
  render(card);
  showEmpty();
}

// The listing's own order: by creation (creation time, id; a re-upload keeps its place) or by id.
// Sorting each card into place keeps the gallery in that order however it arrives (pages, polls,
// uploads).
function orderOf(record) {
  if ($("sort").value.startsWith("id")) return record.image_id;
  return `${record.created_at || "~"}#${record.image_id}`;  // "~": not known yet, so newest
}

function place(li) {
  const gallery = $("gallery");
  const descending = $("sort").value.endsWith("desc");
  const after = [...gallery.children].find((other) =>
    descending ? other.dataset.order < li.dataset.order : other.dataset.order > li.dataset.order);
  gallery.insertBefore(li, after || null);
}

function buildCard(imageId) {
  const li = element("li", "card");
  li.dataset.imageId = imageId;
  const pick = element("input", "select");
  pick.type = "checkbox";
  pick.addEventListener("click", (event) => selectCard(imageId, event));
  // The thumbnail opens the image's page; a button, so a keyboard reaches it too.
  const thumb = button("thumb", "", () => openViewer(imageId));
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
    button("delete", "Delete", () => removeImages([imageId])),
  );
  li.append(pick, thumb, meta, actions);
  return { li, pick, thumb, name, badge, details, reason, visibility, embed, record: null, thumbFor: null };
}

export function render(card) {
  const r = card.record;
  const name = nameOf(r);
  card.li.dataset.status = r.status;
  card.name.textContent = name;
  card.pick.setAttribute("aria-label", `Select ${name}`);
  card.thumb.setAttribute("aria-label", `Open ${name}`);
  card.badge.textContent = r.status === "awaiting_upload" ? "awaiting upload" : r.status;
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
  img.alt = nameOf(card.record);
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

export function wireGallery() {
  $("more").addEventListener("click", () => { gallery.shortPages = 0; loadMore(); });
  $("sort").addEventListener("change", loadGallery);
  $("status-filter").addEventListener("change", loadGallery);
  $("search").addEventListener("input", () => {
    clearTimeout(gallery.searchTimer);
    gallery.searchTimer = setTimeout(loadGallery, SEARCH_DELAY_MS);
  });
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    clearTimeout(gallery.searchTimer);
    loadGallery();
  });
  watchTheEnd();
}
