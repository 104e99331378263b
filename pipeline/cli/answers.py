"""What the HTTP API (or the store a presigned URL points at) answered, made fit for one line
of the upload command's report: a refusal's stable code and a bounded reason. Shared by the
bulk upload (`pipeline.cli.bulk`) and its resumable uploads (`pipeline.cli.resumable`)."""

from __future__ import annotations

import aiohttp


class Refused(Exception):
    """A request that did not succeed, with a short reason fit for one line; `fatal` stops the
    whole run (every later request would be refused too)."""

    def __init__(self, code: str, reason: str, *, fatal: bool = False) -> None:
        super().__init__(reason)
        self.code, self.reason, self.fatal = code, reason, fatal


def short(text: object, limit: int = 200) -> str:
    """One line, bounded: a reason may come from any server `--api` points at."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


async def refusal(response: aiohttp.ClientResponse) -> Refused:
    """The refusal an error answer stands for: the API's JSON `error` and `message`, or the
    status and its reason phrase."""
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ClientError):
        body = None
    status = response.status
    if isinstance(body, dict) and body.get("error"):
        code = short(body["error"], 60)
        message = f": {short(body['message'])}" if body.get("message") else ""
        reason = f"{status} {code}{message}"
    else:
        code, reason = f"http_{status}", f"{status} {short(response.reason or 'error')}"
    # Once the key is refused every later upload is too, and each refusal counts against the
    # address's failed-attempt limit: stop rather than lock the address out.
    return Refused(code, reason, fatal=status == 401 or code == "too_many_failed_attempts")
