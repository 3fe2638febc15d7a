"""Addresses: which hosts are local to this machine, which transports may carry secrets,
and the unit one end user sits behind."""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

SecretUrlCheck = Literal["ok", "not_http", "remote_http"]
"""How a URL fares as the address secrets are posted to (see `check_secret_url`)."""


def is_loopback_host(host: str) -> bool:
    """Whether a host name or address can only be reached from this machine."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_secret_url(url: str) -> SecretUrlCheck:
    """Whether secrets may be posted to `url`: plain http:// only to loopback (SECURITY X2).

    `not_http`: the scheme is neither https nor http, or there is no host;
    `remote_http`: plain http:// to a host other machines can reach; `ok` otherwise.
    A URL that cannot be parsed raises ValueError (from `urlsplit`); each caller
    words its own refusals.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        return "not_http"
    if parts.scheme == "http" and not is_loopback_host(host):
        return "remote_http"
    return "ok"


def smtp_credentials_in_plaintext(username: str, password: str, starttls: bool) -> bool:
    """Whether SMTP credentials would be sent without STARTTLS, which is refused (SECURITY X2)."""
    return bool(username or password) and not starttls


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
