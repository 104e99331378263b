// What can be done to images, one or several: links, visibility, embed code, delete with undo.

import { $, LINK_SECONDS, api, copy, escapeHtml, imagePath, nameOf, send, session, toast } from "./api.js";
import { gallery, render, schedulePoll, showEmpty } from "./gallery.js";

export async function copyLink(imageId) {
  let link;
  try {
    link = await api(imagePath(imageId, `/url?rendition=original&expires_in=${LINK_SECONDS}`));
  } catch (error) {
    toast(`No link: ${error.message}`);
    return;
  }
  showLink(imageId, new URL(link.url, location.origin).href, `expires ${new Date(link.expires_at).toLocaleString()}`);
  await copy($("link-output").value, "Link", { field: $("link-output") });
}

function showLink(imageId, text, note) {
  $("link-box").hidden = false;
  $("link-output").value = text;
  $("link-output").dataset.imageId = imageId;
  $("link-note").textContent = note;
}

// Public images have permanent URLs anyone may load (and any CDN keep): making one private stops
// them at once; making it public again gives new ones.
export async function setVisibility(imageId, makePublic) {
  const updated = await send(imagePath(imageId), "PATCH", { public: makePublic });
  const card = gallery.cards.get(imageId);
  if (card && card.record) {
    card.record = Object.assign({}, card.record, updated);
    render(card);
  }
  return updated;
}

export async function toggleVisibility(imageId) {
  const card = gallery.cards.get(imageId);
  if (!card || !card.record) return;
  try {
    const updated = await setVisibility(imageId, !card.record.public);
    toast(updated.public ? "Public: anyone with its URLs can see it" : "Private: its public URLs stopped working");
  } catch (error) {
    toast(`Not changed: ${error.message}`);
  }
}

// An <img> of the image's public URLs: its stored renditions as a srcset, with their widths.
export function embedCode(record) {
  const urls = record.public_urls || {};
  const renditions = Object.entries(record.renditions || {})
    .filter(([name, r]) => urls[name] && r.width)
    .sort(([, a], [, b]) => a.width - b.width);
  const src = urls["256"] || (renditions.length ? urls[renditions[0][0]] : urls.original);
  const srcset = renditions.length > 1
    ? ` srcset="${renditions.map(([name, r]) => `${escapeHtml(urls[name])} ${r.width}w`).join(", ")}" sizes="(max-width: 600px) 100vw, 600px"`
    : "";
  const size = record.width && record.height ? ` width="${record.width}" height="${record.height}"` : "";
  return `<img src="${escapeHtml(src)}"${srcset} alt="${escapeHtml(nameOf(record))}" loading="lazy"${size}>`;
}

export async function copyEmbed(imageId) {
  const card = gallery.cards.get(imageId);
  if (!card || !card.record || !card.record.public_urls) return;
  showLink(imageId, embedCode(card.record), "embed code: the image's public URLs, for good");
  await copy($("link-output").value, "Embed code", { field: $("link-output") });
}

// Deleting: asked first, naming the image (or how many); then the cards go at once and the
// requests wait UNDO_MS, so "Undo" only has to bring the cards back. A page closed meanwhile sends
// them on its way out (keepalive), so a delete the user saw happen is not lost.
const UNDO_MS = 5000;
const pendingDeletes = new Map();   // image_id -> {timer, card}
let undoable = [];                  // the ids the undo bar would bring back

export const isBeingDeleted = (imageId) => pendingDeletes.has(imageId);

export function removeImages(imageIds, done = () => {}) {
  if (!imageIds.length) return;
  const names = imageIds.map((id) => nameOf(gallery.cards.get(id)?.record, id));
  const what = names.length === 1 ? names[0] : `${names.length} images`;
  const dialog = $("confirm-delete");
  $("confirm-delete-name").textContent = what;
  $("confirm-delete-what").textContent = names.length === 1
    ? "Its original, thumbnails and variants go, and its links stop working."
    : "Their originals, thumbnails and variants go, and their links stop working.";
  dialog.returnValue = "";
  dialog.onclose = () => {
    if (dialog.returnValue !== "delete") return;
    deleteLater(imageIds, what);
    done();
  };
  dialog.showModal();
}

function deleteLater(imageIds, what) {
  for (const imageId of imageIds) {
    const card = gallery.cards.get(imageId);
    if (card) card.li.hidden = true;
    const timer = setTimeout(() => sendDelete(imageId), UNDO_MS);
    pendingDeletes.set(imageId, { timer, card });
  }
  showEmpty();
  undoable = imageIds;
  $("undo-text").textContent = `Deleted ${what}`;
  $("undo").hidden = false;
  clearTimeout(deleteLater.hide);
  deleteLater.hide = setTimeout(() => { $("undo").hidden = true; }, UNDO_MS);
}

function undoDelete() {
  $("undo").hidden = true;
  let restored = 0;
  for (const imageId of undoable) {
    const pending = pendingDeletes.get(imageId);
    if (!pending) continue;
    clearTimeout(pending.timer);
    pendingDeletes.delete(imageId);
    if (pending.card) pending.card.li.hidden = false;
    restored += 1;
  }
  undoable = [];
  showEmpty();
  if (restored) toast("Not deleted");
}

async function sendDelete(imageId) {
  const pending = pendingDeletes.get(imageId);
  pendingDeletes.delete(imageId);
  try {
    await api(imagePath(imageId), { method: "DELETE" });
  } catch (error) {
    if (pending && pending.card) pending.card.li.hidden = false;
    toast(`Not deleted: ${error.message}`);
    return;
  }
  if (pending && pending.card) pending.card.li.remove();
  gallery.cards.delete(imageId);
  showEmpty();
  schedulePoll();
}

export function flushDeletes() {
  for (const [imageId, pending] of pendingDeletes) {
    clearTimeout(pending.timer);
    fetch(imagePath(imageId), {
      method: "DELETE", keepalive: true, headers: { Authorization: `Bearer ${session.key}` },
    });
  }
  pendingDeletes.clear();
}

export function wireActions() {
  $("undo-button").addEventListener("click", undoDelete);
  window.addEventListener("pagehide", flushDeletes);
}
