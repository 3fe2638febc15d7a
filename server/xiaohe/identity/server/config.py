"""Settings: defaults, then a TOML file, then `XIAOHE_IDENTITY_*` environment variables.

Every setting has an environment name (the field name upper-cased with the
prefix), so `make serve` is configurable without flags. Invalid values stop
start-up with a one-line reason (`SettingsError`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, get_type_hints
from urllib.parse import urlsplit, urlunsplit

from xiaohe.identity.server.delivery.notices import NOTICE_PURPOSE
from xiaohe.identity.server.delivery.platforms import Endpoint, parse_purpose_map
from xiaohe.identity.server.delivery.templates import NOTICE_KINDS, PURPOSES
from xiaohe.identity.server.privacy.calendar import CalendarError, WorkingCalendar
from xiaohe.identity.server.ratelimit.prefixes import NumberRange
from xiaohe.identity.server.shared.network import (
    check_secret_url,
    is_loopback_host,
    smtp_credentials_in_plaintext,
)

ENV_PREFIX = "XIAOHE_IDENTITY_"

URL_FIELDS: Final = frozenset(
    {"database_url", "redis_url", "sms_gateway_url", "real_name_http_url"}
)
"""Settings that are URLs and may carry a password, shown with it masked."""

MAX_TOKEN_LEEWAY_SECONDS: Final = 60.0
"""Upper bound of `token_leeway_seconds`; revocations are kept past it (sessions/revocations.py)."""

HIDDEN: Final = "<hidden>"

CLIENT_SIDE_NAMES: Final = frozenset({"target", "client_id", "client_secret", "client_file"})
"""`XIAOHE_IDENTITY_*` variables that configure *callers* (scripts, load tests, the guides'
examples: which server, which credentials), set in the same shell as the server.
The server ignores them; any other unknown name is a typo and stops start-up."""


POSTGRES_DRIVER_SCHEME: Final = "postgresql+asyncpg://"
DATABASE_SCHEMES: Final = (
    "sqlite://",
    "sqlite+aiosqlite://",  # the spelling of earlier releases
    POSTGRES_DRIVER_SCHEME,
    "postgresql://",
    "postgres://",
)
"""How a database URL may begin: SQLite, or PostgreSQL in its standard forms or with the driver."""


def driver_url(url: str) -> str:
    """The URL with the driver the server uses: `postgres://` and `postgresql://` name asyncpg,
    and libpq's `sslmode=` becomes asyncpg's `ssl=` (same values: require, verify-full, …)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            url = POSTGRES_DRIVER_SCHEME + url.removeprefix(scheme)
    if url.startswith(POSTGRES_DRIVER_SCHEME):
        url = re.sub(r"([?&])sslmode=", r"\1ssl=", url)
    return url


class SettingsError(Exception):
    """A setting is invalid; the message is one line naming the setting and why."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the server, with the documented defaults.

    A secret setting is marked `field(repr=False)`: that mark is what puts it in
    `_SECRET_FIELDS`, hidden by `__repr__` and in error messages.
    """

    listen: str = "127.0.0.1:50051"
    metrics_listen: str = "127.0.0.1:9464"
    data_dir: Path = Path("./var")
    database_url: str = ""
    # PostgreSQL only: connections each worker process keeps (and may add as many again
    # under a burst), and the longest any statement may run before the server cancels it.
    database_pool_size: int = 10
    database_statement_timeout_ms: int = 2000
    redis_url: str = ""
    # REDIS_URL names one node of a Redis Cluster; the client finds the others.
    redis_cluster: bool = False
    workers: int = 0
    shutdown_grace_seconds: float = 5.0
    log_level: str = "INFO"
    log_file: str = ""
    # One INFO line per RPC on `xiaohe.identity.access`; false turns it off.
    access_log: bool = True
    config_file: str = ""
    keyring_file: str = ""
    # TLS: a certificate chain and key (PEM) make the listener TLS; a client CA adds mTLS.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # Plaintext gRPC on a non-loopback address only with this (a mesh that terminates TLS).
    allow_plaintext: bool = False
    # The largest request message accepted, in bytes (requests here are a few hundred bytes).
    max_message_bytes: int = 64 * 1024
    # Every Redis operation is answered within this bound, or fails closed (UNAVAILABLE).
    redis_op_timeout_seconds: float = 2.0
    # How often a worker anchors the audit chain's head in a signed checkpoint.
    audit_checkpoint_seconds: float = 300.0
    # How often each worker checks its stores; health is NOT_SERVING while a check fails.
    health_check_seconds: float = 5.0

    # Codes and tickets.
    code_ttl_seconds: int = 300
    code_max_attempts: int = 5
    ticket_ttl_seconds: int = 600
    code_cooldown_seconds: int = 60
    code_per_destination_hour: int = 5
    code_per_destination_day: int = 10
    code_per_ip_hour: int = 30
    code_per_client_minute: int = 600
    code_failures_per_destination_hour: int = 30
    code_verify_per_ip_hour: int = 120
    code_verify_per_client_minute: int = 3000
    allowed_country_codes: tuple[str, ...] = ("86",)
    # Registrations that reach the login-name check, per end-user IP and per client.
    login_name_checks_per_ip_hour: int = 60
    login_name_checks_per_client_minute: int = 600
    # Account lifecycle.
    phone_change_cooling_off_seconds: int = 86400
    recovery_per_phone_day: int = 5
    recovery_per_ip_hour: int = 20
    recovery_per_client_minute: int = 600
    # Manual review (issue 12): the queue's SLA (48 h: two working days, no holiday
    # calendar) and whether an approval needs a second, different reviewer.
    review_sla_seconds: int = 172800
    review_second_approval: bool = False
    # TOTP second factor: the issuer name authenticator apps show, and the MFA ticket's life.
    totp_issuer: str = "小禾企服网"
    mfa_ticket_ttl_seconds: int = 300

    # SMS-pumping defence (SECURITY X3; docs/operator-guide.d/pumping.md). Ranges are a
    # country code, a hyphen and leading national digits (86-170), or a country code alone.
    pumping_denied_ranges: tuple[str, ...] = ()
    pumping_budgeted_ranges: tuple[str, ...] = ("86-162", "86-165", "86-167", "86-170", "86-171")
    pumping_range_per_hour: int = 60
    pumping_range_per_day: int = 300
    pumping_prefix_per_hour: int = 60
    pumping_prefix_per_day: int = 300
    pumping_window_seconds: int = 3600
    pumping_min_sent: int = 20
    pumping_min_ratio: float = 0.2
    pumping_block_seconds: int = 43200
    pumping_failed_receipt_weight: int = 1

    # Delivery.
    sms_provider: str = "file"
    email_provider: str = "file"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_sender: str = "noreply@xiaohe.example"
    smtp_username: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_starttls: bool = False
    sms_gateway_url: str = ""
    sms_gateway_key_id: str = ""
    sms_gateway_secret: str = field(default="", repr=False)
    delivery_max_attempts: int = 8
    delivery_backoff_base_seconds: float = 1.0

    # -- HTTP callback listener and delivery receipts (issue 10) --
    # host:port of the HTTP listener for SMS platforms' receipt pushes; empty: off.
    callback_listen: str = ""
    # The largest callback body accepted, in bytes; larger ones get 413.
    callback_max_body_bytes: int = 1024 * 1024
    # Per-platform secret in the callback URL (or header); a platform's routes exist only
    # when its secret is set. Optional allowlists of source networks (CIDRs).
    callback_aliyun_secret: str = field(default="", repr=False)
    callback_aliyun_allowed_cidrs: tuple[str, ...] = ()
    callback_tencent_secret: str = field(default="", repr=False)
    callback_tencent_allowed_cidrs: tuple[str, ...] = ()
    # -- end callback listener --
    # SMS platforms and failover (issue 10 §3; docs/operator-guide.d/providers.md).
    # Ordered SMS providers (file, http, aliyun, tencent); empty means `sms_provider` alone.
    sms_providers: tuple[str, ...] = ()
    # After a request without an answer to a platform without idempotency: assume_sent | retry.
    sms_unknown_outcome: str = "assume_sent"
    sms_breaker_failures: int = 5
    sms_breaker_cooldown_seconds: float = 60.0
    sms_connect_timeout_seconds: float = 3.0
    sms_read_timeout_seconds: float = 5.0
    aliyun_sms_access_key_id: str = ""
    aliyun_sms_access_key_secret: str = field(default="", repr=False)
    aliyun_sms_region: str = "cn-hangzhou"
    aliyun_sms_endpoint: str = "https://dysmsapi.aliyuncs.com"
    aliyun_sms_sign_name: str = ""
    # PURPOSE=VALUE lists: template per purpose, and sign names that differ from the default.
    aliyun_sms_templates: str = ""
    aliyun_sms_sign_names: str = ""
    tencent_sms_secret_id: str = ""
    tencent_sms_secret_key: str = field(default="", repr=False)
    tencent_sms_sdk_app_id: str = ""
    tencent_sms_region: str = "ap-guangzhou"
    tencent_sms_endpoint: str = "https://sms.tencentcloudapi.com"
    tencent_sms_sign_name: str = ""
    tencent_sms_templates: str = ""
    tencent_sms_sign_names: str = ""

    # Passwords, login and tokens.
    argon2_memory_kib: int = 19456
    argon2_time_cost: int = 2
    argon2_parallelism: int = 1
    password_hash_threads: int = 0
    password_hash_queue: int = 64
    login_failures_per_account_hour: int = 100
    login_failures_per_account_ip: int = 10
    lock_base_seconds: int = 60
    lock_max_seconds: int = 3600
    access_token_ttl_seconds: int = 600
    refresh_idle_seconds: int = 86400
    refresh_absolute_seconds: int = 7 * 86400
    token_issuer: str = "https://identity.xiaohe.example"  # noqa: S105 - an issuer URL
    default_audience: str = "xiaohe-platform"
    token_leeway_seconds: float = 5.0
    # The revocation feed business systems watch (DirectoryService.WatchRevocations):
    # how long a reconnecting watcher can be behind and still catch up, how often an
    # idle watch gets a heartbeat, and how many watches one client may hold per worker.
    revocation_feed_retention_seconds: int = 3600
    revocation_feed_heartbeat_seconds: float = 5.0
    revocation_watchers_per_client: int = 16

    # Recycled numbers (二次号): the number-status check before reset and recovery codes
    # (flows/recycled_numbers.py). Off ("") or "aliyun" (DescribePhoneTwiceTelVerify).
    number_status_provider: str = ""
    number_status_access_key_id: str = ""
    number_status_access_key_secret: str = field(default="", repr=False)
    number_status_auth_code: str = field(default="", repr=False)
    # Empty: the SDK's own endpoint; otherwise https://host[:port] (http:// only to loopback).
    number_status_endpoint: str = ""
    number_status_region: str = "cn-hangzhou"
    number_status_min_binding_age_days: int = 180
    number_status_timeout_seconds: float = 2.0
    # What an unknown answer (or a failed check) means: send the code (fail open) or not.
    number_status_send_when_unknown: bool = True

    # Identity documents and real-name verification (issue 12; operator guide, 实名认证).
    # The largest document accepted, in bytes; where documents are kept (encrypted):
    # empty is <data_dir>/documents.
    document_max_bytes: int = 10 * 1024 * 1024
    document_dir: str = ""
    # Who vouches for a real name: rules | http (identity-check service) | review.
    real_name_verifier: str = "rules"
    # On: submissions that pass only the rules go to manual review (IN_REVIEW), not level 1.
    real_name_review: bool = False
    real_name_min_age: int = 18
    real_name_http_url: str = ""
    real_name_http_app_key: str = ""
    real_name_http_app_secret: str = field(default="", repr=False)
    real_name_http_timeout_seconds: float = 5.0
    # -- issue 14: consent and export --
    # ExportMyData per account: at most this many exports a day (a rolling 24 h window).
    export_per_account_day: int = 5
    # -- end consent and export --

    # -- issue 14: retention (flows/retention.py; docs/privacy.md lists every kind) --
    # How often each worker runs the retention sweep; 0: never (run `retention sweep`).
    retention_sweep_seconds: float = 3600.0
    # Rows deleted per transaction.
    retention_batch_size: int = 500
    # Ended sessions (and their refresh tokens), counted from the end: a network log.
    retention_session_days: int = 180
    # Sent, failed and withheld outbox rows with their delivery receipts.
    retention_outbox_days: int = 7
    # Decided review cases with their decisions and notes, counted from the decision.
    retention_review_case_days: int = 180
    # Identity documents no submission or case names, counted from the upload.
    retention_document_days: int = 30
    # Document files without a row (an interrupted upload), counted from the write.
    retention_orphan_file_hours: int = 24
    # Audit log, disclosure log and phone holders' consents: at least 180 days
    # (Cybersecurity Law Art. 21).
    retention_log_days: int = 180
    # -- end retention --
    # -- issue 14: rights requests --
    # A directory of working-day calendar files (<year>.json, as shipped in
    # privacy/data/calendar) that add years or replace shipped ones; empty: shipped only.
    privacy_calendar_dir: str = ""
    # How often each worker recounts the overdue rights requests for its metrics.
    privacy_overdue_refresh_seconds: float = 60.0
    # -- end rights requests --
    # -- issue 14: deactivation --
    # The cooling-off period after Deactivate (15 days), in which signing in cancels it;
    # the obligations that refuse a deactivation while the account has any
    # (open_review_cases, pending_real_name); how often each worker completes the due ones.
    deactivation_cooling_off_seconds: int = 15 * 86400
    deactivation_blocking_obligations: tuple[str, ...] = ("open_review_cases",)
    deactivation_sweep_seconds: float = 300.0
    # -- end deactivation --

    def __repr__(self) -> str:
        """Every setting, with secrets hidden and passwords in URLs masked."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS:
                shown = HIDDEN if value else "''"
            elif f.name in URL_FIELDS:
                shown = repr(_mask_url_password(value))
            else:
                shown = repr(value)
            parts.append(f"{f.name}={shown}")
        return f"Settings({', '.join(parts)})"

    @property
    def effective_sms_providers(self) -> tuple[str, ...]:
        """The SMS providers in failover order: `sms_providers`, else `sms_provider` alone."""
        return self.sms_providers or (self.sms_provider,)

    @property
    def embedded_store(self) -> bool:
        """Whether the durable store is SQLite on this machine (dev and single-host installs).

        Only then does the server create a key ring and a bootstrap client by itself;
        with an external database every replica must share one explicit key ring, and
        clients are created through the CLI (SECURITY F5).
        """
        return self.effective_database_url.startswith("sqlite")

    @property
    def effective_database_url(self) -> str:
        """The configured database URL, or SQLite in the data dir (the embedded default)."""
        if self.database_url:
            return driver_url(self.database_url)
        return f"sqlite:///{(self.data_dir / 'identity.db').resolve()}"

    @property
    def effective_keyring_file(self) -> Path:
        """The key ring file: the setting, or `keyring.json` in the data dir."""
        return Path(self.keyring_file) if self.keyring_file else self.data_dir / "keyring.json"

    @property
    def effective_workers(self) -> int:
        """Worker processes: the setting, or one per core."""
        return self.workers or (os.cpu_count() or 1)


_SECRET_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(Settings) if not f.repr)
"""Settings whose values never appear in a repr, a log line or an error message."""


def _mask_url_password(url: str) -> str:
    """The URL with its password (if any) replaced by `***`."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return HIDDEN
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}


def _coerce(name: str, kind: Any, value: Any) -> Any:
    """Turn a TOML or environment value into the field's type, or raise SettingsError."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _BOOL_TRUE:
                return True
            if text in _BOOL_FALSE:
                return False
            raise ValueError(value)
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            return float(value)
        if kind is Path:
            return Path(str(value))
        if kind == tuple[str, ...]:
            items = value if isinstance(value, list) else str(value).split(",")
            return tuple(str(i).strip().lstrip("+") for i in items if str(i).strip())
        return str(value)
    except (TypeError, ValueError):
        shown = HIDDEN if name in _SECRET_FIELDS | URL_FIELDS else repr(value)
        raise SettingsError(f"{ENV_PREFIX}{name.upper()}: cannot read {shown} as {kind}") from None


def _validate(s: Settings) -> None:
    for name in ("listen", "metrics_listen"):
        value = getattr(s, name)
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise SettingsError(f"{ENV_PREFIX}{name.upper()}: expected host:port, got {value!r}")
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            if (
                host not in ("localhost", "")
                and not host.replace("-", "").replace(".", "").isalnum()
            ):
                raise SettingsError(f"{ENV_PREFIX}{name.upper()}: bad host in {value!r}") from None
    if s.workers < 0:
        raise SettingsError(
            f"{ENV_PREFIX}WORKERS: must be 0 (one per core) or more, got {s.workers}"
        )
    if s.database_url and not s.database_url.startswith(DATABASE_SCHEMES):
        raise SettingsError(f"{ENV_PREFIX}DATABASE_URL: use sqlite:// or postgresql://")
    if s.database_pool_size < 1:
        raise SettingsError(f"{ENV_PREFIX}DATABASE_POOL_SIZE: must be at least 1")
    if s.database_statement_timeout_ms < 0:
        raise SettingsError(
            f"{ENV_PREFIX}DATABASE_STATEMENT_TIMEOUT_MS: must be 0 (no limit) or more"
        )
    if s.redis_url and not s.redis_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(f"{ENV_PREFIX}REDIS_URL: use redis://, rediss:// or unix://")
    if s.redis_cluster and not s.redis_url.startswith(("redis://", "rediss://")):
        raise SettingsError(
            f"{ENV_PREFIX}REDIS_CLUSTER: needs REDIS_URL naming a node (redis:// or rediss://)"
        )
    if not 60 <= s.code_ttl_seconds <= 600:
        raise SettingsError(f"{ENV_PREFIX}CODE_TTL_SECONDS: must be between 60 and 600")
    if s.code_max_attempts < 1:
        raise SettingsError(f"{ENV_PREFIX}CODE_MAX_ATTEMPTS: must be at least 1")
    for name in ("sms_provider", "email_provider"):
        allowed = set(SMS_PROVIDERS) if name == "sms_provider" else {"file", "smtp"}
        if getattr(s, name) not in allowed:
            raise SettingsError(f"{ENV_PREFIX}{name.upper()}: one of {sorted(allowed)}")
    if "http" in s.effective_sms_providers and not s.sms_gateway_url:
        raise SettingsError(f"{ENV_PREFIX}SMS_GATEWAY_URL: required when SMS_PROVIDER=http")
    _validate_sms_platforms(s)
    _validate_real_name(s)
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        raise SettingsError(f"{ENV_PREFIX}TLS_CERT_FILE and TLS_KEY_FILE go together")
    if s.tls_client_ca_file and not s.tls_cert_file:
        raise SettingsError(f"{ENV_PREFIX}TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE")
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(s, name)
        if path and not os.access(path, os.R_OK):
            raise SettingsError(f"{ENV_PREFIX}{name.upper()}: cannot read {path}")
    if s.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise SettingsError(f"{ENV_PREFIX}LOG_LEVEL: one of DEBUG, INFO, WARNING, ERROR")
    if not 1024 <= s.max_message_bytes <= 4 * 1024 * 1024:
        raise SettingsError(f"{ENV_PREFIX}MAX_MESSAGE_BYTES: between 1024 and 4194304")
    if s.phone_change_cooling_off_seconds < 0:
        raise SettingsError(f"{ENV_PREFIX}PHONE_CHANGE_COOLING_OFF_SECONDS: must not be negative")
    if min(s.recovery_per_phone_day, s.recovery_per_ip_hour, s.recovery_per_client_minute) < 1:
        raise SettingsError(f"{ENV_PREFIX}RECOVERY_PER_*: must be at least 1")
    if not 60 <= s.review_sla_seconds <= 90 * 86400:
        raise SettingsError(f"{ENV_PREFIX}REVIEW_SLA_SECONDS: between 60 and 7776000")
    if not s.totp_issuer.strip() or len(s.totp_issuer) > 64 or ":" in s.totp_issuer:
        raise SettingsError(f"{ENV_PREFIX}TOTP_ISSUER: 1-64 characters, no colon")
    if not 30 <= s.mfa_ticket_ttl_seconds <= 900:
        raise SettingsError(f"{ENV_PREFIX}MFA_TICKET_TTL_SECONDS: between 30 and 900")
    if not 1 <= s.audit_checkpoint_seconds <= 86400:
        raise SettingsError(f"{ENV_PREFIX}AUDIT_CHECKPOINT_SECONDS: between 1 and 86400")
    if not 0.1 <= s.health_check_seconds <= 300:
        raise SettingsError(f"{ENV_PREFIX}HEALTH_CHECK_SECONDS: between 0.1 and 300")
    if not 0 < s.redis_op_timeout_seconds <= 30:
        raise SettingsError(f"{ENV_PREFIX}REDIS_OP_TIMEOUT_SECONDS: more than 0, at most 30")
    if not 0 <= s.token_leeway_seconds <= MAX_TOKEN_LEEWAY_SECONDS:
        raise SettingsError(
            f"{ENV_PREFIX}TOKEN_LEEWAY_SECONDS: between 0 and {MAX_TOKEN_LEEWAY_SECONDS:.0f}"
        )
    if not 1 <= s.revocation_feed_retention_seconds <= 7 * 86400:
        raise SettingsError(f"{ENV_PREFIX}REVOCATION_FEED_RETENTION_SECONDS: between 1 and 604800")
    if not 0.1 <= s.revocation_feed_heartbeat_seconds <= 60:
        raise SettingsError(f"{ENV_PREFIX}REVOCATION_FEED_HEARTBEAT_SECONDS: between 0.1 and 60")
    if not 1 <= s.revocation_watchers_per_client <= 10000:
        raise SettingsError(f"{ENV_PREFIX}REVOCATION_WATCHERS_PER_CLIENT: between 1 and 10000")
    _validate_transport_security(s)
    _validate_callbacks(s)
    _validate_pumping(s)
    _validate_number_status(s)
    _validate_retention(s)
    _validate_rights_requests(s)
    _validate_deactivation(s)  # issue 14: deactivation
    # -- issue 14: consent and export --
    if not 1 <= s.export_per_account_day <= 1000:
        raise SettingsError(f"{ENV_PREFIX}EXPORT_PER_ACCOUNT_DAY: between 1 and 1000")
    # -- end consent and export --


# -- issue 14: retention --

MIN_LOG_RETENTION_DAYS: Final = 180
"""Network logs are kept at least six months (Cybersecurity Law Art. 21)."""


def _validate_retention(s: Settings) -> None:
    """Sweep interval and batch, and every period; logs no shorter than six months."""
    if s.retention_sweep_seconds != 0 and not 60 <= s.retention_sweep_seconds <= 7 * 86400:
        raise SettingsError(f"{ENV_PREFIX}RETENTION_SWEEP_SECONDS: 0 (off) or 60 to 604800")
    if not 1 <= s.retention_batch_size <= 10000:
        raise SettingsError(f"{ENV_PREFIX}RETENTION_BATCH_SIZE: between 1 and 10000")
    if s.retention_log_days < MIN_LOG_RETENTION_DAYS or s.retention_session_days < (
        MIN_LOG_RETENTION_DAYS
    ):
        name = "LOG" if s.retention_log_days < MIN_LOG_RETENTION_DAYS else "SESSION"
        raise SettingsError(
            f"{ENV_PREFIX}RETENTION_{name}_DAYS: at least {MIN_LOG_RETENTION_DAYS} "
            "(logs are kept six months, Cybersecurity Law Art. 21)"
        )
    for name in ("outbox_days", "review_case_days", "document_days", "orphan_file_hours"):
        if not 1 <= getattr(s, f"retention_{name}") <= 36500:
            raise SettingsError(f"{ENV_PREFIX}RETENTION_{name.upper()}: between 1 and 36500")
    if s.retention_log_days > 36500 or s.retention_session_days > 36500:
        raise SettingsError(f"{ENV_PREFIX}RETENTION_*_DAYS: at most 36500")


# -- end retention --


# -- HTTP callback listener (issue 10) --

CALLBACK_SECRET_MIN_LENGTH: Final = 16
_URL_SAFE: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def _validate_callbacks(s: Settings) -> None:
    """The callback listener's address, body cap, secrets and allowlists.

    A secret travels in the URL the platform calls, so it must be URL-safe and long
    enough not to be guessed; plaintext on a routable address is refused as for gRPC.
    """
    if s.callback_listen:
        _check_host_port("callback_listen", s.callback_listen)
        host = s.callback_listen.rpartition(":")[0]
        if not (s.tls_cert_file or s.allow_plaintext or is_loopback_host(host)):
            raise SettingsError(
                f"{ENV_PREFIX}CALLBACK_LISTEN: {s.callback_listen} is reachable from other "
                f"machines but no TLS certificate is set; set {ENV_PREFIX}TLS_CERT_FILE and "
                f"{ENV_PREFIX}TLS_KEY_FILE, or {ENV_PREFIX}ALLOW_PLAINTEXT=true behind a proxy "
                "that terminates TLS"
            )
    if not 1024 <= s.callback_max_body_bytes <= 8 * 1024 * 1024:
        raise SettingsError(f"{ENV_PREFIX}CALLBACK_MAX_BODY_BYTES: between 1024 and 8388608")
    for name in ("callback_aliyun_secret", "callback_tencent_secret"):
        secret = getattr(s, name)
        if secret and (len(secret) < CALLBACK_SECRET_MIN_LENGTH or not set(secret) <= _URL_SAFE):
            raise SettingsError(
                f"{ENV_PREFIX}{name.upper()}: at least {CALLBACK_SECRET_MIN_LENGTH} characters "
                "of A-Z a-z 0-9 - _ (it is part of a URL)"
            )
    for name in ("callback_aliyun_allowed_cidrs", "callback_tencent_allowed_cidrs"):
        for cidr in getattr(s, name):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()}: {cidr!r} is not a CIDR") from None


def _check_host_port(name: str, value: str) -> None:
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{ENV_PREFIX}{name.upper()}: expected host:port, got {value!r}")


# -- end callback listener --


# -- issue 14: deactivation --

DEACTIVATION_OBLIGATIONS = ("open_review_cases", "pending_real_name")
"""What `deactivation_blocking_obligations` may list (flows/deactivation.KNOWN_OBLIGATIONS)."""


def _validate_deactivation(s: Settings) -> None:
    if not 0 <= s.deactivation_cooling_off_seconds <= 365 * 86400:
        raise SettingsError(f"{ENV_PREFIX}DEACTIVATION_COOLING_OFF_SECONDS: between 0 and 31536000")
    unknown = set(s.deactivation_blocking_obligations) - set(DEACTIVATION_OBLIGATIONS)
    if unknown:
        raise SettingsError(
            f"{ENV_PREFIX}DEACTIVATION_BLOCKING_OBLIGATIONS: unknown {', '.join(sorted(unknown))};"
            f" known: {', '.join(DEACTIVATION_OBLIGATIONS)}"
        )
    if not 1 <= s.deactivation_sweep_seconds <= 86400:
        raise SettingsError(f"{ENV_PREFIX}DEACTIVATION_SWEEP_SECONDS: between 1 and 86400")


# -- end deactivation --


def _validate_pumping(s: Settings) -> None:
    """Number ranges parse, budgets are not negative, the watch's thresholds make sense."""
    for name in ("pumping_denied_ranges", "pumping_budgeted_ranges"):
        for pattern in getattr(s, name):
            try:
                NumberRange.parse(pattern)
            except ValueError as exc:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()}: {exc}") from None
    both = set(s.pumping_denied_ranges) & set(s.pumping_budgeted_ranges)
    if both:
        raise SettingsError(
            f"{ENV_PREFIX}PUMPING_DENIED_RANGES: {sorted(both)[0]} is also a budgeted range"
        )
    for name in (
        "pumping_range_per_hour",
        "pumping_range_per_day",
        "pumping_prefix_per_hour",
        "pumping_prefix_per_day",
    ):
        if getattr(s, name) < 0:
            raise SettingsError(f"{ENV_PREFIX}{name.upper()}: must not be negative")
    if not 60 <= s.pumping_window_seconds <= 86400:
        raise SettingsError(f"{ENV_PREFIX}PUMPING_WINDOW_SECONDS: between 60 and 86400")
    if s.pumping_min_sent < 1:
        raise SettingsError(f"{ENV_PREFIX}PUMPING_MIN_SENT: must be at least 1")
    if not 0.0 <= s.pumping_min_ratio <= 1.0:
        raise SettingsError(f"{ENV_PREFIX}PUMPING_MIN_RATIO: between 0 and 1")
    if not 60 <= s.pumping_block_seconds <= 30 * 86400:
        raise SettingsError(f"{ENV_PREFIX}PUMPING_BLOCK_SECONDS: between 60 and 2592000")
    if not 0 <= s.pumping_failed_receipt_weight <= 100:
        raise SettingsError(f"{ENV_PREFIX}PUMPING_FAILED_RECEIPT_WEIGHT: between 0 and 100")


def _validate_number_status(s: Settings) -> None:
    """The number-status check: a known provider, its credentials, a TLS endpoint (X2)."""
    name = f"{ENV_PREFIX}NUMBER_STATUS_"
    if s.number_status_provider not in ("", "aliyun"):
        raise SettingsError(f"{name}PROVIDER: empty (off) or aliyun")
    if s.number_status_min_binding_age_days < 0:
        raise SettingsError(f"{name}MIN_BINDING_AGE_DAYS: must not be negative")
    if not 0 < s.number_status_timeout_seconds <= 10:
        raise SettingsError(f"{name}TIMEOUT_SECONDS: more than 0, at most 10")
    if not s.number_status_provider:
        return
    for part in ("access_key_id", "access_key_secret", "auth_code"):
        if not getattr(s, f"number_status_{part}"):
            raise SettingsError(f"{name}{part.upper()}: required with {name}PROVIDER=aliyun")
    if s.number_status_endpoint:
        _check_secret_url(f"{name}ENDPOINT", s.number_status_endpoint, "https://HOST[:PORT]")


def _validate_real_name(s: Settings) -> None:
    """Document size cap, the verifier and its service (TLS unless on loopback)."""
    if not 1024 <= s.document_max_bytes <= 64 * 1024 * 1024:
        raise SettingsError(f"{ENV_PREFIX}DOCUMENT_MAX_BYTES: between 1024 and 67108864")
    if s.real_name_verifier not in ("rules", "http", "review"):
        raise SettingsError(f"{ENV_PREFIX}REAL_NAME_VERIFIER: one of rules, http, review")
    if not 16 <= s.real_name_min_age <= 18:
        raise SettingsError(f"{ENV_PREFIX}REAL_NAME_MIN_AGE: between 16 and 18")
    if not 0 < s.real_name_http_timeout_seconds <= 60:
        raise SettingsError(f"{ENV_PREFIX}REAL_NAME_HTTP_TIMEOUT_SECONDS: more than 0, at most 60")
    if s.real_name_verifier == "http":
        for name in ("real_name_http_url", "real_name_http_app_key", "real_name_http_app_secret"):
            if not getattr(s, name):
                raise SettingsError(
                    f"{ENV_PREFIX}{name.upper()}: required when REAL_NAME_VERIFIER=http"
                )
        _check_secret_url(
            f"{ENV_PREFIX}REAL_NAME_HTTP_URL", s.real_name_http_url, "https://HOST[:PORT]/PATH"
        )


def _validate_transport_security(s: Settings) -> None:
    """Secrets travel only over TLS, and an external store has no generated keys (F5, X2)."""
    _check_listen_security(s)
    if not s.embedded_store and not s.keyring_file:
        raise SettingsError(
            f"{ENV_PREFIX}KEYRING_FILE: required with an external database, so that every "
            "replica signs and encrypts with the same keys; create it once with "
            "`xiaohe-identity keys init`"
        )
    if smtp_credentials_in_plaintext(s.smtp_username, s.smtp_password, s.smtp_starttls):
        raise SettingsError(
            f"{ENV_PREFIX}SMTP_STARTTLS: must be true when SMTP credentials are set "
            "(they are never sent in plaintext)"
        )
    if s.sms_gateway_url:
        _check_secret_url(f"{ENV_PREFIX}SMS_GATEWAY_URL", s.sms_gateway_url, "https://HOST/...")


def _check_secret_url(setting: str, url: str, shape: str) -> None:
    """A URL that requests carrying secrets or personal data go to: TLS unless on loopback."""
    try:
        check = check_secret_url(url)
    except ValueError:
        raise SettingsError(f"{setting}: not a URL") from None
    if check == "not_http":
        raise SettingsError(f"{setting}: use {shape}")
    if check == "remote_http":
        raise SettingsError(f"{setting}: plain http:// only to a loopback address; use https://")


def _check_listen_security(s: Settings) -> None:
    """Refuse plaintext gRPC on an address other machines can reach, unless allowed (F5).

    Every call carries a client secret in its metadata, so a plaintext listener
    on a routable address hands it to anyone on the path. A service mesh that
    terminates TLS in a sidecar is the one legitimate exception:
    `XIAOHE_IDENTITY_ALLOW_PLAINTEXT=true` says so explicitly.
    """
    if s.tls_cert_file or s.allow_plaintext:
        return
    host = s.listen.rpartition(":")[0]
    if not is_loopback_host(host):
        raise SettingsError(
            f"{ENV_PREFIX}LISTEN: {s.listen} is reachable from other machines but no TLS "
            f"certificate is set; set {ENV_PREFIX}TLS_CERT_FILE and {ENV_PREFIX}TLS_KEY_FILE, "
            f"or {ENV_PREFIX}ALLOW_PLAINTEXT=true behind a mesh that terminates TLS"
        )


# -- SMS platforms and failover (issue 10 §3) ---------------------------------------

SMS_PROVIDERS: Final = ("file", "http", "aliyun", "tencent")
SMS_UNKNOWN_OUTCOMES: Final = ("assume_sent", "retry")


def _validate_sms_platforms(s: Settings) -> None:
    """The provider list, the breaker, and each configured platform's settings."""
    names = s.effective_sms_providers
    if any(n not in SMS_PROVIDERS for n in names) or len(set(names)) != len(names):
        raise SettingsError(f"{ENV_PREFIX}SMS_PROVIDERS: distinct names from {list(SMS_PROVIDERS)}")
    if s.sms_unknown_outcome not in SMS_UNKNOWN_OUTCOMES:
        raise SettingsError(f"{ENV_PREFIX}SMS_UNKNOWN_OUTCOME: one of {list(SMS_UNKNOWN_OUTCOMES)}")
    if s.sms_breaker_failures < 1 or s.sms_breaker_cooldown_seconds <= 0:
        raise SettingsError(f"{ENV_PREFIX}SMS_BREAKER_*: failures >= 1, cool-down > 0")
    if not 0 < s.sms_connect_timeout_seconds <= 30 or not 0 < s.sms_read_timeout_seconds <= 30:
        raise SettingsError(f"{ENV_PREFIX}SMS_*_TIMEOUT_SECONDS: more than 0, at most 30")
    if "aliyun" in names:
        _require(s, "aliyun_sms_access_key_id", "aliyun_sms_access_key_secret")
        _require(s, "aliyun_sms_sign_name", "aliyun_sms_templates")
    if "tencent" in names:
        _require(s, "tencent_sms_secret_id", "tencent_sms_secret_key", "tencent_sms_sdk_app_id")
        _require(s, "tencent_sms_sign_name", "tencent_sms_templates")
    for platform in ("aliyun", "tencent"):
        for kind in ("templates", "sign_names"):
            name = f"{platform}_sms_{kind}"
            try:
                purposes = parse_purpose_map(getattr(s, name))
            except ValueError as exc:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()}: {exc}") from None
            unknown = sorted(set(purposes) - set(PURPOSES) - set(NOTICE_KINDS) - {NOTICE_PURPOSE})
            if unknown:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()}: unknown purpose {unknown[0]}")
        endpoint = f"{platform}_sms_endpoint"
        try:
            Endpoint.parse(getattr(s, endpoint))
        except ValueError as exc:
            raise SettingsError(f"{ENV_PREFIX}{endpoint.upper()}: {exc}") from None


def _require(s: Settings, *names: str) -> None:
    for name in names:
        if not getattr(s, name):
            raise SettingsError(f"{ENV_PREFIX}{name.upper()}: required for this SMS provider")


# -- issue 14: rights requests --


def _validate_rights_requests(s: Settings) -> None:
    """The refresh interval, and every calendar file of the operator's directory."""
    if not 1 <= s.privacy_overdue_refresh_seconds <= 86400:
        raise SettingsError(f"{ENV_PREFIX}PRIVACY_OVERDUE_REFRESH_SECONDS: between 1 and 86400")
    if s.privacy_calendar_dir:
        try:
            WorkingCalendar.load(s.privacy_calendar_dir)
        except CalendarError as exc:
            raise SettingsError(f"{ENV_PREFIX}PRIVACY_CALENDAR_DIR: {exc}") from None


# -- end rights requests --


def load_settings(
    env: Mapping[str, str] | None = None, config_file: str | Path | None = None
) -> Settings:
    """Build Settings from defaults, an optional TOML file, then the environment."""
    env = os.environ if env is None else env
    hints = get_type_hints(Settings)
    names = {f.name for f in dataclasses.fields(Settings)}
    values: dict[str, Any] = {}
    path = config_file or env.get(f"{ENV_PREFIX}CONFIG_FILE", "")
    if path:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise SettingsError(
                f"{ENV_PREFIX}CONFIG_FILE: cannot read {path}: {exc.strerror}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(
                f"{ENV_PREFIX}CONFIG_FILE: {path} is not valid TOML: {exc}"
            ) from None
        for key, value in data.items():
            if key not in names:
                raise SettingsError(f"{path}: unknown setting {key!r}")
            values[key] = _coerce(key, hints[key], value)
        values["config_file"] = str(path)
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in CLIENT_SIDE_NAMES:
            continue
        if name not in names:
            raise SettingsError(f"{key}: unknown setting")
        values[name] = _coerce(name, hints[name], value)
    settings = Settings(**values)
    _validate(settings)
    return settings


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy of settings with some fields replaced (for tests and the CLI)."""
    return dataclasses.replace(settings, **changes)


__all__ = [
    "CLIENT_SIDE_NAMES",
    "ENV_PREFIX",
    "SMS_PROVIDERS",
    "SMS_UNKNOWN_OUTCOMES",
    "Settings",
    "SettingsError",
    "load_settings",
    "with_overrides",
]
