"""Who the client is: the address every per-client share is counted under.

A request's peer is the client, unless the peer is a proxy the operator trusts
(`IMGSVC_TRUSTED_PROXIES`): then the client is the nearest address in its `Forwarded` (RFC 7239)
or `X-Forwarded-For` header that is not itself a trusted proxy. Reading the header from the
right, and only as far as trusted hops go, is what makes it safe: everything left of the first
untrusted hop was written by the client and may be anything.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from aiohttp import web

#: Longest client name kept (a forged hop that is no address is still a bounded key).
_MAX_NAME = 64
_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("?)([^";,]*)\1', re.IGNORECASE)
_CLIENT = web.RequestKey("client_address", str)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Proxies:
    """The trusted proxies of one deployment."""

    def __init__(self, networks: tuple[str, ...]) -> None:
        self._networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusted(self, address: str | None) -> bool:
        if not self._networks or not address:
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in network for network in self._networks)

    def client(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The client's address: `peer`, or the nearest untrusted hop a trusted `peer` forwarded."""
        if peer is None:
            return "unknown"
        if not self.trusted(peer):
            return peer
        hops = forwarded_hops(headers)
        for hop in reversed(hops):
            if not self.trusted(hop):
                return hop[:_MAX_NAME]
        return hops[0][:_MAX_NAME] if hops else peer


def forwarded_hops(headers: Mapping[str, str]) -> list[str]:
    """The addresses a request passed through, client first: `Forwarded`'s `for=`, else
    `X-Forwarded-For`. Ports and IPv6 brackets are dropped."""
    if forwarded := headers.get("Forwarded"):
        hops = [m.group(2) for element in forwarded.split(",") if (m := _FOR.search(element))]
    else:
        hops = headers.get("X-Forwarded-For", "").split(",")
    return [name for hop in hops if (name := _bare(hop.strip()))]


def _bare(hop: str) -> str:
    if hop.startswith("["):  # [2001:db8::1]:4711
        return hop[1:].split("]", 1)[0]
    if hop.count(":") == 1:  # 192.0.2.1:4711
        return hop.split(":", 1)[0]
    return hop


def client_address(request: web.Request, proxies: Proxies) -> str:
    """The request's client (memoised per request)."""
    if (known := request.get(_CLIENT)) is not None:
        return str(known)
    found = request[_CLIENT] = proxies.client(request.remote, request.headers)
    return found
