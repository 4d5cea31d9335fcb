"""WebhookEndpoint and WebhookSource manifests read from files, for the local stack (no
cluster).

``hookline dev`` loads ``examples/endpoints/*.yaml``: the same documents one would
``kubectl apply`` — ``WebhookEndpoint`` and ``WebhookSource`` resources and the
``Secret``\\ s they refer to. A referenced Secret missing from the folder is generated
(and printed), as the operator does on a cluster.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hookline.config import Config
from hookline.errors import InvalidSpec
from hookline.models import Endpoint, SigningSecret, Source, endpoint_from_spec, source_from_spec
from hookline.signing import new_key, new_secret

GROUP = "hookline.dev"
KIND = "WebhookEndpoint"
SOURCE_KIND = "WebhookSource"


@dataclass(frozen=True)
class LoadedEndpoint:
    endpoint: Endpoint
    key: str
    signing_secret: str


@dataclass(frozen=True)
class LoadedSource:
    source: Source
    key: str


@dataclass(frozen=True)
class Manifests:
    """What a folder of manifests declares, with every key and secret resolved."""

    endpoints: list[LoadedEndpoint] = field(default_factory=list)
    sources: list[LoadedSource] = field(default_factory=list)

    def subscribers(self, source_id: str) -> list[Endpoint]:
        return [e.endpoint for e in self.endpoints if e.endpoint.source == source_id]

    def missing_sources(self) -> dict[str, str]:
        """Endpoints whose ``spec.source`` names no source of the folder → that source
        (on a cluster: ``Ready=False``, reason ``SourceNotFound``)."""
        known = {s.source.id for s in self.sources}
        return {
            e.endpoint.id: e.endpoint.source
            for e in self.endpoints
            if e.endpoint.source is not None and e.endpoint.source not in known
        }


def _secret_data(doc: dict[str, Any]) -> dict[str, str]:
    out = {k: str(v) for k, v in (doc.get("stringData") or {}).items()}
    for k, v in (doc.get("data") or {}).items():
        out.setdefault(k, base64.b64decode(v).decode())
    return out


def _ours(doc: dict[str, Any], kind: str) -> bool:
    return doc.get("kind") == kind and str(doc.get("apiVersion", "")).startswith(GROUP)


def load_manifests(folder: str | Path, config: Config) -> Manifests:
    docs: list[dict[str, Any]] = []
    for path in sorted(Path(folder).glob("*.y*ml")):
        try:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))
        except yaml.YAMLError as exc:
            raise InvalidSpec(f"{path}: {exc}") from exc
    secrets_by_name = {
        (d.get("metadata") or {}).get("name", ""): _secret_data(d)
        for d in docs
        if d.get("kind") == "Secret"
    }

    def resolve(ref: dict[str, Any] | None, default_key: str, make: str) -> str:
        if not ref:
            return make
        data = secrets_by_name.get(ref.get("name", ""))
        if data is None:
            return make
        value = data.get(ref.get("key", default_key))
        if not value:
            raise InvalidSpec(
                f"Secret {ref.get('name')!r} has no key {ref.get('key', default_key)!r}"
            )
        return value

    def named(doc: dict[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
        meta = doc.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise InvalidSpec(f"a {kind} without metadata.name")
        return f"{meta.get('namespace', 'default')}/{name}", doc.get("spec") or {}

    out = Manifests()
    for doc in docs:
        if _ours(doc, KIND):
            endpoint_id, spec = named(doc, KIND)
            key = resolve(spec.get("keySecretRef"), "key", new_key())
            signing = resolve(spec.get("signingSecretRef"), "secret", new_secret())
            endpoint = endpoint_from_spec(
                endpoint_id, spec, [key], [SigningSecret(signing)], config
            )
            out.endpoints.append(LoadedEndpoint(endpoint, key, signing))
        elif _ours(doc, SOURCE_KIND):
            source_id, spec = named(doc, SOURCE_KIND)
            key = resolve(spec.get("keySecretRef"), "key", new_key())
            out.sources.append(LoadedSource(source_from_spec(source_id, spec, [key]), key))
    return out


def load_endpoints(folder: str | Path, config: Config) -> list[LoadedEndpoint]:
    """The endpoints of the folder alone."""
    return load_manifests(folder, config).endpoints
