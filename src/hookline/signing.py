"""Standard Webhooks signatures, and the generation of every secret hookline makes.

:func:`new_key` makes ingest keys and :func:`new_secret` signing secrets, for the
operator (generated Secrets) and the local stack alike.

``webhook-signature`` is a space-separated list of ``v1,<base64 HMAC-SHA256>``
over ``"{id}.{timestamp}.{body}"``, one per valid secret, so a receiver that
knows either the new or the previous secret verifies during a rotation. The
body is fed in chunks (:class:`Signer`), so a streamed body is never whole in memory.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import secrets
from binascii import b2a_base64

from hookline.errors import InvalidSpec
from hookline.models import SigningSecret

PREFIX = "whsec_"


def new_key() -> str:
    """An ingest key (``X-WH-Endpoint-Key``); only its SHA-256 is ever stored."""
    return "whk_" + secrets.token_urlsafe(24)


def new_secret(nbytes: int = 32) -> str:
    """A signing secret, ``whsec_`` and base64 as Standard Webhooks has it."""
    return PREFIX + base64.b64encode(os.urandom(nbytes)).decode()


def secret_bytes(secret: str) -> bytes:
    try:
        raw = base64.b64decode(secret.removeprefix(PREFIX), validate=True)
    except ValueError as exc:
        raise InvalidSpec("a signing secret must be 'whsec_' followed by base64") from exc
    if not 24 <= len(raw) <= 64:
        raise InvalidSpec("a signing secret must hold 24 to 64 bytes")
    return raw


@functools.lru_cache(maxsize=4096)
def _keyed(secret: str) -> hmac.HMAC:
    """An HMAC-SHA256 keyed with the secret and fed nothing: decoded and keyed once per
    secret, then copied for each message."""
    return hmac.new(secret_bytes(secret), digestmod=hashlib.sha256)


class Signer:
    """Signs one message with every currently valid secret, fed the body chunk by chunk."""

    def __init__(self, secrets: tuple[SigningSecret, ...], msg_id: str, timestamp: int, now: float):
        prefix = f"{msg_id}.{timestamp}.".encode()
        self._macs = []
        for s in secrets:
            if s.valid(now):
                mac = _keyed(s.secret).copy()
                mac.update(prefix)
                self._macs.append(mac)

    def update(self, chunk: bytes) -> None:
        for mac in self._macs:
            mac.update(chunk)

    def header(self) -> str:
        return " ".join(
            ["v1," + b2a_base64(m.digest(), newline=False).decode() for m in self._macs]
        )


def sign(
    secrets: tuple[SigningSecret, ...], msg_id: str, timestamp: int, body: bytes, now: float
) -> str:
    signer = Signer(secrets, msg_id, timestamp, now)
    signer.update(body)
    return signer.header()
