"""The two resources the operator reconciles, each described once: how the API names it,
which Secrets it refers to (and what is generated when the spec names none), and the
label that marks a Secret generated for one.

The reconciliation itself is the same for both (:mod:`hookline.operator.reconcile`):
resolve the Secrets, write the registry record when it differs, compute the status. A
``WebhookEndpoint`` has an ingest key and a signing secret; a ``WebhookSource`` an ingest
key only. The CRDs are ``crds/webhookendpoints.yaml`` and ``crds/webhooksources.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource

from hookline.signing import new_key, new_secret, secret_bytes

GROUP = "hookline.dev"
VERSION = "v1alpha1"


@dataclass(frozen=True)
class SecretRef:
    """A Secret a resource refers to in ``spec.<field>`` (``{name, key}``); when the field
    is absent the operator generates ``NAME-<suffix>`` with ``{key: make()}``. ``check``
    refuses a value that cannot serve (raises :class:`~hookline.errors.InvalidSpec`)."""

    field: str
    suffix: str
    key: str
    make: Callable[[], str]
    check: Callable[[str], object] | None = None


KEY = SecretRef("keySecretRef", "key", "key", new_key)
SIGNING = SecretRef("signingSecretRef", "signing", "secret", new_secret, secret_bytes)


@dataclass(frozen=True)
class Kind:
    kind: str  # WebhookEndpoint
    plural: str  # webhookendpoints
    noun: str  # endpoint: in messages, and in the label of the Secrets generated for one
    secrets: tuple[SecretRef, ...]
    resource: type[GenericNamespacedResource]  # lightkube's class, for status patches

    @property
    def api_version(self) -> str:
        return f"{GROUP}/{VERSION}"

    @property
    def label(self) -> str:
        """The label on a Secret generated for a resource of this kind: its name."""
        return f"{GROUP}/{self.noun}"


ENDPOINTS = Kind(
    "WebhookEndpoint",
    "webhookendpoints",
    "endpoint",
    (KEY, SIGNING),
    create_namespaced_resource(GROUP, VERSION, "WebhookEndpoint", "webhookendpoints"),
)
SOURCES = Kind(
    "WebhookSource",
    "webhooksources",
    "source",
    (KEY,),
    create_namespaced_resource(GROUP, VERSION, "WebhookSource", "webhooksources"),
)
KINDS = {k.kind: k for k in (ENDPOINTS, SOURCES)}
