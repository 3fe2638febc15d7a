"""Recognisable, per-run test data: login names, phone numbers, passwords, end-user IPs.

Every account a run creates has a login name starting `loadtest-<run id>-` and a
phone number in `+86 1990 xxx xxxx`, so an operator can find (and, once the API
offers it, remove) them. Numbers walk that block with a stride coprime to its size,
so consecutive accounts land in different 10,000-number prefixes and the server's
per-prefix SMS-pumping budgets see traffic spread as real users would spread it.

Passwords are an HMAC of the login name under the client secret: the driver and
every Locust process (on any machine) derive the same password without it being
written to a file, a command line or the report.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import secrets
from dataclasses import dataclass, field

LOGIN_PREFIX = "loadtest-"
PHONE_BLOCK = "+861990"
_BLOCK_SIZE = 10**7
_STRIDE = 10_007  # prime, so coprime to 10**7 (a bijection); > 10**4: a new prefix each step
_RUN_REGISTRATIONS_BASE = 5_000_000
_REGISTRATIONS_PER_SLOT = 100_000


def new_run_id() -> str:
    """Eight random hex characters naming one run."""
    return secrets.token_hex(4)


@dataclass(frozen=True)
class RunData:
    """Derives one run's test data from its id and the client secret."""

    run_id: str
    client_secret: str = field(repr=False)

    @property
    def login_prefix(self) -> str:
        """The prefix of every login name this run registers."""
        return f"{LOGIN_PREFIX}{self.run_id}-"

    def _offset(self) -> int:
        return int(self.run_id, 16) % _BLOCK_SIZE

    def phone(self, index: int) -> str:
        """The test number of account `index` (unique within a run for index < 10**7)."""
        national = (self._offset() + index * _STRIDE) % _BLOCK_SIZE
        return f"{PHONE_BLOCK}{national:07d}"

    def seed_login_name(self, index: int) -> str:
        """The login name of seeded account `index`."""
        return f"{self.login_prefix}s{index}"

    def registration_index(self, slot: int, counter: int) -> int:
        """The account index of the `counter`-th registration made by process `slot`."""
        return _RUN_REGISTRATIONS_BASE + slot * _REGISTRATIONS_PER_SLOT + counter

    def registration_login_name(self, index: int) -> str:
        """The login name of an account registered during the run."""
        return f"{self.login_prefix}r{index}"

    def password(self, login_name: str, generation: int = 0) -> str:
        """The account's password; `generation` counts password resets."""
        mac = hmac.new(
            self.client_secret.encode(), f"{login_name}/{generation}".encode(), hashlib.sha256
        )
        return "Lt-" + base64.urlsafe_b64encode(mac.digest()[:15]).decode()


def end_user_ip(rng: random.Random) -> str:
    """A random address of the benchmarking range: each flow is its own end user."""
    # RFC 2544's benchmarking range 198.18.0.0/15: addresses no real end user has.
    return f"198.{18 + rng.randrange(2)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
