"""The few Kubernetes API calls the operator makes itself, through lightkube.

kopf watches the resources and applies the patches its handlers return; this
module does the rest: read a Secret, create an owned Secret, patch an
endpoint's status when a change is noticed outside a handler of that endpoint
(a Secret that appeared or changed), and, for the scaler
(:mod:`hookline.operator.scaler`), list the dispatcher Deployments, set their
replicas through the ``scale`` subresource and post Events about them.
lightkube's and httpx's errors stop here: callers see ``None`` for a missing
object and :class:`ApiUnavailable` otherwise.
"""

from __future__ import annotations

import base64
import datetime
import socket
from collections.abc import Callable, Iterable
from typing import Any

import httpx2
from lightkube import ALL_NS, ApiError, AsyncClient
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Event, Secret
from lightkube.types import PatchType

from hookline.errors import HooklineError

GROUP = "hookline.dev"
VERSION = "v1alpha1"
KIND = "WebhookEndpoint"
PLURAL = "webhookendpoints"

WebhookEndpoint = create_namespaced_resource(GROUP, VERSION, KIND, PLURAL)

MANAGED_BY = {"app.kubernetes.io/managed-by": "hookline-operator"}

COMPONENT_LABEL = "hookline.dev/component"
DISPATCHER = "dispatcher"


class ApiUnavailable(HooklineError):
    """The Kubernetes API did not answer as it should; the operation may succeed later."""


def _decode(data: dict[str, str] | None) -> dict[str, str]:
    out = {}
    for k, v in (data or {}).items():
        try:
            out[k] = base64.b64decode(v).decode()
        except (ValueError, UnicodeDecodeError):
            continue  # binary values are never keys or signing secrets
    return out


def secret_data(body: dict[str, Any]) -> dict[str, str]:
    """The decoded ``data`` of a Secret as a watch event or the API hands it over."""
    return _decode(body.get("data"))


class Kube:
    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's decoded data, or None when there is no such Secret."""
        try:
            obj = await self.client.get(Secret, name, namespace=namespace)
        except ApiError as exc:
            if exc.status.code == 404:
                return None
            raise ApiUnavailable(f"reading Secret {namespace}/{name}: {exc}") from exc
        except httpx2.HTTPError as exc:
            raise ApiUnavailable(f"reading Secret {namespace}/{name}: {exc}") from exc
        return _decode(obj.data)

    async def ensure_secret(
        self,
        namespace: str,
        name: str,
        key: str,
        make: Callable[[], str],
        owner: dict[str, str],
    ) -> dict[str, str]:
        """The data of Secret ``name``; created with ``{key: make()}`` and owned by ``owner``
        (apiVersion, kind, name, uid) when it does not exist. A Secret created meanwhile by
        someone else (another replica) wins: its data is returned."""
        existing = await self.secret(namespace, name)
        if existing is not None:
            return existing
        value = make()
        secret = Secret(
            metadata=ObjectMeta(
                name=name,
                namespace=namespace,
                labels={**MANAGED_BY, "hookline.dev/endpoint": owner["name"]},
                ownerReferences=[
                    OwnerReference(
                        apiVersion=owner["apiVersion"],
                        kind=owner["kind"],
                        name=owner["name"],
                        uid=owner["uid"],
                        controller=True,
                        blockOwnerDeletion=True,
                    )
                ],
            ),
            type="Opaque",
            stringData={key: value},
        )
        try:
            await self.client.create(secret)
        except ApiError as exc:
            if exc.status.code == 409:
                again = await self.secret(namespace, name)
                if again is not None:
                    return again
            raise ApiUnavailable(f"creating Secret {namespace}/{name}: {exc}") from exc
        except httpx2.HTTPError as exc:
            raise ApiUnavailable(f"creating Secret {namespace}/{name}: {exc}") from exc
        return {key: value}

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge ``status`` into the endpoint's status; False when the endpoint is gone."""
        try:
            await self.client.patch(
                WebhookEndpoint.Status,
                name,
                {"status": status},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        except ApiError as exc:
            if exc.status.code == 404:
                return False
            raise ApiUnavailable(f"patching {namespace}/{name} status: {exc}") from exc
        except httpx2.HTTPError as exc:
            raise ApiUnavailable(f"patching {namespace}/{name} status: {exc}") from exc
        return True

    # -- dispatcher Deployments (the scaler)

    async def dispatcher_deployments(self, namespaces: Iterable[str]) -> list[Deployment]:
        """The Deployments labelled ``hookline.dev/component=dispatcher`` in ``namespaces``
        (none given: the whole cluster). The label is a server-side selector: other
        Deployments are never even read."""
        out: list[Deployment] = []
        for ns in list(namespaces) or [ALL_NS]:
            try:
                async for d in self.client.list(
                    Deployment, namespace=ns, labels={COMPONENT_LABEL: DISPATCHER}
                ):
                    out.append(d)
            except ApiError as exc:
                raise ApiUnavailable(f"listing dispatcher Deployments in {ns}: {exc}") from exc
            except httpx2.HTTPError as exc:
                raise ApiUnavailable(f"listing dispatcher Deployments in {ns}: {exc}") from exc
        return out

    async def scale(self, namespace: str, name: str, replicas: int, resource_version: str) -> bool:
        """Set a Deployment's replicas through its ``scale`` subresource, as the HPA does,
        on the condition that it is still at ``resource_version``; False when it changed
        meanwhile or is gone (the next decision sees the new state)."""
        patch = {"metadata": {"resourceVersion": resource_version}, "spec": {"replicas": replicas}}
        try:
            await self.client.patch(
                Deployment.Scale, name, patch, namespace=namespace, patch_type=PatchType.MERGE
            )
        except ApiError as exc:
            if exc.status.code in (404, 409):
                return False
            raise ApiUnavailable(f"scaling Deployment {namespace}/{name}: {exc}") from exc
        except httpx2.HTTPError as exc:
            raise ApiUnavailable(f"scaling Deployment {namespace}/{name}: {exc}") from exc
        return True

    async def event(
        self, obj: Deployment, reason: str, message: str, warning: bool = False
    ) -> None:
        """Post a core/v1 Event about ``obj`` (what ``kubectl describe`` shows)."""
        meta = obj.metadata
        assert meta is not None and meta.name is not None
        now = datetime.datetime.now(datetime.UTC)
        event = Event(
            metadata=ObjectMeta(generateName=f"{meta.name}.", namespace=meta.namespace),
            involvedObject=ObjectReference(
                apiVersion="apps/v1",
                kind="Deployment",
                name=meta.name,
                namespace=meta.namespace,
                uid=meta.uid,
                resourceVersion=meta.resourceVersion,
            ),
            reason=reason,
            message=message[:1024],
            type="Warning" if warning else "Normal",
            source=EventSource(component="hookline-operator"),
            reportingComponent="hookline.dev/operator",
            reportingInstance=socket.gethostname(),
            firstTimestamp=now,
            lastTimestamp=now,
            count=1,
        )
        try:
            await self.client.create(event)
        except ApiError as exc:
            raise ApiUnavailable(f"posting Event {reason} on {meta.name}: {exc}") from exc
        except httpx2.HTTPError as exc:
            raise ApiUnavailable(f"posting Event {reason} on {meta.name}: {exc}") from exc
