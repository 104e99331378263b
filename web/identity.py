"""Who is calling: the one place a request's identity is established.

Every API call presents `Authorization: Bearer <key>`; the key names the user. A `user_id` in the
query or body (the original routes carry one) must be the caller's own, or the answer is 403.
Failed attempts count against the client address (shared limit, see `web.throttle`); above
the limit a failing caller gets 429 instead of 401, while valid keys keep working.
"""

from __future__ import annotations

from aiohttp import web

from pipeline.core.errors import BadRequest, Forbidden, InvalidCredentials, InvalidField, MissingCredentials
from pipeline.core.layout import valid_user_id
from web.clients import client_address
from web.keys import ACCOUNTS, LIMITER, PROXIES

CHALLENGE = 'Bearer realm="image-service"'
_CALLER = web.RequestKey("caller", str)


async def authenticate(request: web.Request) -> str:
    """The caller's user id (memoised per request)."""
    if (known := request.get(_CALLER)) is not None:
        return str(known)
    headers = request.headers.getall("Authorization", [])
    if len(headers) > 1:
        raise BadRequest("send one Authorization header, not several")
    header = headers[0] if headers else ""
    if not header.strip():
        raise MissingCredentials(headers={"WWW-Authenticate": CHALLENGE})
    scheme, _, token = header.strip().partition(" ")
    limiter = request.app[LIMITER]
    address = client_address(request, request.app[PROXIES])
    refusing = limiter.refusing(address) > 0
    try:
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidCredentials("use the Bearer scheme: Authorization: Bearer <key>")
        # An address past its failure limit gets no key read: only keys verified lately pass.
        user_id = await request.app[ACCOUNTS].authenticate(token.strip(), only_remembered=refusing)
    except InvalidCredentials as exc:
        if refusing:
            limiter.refuse(address)
        # Only failures count: a valid key costs one read, and a prober sharing an address (a
        # NAT, a proxy) with real users cannot lock them out.
        await limiter.fail(address)
        raise InvalidCredentials(
            exc.message, headers={"WWW-Authenticate": f'{CHALLENGE}, error="invalid_token"'}
        ) from None
    request[_CALLER] = user_id
    return user_id


async def resolve_user(request: web.Request, claimed: object = None) -> str:
    """The caller's user id; `claimed` (a body field) or `?user_id=`, if given, must equal it."""
    user_id = await authenticate(request)
    value = claimed if claimed is not None else request.query.get("user_id")
    if value is None or value == "":
        return user_id
    if not isinstance(value, str) or not valid_user_id(value):
        raise InvalidField("user_id must be a lowercase UUID")
    if value != user_id:
        raise Forbidden("this key belongs to another user than the user_id given")
    return user_id
