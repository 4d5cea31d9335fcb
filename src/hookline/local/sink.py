"""The demo sink: an endpoint that prints what it receives.

It verifies each delivery's Standard Webhooks signature with the endpoint's
secret and prints one line per webhook, so ``make dev`` shows the whole path;
``hookline sink`` runs it alone (in a cluster: a first endpoint to try hookline
with, docs/kubernetes.md). With tracing on (``make dev TRACING=1``) it continues
each delivery's trace with a SERVER span of its own, as an instrumented endpoint
would, and tells the local stack which trace a delivery belongs to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
from collections.abc import Callable, Mapping
from typing import TextIO

from aiohttp import web

from hookline import spans
from hookline.signing import secret_bytes
from hookline.tracing import OFF, Tracing


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    signed = f"{headers.get('webhook-id')}.{headers.get('webhook-timestamp')}.".encode() + body
    expected = base64.b64encode(hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest())
    offered = [s.partition(",")[2] for s in headers.get("webhook-signature", "").split()]
    return any(hmac.compare_digest(expected.decode(), o) for o in offered)


def create_sink(
    secrets: dict[str, str],
    out: TextIO = sys.stdout,
    fallback: str | None = None,
    tracing: Tracing = OFF,
    on_delivery: Callable[[Mapping[str, str]], None] | None = None,
) -> web.Application:
    """``secrets`` maps a path (``/hooks/demo``) to its endpoint's signing secret;
    ``fallback`` is the secret of every other path. ``on_delivery`` is called with
    each delivery's headers (lower-case names)."""

    async def receive(request: web.Request) -> web.Response:
        if not tracing.enabled:
            response = await show(request)
        else:
            with spans.server(tracing, request, request.path) as span:
                response = await show(request)
                spans.answered(span, response.status)
        if on_delivery is not None:
            on_delivery({k.lower(): v for k, v in request.headers.items()})
        return response

    async def show(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        secret = secrets.get(request.path, fallback)
        check = (
            "unsigned?" if secret is None else ("valid" if verify(secret, headers, body) else "BAD")
        )
        preview = body[:200].decode("utf-8", "replace")
        print(
            f"sink {request.path} id={headers.get('webhook-id')} signature={check} "
            f"bytes={len(body)} body={preview!r}",
            file=out,
            flush=True,
        )
        return web.json_response({"received": headers.get("webhook-id")})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("POST", "/{tail:.*}", receive)
    return app
