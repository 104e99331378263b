// The image-service web UI: plain modern JavaScript (ES modules, no build step) against the
// public API. One module a part of the page, each wired here:
//   api.js      the key, the API call, helpers       signin.js   signing in and out
//   uploads.js  files going up, with progress        gallery.js  the listing, its cards, polling
//   actions.js  links, visibility, delete and undo   bulk.js     several images at once
//   viewer.js   one image's page                     builder.js  the link builder
//   resumable.js  large files in parts, retried and resumed after a reload
// The parts call each other only from event handlers, so the imports' cycles are harmless.

import { session } from "./api.js";
import { wireActions } from "./actions.js";
import { wireBuilder } from "./builder.js";
import { wireBulk } from "./bulk.js";
import { wireGallery } from "./gallery.js";
import { showSignIn, signIn, wireSignIn } from "./signin.js";
import { wireUploads } from "./uploads.js";
import { wireViewer } from "./viewer.js";

wireSignIn();
wireUploads();
wireGallery();
wireActions();
wireBulk();
wireBuilder();
wireViewer();
if (session.key) signIn(session.key);
else showSignIn("");
