"""Where a webhook may point: URLs are untrusted input aiming our servers at the network.

Unless `IMGSVC_WEBHOOK_ALLOW_PRIVATE` is set, loopback, private, link-local and other non-global
addresses are refused when the URL is set (`check_url`) *and* when each delivery resolves its
host (`PublicOnlyResolver`), so a name that later resolves inward is refused too, however the
address is spelled.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import TypeAlias
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from pipeline.core.errors import InvalidWebhookUrl

MAX_URL_LENGTH = 2048


# Not globally reachable, though the `ipaddress` tables of the Pythons we support say otherwise (they
# lag the IANA registries), or reachable only through a translator that could lead anywhere inside.
_NOT_GLOBAL = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "192.88.99.0/24", "198.18.0.0/15", "240.0.0.0/4",
        "::/96", "::ffff:0:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32",
        "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10", "fec0::/10",
    )
)  # fmt: skip
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address
_LOOPBACK_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "localhost4", "localhost4.localdomain4", "localhost6",
     "localhost6.localdomain6", "ip6-localhost", "ip6-loopback"}
)  # fmt: skip
_ONLY_IF_ALLOWED = "(allowed only with IMGSVC_WEBHOOK_ALLOW_PRIVATE=true)"
_NAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_INET_ATON_PART = re.compile(r"0x[0-9a-f]+|0[0-7]*|[1-9][0-9]*")

_IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a packet to `ip` may be delivered to (mapped, 6to4, Teredo, NAT64)."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    if ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFF_FFFF)]
    return []


def _is_public_ip(ip: _IPAddress) -> bool:
    if ip.is_multicast or not ip.is_global or any(ip in net for net in _NOT_GLOBAL):
        return False
    return isinstance(ip, ipaddress.IPv4Address) or all(map(_is_public_ip, _embedded_ipv4(ip)))


def _is_public(address: str) -> bool:
    """True for a globally reachable unicast address, also through any IPv4 address it embeds."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return _is_public_ip(ip)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """`host` read as libc's `inet_aton` and browsers read a numeric host, None if it is no address.

    One to four parts, each decimal, octal (leading 0) or hex (0x); the last fills the bytes left.
    """
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_INET_ATON_PART.fullmatch(part) for part in parts):
        return None
    values = [
        int(part, 16) if part.startswith("0x") else int(part, 8 if part[0] == "0" else 10) for part in parts
    ]
    *leading, last = values
    if any(value > 0xFF for value in leading) or last >= 1 << 8 * (5 - len(parts)):
        return None
    return ipaddress.IPv4Address(sum(v << 8 * (3 - i) for i, v in enumerate(leading)) + last)


def _address_of(host: str) -> _IPAddress | str:
    """The address a URL's host (as aiohttp will connect to it) spells, or the host name itself.

    A host whose last label is a number is an IPv4 address to browsers and libc however it is written
    (`2130706433`, `0x7f.1`, `0177.0.0.1.`), so it is never passed on to DNS: it is read the same way,
    and is invalid if it is no address at all.
    """
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise InvalidWebhookUrl(f"url host {host!r} is not a valid IPv6 address") from None
    name = host.lower().removesuffix(".")
    if not _NAME.fullmatch(name) or len(name) > 253:
        raise InvalidWebhookUrl(f"url host {host!r} is not a valid host name")
    if not _NUMERIC_LABEL.fullmatch(name.rsplit(".", 1)[-1]):
        return name
    address = _inet_aton(name)
    if address is None:
        raise InvalidWebhookUrl(f"url host {host!r} looks like an IPv4 address but is not one")
    return address


def check_url(url: object, allow_private: bool) -> str:
    """`url` if a webhook may point there, else `InvalidWebhookUrl` saying why.

    The host is judged as aiohttp will connect to it, after IDNA mapping (127.0.0.1 written in
    fullwidth digits and ideographic full stops is 127.0.0.1, which aiohttp connects to without asking
    the resolver). IPv4 addresses must be written as four decimal numbers: every other spelling
    (`2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1`, `127.0.0.1.`) is refused, whether the address
    is public or not and whatever `allow_private` says, because parsers disagree about what such a
    host means (one reads `0177.0.0.1` as octal, another as 177.0.0.1) and aiohttp refuses to connect
    to most of them. IPv6 literals are unambiguous, so they are accepted however written, and one that
    embeds an IPv4 address (mapped, 6to4, Teredo, NAT64 `64:ff9b::/96`) is judged by that address too.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidWebhookUrl(f"url must be a string of 1 to {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
        host = URL(url).raw_host  # what the client will connect to, IDNA-mapped
    except (ValueError, UnicodeError) as exc:
        raise InvalidWebhookUrl(f"url is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or not host:
        raise InvalidWebhookUrl("url must be an absolute http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidWebhookUrl("url must not carry credentials; sign-check the body instead")
    if parts.fragment:
        raise InvalidWebhookUrl("url must not have a #fragment")
    address = _address_of(host)
    if not allow_private:
        if isinstance(address, str):
            if address in _LOOPBACK_NAMES or address.endswith(".localhost"):
                raise InvalidWebhookUrl(f"url host {host!r} names this machine {_ONLY_IF_ALLOWED}")
        elif not _is_public_ip(address):
            means = "" if str(address) == host else f" ({address})"
            raise InvalidWebhookUrl(
                f"url host {host!r}{means} is a loopback, private, link-local or other non-public "
                f"address {_ONLY_IF_ALLOWED}"
            )
    if isinstance(address, ipaddress.IPv4Address) and str(address) != host:
        raise InvalidWebhookUrl(
            f"url host {host!r} is the IPv4 address {address} spelled unusually; write it as {address}"
        )
    return url


class PrivateAddress(OSError):
    """A webhook's host resolved, but only to addresses a webhook may not reach: no retry helps
    while the name points there (the event is dead-lettered at once as `private_address`)."""


class PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then keeps only global addresses.

    Checked at every connection, so a host name that resolves inward (DNS rebinding, an internal
    name) is refused even though its URL looked fine when it was set.
    """

    def __init__(self) -> None:
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = [r for r in await self._inner.resolve(host, port, family) if _is_public(r["host"])]
        if not found:
            raise PrivateAddress(f"{host} resolves to no public address; refusing to deliver a webhook there")
        return found

    async def close(self) -> None:
        await self._inner.close()
