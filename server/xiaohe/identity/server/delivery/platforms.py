"""What the template-based SMS platforms (Aliyun, Tencent Cloud) share: templates per purpose.

Both platforms send only pre-registered templates under a registered
signature (签名), so a provider needs, for every purpose it serves, a
template id, and a sign name (one default, optionally one per purpose). Both
are configured as compact `PURPOSE=VALUE,PURPOSE=VALUE` strings; a purpose
without a template is not served by that provider, and the failover chain
moves the message on to the next one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from xiaohe.identity.server.delivery.providers import DeliveryError, OutgoingMessage
from xiaohe.identity.server.shared.network import check_secret_url

_PURPOSE = re.compile(r"[A-Z][A-Z_]{0,31}")
_VALUE = re.compile(r"[^,=\s][^,=]{0,63}")


def parse_purpose_map(text: str) -> dict[str, str]:
    """`"LOGIN=SMS_1,RESET_PASSWORD=SMS_2"` → a dict; ValueError naming the bad entry's position."""
    result: dict[str, str] = {}
    for index, item in enumerate(text.split(","), start=1):
        if not item.strip():
            continue
        purpose, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not _PURPOSE.fullmatch(purpose) or not _VALUE.fullmatch(value):
            raise ValueError(f"entry {index} is not PURPOSE=VALUE")
        if purpose in result:
            raise ValueError(f"entry {index} repeats {purpose}")
        result[purpose] = value
    return result


@dataclass(frozen=True)
class PlatformTemplates:
    """Sign name and template id for each purpose a platform serves."""

    sign_name: str
    templates: Mapping[str, str]
    sign_names: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "templates", MappingProxyType(dict(self.templates)))
        object.__setattr__(self, "sign_names", MappingProxyType(dict(self.sign_names)))

    def for_message(
        self, provider: str, message: OutgoingMessage
    ) -> tuple[str, str, Mapping[str, str]]:
        """(sign name, template id, variables) for a message; DeliveryError if not served.

        The template is looked up by the message's key (a code purpose, or a notice
        kind such as `login_name_reminder`). A notice without a template of its own
        goes out as the fixed-text `NOTICE` template, without variables, when all it
        carries is its time; a notice that carries more (a login name) needs its own
        template, else the chain moves it on to the next provider.
        """
        key = message.template or message.purpose
        params = message.template_params
        if key not in self.templates and set(params) <= _FIXED_TEXT_FIELDS:
            key, params = message.purpose, {}
        template = self.templates.get(key)
        sign = self.sign_names.get(key, self.sign_names.get(message.purpose, self.sign_name))
        if not template or not sign:
            raise DeliveryError(False, f"{provider} has no template for {key}", failover=True)
        return sign, template, params


_FIXED_TEXT_FIELDS = frozenset({"at"})
"""Notice variables a fixed-text template may leave out (when it happened)."""


@dataclass(frozen=True)
class Endpoint:
    """Where a platform's API is: scheme and host[:port] (tests point it at a local server)."""

    scheme: str
    host: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """https://HOST[:PORT], or http:// to a loopback host only (SECURITY X2)."""
        check = check_secret_url(url)
        if check != "ok":
            raise ValueError("an SMS platform endpoint must be https:// unless it is on loopback")
        parts = urlsplit(url)
        if parts.path not in ("", "/") or parts.query or parts.username or parts.password:
            raise ValueError("an SMS platform endpoint is scheme://host[:port] only")
        return cls(parts.scheme, parts.netloc)


__all__ = ["Endpoint", "PlatformTemplates", "parse_purpose_map"]
