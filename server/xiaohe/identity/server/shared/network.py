"""Addresses: which hosts are local to this machine, and the unit one end user sits behind."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address can only be reached from this machine."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ip_bucket(ip: str) -> str:
    """The unit an IP limit counts: the IPv4 address, or the IPv6 /64 (IPv4-mapped → IPv4)."""
    raw = ip.strip()
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return "raw:" + raw
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def mask_ip(ip: str) -> str:
    """An end-user IP as sessions store and show it: IPv4 /24 (`203.0.113.*`), IPv6 /48.

    Anything that is not an IP address (including an already masked one) is
    stored as `-`, and an empty IP as the empty string.
    """
    raw = ip.strip()
    if not raw:
        return ""
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return "-"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return ".".join(str(address).split(".")[:3]) + ".*"
    network = ipaddress.IPv6Network((address, 48), strict=False)
    return f"{network.network_address.exploded[:14]}:*"
