"""Tell systemd how the service is doing (`Type=notify` units, `sd_notify(3)`): READY=1 once it
accepts connections, STOPPING=1 when it begins to shut down. A datagram to the socket systemd
names in `NOTIFY_SOCKET`; nothing at all where that is unset (not under systemd), and a failure
to send is logged, never fatal: the unit's start timeout is what catches a service that never
said it was ready."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send `state` (`READY=1`, `STOPPING=1`, `STATUS=...`); True if there was a socket to send to."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd state=%s error=%s", state, exc)
    return True
