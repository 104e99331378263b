// The image's page (a dialog over the gallery): the image large, what the service knows of it,
// its renditions and variants, its links and embed code, its visibility, and its focal point,
// set by clicking the image (or with the arrow keys).

import { $, LINK_SECONDS, api, button, copy, element, escapeHtml, formatBytes, formatDate, imagePath, nameOf, send } from "./api.js";
import { embedCode, removeImages, setVisibility } from "./actions.js";
import { openBuilder } from "./builder.js";
import { gallery, upsert } from "./gallery.js";

const FOCAL_STEP = 0.05;     // an arrow key moves the focal point this much of the image
const FOCAL_SAVE_MS = 600;   // arrow keys settle before the point is saved
const viewer = { imageId: null, record: null, original: null, focal: null, saveTimer: null, serial: 0 };

export async function openViewer(imageId) {
  const serial = ++viewer.serial;
  viewer.imageId = imageId;
  const card = gallery.cards.get(imageId);
  viewer.record = card && card.record;
  viewer.original = null;
  show();
  $("viewer").showModal();
  let record;
  try {
    record = await api(imagePath(imageId));
    if (record.status === "ready") {
      const link = await api(imagePath(imageId, `/url?rendition=original&expires_in=${LINK_SECONDS}`));
      viewer.original = new URL(link.url, location.origin).href;
    }
  } catch (error) {
    if (serial === viewer.serial) $("viewer-status").textContent = `Could not read it: ${error.message}`;
    return;
  }
  if (serial !== viewer.serial) return;
  // The listing's signed rendition links stay: a record read alone carries none.
  viewer.record = Object.assign({}, viewer.record || {}, record);
  upsert(viewer.record);
  show();
}

function show() {
  const r = viewer.record || { image_id: viewer.imageId };
  const name = nameOf(r, viewer.imageId);
  $("viewer-title").textContent = name;
  $("viewer-status").textContent = "";
  showImage(r, name);
  showFacts(r);
  showRenditions(r);
  const variants = r.variants;
  $("viewer-variants").textContent = variants
    ? `${variants.count} stored (${formatBytes(variants.bytes)}, counted in your usage)${variants.names ? `: ${variants.names.join(", ")}` : ""}`
    : "None yet: the link builder makes them.";
  $("viewer-visibility").textContent = r.public ? "Make private" : "Make public";
  $("viewer-visibility").setAttribute("aria-pressed", r.public ? "true" : "false");
  $("viewer-embed").hidden = !(r.public && r.public_urls);
  for (const id of ["viewer-copy-url", "viewer-srcset", "viewer-builder", "viewer-visibility"]) {
    $(id).disabled = r.status !== "ready";
  }
}

function showImage(r, name) {
  const img = $("viewer-image");
  const ready = r.status === "ready";
  $("viewer-stage").hidden = !ready;
  $("viewer-pending").hidden = ready;
  $("viewer-pending").textContent = r.status === "failed" && r.error
    ? `Failed: ${r.error.message}`
    : `Not ready yet (${(r.status || "pending").replace("_", " ")}).`;
  if (!ready) return;
  img.alt = name;
  img.style.maxWidth = r.width ? `min(100%, ${r.width}px)` : "";  // never enlarged past its pixels
  // The stored renditions, and the original at its own width: the browser takes what fills it.
  const candidates = [r.thumbnail_srcset, viewer.original && r.width ? `${viewer.original} ${r.width}w` : ""];
  const srcset = candidates.filter(Boolean).join(", ");
  if (srcset && img.getAttribute("srcset") !== srcset) {
    img.sizes = "(max-width: 760px) 92vw, 640px";
    img.srcset = srcset;
    img.src = viewer.original || r.thumbnail_url || "";
  }
  viewer.focal = r.focal_point || null;
  placeMarker();
}

function fact(list, label, value) {
  if (value === undefined || value === null || value === "") return;
  list.append(element("dt", "", label), element("dd", "", String(value)));
}

function showFacts(r) {
  const list = $("viewer-facts");
  list.replaceChildren();
  const idRow = element("dd");
  idRow.append(element("code", "", r.image_id || viewer.imageId), button("copy-id", "Copy id", () =>
    copy(r.image_id || viewer.imageId, "Id", { status: $("viewer-status") })));
  list.append(element("dt", "", "Id"), idRow);
  fact(list, "File name", r.file_name);
  fact(list, "Status", r.status === "failed" && r.error ? `failed: ${r.error.message}` : r.status);
  fact(list, "Dimensions", r.width && r.height ? `${r.width}×${r.height}` : "");
  fact(list, "Format", r.format && r.format.toUpperCase());
  fact(list, "Size", formatBytes(r.bytes));
  fact(list, "Uploaded", formatDate(r.created_at));
  fact(list, "Expires", r.expires_at ? formatDate(r.expires_at) : "never");
  fact(list, "Visibility", r.public ? "public: its URLs work for anyone" : "private");
  if (r.focal_point) fact(list, "Focal point", `${Math.round(r.focal_point.x * 100)}%, ${Math.round(r.focal_point.y * 100)}%`);
}

function showRenditions(r) {
  const list = $("viewer-renditions");
  list.replaceChildren();
  for (const [name, rendition] of Object.entries(r.renditions || {})) {
    const item = element("li");
    item.append(
      element("span", "", `${name}: ${rendition.width}×${rendition.height}, ${formatBytes(rendition.bytes)}`),
      button("copy-rendition", "Copy link", () => copyRendition(name)),
    );
    list.append(item);
  }
  if (!list.children.length) list.append(element("li", "muted", "None yet."));
}

async function copyRendition(name) {
  try {
    const link = await api(imagePath(viewer.imageId, `/url?rendition=${encodeURIComponent(name)}&expires_in=${LINK_SECONDS}`));
    await copy(new URL(link.url, location.origin).href, "Link", { status: $("viewer-status") });
  } catch (error) {
    $("viewer-status").textContent = `No link: ${error.message}`;
  }
}

// An <img srcset> of the stored renditions: public URLs (for good) while the image is public,
// else signed links (an hour).
async function copySrcset() {
  const r = viewer.record;
  if (r.public && r.public_urls) {
    await copy(embedCode(r), "Srcset", { status: $("viewer-status") });
    return;
  }
  const alt = escapeHtml(nameOf(r));
  const code = `<img src="${r.thumbnail_url}" srcset="${r.thumbnail_srcset || r.thumbnail_url}" sizes="256px" alt="${alt}">`;
  await copy(code, "Srcset", { status: $("viewer-status") });
}

async function toggle() {
  try {
    const updated = await setVisibility(viewer.imageId, !viewer.record.public);
    viewer.record = Object.assign({}, viewer.record, updated);
    show();
    $("viewer-status").textContent = updated.public ? "Public: anyone with its URLs can see it" : "Private: its public URLs stopped working";
  } catch (error) {
    $("viewer-status").textContent = `Not changed: ${error.message}`;
  }
}

// The focal point: where `crop=focal` centres its cut, as fractions of the displayed image.
function placeMarker() {
  const marker = $("focal-marker");
  marker.hidden = !viewer.focal;
  if (!viewer.focal) return;
  marker.style.left = `${viewer.focal.x * 100}%`;
  marker.style.top = `${viewer.focal.y * 100}%`;
  $("viewer-stage").setAttribute("aria-label",
    `Focal point at ${Math.round(viewer.focal.x * 100)}% across, ${Math.round(viewer.focal.y * 100)}% down; arrow keys move it`);
}

function setFocal(x, y, delay = 0) {
  const clamp = (v) => Math.min(1, Math.max(0, Math.round(v * 1000) / 1000));
  viewer.focal = { x: clamp(x), y: clamp(y) };
  placeMarker();
  clearTimeout(viewer.saveTimer);
  viewer.saveTimer = setTimeout(saveFocal, delay);
}

async function saveFocal() {
  const point = viewer.focal;
  try {
    const updated = await send(imagePath(viewer.imageId, "/focal-point"), "PUT", point);
    viewer.record = Object.assign({}, viewer.record, updated, { focal_point: point });
    showFacts(viewer.record);
    $("viewer-status").textContent = "Focal point saved: crop=focal centres on it";
  } catch (error) {
    $("viewer-status").textContent = `Focal point not saved: ${error.message}`;
  }
}

export function wireViewer() {
  const img = $("viewer-image");
  img.addEventListener("click", (event) => {
    const box = img.getBoundingClientRect();
    setFocal((event.clientX - box.left) / box.width, (event.clientY - box.top) / box.height);
  });
  $("viewer-stage").addEventListener("keydown", (event) => {
    const moves = { ArrowLeft: [-1, 0], ArrowRight: [1, 0], ArrowUp: [0, -1], ArrowDown: [0, 1] };
    const move = moves[event.key];
    if (!move) return;
    event.preventDefault();
    const from = viewer.focal || { x: 0.5, y: 0.5 };
    setFocal(from.x + move[0] * FOCAL_STEP, from.y + move[1] * FOCAL_STEP, FOCAL_SAVE_MS);
  });
  $("viewer-copy-url").addEventListener("click", () => {
    if (viewer.original) copy(viewer.original, "URL", { status: $("viewer-status") });
  });
  $("viewer-srcset").addEventListener("click", copySrcset);
  $("viewer-visibility").addEventListener("click", toggle);
  $("viewer-embed").addEventListener("click", () => copy(embedCode(viewer.record), "Embed code", { status: $("viewer-status") }));
  $("viewer-builder").addEventListener("click", () => openBuilder(viewer.imageId, { crop: viewer.focal ? "focal" : null }));
  $("viewer-delete").addEventListener("click", () => removeImages([viewer.imageId], () => $("viewer").close()));
  $("viewer").addEventListener("close", () => { viewer.serial++; });
}
