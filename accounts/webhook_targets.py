"""Where a webhook may go: public addresses only.

A hostname that resolves to a loopback, private, link-local or otherwise
non-global address is refused (6to4, Teredo and IPv4-mapped addresses are
judged by the IPv4 address they carry). Networks listed in
WEBHOOKS_ALLOWED_PRIVATE_NETWORKS are let through, for development and tests
only. accounts.webhooks checks every URL it saves and every hop it follows.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings


class UnsafeTarget(ValueError):
    """The URL points somewhere a webhook may not go."""


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped:
            return _is_public(str(ip.ipv4_mapped))
        # 6to4 and Teredo addresses carry an IPv4 address they can reach: judge it too.
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not _is_public(str(embedded)):
            return False
    return ip.is_global and not (ip.is_multicast or ip.is_reserved)


def _is_allowed_private(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in ipaddress.ip_network(network)
               for network in settings.WEBHOOKS_ALLOWED_PRIVATE_NETWORKS)


def target_check(url: str) -> None:
    """Refuse a URL that is not https, or whose host resolves to a non-public address.

    Addresses in WEBHOOKS_ALLOWED_PRIVATE_NETWORKS (empty by default) are let
    through, over http too: a development receiver on loopback.
    """
    parts = urlsplit(url)
    if not parts.hostname:
        raise UnsafeTarget("webhook URL has no host")
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise UnsafeTarget(f"cannot resolve {parts.hostname}") from None
    addresses = {str(info[4][0]) for info in infos}
    allowed_private = bool(addresses) and all(_is_allowed_private(a) for a in addresses)
    if parts.scheme != "https" and not (allowed_private and parts.scheme == "http"):
        raise UnsafeTarget("webhook URLs must use https")
    if allowed_private:
        return
    blocked = sorted(address for address in addresses if not _is_public(address))
    if blocked or not addresses:
        raise UnsafeTarget(
            f"{parts.hostname} resolves to a non-public address ({', '.join(blocked)})"
        )
