"""The OpenAPI 3.1 description of every route: the route table itself (each operation's
`operationId` names its handler, `web.routes` registers them from here), served at
`/openapi.json` and as a `/docs` page. Built once at start, from the deployment's settings.

A new route is a new operation here and a handler: nothing else to keep in step
(`tests/test_openapi.py` validates the document; schemathesis runs it against the app).
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from config.settings import ImagingSettings, VariantSettings
from pipeline.core.layout import IMAGE_ID_RE, USER_ID_RE
from pipeline.core.listing import MAX_TEXT, SCAN_BUDGET, SORTS, STATES
from pipeline.imaging.variants import CROPS, FITS, FORMATS

# The same patterns the handlers enforce (pipeline.core.layout), so the document cannot drift from them.
ID = {"type": "string", "pattern": f"^{IMAGE_ID_RE.pattern}$"}
USER = {"type": "string", "pattern": f"^{USER_ID_RE.pattern}$"}
#: As a query parameter an empty `user_id=` means "not given" (the caller's own id is used).
USER_OR_EMPTY = {
    "type": "string",
    "pattern": f"^({USER_ID_RE.pattern})?$",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json_body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "required": required, "properties": properties}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    """Every error is the same JSON shape; 401 and 429 on every authenticated route."""
    out = {str(s): _json(_ref("Error"), "an error, with a stable code") for s in statuses}
    return out


AUTH_ERRORS = (400, 401, 403, 429, 503)
#: Uploads: an `Idempotency-Key` in use (409) or reused for another request (422) add theirs.
UPLOAD_ERRORS = (*AUTH_ERRORS, 404, 408, 409, 413, 415, 422, 507)
PUBLIC_Q = {
    "name": "public",
    "in": "query",
    "required": False,
    "schema": {"enum": ["true", "false", "1", "0"]},
    "description": "make the image public (default: the owner's, for a new image; as it was, if replaced)",
}
EXPIRES = {
    "name": "expires_in_days",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 36500},
    "description": "days until `python -m pipeline gc` removes the image whole "
    "(default: the deployment's retention)",
}
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    "description": "the same key from the same user within 24 h gets the first answer again "
    "(`Idempotent-Replayed: true`), storing and charging nothing; with another route or other "
    "bytes it is a 422, while the first is in progress a 409",
}
BINARY = {
    "description": "the image",
    "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
}
NOT_MODIFIED = {"description": "not modified (conditional GET)"}


def _param(
    name: str, where: str, schema: dict[str, Any], required: bool = False, text: str = ""
) -> dict[str, Any]:
    return {"name": name, "in": where, "required": required, "schema": schema, "description": text}


def _variant_params(limits: VariantSettings) -> list[dict[str, Any]]:
    side = {"type": "integer", "minimum": 1, "maximum": limits.max_side}
    return [
        _param("w", "query", side, text="width in pixels (w or h or both; one alone keeps the aspect ratio)"),
        _param("h", "query", side, text="height in pixels"),
        _param("dpr", "query", {"type": "number", "minimum": 1, "maximum": 4}, text="multiplies w and h"),
        _param(
            "fit",
            "query",
            {"enum": list(FITS)},
            text="contain (default), cover (crops), fill (stretches), pad (fills the box with bg)",
        ),
        _param(
            "crop",
            "query",
            {"anyOf": [{"enum": list(CROPS)}, {"type": "string", "pattern": "^[0-9]{1,5}(,[0-9]{1,5}){3}$"}]},
            text="with fit=cover: centre (default), smart, focal point, faces; or x,y,w,h: a rectangle",
        ),
        _param(
            "trim", "query", {"type": "string"}, text="true, or a threshold 1-100: removes a uniform border"
        ),
        _param("rotate", "query", {"enum": [0, 90, 180, 270]}, text="degrees clockwise"),
        _param("flip", "query", {"enum": ["true", "false", "1", "0"]}, text="mirror top to bottom"),
        _param("flop", "query", {"enum": ["true", "false", "1", "0"]}, text="mirror left to right"),
        _param("blur", "query", {"type": "number", "minimum": 0.3, "maximum": 50}, text="Gaussian sigma"),
        _param("sharpen", "query", {"type": "number", "minimum": 0.3, "maximum": 10}, text="sigma"),
        _param("bg", "query", {"type": "string"}, text="rrggbb, rgb, rrggbbaa or transparent"),
        _param(
            "watermark",
            "query",
            {"enum": ["true", "false", "1", "0", "own", "site"]},
            text="lay yours (PUT /watermark) or the deployment's (site) over the variant",
        ),
        _param("gravity", "query", {"type": "string"}, text="where: centre, north, north-east... south-east"),
        _param("opacity", "query", {"type": "number", "minimum": 0.05, "maximum": 1}),
        _param(
            "scale", "query", {"type": "number", "minimum": 0.05, "maximum": 1}, text="of the output's width"
        ),
        _param("format", "query", {"enum": [*FORMATS, "auto"]}, text="jpeg (default); auto picks by Accept"),
        _param("q", "query", {"type": "integer", "minimum": 1, "maximum": 100}),
        _param(
            "upscale", "query", {"enum": ["true", "false", "1", "0"]}, text="allow larger than the original"
        ),
        _param(
            "preset",
            "query",
            {"enum": [name for name, _ in limits.presets]} if limits.presets else {"type": "string"},
            text="a named variant of this deployment, alone (IMGSVC_VARIANT_PRESETS)",
        ),
    ]


USER_Q = _param("user_id", "query", USER_OR_EMPTY, text="optional; must be the caller's own")
IMAGE_P = _param("image_id", "path", ID, True)
UPLOAD_BODY = {
    "required": True,
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
        },
    },
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
        "additionalProperties": True,
    },
    "Image": {
        "type": "object",
        "required": ["user_id", "image_id", "status", "status_url", "original_url"],
        "properties": {
            "user_id": {"type": "string"},
            "image_id": {"type": "string"},
            "status": {"enum": ["awaiting_upload", "pending", "ready", "failed"]},
            "upload_expires_at": {
                "type": "string",
                "description": "awaiting_upload only: when its upload URL stops working",
            },
            "file_name": {"type": "string"},
            "format": {"type": "string"},
            "content_type": {"type": "string"},
            "bytes": {"type": "integer"},
            "sha256": {"type": "string"},
            "etag": {"type": "string"},
            "created_at": {"type": "string"},
            "updated_at": {"type": "string"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "placeholder": {"type": ["object", "null"]},
            "error": {"type": ["object", "null"]},
            "status_url": {"type": "string"},
            "original_url": {"type": "string"},
            "renditions": {"type": "object"},
            "public": {"type": "boolean", "description": "whether the image has public URLs"},
            "public_urls": {
                "type": "object",
                "description": "while public: the original's, each rendition's and each preset's public URL",
                "additionalProperties": {"type": "string"},
            },
            "expires_at": {"type": "string", "description": "when gc removes it (ISO 8601, UTC)"},
            "duplicate_of": {
                "type": "string",
                "description": "the caller's image made from the same bytes, whose renditions were copied",
            },
            "focal_point": {
                "type": "object",
                "description": "where crop=focal centres its cut: x and y, fractions of the width and height",
            },
            "variants": {
                "type": "object",
                "description": "the variants stored for the current original: how many, their bytes "
                "(counted in the owner's usage) and their canonical names (null for records older "
                "than names)",
                "properties": {
                    "count": {"type": "integer"},
                    "bytes": {"type": "integer"},
                    "names": {"type": ["array", "null"], "items": {"type": "string"}},
                },
            },
        },
    },
    "Usage": {
        "type": "object",
        "required": ["images", "bytes", "quota_images", "quota_bytes"],
        "properties": {
            "images": {"type": "integer", "description": "images counted against the quota"},
            "bytes": {"type": "integer", "description": "originals' and variants' bytes"},
            "quota_images": {"type": ["integer", "null"], "description": "null: no limit"},
            "quota_bytes": {"type": ["integer", "null"], "description": "null: no limit"},
        },
    },
    "Watermark": {
        "type": "object",
        "required": ["format", "width", "height", "bytes", "digest"],
        "properties": {
            "format": {"enum": ["png", "webp", "jpeg"]},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "bytes": {"type": "integer"},
            "digest": {"type": "string", "description": "names the variants made with it"},
        },
    },
    "ImageInfo": {
        "type": "object",
        "required": ["image_id", "format", "width", "height", "frames", "bytes"],
        "properties": {
            "image_id": {"type": "string"},
            "format": {"type": "string"},
            "width": {"type": "integer"},
            "height": {"type": "integer"},
            "frames": {"type": "integer"},
            "bytes": {"type": ["integer", "null"]},
            "colour_space": {"type": "string"},
            "bit_depth": {"type": "integer"},
            "alpha": {"type": "boolean"},
            "icc": {"type": ["string", "null"], "description": "the ICC profile's description"},
            "orientation": {
                "type": "integer",
                "description": "EXIF orientation (applied to every rendition)",
            },
            "exif": {"type": ["object", "null"], "description": "camera, lens, taken_at, exposure"},
            "gps": {"type": ["object", "null"], "description": "latitude, longitude (degrees), altitude_m"},
            "private": {
                "type": "array",
                "items": {"enum": ["exif", "gps", "xmp", "iptc"]},
                "description": "private metadata the original carries",
            },
            "dominant_color": {"type": ["string", "null"]},
            "blurhash": {"type": ["string", "null"]},
        },
    },
    "UploadUrl": {
        "allOf": [
            _ref("Image"),
            {
                "type": "object",
                "required": ["url", "method", "headers", "expires_at"],
                "properties": {
                    "url": {"type": "string"},
                    "method": {"enum": ["PUT"]},
                    "headers": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "to send with the PUT, as they are (they are signed)",
                    },
                    "expires_at": {
                        "type": "string",
                        "description": "here, when the URL stops working (the image's own expiry, "
                        "if it has one, is in its status)",
                    },
                },
            },
        ]
    },
    "MultipartUpload": {
        "allOf": [
            _ref("Image"),
            {
                "type": "object",
                "required": ["upload_id", "content_length", "part_size", "method", "parts", "complete_url"],
                "properties": {
                    "upload_id": {"type": "string"},
                    "content_length": {"type": "integer"},
                    "part_size": {"type": "integer", "description": "every part's length but the last's"},
                    "method": {"enum": ["PUT"]},
                    "parts": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["number", "length", "url", "received"],
                            "properties": {
                                "number": {"type": "integer", "minimum": 1},
                                "length": {"type": "integer", "description": "exactly, as Content-Length"},
                                "url": {"type": "string", "description": "PUT the part here, no key"},
                                "received": {"type": "boolean"},
                                "etag": {"type": "string", "description": "the received part's"},
                            },
                        },
                    },
                    "urls_expire_at": {"type": "string", "description": "ask upload-parts for fresh ones"},
                    "expires_at": {"type": "string", "description": "when the reservation is released"},
                    "complete_url": {"type": "string"},
                    "parts_url": {"type": "string"},
                },
            },
        ]
    },
    "ImageList": {
        "type": "object",
        "required": ["images", "next_cursor"],
        "properties": {
            "images": {
                "type": "array",
                "items": {
                    "allOf": [
                        _ref("Image"),
                        {
                            "type": "object",
                            "properties": {
                                "thumbnail_url": {
                                    "type": "string",
                                    "description": "ready images only: an absolute link to the first "
                                    "rendition that needs no key, as `/images/{image_id}/url` makes it "
                                    "(valid for an hour at most)",
                                }
                            },
                        },
                    ]
                },
            },
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "Link": {
        "type": "object",
        "required": ["url"],
        "properties": {
            "url": {"type": "string"},
            "rendition": {"type": "string"},
            "variant": {"type": "string", "description": "a variant's name, for a link to a variant"},
            "expires_at": {"type": "string", "description": "signed links: when it stops working"},
            "public": {"type": "boolean", "description": "a public URL: it never expires"},
        },
    },
    "Webhook": {
        "type": "object",
        "required": ["url", "secret", "updated_at"],
        "description": "Events are POSTed as JSON with `Imgsvc-Event`, `Imgsvc-Event-Id` and "
        "`Imgsvc-Signature: t=<unix s>,v1=<hex HMAC-SHA256 of '<t>.' + body>`, at least once "
        "(deduplicate by the event id): events are kept in a durable outbox until delivered, "
        "retried with exponential backoff, and survive a consumer's crash",
        "properties": {
            "url": {"type": "string"},
            "secret": {"type": "string"},
            "updated_at": {"type": "string"},
        },
    },
}


def document(imaging: ImagingSettings, variants: VariantSettings) -> dict[str, Any]:
    """The document of this deployment: rendition names and variant limits come from its settings."""
    sizes = [spec.name for spec in imaging.renditions]
    image = _json(_ref("Image"), "the image record")
    accepted = _json(_ref("Image"), "stored; thumbnails follow")
    paths: dict[str, Any] = {
        "/upload": {
            "post": {
                "operationId": "upload.compat_upload",
                "summary": "Store input/<file_name> as an image (the original system's route)",
                "requestBody": _json_body(
                    {
                        "file_name": {"type": "string", "minLength": 1},
                        "user_id": USER,
                        "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 36500},
                    },
                    ["file_name"],
                ),
                "parameters": [IDEMPOTENCY_KEY],
                "responses": {"202": accepted, **_errors(*UPLOAD_ERRORS)},
            }
        },
        "/images": {
            "get": {
                "operationId": "images.list_images",
                "summary": "The caller's images, newest first, or in another order, filtered",
                "parameters": [
                    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100}),
                    _param(
                        "cursor",
                        "query",
                        {"type": "string"},
                        text="next_cursor of the previous page (same order)",
                    ),
                    _param("sort", "query", {"enum": list(SORTS)}, text="by creation (default) or by id"),
                    _param(
                        "order",
                        "query",
                        {"enum": ["asc", "desc"]},
                        text="default: newest first by creation, A first by id",
                    ),
                    _param("status", "query", {"enum": list(STATES)}, text="only images in this state"),
                    _param(
                        "q",
                        "query",
                        {"type": "string", "maxLength": MAX_TEXT},
                        text="only images whose id or file name holds this text (any case); a filtered "
                        f"page reads at most {SCAN_BUDGET} images, so it may be short, with a cursor",
                    ),
                    USER_Q,
                ],
                "responses": {"200": _json(_ref("ImageList"), "one page"), **_errors(*AUTH_ERRORS)},
            },
            "post": {
                "operationId": "upload.post_image",
                "summary": "Upload an image under a server-generated id",
                "parameters": [
                    USER_Q,
                    _param("file_name", "query", {"type": "string"}),
                    EXPIRES,
                    PUBLIC_Q,
                    IDEMPOTENCY_KEY,
                ],
                "requestBody": UPLOAD_BODY,
                "responses": {"202": accepted, **_errors(*UPLOAD_ERRORS)},
            },
        },
        "/images/upload-url": {
            "post": {
                "operationId": "presigned.create_upload_url",
                "summary": "Reserve a new image and get a URL to PUT its bytes to, straight to S3 "
                "(IMGSVC_UPLOAD_MODES=presigned)",
                "description": "The quota is charged at once; the consumer completes the image from "
                "the upload's event (bytes of another length or format end it `failed`). A URL never "
                "used is released by gc after it expires. Send exactly `headers` with the PUT.",
                "parameters": [USER_Q, IDEMPOTENCY_KEY],
                "requestBody": _json_body(
                    {
                        "content_length": {"type": "integer", "minimum": 1},
                        "content_type": {"type": "string", "pattern": "^image/"},
                        "image_id": ID,
                        "file_name": {"type": "string"},
                        "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 36500},
                        "public": {"type": "boolean"},
                        "multipart": {
                            "type": "boolean",
                            "description": "resumable: the bytes go in parts, each to its own URL, "
                            "then upload-complete joins them",
                        },
                    },
                    ["content_length", "content_type"],
                ),
                "responses": {
                    "201": _json(
                        {"anyOf": [_ref("UploadUrl"), _ref("MultipartUpload")]},
                        "reserved: PUT the bytes to `url`, or each part to its URL",
                    ),
                    **_errors(*AUTH_ERRORS, 409, 413, 415),
                },
            }
        },
        "/uploads/{user_id}/{image_id}": {
            "put": {
                "operationId": "presigned.put_upload",
                "summary": "Take a presigned upload's bytes (the local backend's stand-in for S3; no key)",
                "security": [],
                "parameters": [
                    _param("user_id", "path", {"type": "string"}, True),
                    _param("image_id", "path", {"type": "string"}, True),
                    _param("token", "query", {"type": "string"}),
                    _param("expires", "query", {"type": "string"}),
                    _param("sig", "query", {"type": "string"}),
                ],
                "requestBody": {"required": True, "content": BINARY["content"]},
                "responses": {
                    "200": {"description": "stored; the consumer completes the image"},
                    **_errors(400, 403, 404, 408, 410, 413, 415, 422, 503),
                },
            }
        },
        "/images/{image_id}/upload-parts": {
            "parameters": [IMAGE_P],
            "get": {
                "operationId": "multipart.upload_parts",
                "summary": "A resumable upload's parts: which arrived, and fresh URLs for each",
                "parameters": [USER_Q],
                "responses": {
                    "200": _json(_ref("MultipartUpload"), "the upload's state"),
                    **_errors(*AUTH_ERRORS, 404, 410),
                },
            },
        },
        "/images/{image_id}/upload-complete": {
            "parameters": [IMAGE_P],
            "post": {
                "operationId": "multipart.upload_complete",
                "summary": "Join a resumable upload's parts into the image's original",
                "description": "Every part must have arrived with its exact length; `parts` (optional) "
                "names each part's ETag, checked against what arrived. Answered again after success.",
                "parameters": [USER_Q],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "parts": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["number", "etag"],
                                            "properties": {
                                                "number": {"type": "integer", "minimum": 1},
                                                "etag": {"type": "string"},
                                            },
                                        },
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {"202": image, **_errors(*AUTH_ERRORS, 404, 410, 422)},
            },
        },
        "/uploads/{user_id}/{image_id}/parts/{number}": {
            "put": {
                "operationId": "multipart.put_part",
                "summary": "Take a part of a resumable upload (the local backend's stand-in for S3; no key)",
                "security": [],
                "parameters": [
                    _param("user_id", "path", {"type": "string"}, True),
                    _param("image_id", "path", {"type": "string"}, True),
                    _param("number", "path", {"type": "string"}, True),
                    _param("token", "query", {"type": "string"}),
                    _param("expires", "query", {"type": "string"}),
                    _param("sig", "query", {"type": "string"}),
                ],
                "requestBody": {"required": True, "content": BINARY["content"]},
                "responses": {
                    "200": {"description": "stored, its ETag in the header"},
                    **_errors(400, 403, 404, 408, 410, 413, 422, 503),
                },
            }
        },
        "/images/{image_id}": {
            "parameters": [IMAGE_P],
            "get": {
                "operationId": "images.image_status",
                "summary": "One image's record and status; `wait` long-polls a pending one",
                "parameters": [
                    USER_Q,
                    _param("wait", "query", {"type": "number", "minimum": 0, "maximum": 20}),
                ],
                "responses": {"200": image, **_errors(*AUTH_ERRORS, 404)},
            },
            "put": {
                "operationId": "upload.put_image",
                "summary": "Upload (or replace) the image with this id",
                "parameters": [
                    USER_Q,
                    _param("file_name", "query", {"type": "string"}),
                    EXPIRES,
                    PUBLIC_Q,
                    IDEMPOTENCY_KEY,
                ],
                "requestBody": UPLOAD_BODY,
                "responses": {"202": accepted, **_errors(*UPLOAD_ERRORS)},
            },
            "delete": {
                "operationId": "images.delete_image",
                "summary": "Delete the original, its renditions and its record (idempotent)",
                "parameters": [USER_Q],
                "responses": {"204": {"description": "gone"}, **_errors(*AUTH_ERRORS)},
            },
            "patch": {
                "operationId": "public.patch_image",
                "summary": "Make the image public (new public URLs each time) or private (they stop at once)",
                "parameters": [USER_Q],
                "requestBody": _json_body({"public": {"type": "boolean"}}, ["public"]),
                "responses": {"200": image, **_errors(*AUTH_ERRORS, 404, 415)},
            },
        },
        "/images/{image_id}/url": {
            "parameters": [IMAGE_P],
            "get": {
                "operationId": "links.create_link",
                "summary": "A link that works without the key until it expires",
                "parameters": [
                    USER_Q,
                    _param(
                        "rendition", "query", {"enum": ["original", *sizes]}, text="a rendition, or original"
                    ),
                    _param("expires_in", "query", {"type": "integer", "minimum": 1}),
                    _param(
                        "public",
                        "query",
                        {"enum": ["true", "false", "1", "0"]},
                        text="the public URL (no expiry)",
                    ),
                    *_variant_params(variants),
                ],
                "responses": {"200": _json(_ref("Link"), "the link"), **_errors(*AUTH_ERRORS, 404, 409, 422)},
            },
        },
        "/images/{image_id}/info": {
            "parameters": [IMAGE_P],
            "get": {
                "operationId": "images.image_info",
                "summary": "What the original is and says about itself (EXIF, GPS, ICC): its owner only",
                "parameters": [USER_Q],
                "responses": {
                    "200": _json(_ref("ImageInfo"), "the image's metadata"),
                    **_errors(*AUTH_ERRORS, 404, 422),
                },
            },
        },
        "/images/{image_id}/variant": {
            "parameters": [IMAGE_P],
            "get": {
                "operationId": "variants.get_variant",
                "summary": "The image at any size, crop and format: made on the first request, then stored",
                "parameters": _variant_params(variants),
                "responses": {
                    "200": BINARY,
                    "206": BINARY,
                    "304": NOT_MODIFIED,
                    **_errors(*AUTH_ERRORS, 404, 413, 416, 422),
                },
            },
        },
        "/images/{image_id}/focal-point": {
            "parameters": [IMAGE_P],
            "put": {
                "operationId": "variants.put_focal_point",
                "summary": "Where the image's subject is, for crop=focal (fractions of the displayed image)",
                "requestBody": _json_body(
                    {
                        "x": {"type": "number", "minimum": 0, "maximum": 1},
                        "y": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                    ["x", "y"],
                ),
                "responses": {"200": _json(_ref("Image"), "the image"), **_errors(*AUTH_ERRORS, 404, 415)},
            },
        },
        "/p/{token}/{version}/{name}": {
            "get": {
                "operationId": "public.follow_public",
                "summary": "A public image's original, rendition, preset or signed variant (no key)",
                "security": [],
                "parameters": [
                    _param("token", "path", {"type": "string"}, True),
                    _param("version", "path", {"type": "string"}, True),
                    _param("name", "path", {"type": "string"}, True),
                    _param("s", "query", {"type": "string"}, text="a variant's signature"),
                ],
                "responses": {
                    "200": BINARY,
                    "304": NOT_MODIFIED,
                    "206": BINARY,
                    **_errors(404, 416, 422, 429, 503),
                },
            }
        },
        "/links/{user_id}/{image_id}/{rendition}": {
            "get": {
                "operationId": "links.follow_link",
                "summary": "Follow a signed link (no key)",
                "security": [],
                "parameters": [
                    _param("user_id", "path", {"type": "string"}, True),
                    _param("image_id", "path", {"type": "string"}, True),
                    _param("rendition", "path", {"type": "string"}, True),
                    _param("expires", "query", {"type": "string"}),
                    _param("sig", "query", {"type": "string"}),
                ],
                "responses": {
                    "200": BINARY,
                    "304": NOT_MODIFIED,
                    "206": BINARY,
                    **_errors(403, 404, 416, 422, 503),
                },
            }
        },
        "/download/image": {
            "get": {
                "operationId": "download.download_image",
                "summary": "The original",
                "parameters": [_param("image_id", "query", ID, True), USER_Q],
                "responses": {
                    "200": BINARY,
                    "206": BINARY,
                    "304": NOT_MODIFIED,
                    **_errors(*AUTH_ERRORS, 404, 416),
                },
            }
        },
        "/download/thumbnail": {
            "get": {
                "operationId": "download.download_thumbnail",
                "summary": "A rendition; format=auto picks the best the client accepts (Vary: Accept)",
                "parameters": [
                    _param("image_id", "query", ID, True),
                    USER_Q,
                    _param("size", "query", {"enum": sizes}, text="a rendition name"),
                    _param("format", "query", {"enum": ["auto"]}),
                ],
                "responses": {
                    "200": BINARY,
                    "206": BINARY,
                    "304": NOT_MODIFIED,
                    **_errors(*AUTH_ERRORS, 404, 416, 422),
                },
            }
        },
        "/webhook": {
            "get": {
                "operationId": "webhook.get_webhook",
                "summary": "The caller's completion webhook (URL and signing secret)",
                "responses": {"200": _json(_ref("Webhook"), "the webhook"), **_errors(*AUTH_ERRORS, 404)},
            },
            "put": {
                "operationId": "webhook.put_webhook",
                "summary": "Send image.ready / image.failed events, HMAC-signed, to this URL",
                "requestBody": _json_body(
                    {
                        "url": {"type": "string", "format": "uri", "maxLength": 2048},
                        "rotate_secret": {"type": "boolean"},
                    },
                    ["url"],
                ),
                "responses": {
                    "200": _json(_ref("Webhook"), "the webhook"),
                    **_errors(*AUTH_ERRORS, 415, 422),
                },
            },
            "delete": {
                "operationId": "webhook.delete_webhook",
                "summary": "Stop sending events (idempotent)",
                "responses": {"204": {"description": "removed"}, **_errors(*AUTH_ERRORS)},
            },
        },
        "/usage": {
            "get": {
                "operationId": "usage.get_usage",
                "summary": "What the caller stores against their quotas",
                "parameters": [USER_Q],
                "responses": {"200": _json(_ref("Usage"), "the caller's usage"), **_errors(*AUTH_ERRORS)},
            }
        },
        "/watermark": {
            "get": {
                "operationId": "watermark.get_watermark",
                "summary": "The caller's watermark (format, size, digest)",
                "responses": {"200": _json(_ref("Watermark"), "the watermark"), **_errors(*AUTH_ERRORS, 404)},
            },
            "put": {
                "operationId": "watermark.put_watermark",
                "summary": "The image variants lay over themselves with watermark=true (PNG, WebP or JPEG)",
                "requestBody": {
                    "required": True,
                    "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
                },
                "responses": {
                    "200": _json(_ref("Watermark"), "the watermark"),
                    **_errors(*AUTH_ERRORS, 413, 415),
                },
            },
            "delete": {
                "operationId": "watermark.delete_watermark",
                "summary": "No watermark (idempotent)",
                "responses": {"204": {"description": "removed"}, **_errors(*AUTH_ERRORS)},
            },
        },
        "/health/live": {
            "get": {
                "operationId": "health.live",
                "summary": "Liveness",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "alive")},
            }
        },
        "/health/ready": {
            "get": {
                "operationId": "health.ready",
                "summary": "Readiness: S3, SQS and DynamoDB answer",
                "security": [],
                "responses": {"200": _json({"type": "object"}, "ready"), **_errors(503)},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "health.metrics",
                "summary": "Prometheus metrics of this process",
                "security": [],
                "responses": {
                    "200": {
                        "description": "text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "image-service", "version": "1", "description": "Image upload and thumbnail API."},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"key": {"type": "http", "scheme": "bearer", "description": "an API key"}},
        },
        "security": [{"key": []}],
        "paths": paths,
    }


@dataclass(frozen=True)
class ApiDocument:
    """This deployment's OpenAPI document, built once at start: the route table `web.routes`
    registers from (each operation's `operationId` names its handler) and what `/openapi.json`
    and `/docs` send."""

    content: dict[str, Any]
    json: bytes
    page: str

    def operations(self) -> Iterator[tuple[str, str, str]]:
        """Each operation's method, path template and `operationId`, in the document's order."""
        for path, item in self.content["paths"].items():
            for method, operation in item.items():
                if method != "parameters":
                    yield method, path, operation["operationId"]


DOCUMENT = web.AppKey("openapi_document", ApiDocument)


def build(imaging: ImagingSettings, variants: VariantSettings) -> ApiDocument:
    content = document(imaging, variants)
    return ApiDocument(content, json.dumps(content).encode(), _page(content))


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=request.app[DOCUMENT].json, content_type="application/json")


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=request.app[DOCUMENT].page, content_type="text/html")


def _page(content: dict[str, Any]) -> str:
    """A plain page from the same document (no CDN, no build step)."""
    rows = []
    for path, item in content["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            codes = ", ".join(operation["responses"])
            rows.append(
                f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                f"<td>{html.escape(operation['summary'])}</td><td>{codes}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>image-service API</title>"
        "<style>body{font-family:sans-serif;margin:2em}"
        "td{padding:.3em .8em;border-bottom:1px solid #ddd}</style>"
        "</head><body><h1>image-service API</h1>"
        "<p>Machine-readable: <a href=/openapi.json>/openapi.json</a>. "
        "Authenticate with <code>Authorization: Bearer &lt;key&gt;</code>.</p><table>"
        "<tr><th>method</th><th>path</th><th>what</th><th>statuses</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )
