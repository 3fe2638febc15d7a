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
