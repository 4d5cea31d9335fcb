"""The few exceptions hookline raises, and the one place third-party errors become them.

    HooklineError
    ├── TemporaryError       may succeed later: retry (``retry_after`` seconds)
    │   ├── StoreUnavailable     Redis or the body store cannot be reached
    │   ├── ApiUnavailable       the Kubernetes API did not answer as it should
    │   ├── SecretNotFound       a referenced Secret or key does not exist (yet)
    │   └── SecretConflict       a Secret under a generated name is not hookline's
    └── PermanentError       retrying the same thing will not help
        ├── InvalidSpec          a definition, setting or argument is wrong
        ├── BodyMissing          a stored body is gone (expired, deleted)
        ├── BodyTooLarge         a body exceeded its cap while streaming
        ├── BodyLengthMismatch   a body's bytes differ from its declared length
        └── BlockedDestination   the SSRF guard refused an endpoint's address

The split is the retry decision, in the dispatcher and in the operator (as kopf's
``TemporaryError`` / ``PermanentError``); the two Secret errors are temporary because a
user resolves them by changing a Secret, which the operator cannot wait for otherwise.
Client libraries' exceptions are turned into this tree at their boundary by
:func:`map_exceptions` (as httpx's ``map_exceptions``): the store maps Redis's, the
operator's Kubernetes client maps lightkube's and httpx's; no other module sees them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping


class HooklineError(Exception):
    """Base of every hookline error."""


class TemporaryError(HooklineError):
    """The operation may succeed later."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(HooklineError):
    """Retrying the same operation will not help."""


class StoreUnavailable(TemporaryError):
    """A store (Redis, the body store) is unreachable."""


class StoreNotReached(StoreUnavailable):
    """Redis was not reached at all: the command was never sent, so nothing was written
    (a plain StoreUnavailable may come after Redis ran the command)."""


class ApiUnavailable(TemporaryError):
    """The Kubernetes API did not answer as it should."""


class SecretNotFound(TemporaryError):
    """A referenced Secret, or the key inside it, does not exist (yet)."""


class SecretConflict(TemporaryError):
    """A Secret exists under a name the operator generates (``NAME-key``, ``NAME-signing``)
    but is not one hookline generated for this endpoint; the operator never changes it."""


class InvalidSpec(PermanentError):
    """An endpoint definition, a configuration value or a command's argument is invalid."""


class BodyMissing(PermanentError):
    """A body reference points at nothing: the webhook cannot be delivered."""


class BodyTooLarge(PermanentError):
    """A body grew past its cap while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body exceeds the limit of {limit} bytes")
        self.limit = limit


class BodyLengthMismatch(PermanentError):
    """A body's bytes did not add up to the length declared for it (``Content-Length``):
    the body store refuses it and keeps nothing of it."""

    def __init__(self, declared: int, got: int) -> None:
        arrived = "more" if got > declared else f"{got}"
        super().__init__(f"the body was declared as {declared} bytes but {arrived} arrived")
        self.declared = declared
        self.got = got


class BlockedDestination(PermanentError):
    """The outbound guard refused to connect (see :mod:`hookline.outbound`)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"blocked destination: {why}")
        self.why = why


@contextlib.contextmanager
def map_exceptions(
    mapping: Mapping[type[Exception], type[HooklineError]],
    what: str,
    describe: Callable[[BaseException], str] = str,
) -> Iterator[None]:
    """Raise the first matching hookline error, ``"<what>: <description>"``, from an
    exception of a client library; hookline's own errors and anything unmapped pass."""
    try:
        yield
    except HooklineError:
        raise
    except Exception as exc:
        for kind, error in mapping.items():
            if isinstance(exc, kind):
                raise error(f"{what}: {describe(exc) or type(exc).__name__}") from exc
        raise
