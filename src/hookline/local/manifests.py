"""WebhookEndpoint manifests read from files, for the local stack (no cluster).

``hookline dev`` loads ``examples/endpoints/*.yaml``: the same documents one
would ``kubectl apply`` — ``WebhookEndpoint`` resources and the ``Secret``\\ s
they refer to. A referenced Secret missing from the folder is generated (and
printed), as the operator does on a cluster.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hookline.config import Config
from hookline.errors import InvalidSpec
from hookline.models import Endpoint, SigningSecret, endpoint_from_spec
from hookline.signing import new_key, new_secret

GROUP = "hookline.dev"
KIND = "WebhookEndpoint"


@dataclass(frozen=True)
class LoadedEndpoint:
    endpoint: Endpoint
    key: str
    signing_secret: str


def _secret_data(doc: dict[str, Any]) -> dict[str, str]:
    out = {k: str(v) for k, v in (doc.get("stringData") or {}).items()}
    for k, v in (doc.get("data") or {}).items():
        out.setdefault(k, base64.b64decode(v).decode())
    return out


def load_endpoints(folder: str | Path, config: Config) -> list[LoadedEndpoint]:
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

    out = []
    for doc in docs:
        if doc.get("kind") != KIND or not str(doc.get("apiVersion", "")).startswith(GROUP):
            continue
        meta = doc.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise InvalidSpec("a WebhookEndpoint without metadata.name")
        spec = doc.get("spec") or {}
        key = resolve(spec.get("keySecretRef"), "key", new_key())
        signing = resolve(spec.get("signingSecretRef"), "secret", new_secret())
        endpoint = endpoint_from_spec(
            f"{meta.get('namespace', 'default')}/{name}",
            spec,
            [key],
            [SigningSecret(signing)],
            config,
        )
        out.append(LoadedEndpoint(endpoint, key, signing))
    return out
