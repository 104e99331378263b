// Choosing several images (a click, shift-click for a run, or every one shown) and acting on
// them at once: delete (asked once, undone together) or change their visibility.

import { $, toast } from "./api.js";
import { removeImages, setVisibility } from "./actions.js";
import { gallery } from "./gallery.js";

const PARALLEL = 4;           // requests in flight for a bulk change
const selection = { ids: new Set(), anchor: null };

const shownCards = () => [...$("gallery").children].filter((li) => !li.hidden);

// A card's checkbox was clicked: shift extends from the last one clicked, in the gallery's order.
export function selectCard(imageId, event) {
  const on = event.target.checked;
  const cards = shownCards().map((li) => li.dataset.imageId);
  const from = cards.indexOf(selection.anchor);
  const to = cards.indexOf(imageId);
  const run = event.shiftKey && from >= 0 && to >= 0
    ? cards.slice(Math.min(from, to), Math.max(from, to) + 1)
    : [imageId];
  for (const id of run) mark(id, on);
  selection.anchor = imageId;
  selectionChanged();
}

function mark(imageId, on) {
  const card = gallery.cards.get(imageId);
  if (on && card) selection.ids.add(imageId);
  else selection.ids.delete(imageId);
  if (card) {
    card.pick.checked = on;
    card.li.classList.toggle("selected", on);
  }
}

// The bar follows the selection; a card that left the gallery leaves it too.
export function selectionChanged() {
  for (const id of [...selection.ids]) {
    const card = gallery.cards.get(id);
    if (!card || card.li.hidden) mark(id, false);
  }
  const count = selection.ids.size;
  $("bulk").hidden = count === 0;
  $("bulk-count").textContent = `${count} selected`;
}

function selectAll() {
  for (const li of shownCards()) mark(li.dataset.imageId, true);
  selectionChanged();
}

export function clearSelection() {
  for (const id of [...selection.ids]) mark(id, false);
  selection.anchor = null;
  selectionChanged();
}

async function setAll(makePublic) {
  const ids = [...selection.ids];
  const failed = [];
  for (let start = 0; start < ids.length; start += PARALLEL) {
    await Promise.all(ids.slice(start, start + PARALLEL).map((id) =>
      setVisibility(id, makePublic).catch((error) => failed.push(`${id}: ${error.message}`))));
  }
  const done = ids.length - failed.length;
  toast(failed.length
    ? `${done} changed; not ${failed.length}: ${failed[0]}`
    : `${done} image${done === 1 ? "" : "s"} made ${makePublic ? "public" : "private"}`);
  clearSelection();
}

export function wireBulk() {
  $("bulk-all").addEventListener("click", selectAll);
  $("bulk-clear").addEventListener("click", clearSelection);
  $("bulk-public").addEventListener("click", () => setAll(true));
  $("bulk-private").addEventListener("click", () => setAll(false));
  $("bulk-delete").addEventListener("click", () => removeImages([...selection.ids], clearSelection));
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && selection.ids.size && !document.querySelector("dialog[open]")) clearSelection();
  });
}
