"""Password policy: length, the common-password list and context words (SECURITY.md P1, P2).

The policy follows NIST SP 800-63B-4 §3.1.1.2 and ASVS 5.0 V6.2: a password is
accepted when it is 8 to 128 characters long after NFKC normalisation (one code
point counts as one character), is not on a list of common passwords and does not
contain words an attacker would try first for this account. There are no
composition rules (no "one digit, one capital"), no truncation and no expiry.
"""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from importlib import resources
from typing import Final

from xiaohe.identity.server.errors import FieldViolation, InvalidArgument

PLATFORM_WORDS: Final[tuple[str, ...]] = ("xiaohe", "小禾", "xiaoheqifu", "小禾企服", "xhqf")
"""Names of the platform; always refused inside a password, whatever their length."""

COMMON_PASSWORDS_RESOURCE: Final[tuple[str, ...]] = ("data", "common-passwords.txt")
"""Path of the bundled list inside this package (see `data/README.md` for its origin)."""

MIN_CONTEXT_WORD_LENGTH: Final = 4
"""Caller-given context words shorter than this (after folding) are ignored."""

PHONE_MIN_DIGITS: Final = 8
"""A context word made of at least this many digits is treated as a phone number."""

PHONE_TAIL_DIGITS: Final = 8
"""How many trailing digits of a phone number a password may not contain."""

COMMON_SUFFIX_MAX: Final = 4
"""At most this many trailing digits or symbols are stripped when matching the common list."""

_SUFFIX_CHARS: Final = frozenset(string.digits + string.punctuation + " ")
_SEPARATORS: Final = frozenset(" ._-")
_PHONE_PUNCTUATION: Final = frozenset(" +-()")
_RAW_LENGTH_FACTOR: Final = 4

TOO_COMMON: Final = "is one of the most common passwords"
TOO_COMMON_VARIANT: Final = "is a common password with only a few digits or symbols added"
HAS_PLATFORM_NAME: Final = "must not contain the platform name"
HAS_LOGIN_NAME: Final = "must not contain the login name"
HAS_EMAIL: Final = "must not contain the email address"
HAS_PHONE: Final = "must not contain the phone number digits"
NOT_TEXT: Final = "must be valid Unicode text"


def normalise(password: str) -> str:
    """Return the NFKC form of `password`, the form that is checked, counted and hashed."""
    return unicodedata.normalize("NFKC", password)


def _fold(text: str) -> str:
    """Return the NFKC, lowercased form used to compare with the list and context words."""
    return unicodedata.normalize("NFKC", text).lower()


def _compact(text: str) -> str:
    """Return the folded form without separators (space, dot, underscore, hyphen)."""
    return "".join(c for c in _fold(text) if c not in _SEPARATORS)


class CommonPasswords:
    """The bundled common-password list, held as an immutable set of folded passwords.

    Build it once with `load()` (the container holds the one instance) or, in tests,
    from any iterable of passwords. Entries are NFKC-normalised and lowercased on the
    way in, so membership is case-insensitive.
    """

    def __init__(self, passwords: Iterable[str]) -> None:
        self._passwords: frozenset[str] = frozenset(
            folded for folded in (_fold(p.strip("\r\n")) for p in passwords) if folded
        )

    @classmethod
    def load(cls) -> CommonPasswords:
        """Read the list bundled with this package (about 20,000 entries)."""
        resource = resources.files(__package__ or __name__).joinpath(*COMMON_PASSWORDS_RESOURCE)
        return cls(resource.read_text(encoding="utf-8").splitlines())

    def __contains__(self, password: object) -> bool:
        """Tell whether `password`, case-insensitively and after NFKC, is on the list."""
        return isinstance(password, str) and _fold(password) in self._passwords

    def __len__(self) -> int:
        """Return the number of distinct entries."""
        return len(self._passwords)

    def __iter__(self) -> Iterator[str]:
        """Iterate over the folded entries, in no particular order."""
        return iter(self._passwords)


class PasswordPolicy:
    """Checks a new password (registration, reset, change) and returns its normalised form.

    Rules, in the order they are checked; the first one broken is reported as a
    field violation on `field`, and the message never contains the password:

    1. Length. The password is NFKC-normalised and its code points are counted:
       a full-width `ｐａｓｓｗｏｒｄ` is `password` (8), `ﬁ` is `fi` (2), `e` + U+0301
       composes to `é` (1), an emoji that is one code point is 1, a ZWJ emoji sequence
       is as many as its code points. Nothing is truncated. An input of more than
       four times `max_length` code points is refused before normalisation, so
       normalising never works on unbounded input (NFKC composition never shrinks
       typed text that much). Lone surrogates, which are not Unicode text and could
       not be hashed as UTF-8, are refused.
    2. Common passwords. The lowercased password must not be on the list, nor be a
       listed password followed by 1 to 4 digits, ASCII symbols or spaces
       (`Password1!`, `dragon2024`, `iloveyou!!`). Appending a short suffix is the
       first mangling rule every cracking tool tries, so such a password is no
       stronger than its base; longer suffixes and other manglings are left alone to
       keep the rule predictable for users.
    3. Context words (ASVS V6.2.11). The password, lowercased with spaces, dots,
       underscores and hyphens removed, must not contain:
       - the platform name (`PLATFORM_WORDS`, always, whatever their length);
       - each caller-given word (login name, email, phone) of at least 4 characters,
         compared the same way; a word with `@` contributes its local part (and is
         reported as the email address); a word that is a phone number (at least 8
         digits once `+`, spaces, hyphens and brackets are removed) contributes its
         last 8 digits, which catches the full number with or without the country
         code as well as the subscriber part people reuse; the last 4 digits alone
         are not refused, since too many unrelated passwords contain any 4 digits.
    """

    def __init__(
        self,
        common: CommonPasswords,
        min_length: int = 8,
        max_length: int = 128,
        *,
        platform_words: Sequence[str] = PLATFORM_WORDS,
    ) -> None:
        if not 1 <= min_length <= max_length:
            raise ValueError("need 1 <= min_length <= max_length")
        self._common = common
        self._min_length = min_length
        self._max_length = max_length
        self._platform_words = tuple(w for w in (_compact(p) for p in platform_words) if w)

    @property
    def min_length(self) -> int:
        """Fewest code points accepted after NFKC."""
        return self._min_length

    @property
    def max_length(self) -> int:
        """Most code points accepted after NFKC."""
        return self._max_length

    def check(self, password: str, *, context: Sequence[str] = (), field: str = "password") -> str:
        """Return the NFKC-normalised password, or raise InvalidArgument saying why not."""
        reason = self._violation(password, context)
        if reason is not None:
            raise InvalidArgument(FieldViolation(field=field, description=reason))
        return normalise(password)

    def _violation(self, password: str, context: Sequence[str]) -> str | None:
        """Return the description of the first rule `password` breaks, or None."""
        too_long = f"must be at most {self._max_length} characters"
        if len(password) > self._max_length * _RAW_LENGTH_FACTOR:
            return too_long
        normalised = normalise(password)
        if len(normalised) < self._min_length:
            return f"must be at least {self._min_length} characters"
        if len(normalised) > self._max_length:
            return too_long
        try:
            normalised.encode("utf-8")
        except UnicodeEncodeError:
            return NOT_TEXT
        common = self._common_violation(normalised.lower())
        if common is not None:
            return common
        return self._context_violation(_compact(normalised), context)

    def _common_violation(self, folded: str) -> str | None:
        """Apply rule 2 to the lowercased password."""
        if folded in self._common:
            return TOO_COMMON
        for stripped in range(1, min(COMMON_SUFFIX_MAX, len(folded) - 1) + 1):
            if folded[-stripped] not in _SUFFIX_CHARS:
                break
            if folded[:-stripped] in self._common:
                return TOO_COMMON_VARIANT
        return None

    def _context_violation(self, compact: str, context: Sequence[str]) -> str | None:
        """Apply rule 3 to the compacted password."""
        if any(word in compact for word in self._platform_words):
            return HAS_PLATFORM_NAME
        for word in context:
            found = _context_term(word)
            if found is not None and found[0] in compact:
                return found[1]
        return None


def _context_term(word: str) -> tuple[str, str] | None:
    """Return (what the password may not contain, the description) for one context word."""
    digits = "".join(c for c in _fold(word) if c not in _PHONE_PUNCTUATION)
    if digits.isascii() and digits.isdigit() and len(digits) >= PHONE_MIN_DIGITS:
        return digits[-PHONE_TAIL_DIGITS:], HAS_PHONE
    if "@" in word:
        term, description = _compact(word.rpartition("@")[0]), HAS_EMAIL
    else:
        term, description = _compact(word), HAS_LOGIN_NAME
    if len(term) < MIN_CONTEXT_WORD_LENGTH:
        return None
    return term, description
