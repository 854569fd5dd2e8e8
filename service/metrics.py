"""Every Prometheus metric of coder-bridge is defined here and nowhere else.

Label sets stay small and bounded: tracker, outcome, reason, kind, status
class. Never a user, an issue, a delivery id or a token.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

DELIVERIES = Counter(
    "coder_bridge_deliveries_total",
    "Webhook deliveries by tracker and outcome (accepted, duplicate, ignored, rejected).",
    ["tracker", "outcome", "reason"],
    registry=REGISTRY,
)
SIGNATURE_FAILURES = Counter(
    "coder_bridge_signature_failures_total",
    "Deliveries refused because of a missing, wrong or stale signature.",
    ["tracker"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "coder_bridge_queue_depth", "Jobs queued or running.", registry=REGISTRY
)
QUEUE_OLDEST_AGE = Gauge(
    "coder_bridge_queue_oldest_age_seconds",
    "Age of the oldest job waiting to run.",
    registry=REGISTRY,
)
JOB_ATTEMPTS = Counter(
    "coder_bridge_job_attempts_total", "Job attempts started.", registry=REGISTRY
)
JOBS = Counter(
    "coder_bridge_jobs_total",
    "Job attempts by result (done, retry, failed, released, deferred).",
    ["outcome"],
    registry=REGISTRY,
)
DELEGATIONS = Counter(
    "coder_bridge_delegations_total",
    "Delegations by outcome (created, existing, needs_link, token_invalid, failed, gave_up).",
    ["outcome"],
    registry=REGISTRY,
)
API_CALLS = Counter(
    "coder_bridge_api_calls_total",
    "Calls to Coder and tracker APIs by service, endpoint kind and status class.",
    ["service", "endpoint", "status"],
    registry=REGISTRY,
)
API_LATENCY = Histogram(
    "coder_bridge_api_call_seconds",
    "Latency of calls to Coder and tracker APIs.",
    ["service", "endpoint"],
    registry=REGISTRY,
)
TOKENS_INVALID = Counter(
    "coder_bridge_tokens_invalid_total",
    "Stored Coder tokens found invalid (Coder answered 401).",
    registry=REGISTRY,
)
CONNECTIONS_CLOSED = Counter(
    "coder_bridge_connections_closed_total",
    "Connections closed by the bridge before their request was complete: too slow "
    "(timeout), room made for a new connection (evicted), or refused at the limit (limit).",
    ["reason"],
    registry=REGISTRY,
)
WORKER_HEARTBEAT = Gauge(
    "coder_bridge_worker_heartbeat_timestamp_seconds",
    "When the worker loop last completed a cycle (UNIX time).",
    registry=REGISTRY,
)
DELEGATIONS_BY_STATE = Gauge(
    "coder_bridge_delegations_by_state",
    "Issues by the state of their newest delegation (starting, working, needs_input, done, "
    "failed, gave_up, stopped, pending, needs_link, awaiting_consent); read at scrape time.",
    ["state"],
    registry=REGISTRY,
)
STATUS_CHECKS = Counter(
    "coder_bridge_status_checks_total",
    "Status checks of running work: per account (listed, outage, rate_limited, "
    "token_rejected) and per task or chat read (changed, unchanged, gone).",
    ["outcome"],
    registry=REGISTRY,
)
COMMENT_EDITS = Counter(
    "coder_bridge_comment_edits_total",
    "Comments the bridge created or edited (kind: created, edited), after a change of what "
    "they show.",
    ["kind"],
    registry=REGISTRY,
)
COMMANDS = Counter(
    "coder_bridge_commands_total",
    "Commands in issue comments by command (follow_up, stop, approve, help) and outcome "
    "(done, held, refused, failed).",
    ["command", "outcome"],
    registry=REGISTRY,
)
CODER_CALLS = Counter(
    "coder_bridge_coder_calls_total",
    "Calls to Coder by purpose: create (starting work), sync (status checks), command "
    "(follow-ups and stops), other.",
    ["purpose"],
    registry=REGISTRY,
)
STOPS = Counter(
    "coder_bridge_stops_total",
    "Agents stopped by the bridge, by cause (command, unlabeled, closed, max_runtime).",
    ["cause"],
    registry=REGISTRY,
)
SIGN_INS = Counter(
    "coder_bridge_sign_ins_total",
    "Sign-ins on /connect by provider (github, linear) and outcome (ok, declined, failed, "
    "bad_state).",
    ["provider", "outcome"],
    registry=REGISTRY,
)
CODER_CONNECTIONS = Counter(
    "coder_bridge_coder_connections_total",
    "Coder connections on /connect by method (token, oauth, test, disconnect) and outcome "
    "(ok, rejected, failed, rate_limited, declined, bad_state).",
    ["method", "outcome"],
    registry=REGISTRY,
)
CONNECT_REFUSED = Counter(
    "coder_bridge_connect_refused_total",
    "Form posts on /connect refused (csrf: no or a wrong CSRF token; origin: from another "
    "site).",
    ["reason"],
    registry=REGISTRY,
)
RECONCILE_SWEEPS = Counter(
    "coder_bridge_reconcile_sweeps_total",
    "Reconciliation sweeps by outcome (done; busy: another process was sweeping; failed: a "
    "tracker could not be asked, per tracker).",
    ["outcome"],
    registry=REGISTRY,
)
RECONCILE_FOUND = Counter(
    "coder_bridge_reconcile_found_total",
    "Labelled open issues a sweep found, by tracker and outcome (queued: its missed delivery "
    "was stored; delegated: it has a delegation already; already_queued).",
    ["tracker", "outcome"],
    registry=REGISTRY,
)
RECONCILE_REDELIVERED = Counter(
    "coder_bridge_reconcile_redelivered_total",
    "Failed webhook deliveries a sweep asked the tracker to send again (a GitHub App's "
    "comments, unlabels and closes), by tracker.",
    ["tracker"],
    registry=REGISTRY,
)
ADMIN_REQUESTS = Counter(
    "coder_bridge_admin_requests_total",
    "Requests to /admin by outcome (ok; unauthorized: no or a wrong token; rate_limited).",
    ["outcome"],
    registry=REGISTRY,
)
TOKENS_UNDECRYPTABLE = Gauge(
    "coder_bridge_tokens_undecryptable",
    "Stored Coder tokens under an encryption key that security.encryption_keys does not "
    "list (nobody's delegation can run with them); read at scrape time.",
    registry=REGISTRY,
)
MISCONFIGURED = Counter(
    "coder_bridge_misconfigured_total",
    "Delegations that failed because of the bridge's own configuration, by what: "
    "encryption_key (a stored token no configured key opens), template, preset.",
    ["reason"],
    registry=REGISTRY,
)
