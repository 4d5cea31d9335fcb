"""The Reconciler (hookline.operator.reconcile) resolving the Secrets of endpoints and
sources, and telling which subscriptions went out of date, with an in-memory Kube and no
Redis.

The Reconciler takes its Kubernetes calls as a :class:`Kube`; ``MemoryKube`` below answers
the two it makes for Secrets from a dict. Its Registry and Figures are the real ones with a
client for a Redis that is not there (a unix socket path that does not exist, no retries):
every call fails at once with StoreUnavailable, as when Redis is down, so what is tested
here is what the operator does before and without Redis: generating, reading and caching
Secrets and the status it reports. Registration itself, adoption of left-behind Secrets
and conflicts are tested against a real API server and Redis in tests/kubernetes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from hookline.config import Config
from hookline.errors import ApiUnavailable, StoreUnavailable
from hookline.operator import status as st
from hookline.operator.kinds import SOURCES
from hookline.operator.kube import Kube, OwnedSecret
from hookline.operator.reconcile import (
    Links,
    Reconciler,
    Resource,
    source_entry,
    subscription_entry,
)
from hookline.signing import new_secret, secret_bytes
from hookline.store import Store

URL = "https://hooks.example.com/in"
T0 = 1_700_000_000.0


class MemoryKube(Kube):
    """Secrets in a dict, keyed by (namespace, name). ``down`` makes every call fail as an
    API server that does not answer; ``reads`` counts the Secrets read from "the API"."""

    def __init__(self, secrets: dict[tuple[str, str], dict[str, str]] | None = None) -> None:
        self.secrets = dict(secrets or {})
        self.owners: dict[tuple[str, str], dict[str, str]] = {}
        self.reads = 0
        self.down = False

    def _answer(self, what: str) -> None:
        if self.down:
            raise ApiUnavailable(f"{what}: connection refused")

    async def secret(self, namespace: str, name: str) -> dict[str, str] | None:
        self._answer(f"reading Secret {namespace}/{name}")
        self.reads += 1
        data = self.secrets.get((namespace, name))
        return None if data is None else dict(data)

    async def ensure_secret(
        self,
        namespace: str,
        name: str,
        key: str,
        make: Callable[[], str],
        owner: dict[str, str],
    ) -> OwnedSecret:
        self._answer(f"reading Secret {namespace}/{name}")
        if (namespace, name) in self.secrets:
            return OwnedSecret(dict(self.secrets[(namespace, name)]))
        self.secrets[(namespace, name)] = {key: make()}
        self.owners[(namespace, name)] = owner
        return OwnedSecret({key: self.secrets[(namespace, name)][key]}, f"Secret {name} generated")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def no_redis(tmp_path: Path) -> AsyncIterator[Store]:
    client = aioredis.Redis(
        unix_socket_path=str(tmp_path / "no-redis.sock"), retry=Retry(NoBackoff(), 0)
    )
    store = Store(client, Config(prefix="t"))
    yield store
    await store.aclose()
    await client.aclose()


@pytest.fixture
def kube() -> MemoryKube:
    return MemoryKube()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reconciler(kube: MemoryKube, no_redis: Store, clock: Clock) -> Reconciler:
    return Reconciler(Config(), kube, no_redis.registry, no_redis.figures, clock)


def endpoint(spec: dict[str, Any], status: dict[str, Any] | None = None) -> Resource:
    """shop/orders as kopf hands it to the handlers."""
    meta = {"name": "orders", "namespace": "shop", "uid": "uid-1", "generation": 3}
    return Resource.from_body({"metadata": meta, "spec": spec, "status": status or {}})


def ready(result_status: dict[str, Any]) -> dict[str, Any]:
    found = st.condition(result_status, st.READY)
    assert found is not None, result_status
    return found


async def test_an_endpoint_naming_no_secrets_gets_both_generated_and_owned_by_it(
    reconciler: Reconciler, kube: MemoryKube
) -> None:
    result = await reconciler.reconcile(endpoint({"url": URL}))
    assert result.changes == ["Secret orders-key generated", "Secret orders-signing generated"]
    assert result.status["keySecretName"] == "orders-key"
    assert kube.secrets[("shop", "orders-key")]["key"]
    assert len(secret_bytes(kube.secrets[("shop", "orders-signing")]["secret"])) == 32
    for name in ("orders-key", "orders-signing"):  # garbage-collected with the endpoint
        owner = kube.owners[("shop", name)]
        assert (owner["kind"], owner["name"]) == ("WebhookEndpoint", "orders")
        assert owner["uid"] == "uid-1"
    generated = dict(kube.secrets)
    again = await reconciler.reconcile(endpoint({"url": URL}))
    assert again.changes == []
    assert kube.secrets == generated


async def test_while_redis_is_down_the_status_says_so_and_names_the_key_secret(
    reconciler: Reconciler,
) -> None:
    result = await reconciler.reconcile(endpoint({"url": URL}))
    assert isinstance(result.error, StoreUnavailable)
    condition = ready(result.status)
    assert (condition["status"], condition["reason"]) == ("False", "RegistryUnavailable")
    assert "no-redis.sock" in condition["message"]
    assert result.status["observedGeneration"] == 3
    assert result.status["keySecretName"] == "orders-key"


async def test_a_missing_referenced_secret_or_key_is_reported_by_name(
    reconciler: Reconciler, kube: MemoryKube
) -> None:
    spec: dict[str, Any] = {"url": URL, "keySecretRef": {"name": "orders-ingest"}}
    result = await reconciler.reconcile(endpoint(spec))
    condition = ready(result.status)
    assert (condition["status"], condition["reason"]) == ("False", "SecretNotFound")
    assert condition["message"] == "Secret 'orders-ingest' not found in namespace 'shop'"
    assert ("shop", "orders-key") not in kube.secrets  # a named Secret is never generated

    kube.secrets[("shop", "orders-ingest")] = {"token": "k-123"}
    result = await reconciler.reconcile(endpoint(spec))
    assert ready(result.status)["message"] == "Secret 'orders-ingest' has no key 'key'"

    spec["keySecretRef"]["key"] = "token"
    result = await reconciler.reconcile(endpoint(spec))
    assert ready(result.status)["reason"] == "RegistryUnavailable"  # past the Secrets


async def test_a_signing_secret_that_is_not_whsec_base64_is_an_invalid_spec_naming_it(
    reconciler: Reconciler, kube: MemoryKube
) -> None:
    kube.secrets[("shop", "orders-hmac")] = {"s": "hunter2"}
    spec = {"url": URL, "signingSecretRef": {"name": "orders-hmac", "key": "s"}}
    condition = ready((await reconciler.reconcile(endpoint(spec))).status)
    assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
    assert condition["message"].startswith("Secret 'orders-hmac' key 's': a signing secret must")


async def test_an_api_server_that_does_not_answer_is_reported_as_api_unavailable(
    reconciler: Reconciler, kube: MemoryKube
) -> None:
    kube.down = True
    result = await reconciler.reconcile(endpoint({"url": URL}))
    assert isinstance(result.error, ApiUnavailable)
    condition = ready(result.status)
    assert (condition["reason"], condition["message"]) == (
        "ApiUnavailable",
        "reading Secret shop/orders-key: connection refused",
    )


async def test_timer_ticks_use_secrets_as_watch_events_left_them_without_reading_the_api(
    reconciler: Reconciler, kube: MemoryKube
) -> None:
    kube.secrets[("shop", "orders-ingest")] = {"key": "k-123"}
    kube.secrets[("shop", "orders-hmac")] = {"secret": new_secret()}
    spec = {
        "url": URL,
        "keySecretRef": {"name": "orders-ingest"},
        "signingSecretRef": {"name": "orders-hmac"},
    }
    res = endpoint(spec)
    await reconciler.reconcile(res)
    assert kube.reads == 2
    await reconciler.reconcile(res, fresh=False)
    assert kube.reads == 2
    # the key is removed from the Secret: the watch event says so, the next tick reports it
    assert reconciler.secret_seen("shop", "orders-ingest", {}) == [res]
    result = await reconciler.reconcile(res, fresh=False)
    assert ready(result.status)["message"] == "Secret 'orders-ingest' has no key 'key'"
    assert kube.reads == 2


async def test_only_a_change_to_a_secret_an_endpoint_uses_reconciles_that_endpoint(
    reconciler: Reconciler, kube: MemoryKube
) -> None:
    kube.secrets[("shop", "orders-ingest")] = {"key": "k-123"}
    res = endpoint({"url": URL, "keySecretRef": {"name": "orders-ingest"}})
    await reconciler.reconcile(res)
    assert reconciler.secret_seen("shop", "unrelated", {"key": "x"}) == []
    assert reconciler.secret_seen("elsewhere", "orders-ingest", {"key": "x"}) == []
    assert reconciler.secret_seen("shop", "orders-ingest", {"key": "k-123"}) == []  # as read
    assert reconciler.secret_seen("shop", "orders-ingest", {"key": "k-456"}) == [res]
    assert reconciler.secret_seen("shop", "orders-ingest", None) == [res]  # deleted
    # the signing Secret it has generated is one it uses too
    assert reconciler.secret_seen("shop", "orders-signing", {"secret": new_secret()}) == [res]


async def test_a_reconciliation_that_finds_nothing_new_patches_nothing(
    reconciler: Reconciler, clock: Clock
) -> None:
    first = await reconciler.reconcile(endpoint({"url": URL}))
    # kopf applies the patch; a minute later the timer finds the same state
    clock.now += 60
    again = await reconciler.reconcile(endpoint({"url": URL}, status=first.status))
    assert again.status == {}
    assert ready(first.status)["lastTransitionTime"] == "2023-11-14T22:13:20Z"


# -- sources and subscriptions


def source(spec: dict[str, Any], status: dict[str, Any] | None = None) -> Resource:
    """shop/feed, a WebhookSource, as kopf hands it to the handlers."""
    meta = {"name": "feed", "namespace": "shop", "uid": "uid-s", "generation": 2}
    return Resource.from_body({"metadata": meta, "spec": spec, "status": status or {}}, SOURCES)


def ready_status(reason: str) -> dict[str, Any]:
    ok = reason == st.REGISTERED
    return {"conditions": st.conditions([], [st.Condition(st.READY, ok, reason, "")], 1, T0)}


async def test_a_source_gets_a_key_secret_owned_by_it_and_no_signing_secret(
    reconciler: Reconciler, kube: MemoryKube
) -> None:
    result = await reconciler.reconcile(source({}))
    assert result.changes == ["Secret feed-key generated"]
    assert set(kube.secrets) == {("shop", "feed-key")}
    assert kube.secrets[("shop", "feed-key")]["key"]
    owner = kube.owners[("shop", "feed-key")]
    assert (owner["apiVersion"], owner["kind"], owner["name"], owner["uid"]) == (
        "hookline.dev/v1alpha1",
        "WebhookSource",
        "feed",
        "uid-s",
    )
    assert result.status["keySecretName"] == "feed-key"
    # past its Secret: Redis is down here; a source has no Delivering condition
    assert [c["type"] for c in result.status["conditions"]] == ["Ready"]
    assert ready(result.status)["reason"] == "RegistryUnavailable"


async def test_a_source_and_an_endpoint_of_one_name_are_two_resources_sharing_their_key_secret(
    reconciler: Reconciler, kube: MemoryKube
) -> None:
    """Both would generate shop/orders-key; on a cluster the second finds it generated for
    the first and reports SecretConflict (tests/kubernetes); here both are remembered apart
    and both are reconciled when the Secret changes."""
    orders_source = Resource.from_body(
        {"metadata": {"name": "orders", "namespace": "shop", "uid": "uid-s"}}, SOURCES
    )
    await reconciler.reconcile(endpoint({"url": URL}))
    await reconciler.reconcile(orders_source)
    users = reconciler.secret_seen("shop", "orders-key", {"key": "another"})
    assert sorted(r.kind.kind for r in users) == ["WebhookEndpoint", "WebhookSource"]
    assert [r.kind.kind for r in reconciler.secret_seen("shop", "orders-signing", None)] == [
        "WebhookEndpoint"
    ]


async def test_subscribers_whose_source_appeared_or_went_are_out_of_date(
    reconciler: Reconciler,
) -> None:
    waiting = endpoint({"url": URL, "source": "feed"}, ready_status(st.SOURCE_NOT_FOUND))
    other = Resource.from_body(
        {
            "metadata": {"name": "audit", "namespace": "shop", "uid": "uid-2"},
            "spec": {"url": URL, "source": "feed"},
            "status": ready_status(st.REGISTERED),
        }
    )
    direct = Resource.from_body(
        {
            "metadata": {"name": "direct", "namespace": "shop", "uid": "uid-3"},
            "spec": {"url": URL},
            "status": ready_status(st.REGISTERED),
        }
    )
    broken = Resource.from_body(
        {
            "metadata": {"name": "broken", "namespace": "shop", "uid": "uid-4"},
            "spec": {"url": URL, "source": "feed"},
            "status": ready_status(st.SECRET_NOT_FOUND),
        }
    )
    for res in (waiting, other, direct, broken):
        await reconciler.reconcile(res)  # remembered with the status it came with
    feed = {"shop/feed": ["shop/orders", "shop/audit", "shop/broken"]}
    # The source exists: the one that still says SourceNotFound is out of date.
    assert reconciler.out_of_date(Links({"shop/feed"}, feed)) == [waiting]
    # It went: the one that says it is ready is out of date; not one that is not
    # registered for another reason, nor one that subscribes to nothing.
    assert reconciler.out_of_date(Links(set(), feed)) == [other]


async def test_a_source_whose_subscribers_changed_is_out_of_date(reconciler: Reconciler) -> None:
    await reconciler.reconcile(source({}, {"subscribers": 1}))
    assert reconciler.out_of_date(Links({"shop/feed"}, {"shop/feed": ["shop/a"]})) == []
    stale = reconciler.out_of_date(Links({"shop/feed"}, {"shop/feed": ["shop/a", "shop/b"]}))
    assert [r.key for r in stale] == [("WebhookSource", "shop/feed")]
    assert [r.key for r in reconciler.out_of_date(Links({"shop/feed"}))] == [
        ("WebhookSource", "shop/feed")
    ]
    # the status patched: no longer out of date
    reconciler.remember_status(source({}), {"subscribers": 0})
    assert reconciler.out_of_date(Links({"shop/feed"})) == []


def test_the_indexes_leave_out_what_is_being_deleted() -> None:
    meta = {"name": "feed", "namespace": "shop"}
    assert source_entry({"metadata": meta}) == {"shop/feed": "feed"}
    deleting = {**meta, "deletionTimestamp": "2026-12-02T10:00:00Z"}
    assert source_entry({"metadata": deleting}) == {}
    sub = {"metadata": {"name": "billing", "namespace": "shop"}, "spec": {"source": "feed"}}
    assert subscription_entry(sub) == {"shop/feed": "shop/billing"}
    assert subscription_entry({**sub, "metadata": {**sub["metadata"], **deleting}}) == {}
    assert subscription_entry({**sub, "spec": {"url": URL}}) == {}
