"""Standard Webhooks signatures (hookline.signing), checked with the standardwebhooks
package a receiver would use."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
import standardwebhooks

from hookline.errors import InvalidSpec
from hookline.models import SigningSecret
from hookline.signing import Signer, new_secret, secret_bytes, sign

NOW = 1_700_000_000


def headers(signature: str) -> dict[str, str]:
    return {"webhook-id": "msg_1", "webhook-timestamp": str(NOW), "webhook-signature": signature}


def verifies(secret: str, body: bytes, signature: str) -> bool:
    # the package checks the timestamp against the clock: verify as of NOW
    hook = standardwebhooks.Webhook(secret)
    expected = hook.sign("msg_1", datetime.fromtimestamp(NOW, tz=UTC), body.decode())
    return any(s in signature.split() for s in expected.split())


def test_a_signature_verifies_with_the_standardwebhooks_package() -> None:
    secret, body = new_secret(), b'{"type":"order.paid","amount":42}'
    signature = sign((SigningSecret(secret),), "msg_1", NOW, body, NOW)
    assert signature.startswith("v1,") and verifies(secret, body, signature)
    assert not verifies(new_secret(), body, signature)
    assert not verifies(secret, body + b" ", signature)


def test_during_a_rotation_both_secrets_sign_and_an_expired_one_does_not() -> None:
    new, old, expired = new_secret(), new_secret(), new_secret()
    secrets = (SigningSecret(new), SigningSecret(old, NOW + 3600), SigningSecret(expired, NOW - 1))
    signature = sign(secrets, "msg_1", NOW, b"{}", NOW)
    assert len(signature.split()) == 2
    assert verifies(new, b"{}", signature) and verifies(old, b"{}", signature)
    assert not verifies(expired, b"{}", signature)


def test_a_body_fed_in_chunks_signs_as_the_whole_body() -> None:
    secrets = (SigningSecret(new_secret()),)
    body = bytes(range(256)) * 100
    signer = Signer(secrets, "msg_1", NOW, NOW)
    for i in range(0, len(body), 1000):
        signer.update(body[i : i + 1000])
    assert signer.header() == sign(secrets, "msg_1", NOW, body, NOW)


@pytest.mark.parametrize(
    ("secret", "complaint"),
    [
        ("whsec_not base64!", "followed by base64"),
        ("whsec_" + base64.b64encode(b"x" * 16).decode(), "24 to 64 bytes"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "24 to 64 bytes"),
    ],
)
def test_a_secret_that_is_not_whsec_and_base64_of_24_to_64_bytes_is_refused(
    secret: str, complaint: str
) -> None:
    with pytest.raises(InvalidSpec, match=complaint):
        secret_bytes(secret)


def test_new_secrets_are_random_and_usable() -> None:
    a, b = new_secret(), new_secret()
    assert a != b and a.startswith("whsec_")
    assert len(secret_bytes(a)) == 32
    # the prefix is optional, as in the standardwebhooks libraries
    assert secret_bytes(a.removeprefix("whsec_")) == secret_bytes(a)
