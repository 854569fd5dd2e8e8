"""The storage contract: one Protocol, implemented by ``sqlite.SQLiteStore`` (and PostgreSQL).

Tables (see ``migrations/``): ``accounts`` + ``identities`` (linked users and
their encrypted Coder tokens), ``deliveries`` (one row per accepted delivery,
unique per tracker and delivery id, and per tracker and body hash), ``jobs`` (the
durable queue, with leases), ``workers`` (the processes that run jobs, with their
heartbeat), ``delegations`` (one row per issue and generation: what we did about it;
``service.core.work.Delegation``).

Times are UNIX seconds as floats. Methods that decide on time take ``now`` from
the caller, so tests control the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import msgspec

from service.core.pacing import Window
from service.core.work import Delegation, DelegationState

__all__ = [
    "Account",
    "CheckTarget",
    "Delegation",
    "DelegationState",
    "DeliveryRecord",
    "Followup",
    "Identity",
    "Job",
    "JobStatus",
    "NewDelivery",
    "Store",
    "TokenKind",
    "TokenStatus",
]

TokenStatus = Literal["valid", "invalid"]
TokenKind = Literal["token", "oauth"]
JobStatus = Literal["queued", "running", "done", "failed"]


class NewDelivery(msgspec.Struct, frozen=True):
    """A verified delivery to store durably, its job queued.

    ``body_sha256`` is the hex SHA-256 of the raw body: the same signed bytes under a
    new delivery id are the same delivery (a replay, invariant I1).
    """

    tracker: str
    delivery_id: str
    issue_key: str
    event_json: str
    received_at: float
    body_sha256: str
    kind: str = "trigger"


@dataclass(frozen=True)
class Job:
    """A claimed job. ``attempts`` counts this attempt (1 on the first claim); ``kind``
    is its delivery's (``trigger``, ``comment``, ``change``, ``check``)."""

    id: int
    tracker: str
    delivery_id: str
    issue_key: str
    event_json: str
    attempts: int
    lease_owner: str
    lease_until: float
    kind: str = "trigger"


@dataclass(frozen=True)
class Identity:
    """A tracker account linked to a Coder account."""

    provider: Literal["github", "linear"]
    external_id: str
    login: str = ""


@dataclass(frozen=True)
class Account:
    """A linked Coder user with its encrypted token (``key_id`` names the vault key).

    ``token_kind`` ``token``: a pasted API token; ``oauth``: issued by Coder's OAuth2
    provider, the ciphertext then holding the access and refresh tokens
    (``service.accounts``), valid until ``token_expires_at``.
    """

    id: int
    coder_user_id: str
    coder_username: str
    key_id: str
    ciphertext: bytes
    token_status: TokenStatus
    last_used_at: float | None
    allow_others: bool = False
    token_kind: TokenKind = "token"
    token_expires_at: float | None = None


@dataclass(frozen=True)
class Followup:
    """A follow-up message waiting for a task that could not take it yet."""

    id: int
    delegation_id: int
    source: str
    text: str
    created_at: float


@dataclass(frozen=True)
class CheckTarget:
    """An account whose running work is due for a status check, with that work;
    ``failures`` counts its rounds in a row that could not ask Coder."""

    account: Account
    delegations: list[Delegation]
    failures: int = 0


@dataclass(frozen=True)
class DeliveryRecord:
    """A stored delivery with its newest job and what it led to, for the CLI and the admin
    API: ``outcome`` its job's (``created``, ``existing``, ``same_request``, ``failed``,
    …; None while it has not ended), and the state and link of the delegation this
    delivery started (None when it started none). ``issue`` names the issue as people do
    (``owner/repo#1``, ``ENG-123``)."""

    tracker: str
    delivery_id: str
    issue_key: str
    received_at: float
    job_status: JobStatus | None
    attempts: int
    last_error: str | None
    delegation_state: DelegationState | None
    task_url: str | None
    kind: str = "trigger"
    outcome: str | None = None
    issue: str = ""


class Store(Protocol):
    """Durable state of the bridge. Every method is one transaction."""

    # -- lifecycle and health -------------------------------------------------
    async def migrate(self) -> list[int]:
        """Apply pending migrations; return the versions applied (empty if current)."""
        ...

    async def schema_status(self) -> tuple[int, int]:
        """(version in the database, newest version this code knows)."""
        ...

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the database answers a trivial query."""
        ...

    async def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...

    # -- ingest ---------------------------------------------------------------
    async def accept(self, deliveries: Sequence[NewDelivery]) -> list[bool]:
        """Store each delivery and queue its job, all in ONE committed transaction.

        Returns, per input in order, True if it was new (stored, its job queued) or
        False if it was already stored: the same (tracker, delivery_id), or the same
        (tracker, body_sha256) under another id (a replay). Nothing is written for a
        duplicate. Duplicates inside the same batch: the first wins. Durable on return.
        """
        ...

    # -- jobs -----------------------------------------------------------------
    async def claim(
        self, owner: str, *, now: float, lease_seconds: float, limit: int
    ) -> list[Job]:
        """Lease up to ``limit`` runnable jobs to ``owner`` and return them.

        Runnable: status ``queued`` with ``run_at <= now``, or ``running`` whose lease
        ended before ``now`` (its worker died). Never returns two jobs of one
        ``issue_key``, nor a job whose ``issue_key`` has another job under an
        unexpired lease; an issue's jobs run in arrival order (by id). Oldest
        ``run_at`` first. Increments ``attempts``.
        """
        ...

    async def renew_lease(self, job_id: int, owner: str, *, until: float) -> bool:
        """Extend the lease; False if ``owner`` no longer holds the job."""
        ...

    async def finish_job(self, job_id: int, owner: str, *, outcome: str = "") -> None:
        """Mark the job ``done``, remembering what it led to (``Done.outcome``)."""
        ...

    async def retry_job(self, job_id: int, owner: str, *, run_at: float, error: str) -> None:
        """Put the job back in the queue to run at ``run_at``, remembering ``error``."""
        ...

    async def fail_job(self, job_id: int, owner: str, *, error: str, outcome: str = "") -> None:
        """Mark the job ``failed`` (permanent error or attempts exhausted), with its
        ``Failed.outcome``."""
        ...

    async def release_job(self, job_id: int, owner: str, *, run_at: float | None = None) -> None:
        """Give the job back unfinished (shutdown, pacing): ``queued``, this attempt not
        counted, to run at ``run_at`` (None: keep its ``run_at``)."""
        ...

    async def queue_stats(self, *, now: float) -> tuple[int, float]:
        """(jobs queued or running, age in seconds of the oldest runnable job, 0 if none)."""
        ...

    # -- deliveries (CLI) -----------------------------------------------------
    async def list_deliveries(self, *, limit: int) -> list[DeliveryRecord]:
        """Newest deliveries first."""
        ...

    async def delivery_exists(self, delivery_id: str) -> bool:
        """Whether a delivery with this id is stored."""
        ...

    async def requeue_delivery(self, delivery_id: str, *, now: float) -> bool:
        """Enqueue a fresh job (attempts 0) for a stored delivery whose job is not
        queued or running; False if unknown or already queued/running."""
        ...

    # -- workers --------------------------------------------------------------
    async def register_worker(self, owner: str, *, now: float) -> int:
        """Record ``owner`` as a live process that runs jobs (heartbeat ``now``).

        Where one process serves a database (SQLite), this also takes back every job
        another owner still holds: the process before this one is gone. Returns the
        number of jobs taken back (queued again to run now).
        """
        ...

    async def heartbeat(self, owner: str, *, now: float, stale_after: float) -> int:
        """Record that ``owner`` is alive at ``now`` (registering it again if it was
        dropped), then drop every worker whose heartbeat is older than
        ``stale_after`` seconds and queue its running jobs again to run now. Returns
        the number of jobs taken back."""
        ...

    async def unregister_worker(self, owner: str) -> None:
        """Forget ``owner`` (it stopped cleanly, its jobs finished or released)."""
        ...

    # -- delegations ----------------------------------------------------------
    async def current_delegation(self, issue_key: str) -> Delegation | None:
        """The issue's newest delegation (highest generation), if any."""
        ...

    async def create_delegation(
        self, *, issue_key: str, tracker: str, delivery_id: str, generation: int, now: float
    ) -> Delegation:
        """Insert generation ``generation`` for the issue in state ``pending``; if that
        generation exists already, return it unchanged."""
        ...

    async def save_delegation(self, delegation: Delegation) -> None:
        """Write every mutable field of ``delegation`` (matched by ``id``)."""
        ...

    async def get_delegation(self, delegation_id: int) -> Delegation | None:
        """The delegation with this id."""
        ...

    async def list_delegations(
        self, *, states: Sequence[str] | None, limit: int
    ) -> list[tuple[Delegation, str | None]]:
        """Newest change first, each with the Coder username it runs as; only those in
        ``states`` unless None."""
        ...

    async def count_delegations(self) -> dict[str, int]:
        """How many delegations are in each state (the newest generation of each issue)."""
        ...

    # -- status checks ----------------------------------------------------------
    async def claim_checks(
        self, owner: str, *, now: float, lease_seconds: float, limit: int
    ) -> list[CheckTarget]:
        """Lease up to ``limit`` accounts with a valid token whose checks are due (never
        scheduled, or ``check_at <= now``) and that have work followed at ``now``
        (``follow_until >= now``); each with that work. Another owner's unexpired lease
        keeps an account out."""
        ...

    async def finish_checks(
        self, account_id: int, owner: str, *, next_at: float, failures: int
    ) -> None:
        """Schedule the account's next check at ``next_at`` and drop ``owner``'s lease;
        ``failures`` counts the checks in a row that could not ask Coder."""
        ...

    async def request_check(
        self, delegation: Delegation, *, seen: str, now: float, reason: str
    ) -> bool:
        """Queue a ``check`` job for the delegation's issue, unless one is queued already
        (True if one was queued). Its event is ``{"delegation_id", "reason", "seen"}``:
        ``seen`` is what the status round saw, which the check job records in
        ``Delegation.checked`` once it has shown it."""
        ...

    # -- sweeps and shared budgets ---------------------------------------------------
    async def claim_sweep(self, name: str, owner: str, *, now: float, lease: float) -> bool:
        """Hold sweep ``name`` (e.g. ``reconcile``) until ``now + lease`` unless another
        owner holds it; True if ``owner`` holds it now."""
        ...

    async def finish_sweep(self, name: str, owner: str, *, now: float) -> None:
        """Let go of sweep ``name`` and record that it finished at ``now``."""
        ...

    async def last_sweep(self, name: str) -> float | None:
        """When sweep ``name`` last finished (None: never)."""
        ...

    async def take_budget(self, budget: str, *, now: float, windows: Sequence[Window],
                          take: bool = True) -> float:
        """One more spend of ``budget`` (shared by every process on the database): if it
        fits every window (``service.core.pacing``), record it at ``now`` (when ``take``)
        and return 0.0; else record nothing and return the seconds to wait. Atomic
        across processes."""
        ...

    # -- follow-ups ---------------------------------------------------------------
    async def add_followup(
        self, delegation_id: int, *, source: str, text: str, now: float
    ) -> bool:
        """Hold a follow-up; False if ``source`` (a comment id) was added before."""
        ...

    async def queued_followups(self, delegation_id: int) -> list[Followup]:
        """The follow-ups still waiting, oldest first."""
        ...

    async def settle_followup(self, followup_id: int, *, sent: bool, now: float) -> None:
        """Mark a follow-up ``sent`` (True) or ``dropped``."""
        ...

    # -- accounts -------------------------------------------------------------
    async def link_account(
        self,
        *,
        coder_user_id: str,
        coder_username: str,
        key_id: str,
        ciphertext: bytes,
        identities: Sequence[Identity],
        token_kind: TokenKind = "token",
        token_expires_at: float | None = None,
    ) -> Account:
        """Create or update the account of ``coder_user_id``: replace its token (status
        ``valid``), refresh the username, and attach ``identities`` (an identity
        linked to another account moves to this one)."""
        ...

    async def add_identity(self, account_id: int, identity: Identity, *, now: float) -> None:
        """Link one more tracker identity to an existing account (moving it from another
        account, which is deleted if left without identities); the token is untouched."""
        ...

    async def find_account(self, provider: str, external_id: str) -> Account | None:
        """The account linked to this tracker identity."""
        ...

    async def get_account(self, account_id: int) -> Account | None:
        """The account with this id."""
        ...

    async def list_accounts(self) -> list[tuple[Account, list[Identity]]]:
        """Every account with its identities, ordered by username."""
        ...

    async def token_keys(self) -> dict[str, int]:
        """How many stored tokens each encryption key (by ``key_id``) sealed."""
        ...

    async def unlink(
        self,
        *,
        provider: str | None = None,
        external_id: str | None = None,
        coder_username: str | None = None,
    ) -> int:
        """Remove one identity (provider + external_id) or a whole account (by username).
        An account left without identities is deleted with its token. Returns rows removed."""
        ...

    async def mark_token_invalid(self, account_id: int, *, ciphertext: bytes) -> None:
        """Coder answered 401 with the token stored as ``ciphertext``; a token re-linked
        since (a different ciphertext) is left valid."""
        ...

    async def mark_token_used(self, account_id: int, *, now: float) -> None:
        """Record a successful use."""
        ...

    async def set_allow_others(
        self, *, provider: str | None = None, external_id: str | None = None,
        coder_username: str | None = None, allow: bool,
    ) -> int:
        """Whether others may delegate this person's issues to their Coder account; the
        account by identity or by username. Returns the accounts changed."""
        ...

    async def replace_tokens(
        self, account_id: int, *, old_ciphertext: bytes, key_id: str, ciphertext: bytes,
        expires_at: float | None, now: float,
    ) -> bool:
        """Store a refreshed OAuth token pair if the stored one is still exactly
        ``old_ciphertext`` (the pair it was refreshed from); False if another process
        refreshed or re-linked it meanwhile."""
        ...

    async def replace_ciphertext(
        self, account_id: int, *, old_ciphertext: bytes, key_id: str, ciphertext: bytes
    ) -> bool:
        """Swap the stored token if it is still exactly ``old_ciphertext`` (key rotation);
        False if it changed meanwhile (a re-link), which is then left alone."""
        ...
