"""Who the client is: the address every per-client share is counted under.

A request's peer is the client, unless the peer is a proxy the operator trusts
(`IMGSVC_TRUSTED_PROXIES`): then the client is the nearest address in the forwarding header that
proxy writes (`IMGSVC_FORWARDED_HEADER`: `X-Forwarded-For`, as nginx and AWS's load balancers
write it, or RFC 7239's `Forwarded`) that is not itself a trusted proxy. Only that one header is
read, never the other (a proxy passes a client's own copy of the other through), and from the
right, only as far as trusted hops go: everything left of the first untrusted hop was written by
the client and may be anything.

An IPv6 client is counted by its /64 (one host is given a /64; counting addresses would let it
take a share per address), and an IPv4-mapped IPv6 address as the IPv4 one.
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

    def __init__(self, networks: tuple[str, ...], header: str = "x-forwarded-for") -> None:
        self._networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in networks)
        self._header = header

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusted(self, address: str | None) -> bool:
        if not self._networks or not address:
            return False
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self._networks)

    def client(self, peer: str | None, headers: Mapping[str, str]) -> str:
        """The client's address: `peer`, or the nearest untrusted hop a trusted `peer` forwarded."""
        if peer is None:
            return "unknown"
        if not self.trusted(peer):
            return counted_as(peer)
        hops = forwarded_hops(headers, self._header)
        for hop in reversed(hops):
            if not self.trusted(hop):
                return counted_as(hop)
        return counted_as(hops[0]) if hops else counted_as(peer)


def forwarded_hops(headers: Mapping[str, str], header: str = "x-forwarded-for") -> list[str]:
    """The addresses a request passed through, client first, from the one header named:
    `Forwarded`'s `for=`, or `X-Forwarded-For`. Ports and IPv6 brackets are dropped."""
    if header == "forwarded":
        forwarded = (
            ",".join(headers.getall("Forwarded", []))
            if hasattr(headers, "getall")
            else headers.get("Forwarded", "")
        )
        hops = [m.group(2) for element in forwarded.split(",") if (m := _FOR.search(element))]
    else:
        raw = (
            ",".join(headers.getall("X-Forwarded-For", []))
            if hasattr(headers, "getall")
            else headers.get("X-Forwarded-For", "")
        )
        hops = raw.split(",")
    return [name for hop in hops if (name := _bare(hop.strip()))]


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def counted_as(address: str) -> str:
    """The name a client's shares are counted under: its IPv4 address, its IPv6 /64, or (for a
    forged hop that is no address) the text itself, bounded."""
    ip = _ip(address)
    if ip is None:
        return address[:_MAX_NAME]
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)


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
