"""The one exception tree of coder-bridge.

Layers switch on the class, never on the message text::

    BridgeError
    ├── ConfigError            a configuration value is missing or wrong (names the key)
    ├── InvalidConfig          the configuration has problems: every ConfigError at once
    ├── UserError              a CLI user asked for something impossible (exit status 1)
    ├── WebhookError           an inbound delivery is unacceptable; carries the HTTP status
    │   ├── SignatureError     401: missing or wrong signature, stale timestamp
    │   ├── MalformedPayload   400: not JSON, or JSON without the fields we need
    │   ├── PayloadTooLarge    413: body over ``server.max_body_bytes``
    │   └── ServerBusy         503: too many bodies being received at once
    ├── VaultError             a stored token cannot be encrypted or decrypted
    ├── StoreError             the database failed or holds something unexpected
    ├── PacingDeferred         our own pacing of GitHub's content limits has no room yet
    └── RemoteError            a call to Coder, GitHub or Linear failed
        ├── TransientError     worth retrying: timeouts, connection errors, 5xx, 429
        │   └── RateLimited    the remote asked us to slow down (``retry_after`` set when known)
        └── PermanentError     retrying the same request will not help (other 4xx)
            ├── TokenRejected  401: the credential is bad (expired, revoked, malformed)
            ├── NotFound       404 about an object (never about a route)
            ├── RouteNotFound  404 "Route not found.": the server lacks this API or prefix
            └── Conflict       409: e.g. the deterministic task name is already taken

A ``RemoteError`` carries two texts. ``message`` is for operators (logs, the CLI):
plain words, never a token, a header or a request body, but it may hold what the
remote said, e.g. Coder's ``detail`` or a build log. ``public`` is what may go into a
comment everyone on the issue reads: set only where the text is known to be safe
(the bridge's own words, or Coder's short ``message`` for a validation it is known
to send); empty otherwise, and the comment then names a category and a reference.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base class of every error raised on purpose by coder-bridge."""


class ConfigError(BridgeError):
    """A configuration value is missing or invalid; ``key`` is its dotted name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.problem = message


class InvalidConfig(BridgeError):
    """The configuration has one or more problems; ``problems`` lists them all."""

    def __init__(self, problems: list[ConfigError]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class UserError(BridgeError):
    """A CLI request that cannot be done; the message is shown as is, exit status 1."""


class WebhookError(BridgeError):
    """An inbound delivery that must be refused with ``status``."""

    status = 400
    reason = "malformed"


class SignatureError(WebhookError):
    """The signature is missing or matches no configured secret, or the delivery is stale."""

    status = 401
    reason = "signature"


class MalformedPayload(WebhookError):
    """The body is not the JSON we expect."""

    status = 400
    reason = "malformed"


class PayloadTooLarge(WebhookError):
    """The body exceeds ``server.max_body_bytes``."""

    status = 413
    reason = "too_large"


class ServerBusy(WebhookError):
    """The bodies being received at once would hold more memory than their budget."""

    status = 503
    reason = "busy"


class VaultError(BridgeError):
    """A token cannot be encrypted or decrypted (unknown key id, tampered or moved row)."""


class StoreError(BridgeError):
    """The database failed, or holds data the code cannot interpret."""


class RemoteError(BridgeError):
    """A call to a remote service failed.

    ``service`` is ``"coder"``, ``"github"`` or ``"linear"``; ``status`` the HTTP
    status when there was a response; ``message`` plain words for operators;
    ``public`` words safe for a public comment, or ``""`` (see the module docstring);
    ``server_message`` the remote's own short ``message`` field, when it sent one;
    ``misconfigured`` names what in the bridge's own configuration caused the failure
    (``template``, ``preset``), when it did: the operators must act, not the engineer.
    """

    def __init__(
        self,
        service: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        public: str = "",
        server_message: str = "",
        misconfigured: str = "",
    ) -> None:
        super().__init__(message)
        self.service = service
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.public = public
        self.server_message = server_message
        self.misconfigured = misconfigured

    def __str__(self) -> str:
        where = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.service}: {self.message}{where}"


class TransientError(RemoteError):
    """Worth retrying later: timeout, connection failure, 5xx, 429."""


class RateLimited(TransientError):
    """The remote asked us to slow down; ``retry_after`` is seconds to wait, if known."""


class PacingDeferred(BridgeError):
    """Our own pacing of a remote (GitHub's content limits) has no room for ``seconds``.

    Not a remote failure: the job that met it is run again then, and the attempt is
    not counted, so a burst of hundreds of issues never makes a job give up.
    """

    def __init__(self, service: str, seconds: float) -> None:
        super().__init__(f"{service}: content-creation pacing has room again in {seconds:.0f} s")
        self.service = service
        self.seconds = seconds


class PermanentError(RemoteError):
    """The same request will fail again; report it instead of retrying."""


class TokenRejected(PermanentError):
    """401: the credential we sent is not accepted."""


class NotFound(PermanentError):
    """404 about an object (it does not exist or the caller may not see it)."""


class RouteNotFound(PermanentError):
    """404 "Route not found.": this server does not serve the API or prefix we called."""


class Conflict(PermanentError):
    """409: the request conflicts with existing state (e.g. a name already in use)."""
