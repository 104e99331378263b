"""Where a webhook may point: every spelling of an inward address is refused when the URL is set,
through the API and in the pure checker."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import given
from hypothesis import strategies as st

from config.settings import Settings
from pipeline.core.errors import InvalidWebhookUrl
from pipeline.webhooks.urls import check_url
from tests.support.clients import ClientFactory

Client = TestClient[Any, Any]

# Hosts PUT /webhook refuses (422 invalid_webhook_url), by kind. One app per kind keeps this quick.
REFUSED = {
    "ipv4-spellings": [  # as libc's inet_aton and browsers read them
        "2130706433", "0x7f000001", "0X7F000001", "0x7f.0.0.1", "0x7f.0x0.0x0.0x1", "0177.0.0.1",
        "017700000001", "0177.1", "127.1", "10.1", "127.0.1", "192.168.257", "127.0.0.1.", "0", "0.0.0.0",
        "169.254.169.254", "0xa9.0xfe.0xa9.0xfe", "2852039166", "100.64.0.1", "224.0.0.1",
        "255.255.255.255",
    ],
    "names": [
        "localhost", "LOCALHOST", "localhost.", "foo.localhost", "foo.localhost.", "localhost.localdomain",
        "ip6-localhost", "ip6-loopback",
    ],
    "ipv6-embedding-ipv4": [  # mapped, 6to4, NAT64 (well-known and local-use prefix), Teredo, compatible
        "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::ffff:10.0.0.1]", "[2002:7f00:1::]",
        "[2002:0a00:0001::]", "[64:ff9b::7f00:1]", "[64:ff9b::10.0.0.1]", "[64:ff9b::a9fe:a9fe]",
        "[64:ff9b:1::1]", "[64:ff9b:1::8.8.8.8]", "[2001:0:4136:e378:8000:63bf:3fff:fdd2]", "[::7f00:1]",
    ],
    "ipv6": [  # loopback, unspecified, link-local (with zone ids), unique local, site-local, multicast
        "[::1]", "[::]", "[0:0:0:0:0:0:0:1]", "[fe80::1]", "[fe80::1%25eth0]", "[fd00::1%25eth0]",
        "[fd12:3456::1]", "[fec0::1]", "[ff02::1]",
    ],
    "idna-mapped": [  # aiohttp connects to 127.0.0.1 and localhost: fullwidth digits, a circled letter
        "\uff11\uff12\uff17\u3002\uff10\u3002\uff10\u3002\uff11", "\u24dbocalhost",
    ],
    "invalid-numeric": [  # never sent to DNS
        "1.2.3.4.5", "256.1.1.1", "1.2.3.256", "127.0.0.0x100", "4294967296", "0x100000000", "08.1.2.3",
        "0x", "1.2.3.0x", "foo.123",
    ],
    "invalid-name": ["127.0.0.%31", "127.0.0.1..", "a..b"],
    "public-spelled-unusually": [  # refused too, see check_url
        "0x08080808", "134744072", "010.010.010.010", "8.8.2056", "8.8.8.8.",
    ],
}  # fmt: skip

ACCEPTED = [
    "8.8.8.8", "[2606:4700::1111]", "[64:ff9b::808:808]", "[::ffff:8.8.8.8]", "hooks.example.com",
    "hooks.example.com.", "1.2.3.example", "0x7f.example.com", "ex\u00e4mple.com",
]  # fmt: skip

ACCEPTED_WHEN_ALLOWED = [
    "127.0.0.1", "10.0.0.1", "localhost", "localhost.", "[::ffff:127.0.0.1]", "[fe80::1%25eth0]",
    "[64:ff9b::10.0.0.1]",
]  # fmt: skip


async def put_hosts(api: Client, hosts: list[str], template: str = "http://{}/hook") -> dict[str, str]:
    """Each host's answer to PUT /webhook: its error code, or "ok"."""
    answers = {}
    for host in hosts:
        response = await api.put("/webhook", json={"url": template.format(host)})
        body = await response.json()
        answers[host] = "ok" if response.status == 200 else f"{response.status} {body['error']}"
    return answers


@pytest.mark.parametrize("kind", REFUSED)
async def test_put_refuses_every_spelling_of_an_inward_or_invalid_host(api: Client, kind: str) -> None:
    answers = await put_hosts(api, REFUSED[kind])
    assert {host: a for host, a in answers.items() if a != "422 invalid_webhook_url"} == {}
    assert (await api.get("/webhook")).status == 404


async def test_put_explains_what_an_unusual_spelling_means(api: Client) -> None:
    response = await api.put("/webhook", json={"url": "http://0x7f000001/hook"})
    message = (await response.json())["message"]
    assert "0x7f000001" in message and "127.0.0.1" in message and "IMGSVC_WEBHOOK_ALLOW_PRIVATE" in message


async def test_put_accepts_public_hosts(api: Client) -> None:
    answers = await put_hosts(api, ACCEPTED, "https://{}/hook")
    assert {host: a for host, a in answers.items() if a != "ok"} == {}


async def test_put_accepts_inward_hosts_when_allowed(
    make_settings: Callable[..., Settings], make_client: ClientFactory
) -> None:
    api = await make_client(make_settings(IMGSVC_WEBHOOK_ALLOW_PRIVATE="true"))
    answers = await put_hosts(api, ACCEPTED_WHEN_ALLOWED, "http://{}:8080/hook")
    assert {host: a for host, a in answers.items() if a != "ok"} == {}
    assert (await api.get("/webhook")).status == 200
    answers = await put_hosts(api, ["2130706433", "127.1", "0x7f.1", "1.2.3.4.5"])
    assert set(answers.values()) == {"422 invalid_webhook_url"}, "spelling rules hold all the same"


# The pure checker ------------------------------------------------------------------------------------

INWARD_NETWORKS = [
    ipaddress.IPv4Network(net)
    for net in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
        "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    )
]  # fmt: skip


@st.composite
def inward_ipv4(draw: st.DrawFn) -> ipaddress.IPv4Address:
    net = draw(st.sampled_from(INWARD_NETWORKS))
    return net[draw(st.integers(0, net.num_addresses - 1))]


def _number(value: int, base: str) -> str:
    return {"dec": str(value), "hex": hex(value), "HEX": f"0X{value:X}", "oct": f"0{value:o}"}[base]


@st.composite
def ipv4_spellings(draw: st.DrawFn, ip: ipaddress.IPv4Address, ipv6: bool = True) -> str:
    """`ip` as libc and browsers read it: 1 to 4 parts, each decimal, hex or octal, the last one
    filling the bytes left; maybe with a trailing dot. Or an IPv6 literal that embeds it."""
    octets = list(ip.packed)
    value = int(ip)
    style = draw(st.sampled_from(["parts", "mapped", "6to4", "nat64"] if ipv6 else ["parts"]))
    if style == "mapped":
        return draw(st.sampled_from([f"[::ffff:{ip}]", f"[::ffff:{value >> 16:x}:{value & 0xFFFF:x}]"]))
    if style == "6to4":
        return f"[2002:{value >> 16:x}:{value & 0xFFFF:x}::{draw(st.integers(0, 0xFFFF)):x}]"
    if style == "nat64":
        return draw(st.sampled_from([f"[64:ff9b::{ip}]", f"[64:ff9b::{value >> 16:x}:{value & 0xFFFF:x}]"]))
    count = draw(st.integers(1, 4))
    leading = octets[: count - 1]
    last = int.from_bytes(bytes(octets[count - 1 :]), "big")
    bases = st.sampled_from(["dec", "hex", "HEX", "oct"])
    parts = [_number(part, draw(bases)) for part in [*leading, last]]
    return ".".join(parts) + draw(st.sampled_from(["", "."]))


@given(data=st.data(), ip=inward_ipv4())
def test_every_spelling_of_an_inward_ipv4_address_is_refused(
    data: st.DataObject, ip: ipaddress.IPv4Address
) -> None:
    host = data.draw(ipv4_spellings(ip))
    with pytest.raises(InvalidWebhookUrl):
        check_url(f"http://{host}/hook", allow_private=False)
    with pytest.raises(InvalidWebhookUrl):
        check_url(f"https://{host}:8443/hook?x=1", allow_private=False)


@given(ip=inward_ipv4())
def test_inward_ipv4_addresses_are_accepted_when_allowed(ip: ipaddress.IPv4Address) -> None:
    for host in (str(ip), f"[::ffff:{ip}]", f"[64:ff9b::{ip}]"):
        assert check_url(f"http://{host}/hook", allow_private=True)


@given(value=st.integers(0, 2**32 - 1), data=st.data())
def test_numeric_hosts_are_canonical_dotted_quads_or_refused(value: int, data: st.DataObject) -> None:
    """The rule holds for public addresses too, and whatever IMGSVC_WEBHOOK_ALLOW_PRIVATE says."""
    ip = ipaddress.IPv4Address(value)
    host = data.draw(ipv4_spellings(ip, ipv6=False))
    for allow_private in (False, True):
        if host != str(ip):
            with pytest.raises(InvalidWebhookUrl):
                check_url(f"http://{host}/hook", allow_private=allow_private)
