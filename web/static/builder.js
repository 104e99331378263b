// The link builder: a variant's parameters, a live preview, its signed URL and an <img srcset>
// of it at one and two times its width. The preview is the variant itself (made and stored on
// first request, counted like any): it is asked for once a field is changed and left alone for a
// moment, never while typing, and a newer one replaces it.

import { $, LINK_SECONDS, api, copy, escapeHtml, formatBytes, imagePath, nameOf } from "./api.js";
import { gallery } from "./gallery.js";

const PREVIEW_DELAY_MS = 400;
const builder = { imageId: null, timer: null, serial: 0, objectUrl: null };

function builderQuery(width = null) {
  const form = $("builder-form");
  const query = new URLSearchParams({ expires_in: String(LINK_SECONDS) });
  for (const name of ["w", "h", "fit", "format", "q", "blur", "sharpen", "bg"]) {
    const value = form.elements[name].value.trim();
    if (value) query.set(name, value);
  }
  if (width && query.get("w")) {  // the same picture, `width` wide (its height in proportion)
    const scale = width / Number(query.get("w"));
    query.set("w", String(width));
    if (query.get("h")) query.set("h", String(Math.round(Number(query.get("h")) * scale)));
  }
  if (query.get("fit") === "contain") query.delete("fit");
  if (form.elements.fit.value === "cover") query.set("crop", form.elements.crop.value);
  if (form.elements.rotate.value !== "0") query.set("rotate", form.elements.rotate.value);
  for (const flag of ["flip", "flop", "trim", "watermark"]) {
    if (form.elements[flag].checked) query.set(flag, "true");
  }
  return query;
}

// `crop`: where to start (the image page opens it on the focal point once one is set).
export function openBuilder(imageId, { crop = null } = {}) {
  const card = gallery.cards.get(imageId);
  builder.imageId = imageId;
  $("builder-name").textContent = nameOf(card && card.record, imageId);
  const form = $("builder-form");
  if (crop) {
    form.elements.fit.value = "cover";
    form.elements.crop.value = crop;
    if (!form.elements.h.value) form.elements.h.value = form.elements.w.value;
  }
  $("builder-status").textContent = "";
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
    link = await api(imagePath(builder.imageId, `/url?${builderQuery()}`));
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
  if (url) await copy(url, "URL", { status: $("builder-status") });
}

// An <img> of this variant at its width and twice it (screens of two device pixels a CSS
// pixel take the second), each a signed link: the srcset the browser picks from.
async function copySrcset() {
  const width = Number($("builder-form").elements.w.value);
  if (!width) {
    $("builder-status").textContent = "A srcset needs a width";
    return;
  }
  let links;
  try {
    links = await Promise.all([width, width * 2].map((w) => api(imagePath(builder.imageId, `/url?${builderQuery(w)}`))));
  } catch (error) {
    $("builder-status").textContent = `No srcset: ${error.message}`;
    return;
  }
  const [one, two] = links.map((l) => new URL(l.url, location.origin).href);
  const alt = escapeHtml($("builder-name").textContent);
  const code = `<img src="${one}" srcset="${one} ${width}w, ${two} ${width * 2}w" sizes="${width}px" alt="${alt}">`;
  await copy(code, "Srcset", { status: $("builder-status") });
}

export function wireBuilder() {
  $("builder-form").addEventListener("change", () => schedulePreview());
  $("builder-copy").addEventListener("click", copyBuilt);
  $("builder-srcset").addEventListener("click", copySrcset);
  $("builder").addEventListener("close", () => { builder.serial++; clearTimeout(builder.timer); });
}
