// Signing in with an API key (pasted, or picked from the demo keys file), and out.

import { $, KEY_STORE, api, session } from "./api.js";
import { flushDeletes } from "./actions.js";
import { showPaused } from "./resumable.js";
import { loadGallery, resetGallery } from "./gallery.js";
import { resetUploads } from "./uploads.js";

export async function signIn(key) {
  session.key = key.trim();
  $("sign-in-error").hidden = true;
  try {
    await api("/images?limit=1");
  } catch (error) {
    session.key = "";
    const message = error.status === 401 ? "That key was not accepted." : `Could not sign in: ${error.message}`;
    showSignIn(message);
    return;
  }
  // Kept in this tab only, unless the user asked to be remembered on this browser.
  const remembered = $("remember").checked || localStorage.getItem(KEY_STORE) === session.key;
  (remembered ? localStorage : sessionStorage).setItem(KEY_STORE, session.key);
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("whoami").hidden = false;
  $("user-label").textContent = `key ${session.key.split("_").slice(0, 2).join("_")}…`;
  showPaused();  // resumable uploads a reload interrupted
  await loadGallery();
}

export function signOut(message) {
  flushDeletes();  // deletes the user saw happen go out with the key they were made with
  session.key = "";
  sessionStorage.removeItem(KEY_STORE);
  localStorage.removeItem(KEY_STORE);
  for (const dialog of document.querySelectorAll("dialog[open]")) dialog.close();
  resetGallery();
  resetUploads();
  $("link-box").hidden = true;
  showSignIn(message);
}

export function showSignIn(message) {
  $("app").hidden = true;
  $("whoami").hidden = true;
  $("sign-in").hidden = false;
  const error = $("sign-in-error");
  error.hidden = !message;
  error.textContent = message || "";
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

export function wireSignIn() {
  session.onRefused = signOut;
  $("sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("api-key").value);
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("keys-file").addEventListener("change", (event) => { if (event.target.files[0]) pickKeys(event.target.files[0]); });
  $("key-pick").addEventListener("change", () => { $("api-key").value = $("key-pick").value; });
  showDemoKeys();
}
