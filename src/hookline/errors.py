"""The few exceptions hookline raises, wrapped at the boundary of every client library.

    HooklineError
    ├── StoreUnavailable   Redis or the body store cannot be reached: temporary, retry later
    ├── InvalidSpec        an endpoint definition or configuration is wrong: permanent
    ├── BodyMissing        a stored body is gone (expired, deleted): permanent for that webhook
    ├── BodyTooLarge       a body exceeded its cap while streaming: permanent for that request
    └── BlockedDestination the SSRF guard refused an endpoint's address: permanent

Callers never see ``redis.exceptions`` or aiohttp's errors from the core; the
permanent/temporary split is the retry decision in the dispatcher and the operator.
"""


class HooklineError(Exception):
    """Base of every hookline error."""


class StoreUnavailable(HooklineError):
    """A store (Redis, the body store) is unreachable; the operation may succeed later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidSpec(HooklineError):
    """An endpoint definition or a configuration value is invalid; retrying will not help."""


class BodyMissing(HooklineError):
    """A body reference points at nothing: the webhook cannot be delivered."""


class BodyTooLarge(HooklineError):
    """A body grew past its cap while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body exceeds the limit of {limit} bytes")
        self.limit = limit


class BlockedDestination(HooklineError):
    """The outbound guard refused to connect (see :mod:`hookline.outbound`): a permanent failure."""

    def __init__(self, why: str) -> None:
        super().__init__(f"blocked destination: {why}")
        self.why = why
