// Uploading: files dropped or chosen go up a few at a time, each with its progress bar, straight
// to storage where the deployment offers presigned uploads, else through the API.

import { $, api, button, element, session } from "./api.js";
import { markArrived, schedulePoll, upsert } from "./gallery.js";
import { MULTIPART_FROM, uploadInParts } from "./resumable.js";

const PARALLEL_UPLOADS = 3;

const uploads = {
  queue: [],                  // files waiting for an upload slot
  active: 0,
  // Straight to S3 where the deployment offers it (the page says which upload modes it does).
  presigned: (document.querySelector('meta[name="upload-modes"]')?.content || "").split(",").includes("presigned"),
};

export function enqueue(files) {
  for (const file of files) {
    const row = document.createElement("li");
    const name = element("span", "file", file.name);
    name.title = file.name;
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    bar.setAttribute("aria-label", `upload of ${file.name}`);
    const label = element("span", "state", "waiting");
    row.append(name, bar, label);
    $("uploads").append(row);
    uploads.queue.push({ file, bar, label, row });
  }
  $("uploads-clear").hidden = false;
  pump();
}

function pump() {
  while (uploads.active < PARALLEL_UPLOADS && uploads.queue.length) {
    const item = uploads.queue.shift();
    uploads.active += 1;
    upload(item).finally(() => { uploads.active -= 1; pump(); });
  }
}

// The finished rows go (uploaded or refused); those still waiting or going stay.
function clearFinished() {
  for (const row of [...$("uploads").children]) {
    if (row.classList.contains("failed") || row.querySelector(".state.done")) row.remove();
  }
  $("uploads-clear").hidden = $("uploads").children.length === 0;
}

export function resetUploads() {
  uploads.queue.length = 0;
  $("uploads").replaceChildren();
  $("uploads-clear").hidden = true;
}

// Straight to S3 where the deployment offers presigned uploads (the API only authorises them),
// else through the API. `uploads.presigned` also turns false at an answer saying they are not offered.
// Large files go up in parts, resumable (resumable.js).
async function upload(item) {
  if (uploads.presigned && item.file.size >= MULTIPART_FROM) {
    const type = await sniffType(item.file);
    if (type) {
      try {
        if (await uploadInParts(item, type)) return;
      } catch (error) {
        if (["upload_mode_disabled", "method_not_allowed"].includes(error.code) || error.status === 404) {
          uploads.presigned = false;
        } else {  // the parts that arrived stay: trying again sends the rest
          uploadFailed(item.row, item.label, error.message);
          const again = button("retry", "Try again", () => {
            again.remove();
            item.row.classList.remove("failed");
            item.label.classList.remove("failed");
            upload(item);
          });
          item.row.append(again);
          return;
        }
      }
    }
  }
  if (uploads.presigned) {
    let reserved = null;
    try {
      reserved = await reserve(item.file);
    } catch (error) {
      uploadFailed(item.row, item.label, error.message);
      return;
    }
    if (reserved) return put(item, "PUT", reserved.url, reserved.headers, 200, reserved);
  }
  return put(item, "POST", `/images?file_name=${encodeURIComponent(item.file.name)}`, {
    Authorization: `Bearer ${session.key}`,
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
      uploads.presigned = false;
      return null;
    }
    throw error;
  }
}

// The type the bytes are, as the service will decide it (a name or the browser's guess may lie).
export async function sniffType(file) {
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
function put({ file, bar, label, row }, method, url, headers, expected, reserved = null) {
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
      const image = reserved || body;
      if (xhr.status === expected && image) {
        if (reserved) markArrived(reserved.image_id);  // in the store: being made
        bar.value = 100;
        label.textContent = "uploaded";
        label.classList.add("done");
        row.dataset.imageId = image.image_id;
        upsert(image);
        schedulePoll();
      } else {
        uploadFailed(row, label, (body && body.message) || `failed (HTTP ${xhr.status})`);
        if (xhr.status === 401) session.onRefused("Your key was not accepted; sign in again.");
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
export function uploadFailed(row, label, reason) {
  row.classList.add("failed");
  label.textContent = reason;
  label.title = reason;
  label.classList.add("failed");
}

export function wireUploads() {
  $("uploads-clear").addEventListener("click", clearFinished);
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
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file-input").click();
    }
  });
}
