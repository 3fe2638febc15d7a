"""Wiring: builds each service of one worker process from Settings, lazily, once.

Nothing here holds logic; it decides which implementation serves which
Protocol (the Synapse `HomeServer.get_x()` pattern, as cached properties).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Collection
from functools import cached_property
from pathlib import Path

from xiaohe.identity.server.accounts.repository import SqlAccountRepository
from xiaohe.identity.server.accounts.service import AccountService
from xiaohe.identity.server.audit.log import AuditLog
from xiaohe.identity.server.audit.pruning import AuditPruning
from xiaohe.identity.server.callers.registry import ClientRegistry
from xiaohe.identity.server.clock import Clock, SystemClock
from xiaohe.identity.server.codes.models import CodePolicy
from xiaohe.identity.server.codes.service import CodeService
from xiaohe.identity.server.codes.tickets import TicketService
from xiaohe.identity.server.config import Settings
from xiaohe.identity.server.credentials.hasher import Argon2Parameters, PasswordHasher
from xiaohe.identity.server.credentials.lockout import LockoutPolicy, LoginThrottle
from xiaohe.identity.server.credentials.operators import OperatorPasswords
from xiaohe.identity.server.credentials.passwords import CommonPasswords, PasswordPolicy
from xiaohe.identity.server.credentials.reauth import PasswordCheck
from xiaohe.identity.server.crypto.blind import BlindIndex
from xiaohe.identity.server.crypto.envelope import DataKeyCipher
from xiaohe.identity.server.crypto.keyring import KeyRing
from xiaohe.identity.server.deactivation.pending_keys import PendingKeys
from xiaohe.identity.server.deactivation.repository import SqlDeactivations
from xiaohe.identity.server.deactivation.service import DeactivationRecords
from xiaohe.identity.server.delivery.dispatcher import Dispatcher
from xiaohe.identity.server.delivery.failover import FailoverProvider
from xiaohe.identity.server.delivery.lifecycle import DeliveryLog
from xiaohe.identity.server.delivery.notices import Notices
from xiaohe.identity.server.delivery.outbox import Outbox
from xiaohe.identity.server.delivery.platforms import PlatformTemplates, parse_purpose_map
from xiaohe.identity.server.delivery.providers import (
    HttpSmsGatewayProvider,
    JsonlFileProvider,
    Provider,
    SmtpProvider,
)
from xiaohe.identity.server.delivery.receipts import DeliveryReceipts, FailedReceiptHook
from xiaohe.identity.server.delivery.retention import FinishedMessages
from xiaohe.identity.server.delivery.templates import CHANNEL_SMS, compose_code_message
from xiaohe.identity.server.flows.channels import ChannelFlow
from xiaohe.identity.server.flows.code_recipients import RegisteredRecipients
from xiaohe.identity.server.flows.consent import ConsentFlow, PolicyUpdateNotices
from xiaohe.identity.server.flows.deactivation import (
    OPEN_REVIEW_CASES,
    PENDING_REAL_NAME,
    DeactivationFlow,
    Obligation,
)
from xiaohe.identity.server.flows.directory import DirectoryFlow
from xiaohe.identity.server.flows.export import ExportFlow
from xiaohe.identity.server.flows.login import ActiveSubjects, LoginFlow
from xiaohe.identity.server.flows.passwords import PasswordFlow
from xiaohe.identity.server.flows.phone_change import PhoneChangeFlow
from xiaohe.identity.server.flows.realname import RealNameFlow
from xiaohe.identity.server.flows.recovery import RecoveryFlow
from xiaohe.identity.server.flows.recycled_numbers import NumberStatusGuard, RecycledNumberFlow
from xiaohe.identity.server.flows.registration import RegistrationFlow
from xiaohe.identity.server.flows.retention import RetentionKind, RetentionSweep
from xiaohe.identity.server.flows.review import (
    CaseApplier,
    CaseQueue,
    RealNameApplier,
    ReviewDocuments,
    ReviewFlow,
)
from xiaohe.identity.server.flows.rights_requests import RightsRequestFlow
from xiaohe.identity.server.flows.totp import TotpFlow
from xiaohe.identity.server.observability.metrics import Metrics
from xiaohe.identity.server.privacy.calendar import WorkingCalendar
from xiaohe.identity.server.privacy.consents import ConsentLedger
from xiaohe.identity.server.privacy.disclosures import DisclosureLog
from xiaohe.identity.server.privacy.policies import PolicyStore
from xiaohe.identity.server.privacy.requests import RightsRequests
from xiaohe.identity.server.privacy.retention import ExpiredDisclosures
from xiaohe.identity.server.ratelimit.callers import CallerBudget, CallerLimits
from xiaohe.identity.server.ratelimit.limiter import SlidingWindowLimiter
from xiaohe.identity.server.ratelimit.prefix_watch import PrefixWatch
from xiaohe.identity.server.ratelimit.prefixes import PumpingPolicy, parse_ranges
from xiaohe.identity.server.ratelimit.pumping import BlockReporter
from xiaohe.identity.server.realname.documents import DocumentService, FileDocumentStore
from xiaohe.identity.server.realname.retention import (
    HolderConsents,
    OrphanDocumentFiles,
    UnreferencedDocuments,
)
from xiaohe.identity.server.realname.submissions import SubmissionStore
from xiaohe.identity.server.realname.verifiers import (
    HttpVerifier,
    HttpVerifierConfig,
    ReviewVerifier,
    RuleVerifier,
    Verifier,
)
from xiaohe.identity.server.review.cases import ReviewCases
from xiaohe.identity.server.review.models import CaseKind
from xiaohe.identity.server.review.retention import DecidedCases, referenced_documents
from xiaohe.identity.server.review.roles import OperatorRoles
from xiaohe.identity.server.sessions.feed import RevocationFeed
from xiaohe.identity.server.sessions.models import SessionLifetimes
from xiaohe.identity.server.sessions.repository import SqlSessionRepository
from xiaohe.identity.server.sessions.retention import EndedSessions
from xiaohe.identity.server.sessions.revocations import RevocationList
from xiaohe.identity.server.sessions.service import SessionService
from xiaohe.identity.server.sessions.tokens import AccessTokenIssuer, AccessTokenValidator
from xiaohe.identity.server.shared.pseudonyms import Pseudonyms
from xiaohe.identity.server.storage.database import Database
from xiaohe.identity.server.storage.group_commit import GroupCommit
from xiaohe.identity.server.storage.redis import (
    BoundedRedis,
    BoundedRedisCluster,
    bounded_client,
    bounded_cluster_client,
)
from xiaohe.identity.server.totp.repository import SqlTotpRepository
from xiaohe.identity.server.totp.service import TotpService
from xiaohe.identity.server.totp.tickets import MfaTickets

log = logging.getLogger("xiaohe.identity.container")

KEYRING_RELOAD_SECONDS = 30.0
CHECKPOINT_SECONDS = 1.0
"""How often a worker copies the SQLite log into the database file (storage/database.py)."""


class Container:
    """All services of one worker, built on first use."""

    def __init__(
        self,
        settings: Settings,
        *,
        redis_url: str,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.clock: Clock = clock or SystemClock()
        self._metrics = metrics
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    @cached_property
    def metrics(self) -> Metrics:
        """Prometheus metrics of this process."""
        return self._metrics or Metrics.in_memory()

    @cached_property
    def database(self) -> Database:
        """The SQL store."""
        settings = self.settings
        return Database.from_url(
            settings.effective_database_url,
            pool_size=settings.database_pool_size,
            statement_timeout_ms=settings.database_statement_timeout_ms,
        )

    @cached_property
    def redis(self) -> BoundedRedis | BoundedRedisCluster:
        """The Redis client: every operation bounded, failing fast while Redis is unreachable."""
        timeout = self.settings.redis_op_timeout_seconds
        if self.settings.redis_cluster:
            return bounded_cluster_client(self.redis_url, timeout)
        return bounded_client(self.redis_url, timeout)

    @cached_property
    def keyring(self) -> KeyRing:
        """Master, index and signing keys."""
        return open_keyring(self.settings, self.clock)

    @cached_property
    def cipher(self) -> DataKeyCipher:
        """Envelope encryption under the key ring."""
        return DataKeyCipher(self.keyring)

    @cached_property
    def clients(self) -> ClientRegistry:
        """API clients and their grants."""
        return ClientRegistry(self.database, self.clock)

    @cached_property
    def group_commit(self) -> GroupCommit:
        """New outbox rows and delivery outcomes of concurrent requests outside a unit of
        work: one transaction per batch (the audit log commits its own batches)."""
        return GroupCommit(self.database)

    @cached_property
    def audit(self) -> AuditLog:
        """The hash-chained audit log."""
        return AuditLog(self.database, self.clock, self.keyring.audit_keys)

    @cached_property
    def providers(self) -> dict[str, Provider]:
        """Delivery providers by channel."""
        s = self.settings
        outbox_dir = s.data_dir / "outbox"
        email: Provider
        sms = sms_provider(s, self.clock, self.metrics)
        if s.email_provider == "smtp":
            email = SmtpProvider(
                s.smtp_host,
                s.smtp_port,
                s.smtp_sender,
                s.smtp_username,
                s.smtp_password,
                s.smtp_starttls,
            )
        else:
            email = JsonlFileProvider(outbox_dir / "email.jsonl", self.clock)
        return {"SMS": sms, "EMAIL": email}

    @cached_property
    def dispatcher(self) -> Dispatcher:
        """Sends queued messages through the providers."""
        s = self.settings
        return Dispatcher(
            self.database,
            self.cipher,
            self.providers,
            self.clock,
            max_attempts=s.delivery_max_attempts,
            backoff_base=s.delivery_backoff_base_seconds,
            metrics=self.metrics,
            unknown_outcome=s.sms_unknown_outcome,
            lease_seconds=sms_lease_seconds(s),
            writes=self.group_commit,
        )

    @cached_property
    def outbox(self) -> Outbox:
        """The durable queue of outgoing messages."""
        return Outbox(
            self.database,
            self.cipher,
            self.clock,
            hand_off=self.dispatcher.hand_off,
            lease_seconds=self.dispatcher.lease_seconds,
            recipient_index=self.recipient_index,  # issue 14: export
            writes=self.group_commit,
        )

    # -- delivery receipts (issue 10) --

    @cached_property
    def failed_receipts(self) -> FailedReceiptHook | None:
        """Told of failed or expired SMS receipts: the SMS-pumping watch counts them."""
        return self.prefix_watch

    @cached_property
    def receipts(self) -> DeliveryReceipts:
        """Records delivery receipts on outbox rows."""
        return DeliveryReceipts(
            self.database, self.clock, metrics=self.metrics, on_failed=self.failed_receipts
        )

    @cached_property
    def delivery_log(self) -> DeliveryLog:
        """Message lifecycles and delivery figures for operators."""
        return DeliveryLog(self.database, self.clock)

    # -- end delivery receipts --

    @cached_property
    def code_policy(self) -> CodePolicy:
        """Code TTLs and limits from settings."""
        return code_policy(self.settings)

    @cached_property
    def codes(self) -> CodeService:
        """Issues and verifies one-time codes."""
        return CodeService(
            redis=self.redis,
            policy=self.code_policy,
            hmac_key=self.keyring.code_hmac_key,
            clock=self.clock,
            queue=self.outbox,
            compose=compose_code_message,
            recipient_filter=RegisteredRecipients(self.accounts, self.number_status_guard),
            metrics=self.metrics,
            audit=self.audit,
            pumping=self.pumping_policy,
            block_events=self.block_reporter,
        )

    # --- SMS-pumping defence (SECURITY X3) ---------------------------------------

    @cached_property
    def pumping_policy(self) -> PumpingPolicy:
        """Denied and budgeted ranges, prefix budgets and the conversion watch, from settings."""
        return pumping_policy(self.settings)

    @cached_property
    def block_reporter(self) -> BlockReporter:
        """Logs and counts prefixes throttled by the conversion watch."""
        return BlockReporter(self.metrics)

    @cached_property
    def prefix_watch(self) -> PrefixWatch:
        """Failed receipts into the conversion watch (`on_failed`); list and lift prefix blocks."""
        return PrefixWatch(
            self.redis,
            self.clock,
            self.pumping_policy,
            reporter=self.block_reporter,
            metrics=self.metrics,
        )

    # ------------------------------------------------------------------------------

    @cached_property
    def tickets(self) -> TicketService:
        """Consumes verification tickets for the flow services."""
        return TicketService(
            redis=self.redis,
            hmac_key=self.keyring.code_hmac_key,
            clock=self.clock,
            policy=self.code_policy,
            audit=self.audit,
        )

    @cached_property
    def blind_index(self) -> BlindIndex:
        """Keyed lookups of normalised identifiers."""
        return BlindIndex(self.keyring.blind_index_key)

    @cached_property
    def policies(self) -> PolicyStore:
        """Privacy policy versions and consent records."""
        return PolicyStore(self.database, self.clock)

    @cached_property
    def hasher(self) -> PasswordHasher:
        """Argon2id in a bounded thread pool."""
        s = self.settings
        return PasswordHasher(
            Argon2Parameters(
                memory_cost=s.argon2_memory_kib,
                time_cost=s.argon2_time_cost,
                parallelism=s.argon2_parallelism,
            ),
            max_workers=s.password_hash_threads or (os.cpu_count() or 1),
            max_queue=s.password_hash_queue,
        )

    @cached_property
    def accounts(self) -> AccountService:
        """Accounts, identifiers and encrypted personal data."""
        return AccountService(
            repository=SqlAccountRepository(self.database),
            uow=self.database,
            cipher=self.cipher,
            master_keys=self.keyring,
            blind_index=self.blind_index,
            clock=self.clock,
        )

    @cached_property
    def consents(self) -> ConsentLedger:
        """Who accepted which policy version, when."""
        return ConsentLedger(self.database, self.clock)

    @cached_property
    def notices(self) -> Notices:
        """Security notices through the outbox."""
        return Notices(self.outbox, self.clock)

    @cached_property
    def password_policy(self) -> PasswordPolicy:
        """Length, common passwords and context words."""
        return PasswordPolicy(CommonPasswords.load())

    @cached_property
    def rate_limiter(self) -> SlidingWindowLimiter:
        """The sliding-window limiter on Redis that the flows' own limits share."""
        return SlidingWindowLimiter(self.redis)

    @cached_property
    def caller_limits(self) -> CallerLimits:
        """Per-IP and per-client windows, IPs keyed by their code-HMAC pseudonym."""
        return CallerLimits(self.rate_limiter, Pseudonyms(self.keyring.code_hmac_key).ip)

    @cached_property
    def registration(self) -> RegistrationFlow:
        """The registration flow."""
        s = self.settings
        return RegistrationFlow(
            uow=self.database,
            accounts=self.accounts,
            policies=self.policies,
            consents=self.consents,
            tickets=self.tickets,
            password_policy=self.password_policy,
            hasher=self.hasher,
            notices=self.notices,
            clock=self.clock,
            allowed_country_codes=s.allowed_country_codes,
            audit=self.audit,
            name_checks=self.caller_limits,
            name_check_budget=CallerBudget(
                per_ip_hour=s.login_name_checks_per_ip_hour,
                per_client_minute=s.login_name_checks_per_client_minute,
            ),
        )

    @cached_property
    def consent(self) -> ConsentFlow:
        """Accepting the current privacy policy."""
        return ConsentFlow(
            uow=self.database,
            accounts=self.accounts,
            policies=self.policies,
            consents=self.consents,
            clock=self.clock,
            audit=self.audit,
        )

    # -- the directory (issue 13) ---------------------------------------------------------

    @cached_property
    def disclosures(self) -> DisclosureLog:
        """The disclosure log of identity fields released to clients."""
        return DisclosureLog(self.database, self.clock)

    @cached_property
    def directory(self) -> DirectoryFlow:
        """Identity fields for business systems, and the person's list of disclosures."""
        return DirectoryFlow(
            uow=self.database,
            accounts=self.accounts,
            disclosures=self.disclosures,
            clients=self.clients,
            audit=self.audit,
        )

    # -- identity documents and real-name verification (issue 12) -----------------------

    @cached_property
    def documents(self) -> DocumentService:
        """Identity documents, encrypted in the document directory; every read audited."""
        s = self.settings
        directory = Path(s.document_dir) if s.document_dir else data_path(s, "documents")
        return DocumentService(
            database=self.database,
            store=FileDocumentStore(directory),
            cipher=self.cipher,
            account_keys=self.accounts,
            blind_index=self.blind_index,
            audit=self.audit,
            clock=self.clock,
        )

    @cached_property
    def real_name_verifier(self) -> Verifier:
        """The verifier `real_name_verifier` names."""
        s = self.settings
        if s.real_name_verifier == "http":
            config = HttpVerifierConfig(
                base_url=s.real_name_http_url,
                app_key=s.real_name_http_app_key,
                app_secret=s.real_name_http_app_secret,
                timeout_seconds=s.real_name_http_timeout_seconds,
            )
            return HttpVerifier(config, self.clock)
        if s.real_name_verifier == "review":
            return ReviewVerifier()
        return RuleVerifier()

    @cached_property
    def realname(self) -> RealNameFlow:
        """Documents and real-name submissions.

        Submissions that need a reviewer open a case in the review queue
        (`review_queue`); its decision comes back through `apply_review`.
        """
        s = self.settings
        return RealNameFlow(
            uow=self.database,
            accounts=self.accounts,
            documents=self.documents,
            submissions=self.submissions,
            consents=self.consents,
            policies=self.policies,
            tickets=self.tickets,
            verifier=self.real_name_verifier,
            clock=self.clock,
            audit=self.audit,
            review_queue=self.review_queue,
            review_rule_passed=s.real_name_review,
            min_age=s.real_name_min_age,
            max_document_bytes=s.document_max_bytes,
        )

    @cached_property
    def passwords(self) -> PasswordFlow:
        """Changing and resetting passwords."""
        return PasswordFlow(
            uow=self.database,
            accounts=self.accounts,
            sessions=self.sessions,
            tickets=self.tickets,
            password_check=self.password_check,
            password_policy=self.password_policy,
            hasher=self.hasher,
            notices=self.notices,
            clock=self.clock,
            allowed_country_codes=self.settings.allowed_country_codes,
            audit=self.audit,
            operator_passwords=self.operator_passwords,
        )

    @cached_property
    def operator_passwords(self) -> OperatorPasswords:
        """The 12-character rule for role holders' passwords (SECURITY P5)."""
        return OperatorPasswords(self.operator_roles)

    @cached_property
    def channels(self) -> ChannelFlow:
        """Binding phones and emails."""
        return ChannelFlow(
            uow=self.database,
            accounts=self.accounts,
            tickets=self.tickets,
            passwords=self.password_check,
            sessions=self.sessions,
            notices=self.notices,
            audit=self.audit,
            allowed_country_codes=self.settings.allowed_country_codes,
        )

    @cached_property
    def phone_change(self) -> PhoneChangeFlow:
        """Changing the bound phone."""
        return PhoneChangeFlow(
            uow=self.database,
            accounts=self.accounts,
            tickets=self.tickets,
            sessions=self.sessions,
            notices=self.notices,
            clock=self.clock,
            cooling_off_seconds=self.settings.phone_change_cooling_off_seconds,
            audit=self.audit,
            allowed_country_codes=self.settings.allowed_country_codes,
            review_queue=self.review_queue,
            documents=self.review_documents,
        )

    @cached_property
    def recovery(self) -> RecoveryFlow:
        """Account recovery: limits, cooling-off and grant lifetime from settings."""
        s = self.settings
        return RecoveryFlow(
            uow=self.database,
            accounts=self.accounts,
            tickets=self.tickets,
            notices=self.notices,
            audit=self.audit,
            clock=self.clock,
            caller_limits=self.caller_limits,
            phone_limiter=self.rate_limiter,
            pseudonym_key=self.keyring.code_hmac_key,
            per_phone_day=s.recovery_per_phone_day,
            per_ip_hour=s.recovery_per_ip_hour,
            per_client_minute=s.recovery_per_client_minute,
            cooling_off_seconds=s.phone_change_cooling_off_seconds,
            grant_ttl_seconds=s.ticket_ttl_seconds,
            allowed_country_codes=s.allowed_country_codes,
            review_queue=self.review_queue,
            documents=self.review_documents,
            sessions=self.sessions,
        )

    # -- manual review (issue 12) -------------------------------------------------------------

    @cached_property
    def review_cases(self) -> ReviewCases:
        """Review cases, their decisions and notes."""
        return ReviewCases(self.database, self.cipher, self.clock)

    @cached_property
    def operator_roles(self) -> OperatorRoles:
        """Operator roles (`review`) held by accounts."""
        return OperatorRoles(self.database, self.clock)

    @cached_property
    def review_queue(self) -> CaseQueue:
        """Opens review cases (the real-name flow's `ReviewQueue`)."""
        return CaseQueue(self.review_cases, self.audit)

    @cached_property
    def review_documents(self) -> ReviewDocuments | None:
        """The identity documents reviewers read and applicants name."""
        return self.documents

    @cached_property
    def review_appliers(self) -> dict[CaseKind, CaseApplier]:
        """What applies a final decision, per case kind."""
        return {
            CaseKind.PHONE_CHANGE: self.phone_change,
            CaseKind.RECOVERY: self.recovery,
            CaseKind.REAL_NAME: RealNameApplier(self.realname),
        }

    @cached_property
    def review(self) -> ReviewFlow:
        """The reviewers' work: queue, cases, documents, decisions, notes."""
        s = self.settings
        return ReviewFlow(
            uow=self.database,
            cases=self.review_cases,
            roles=self.operator_roles,
            documents=self.review_documents,
            appliers=self.review_appliers,
            audit=self.audit,
            clock=self.clock,
            sla_seconds=s.review_sla_seconds,
            second_approval=s.review_second_approval,
            sessions=self.sessions,
        )

    # -- end of manual review -------------------------------------------------------------------

    # -- recycled numbers (二次号) ----------------------------------------------------------

    @cached_property
    def recycled_numbers(self) -> RecycledNumberFlow:
        """Recycled-number reports (CarrierHookService.ReportRecycledNumber) and their handling."""
        return RecycledNumberFlow(
            uow=self.database,
            accounts=self.accounts,
            sessions=self.sessions,
            notices=self.notices,
            clock=self.clock,
            pseudonym_key=self.keyring.code_hmac_key,
            audit=self.audit,
            allowed_country_codes=self.settings.allowed_country_codes,
        )

    @cached_property
    def number_status_guard(self) -> NumberStatusGuard | None:
        """The number-status check before reset and recovery codes; None when it is off."""
        s = self.settings
        if s.number_status_provider != "aliyun":
            return None
        # Imported here: the platform SDKs take half a second to import, and only a
        # server configured for them needs them (every CLI command starts a process).
        from xiaohe.identity.server.delivery.number_status import AliyunNumberStatusCheck

        check = AliyunNumberStatusCheck(
            access_key_id=s.number_status_access_key_id,
            access_key_secret=s.number_status_access_key_secret,
            auth_code=s.number_status_auth_code,
            endpoint=s.number_status_endpoint,
            region=s.number_status_region,
            timeout_seconds=s.number_status_timeout_seconds,
        )
        return NumberStatusGuard(
            check=check,
            flow=self.recycled_numbers,
            clock=self.clock,
            pseudonym_key=self.keyring.code_hmac_key,
            min_binding_age_seconds=s.number_status_min_binding_age_days * 86400.0,
            send_when_unknown=s.number_status_send_when_unknown,
            audit=self.audit,
        )

    # -- end of recycled numbers -------------------------------------------------------------

    @cached_property
    def password_check(self) -> PasswordCheck:
        """Re-authentication by password under the login throttle."""
        return PasswordCheck(self.hasher, self.throttle)

    @cached_property
    def throttle(self) -> LoginThrottle:
        """Brute-force counters of password checks (login and re-authentication)."""
        return LoginThrottle(
            self.redis,
            self.clock,
            lockout_policy(self.settings),
            ip_key=self.keyring.code_hmac_key,
        )

    @cached_property
    def revocations(self) -> RevocationList:
        """This worker's in-memory view of revoked sessions, fed from Redis."""
        s = self.settings
        return RevocationList(
            self.redis,
            self.clock,
            s.access_token_ttl_seconds,
            validator_leeway=s.token_leeway_seconds,
            feed=self.revocation_feed,
        )

    @cached_property
    def revocation_feed(self) -> RevocationFeed:
        """Ended sessions as a stream business systems watch (WatchRevocations)."""
        s = self.settings
        return RevocationFeed(
            self.redis,
            self.clock,
            retention_seconds=s.revocation_feed_retention_seconds,
            heartbeat_seconds=s.revocation_feed_heartbeat_seconds,
            watchers_per_client=s.revocation_watchers_per_client,
            # A blocked read must end well inside one bounded Redis operation.
            block_seconds=min(1.0, s.redis_op_timeout_seconds / 2),
        )

    @cached_property
    def sessions(self) -> SessionService:
        """Sessions, refresh rotation and token validation."""
        s = self.settings
        ring = self.keyring

        def signing_key() -> tuple[str, bytes]:
            key = ring.active_signing_key
            return key.kid, key.seed

        return SessionService(
            self.database,
            SqlSessionRepository(self.database),
            ActiveSubjects(self.accounts, self.policies),
            AccessTokenIssuer(signing_key, s.token_issuer, self.clock, s.access_token_ttl_seconds),
            AccessTokenValidator(
                ring.public_keys, s.token_issuer, self.clock, s.token_leeway_seconds
            ),
            self.revocations,
            self.clock,
            session_lifetimes(s),
            s.default_audience,
            audit=self.audit,
            log_pseudonym=Pseudonyms(ring.audit_pseudonym_key).for_log,
        )

    @cached_property
    def login(self) -> LoginFlow:
        """Password and SMS-code login."""
        return LoginFlow(
            uow=self.database,
            accounts=self.accounts,
            sessions=self.sessions,
            tickets=self.tickets,
            hasher=self.hasher,
            throttle=self.throttle,
            policies=self.policies,
            clock=self.clock,
            audit=self.audit,
            metrics=self.metrics,
            allowed_country_codes=self.settings.allowed_country_codes,
            second_factor=self.totp,
            mfa_tickets=self.mfa_tickets,
            deactivations=self.deactivation,  # issue 14: deactivation
            policy_notices=self.policy_notices,  # issue 14: notify-only policy versions
            operator_passwords=self.operator_passwords,
        )

    # -- TOTP second factor (issue 12) --

    @cached_property
    def totp(self) -> TotpService:
        """TOTP factors and recovery codes; `is_enrolled` for flows that demand a second factor."""
        return TotpService(
            SqlTotpRepository(self.database),
            self.cipher,
            self.clock,
            issuer=self.settings.totp_issuer,
            recovery_key=self.keyring.code_hmac_key,
        )

    @cached_property
    def mfa_tickets(self) -> MfaTickets:
        """Tickets between a first factor and CompleteMfa, in Redis."""
        return MfaTickets(self.redis, ttl_seconds=self.settings.mfa_ticket_ttl_seconds)

    @cached_property
    def totp_flow(self) -> TotpFlow:
        """Enrolling, confirming and disabling the TOTP factor."""
        return TotpFlow(
            uow=self.database,
            accounts=self.accounts,
            totp=self.totp,
            password_check=self.password_check,
            throttle=self.throttle,
            notices=self.notices,
            audit=self.audit,
            operators=self.operator_roles,
        )

    # -- end TOTP --

    # -- issue 14: retention --

    @cached_property
    def document_store(self) -> FileDocumentStore:
        """The encrypted document blobs' directory (the one `documents` writes to)."""
        s = self.settings
        return FileDocumentStore(
            Path(s.document_dir) if s.document_dir else data_path(s, "documents")
        )

    @cached_property
    def retention(self) -> RetentionSweep:
        """The retention sweep and its kinds, in the order they run (docs/privacy.md)."""
        s, db, day = self.settings, self.database, 86400.0

        async def in_cases(ids: Collection[str]) -> set[str]:
            return await referenced_documents(db, ids)

        kinds: list[RetentionKind] = [
            EndedSessions(db, s.retention_session_days * day),
            FinishedMessages(db, s.retention_outbox_days * day),
            DecidedCases(db, s.retention_review_case_days * day),
            UnreferencedDocuments(
                db, self.document_store, s.retention_document_days * day, references=[in_cases]
            ),
            OrphanDocumentFiles(db, self.document_store, s.retention_orphan_file_hours * 3600.0),
            HolderConsents(db, s.retention_log_days * day),
            ExpiredDisclosures(db, s.retention_log_days * day),
            AuditPruning(db, self.audit, self.keyring.audit_keys, s.retention_log_days * day),
        ]
        return RetentionSweep(
            kinds,
            clock=self.clock,
            audit=self.audit,
            metrics=self.metrics,
            batch=s.retention_batch_size,
        )

    # -- end retention --

    # -- issue 14: rights requests --

    @cached_property
    def working_calendar(self) -> WorkingCalendar:
        """The PRC working-day calendar: shipped years, then the operator's directory."""
        return WorkingCalendar.load(self.settings.privacy_calendar_dir)

    @cached_property
    def rights_request_store(self) -> RightsRequests:
        """Rights requests in SQL, their texts sealed under the account's data key."""
        return RightsRequests(self.database, self.cipher, self.accounts)

    @cached_property
    def rights_requests(self) -> RightsRequestFlow:
        """Filing, listing and resolving rights requests, and the overdue gauge."""
        return RightsRequestFlow(
            uow=self.database,
            requests=self.rights_request_store,
            calendar=self.working_calendar,
            clock=self.clock,
            audit=self.audit,
            metrics=self.metrics,
        )

    # -- end rights requests --

    # -- issue 14: deactivation --

    @cached_property
    def submissions(self) -> SubmissionStore:
        """Real-name submissions, sealed under their accounts' keys."""
        return SubmissionStore(
            database=self.database,
            cipher=self.cipher,
            account_keys=self.accounts,
            blind_index=self.blind_index,
            clock=self.clock,
            dialect=self.database.dialect,
        )

    @cached_property
    def deactivation(self) -> DeactivationFlow:
        """Deactivate, its cancellation by signing in, and its completion after cooling off."""
        submissions = self.submissions
        known: dict[str, Obligation] = {
            OPEN_REVIEW_CASES: self.review_cases.open_count,
            PENDING_REAL_NAME: submissions.pending_count,
        }
        return DeactivationFlow(
            uow=self.database,
            accounts=self.accounts,
            tickets=self.tickets,
            sessions=self.sessions,
            notices=self.notices,
            records=DeactivationRecords(
                SqlDeactivations(self.database), PendingKeys(self.redis), self.cipher
            ),
            clock=self.clock,
            cooling_off_seconds=self.settings.deactivation_cooling_off_seconds,
            obligations={
                name: known[name] for name in self.settings.deactivation_blocking_obligations
            },
            erasers=(submissions, self.review_cases, self.operator_roles),
            documents=self.documents,
            second_factor=self.totp,
            cases=self.review_cases,
            audit=self.audit,
        )

    async def _complete_deactivations(self) -> None:
        """Complete the deactivations whose cooling-off period has ended."""
        done = await self.deactivation.complete_due()
        if done:
            log.info("completed %d deactivation(s)", done)

    # -- end deactivation --

    # -- issue 14: consent and export --

    def recipient_index(self, channel: str, destination: str) -> str:
        """The blind index of a message's destination, as `identifiers` keeps phones and
        emails; the outbox stores it so an export finds the account's messages."""
        kind = "phone" if channel == CHANNEL_SMS else "email"
        return self.blind_index.compute(kind, destination)

    @cached_property
    def export(self) -> ExportFlow:
        """ExportMyData and the owner's document downloads."""
        return ExportFlow(
            accounts=self.accounts,
            tickets=self.tickets,
            sessions=self.sessions,
            consents=self.consents,
            disclosures=self.disclosures,
            audit_log=self.audit,
            documents=self.documents,
            submissions=self.submissions,
            totp=self.totp,
            deliveries=self.delivery_log,
            blind_index=self.blind_index,
            limiter=self.rate_limiter,
            clock=self.clock,
            per_account_day=self.settings.export_per_account_day,
            audit=self.audit,
            cases=self.review_cases,
            requests=self.rights_request_store,
        )

    @cached_property
    def policy_notices(self) -> PolicyUpdateNotices:
        """Tells accounts at sign-in of a policy version that changed no purpose."""
        return PolicyUpdateNotices(
            uow=self.database,
            accounts=self.accounts,
            policies=self.policies,
            consents=self.consents,
            notices=self.notices,
            audit=self.audit,
        )

    # -- end consent and export --

    async def start_background(self) -> None:
        """Start the delivery loop (first: `close` lets it finish), the revocation list and
        the reader of the revocation feed, the key ring refresh and the store's housekeeping."""
        self._tasks.append(asyncio.create_task(self.dispatcher.run_forever(self._stop)))
        self._tasks.append(asyncio.create_task(self.revocations.run(self._stop)))
        self._tasks.append(asyncio.create_task(self.revocation_feed.run(self._stop)))
        self._tasks.append(asyncio.create_task(self._every(KEYRING_RELOAD_SECONDS, self._reload)))
        self._tasks.append(
            asyncio.create_task(self._every(CHECKPOINT_SECONDS, self.database.checkpoint))
        )
        self._tasks.append(
            asyncio.create_task(
                self._every(self.settings.audit_checkpoint_seconds, self.audit.checkpoint)
            )
        )
        # -- issue 14: retention (outbox rows included: it replaces the hourly outbox purge) --
        if self.settings.retention_sweep_seconds:
            self._tasks.append(
                asyncio.create_task(
                    self._every(self.settings.retention_sweep_seconds, self.retention.sweep)
                )
            )
        # -- end retention --

        # -- issue 14: rights requests --
        self._tasks.append(asyncio.create_task(self._overdue_requests()))
        # -- end rights requests --

        # -- issue 14: deactivation --
        self._tasks.append(
            asyncio.create_task(
                self._every(self.settings.deactivation_sweep_seconds, self._complete_deactivations)
            )
        )
        # -- end deactivation --

    async def _every(self, seconds: float, job: Callable[[], Awaitable[object]]) -> None:
        """Run `job` every `seconds` until stopped; a failure is logged and tried again."""
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=seconds)
            if self._stop.is_set():
                return
            try:
                await job()
            except Exception as exc:
                log.warning("%s failed: %s", getattr(job, "__name__", "job"), type(exc).__name__)

    async def _overdue_requests(self) -> None:
        """Count the overdue rights requests into the gauge now, then every refresh period."""
        try:
            await self.rights_requests.refresh_overdue()
        except Exception as exc:
            log.warning("refresh_overdue failed: %s", type(exc).__name__)
        await self._every(
            self.settings.privacy_overdue_refresh_seconds, self.rights_requests.refresh_overdue
        )

    async def _reload(self) -> None:
        """Pick up keys rotated by the CLI (new signing key, new master key) without a restart."""
        await asyncio.to_thread(self.keyring.reload)

    async def close(self) -> None:
        """Stop background work and close connections."""
        self._stop.set()
        # The dispatcher finishes the message in hand; the feeds only wait, so cancel them.
        for task in self._tasks[1:]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=5)
        if "hasher" in self.__dict__:
            await asyncio.to_thread(self.hasher.close)
        if "redis" in self.__dict__:
            await self.redis.aclose()
        if "database" in self.__dict__:
            await self.database.close()


def code_policy(settings: Settings) -> CodePolicy:
    """Code lifetimes and limits from the `code_*`, `ticket_ttl_seconds` and country settings."""
    return CodePolicy(
        ttl=settings.code_ttl_seconds,
        max_attempts=settings.code_max_attempts,
        ticket_ttl=settings.ticket_ttl_seconds,
        cooldown=settings.code_cooldown_seconds,
        per_destination_hour=settings.code_per_destination_hour,
        per_destination_day=settings.code_per_destination_day,
        per_ip_hour=settings.code_per_ip_hour,
        per_client_minute=settings.code_per_client_minute,
        failures_per_destination_hour=settings.code_failures_per_destination_hour,
        verify_per_ip_hour=settings.code_verify_per_ip_hour,
        verify_per_client_minute=settings.code_verify_per_client_minute,
        allowed_country_codes=tuple(settings.allowed_country_codes),
    )


def pumping_policy(settings: Settings) -> PumpingPolicy:
    """The SMS-pumping defence from the `pumping_*` settings (validated by `load_settings`)."""
    return PumpingPolicy(
        denied=parse_ranges(settings.pumping_denied_ranges),
        budgeted=parse_ranges(settings.pumping_budgeted_ranges),
        range_per_hour=settings.pumping_range_per_hour,
        range_per_day=settings.pumping_range_per_day,
        prefix_per_hour=settings.pumping_prefix_per_hour,
        prefix_per_day=settings.pumping_prefix_per_day,
        watch_window=settings.pumping_window_seconds,
        watch_min_sent=settings.pumping_min_sent,
        watch_min_ratio=settings.pumping_min_ratio,
        block_seconds=settings.pumping_block_seconds,
        failed_receipt_weight=settings.pumping_failed_receipt_weight,
    )


def lockout_policy(settings: Settings) -> LockoutPolicy:
    """Password-failure limits from the `login_failures_*` and `lock_*_seconds` settings."""
    return LockoutPolicy(
        failures_per_account_hour=settings.login_failures_per_account_hour,
        failures_per_account_ip=settings.login_failures_per_account_ip,
        lock_base_seconds=settings.lock_base_seconds,
        lock_max_seconds=settings.lock_max_seconds,
    )


def session_lifetimes(settings: Settings) -> SessionLifetimes:
    """Token and session lifetimes from `access_token_ttl_seconds` and `refresh_*_seconds`."""
    return SessionLifetimes(
        access_ttl=settings.access_token_ttl_seconds,
        idle=settings.refresh_idle_seconds,
        absolute=settings.refresh_absolute_seconds,
    )


def open_keyring(settings: Settings, clock: Clock) -> KeyRing:
    """The key ring: generated on first use only for the embedded store (SECURITY F5).

    With SQLite on this machine a fresh data directory gets its own ring. With an
    external database every replica must sign and encrypt with the same keys, so
    the ring is an explicit file made once with `xiaohe-identity keys init`;
    a missing one stops start-up (KeyRingError) instead of being generated.
    """
    path = settings.effective_keyring_file
    if settings.embedded_store:
        return KeyRing.load_or_create(path, clock)
    return KeyRing.load(path, clock)


def data_path(settings: Settings, *parts: str) -> Path:
    """A path inside the data directory."""
    return settings.data_dir.joinpath(*parts)


# -- SMS providers and failover (issue 10 §3) ------------------------------------------


def sms_provider(s: Settings, clock: Clock, metrics: Metrics) -> Provider:
    """The SMS provider: the one configured, or a failover chain over `sms_providers`."""
    chain = [_one_sms_provider(name, s, clock) for name in s.effective_sms_providers]
    if len(chain) == 1:
        return chain[0]
    return FailoverProvider(
        chain,
        clock,
        failure_threshold=s.sms_breaker_failures,
        cooldown_seconds=s.sms_breaker_cooldown_seconds,
        metrics=metrics,
    )


def sms_lease_seconds(s: Settings) -> float:
    """A dispatcher lease long enough for a send through every SMS provider in turn.

    The dispatcher cuts a send off at half its lease; a chain must be able to
    time out on each provider and still finish inside that, or the cut-off would
    turn a definite failure of the last one into an unknown outcome.
    """
    per_provider = s.sms_connect_timeout_seconds + s.sms_read_timeout_seconds
    return max(30.0, 2 * (len(s.effective_sms_providers) * per_provider + 1.0))


def _one_sms_provider(name: str, s: Settings, clock: Clock) -> Provider:
    if name == "http":
        return HttpSmsGatewayProvider(
            s.sms_gateway_url, s.sms_gateway_key_id, s.sms_gateway_secret, clock
        )
    # The platforms' modules are imported only when configured (see `number_status_guard`).
    if name == "aliyun":
        from xiaohe.identity.server.delivery.aliyun import AliyunSmsConfig, AliyunSmsProvider

        return AliyunSmsProvider(
            AliyunSmsConfig(
                access_key_id=s.aliyun_sms_access_key_id,
                access_key_secret=s.aliyun_sms_access_key_secret,
                templates=PlatformTemplates(
                    s.aliyun_sms_sign_name,
                    parse_purpose_map(s.aliyun_sms_templates),
                    parse_purpose_map(s.aliyun_sms_sign_names),
                ),
                endpoint=s.aliyun_sms_endpoint,
                region=s.aliyun_sms_region,
                connect_timeout=s.sms_connect_timeout_seconds,
                read_timeout=s.sms_read_timeout_seconds,
            )
        )
    if name == "tencent":
        from xiaohe.identity.server.delivery.tencent import TencentSmsConfig, TencentSmsProvider

        return TencentSmsProvider(
            TencentSmsConfig(
                secret_id=s.tencent_sms_secret_id,
                secret_key=s.tencent_sms_secret_key,
                sdk_app_id=s.tencent_sms_sdk_app_id,
                templates=PlatformTemplates(
                    s.tencent_sms_sign_name,
                    parse_purpose_map(s.tencent_sms_templates),
                    parse_purpose_map(s.tencent_sms_sign_names),
                ),
                endpoint=s.tencent_sms_endpoint,
                region=s.tencent_sms_region,
                timeout=s.sms_connect_timeout_seconds + s.sms_read_timeout_seconds,
            )
        )
    return JsonlFileProvider(s.data_dir / "outbox" / "sms.jsonl", clock)
