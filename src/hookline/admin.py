"""What an operator of hookline types: ``hookline send``, ``hookline dlq``, ``hookline endpoints``.

Each function takes the parsed arguments (and the configuration, for the store),
prints its answer and returns the process's exit status. Called by :mod:`hookline.cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import aiohttp

from hookline import spans, telemetry
from hookline.config import Config
from hookline.dispatcher.policy import circuit_open
from hookline.store import DeadLetter, Store


async def send(config: Config, args: argparse.Namespace) -> int:
    """POST one webhook with an endpoint's key — or, with a source's key and ``--type``, one
    event that fans out to the source's subscribers; prints the status and the answer
    (for a source's event ``{"id", "endpoints": N}``). With tracing on
    (``OTEL_EXPORTER_OTLP_ENDPOINT`` set, as ``make dev TRACING=1`` prints it) the request
    is a CLIENT span of service ``hookline-send`` that starts the webhook's trace."""
    headers = {"X-WH-Endpoint-Key": args.key, "Content-Type": args.content_type}
    if args.type:
        headers["X-WH-Event-Type"] = args.type
    for h in args.header or []:
        name, _, value = h.partition(":")
        headers[name.strip()] = value.strip()
    if args.idempotency_key:
        headers["Idempotency-Key"] = args.idempotency_key
    if args.file:
        data = await asyncio.to_thread(Path(args.file).read_bytes)
    elif args.data is not None:
        data = args.data.encode()
    else:
        body = {"type": args.type or "test", "hello": "world"}
        data = json.dumps(body, separators=(",", ":")).encode()
    tracing = telemetry.setup(config, telemetry.SENDER, install_global=False)
    try:
        async with aiohttp.ClientSession() as session:
            url = args.url.rstrip("/") + "/webhooks/send"
            async with spans.post(tracing, session, url, data=data, headers=headers) as resp:
                print(resp.status, await resp.text())
                return 0 if resp.status < 300 else 1
    finally:
        await tracing.close()


async def dlq(config: Config, args: argparse.Namespace) -> int:
    store = Store.connect(config)
    letters = store.dead_letters
    try:
        since = time.time() - _duration(args.since) if getattr(args, "since", None) else None
        if args.action == "list":
            for letter in await letters.find(since, args.endpoint, args.limit):
                wh = letter.webhook
                print(
                    f"{letter.id}  {wh.id}  {wh.endpoint}  attempts={wh.attempt}  "
                    f"{_when(letter.at * 1000)}  {letter.reason}"
                )
            return 0
        if args.action == "show":
            shown = await letters.get(args.id)
            if shown is None:
                print(f"no dead letter {args.id}", file=sys.stderr)
                return 1
            print(json.dumps(_shown(shown, await store.dead_letters.body(shown)), indent=2))
            return 0
        # replay
        chosen: list[DeadLetter] = []
        if args.ids:
            for ident in args.ids:
                found = await letters.get(ident)
                if found is None:
                    print(f"no dead letter {ident}", file=sys.stderr)
                    return 1
                chosen.append(found)
        else:
            chosen = await letters.find(since, args.endpoint, 1_000_000)
        replayed = 0
        for letter in chosen:
            endpoint = await store.registry.get(letter.webhook.endpoint)
            pool = endpoint.pool if endpoint else letter.pool
            replayed += await letters.replay(letter, pool)
        print(f"replayed {replayed} webhook(s)")
        return 0
    finally:
        await store.aclose()


def _shown(letter: DeadLetter, body: bytes | None) -> dict[str, object]:
    wh = letter.webhook
    return {
        "dead_letter_id": letter.id,
        "id": wh.id,
        "endpoint": wh.endpoint,
        "reason": letter.reason,
        "pool": letter.pool,
        "attempts": wh.attempt,
        "dead_at": letter.at,
        "created_at": wh.created_ms / 1000,
        "headers": wh.headers,
        "size": wh.size,
        "body_ref": wh.body_ref,
        "source": wh.source,
        "body": body.decode("utf-8", "replace") if body is not None else None,
    }


def _when(value: str | float | None) -> str:
    if not value:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(value) / 1000))


async def endpoints(config: Config, attempts_of: str | None = None) -> int:
    """The endpoints with their figures; with ``attempts_of``, that endpoint's latest attempts."""
    store = Store.connect(config)
    try:
        if attempts_of is not None:
            for a in await store.figures.attempts(attempts_of):
                print(
                    f"{_when(a['at'] * 1000)}  status={a.get('status') or '-'}  "
                    f"latency={a.get('latency', 0) * 1000:.0f}ms  {a.get('reason', 'delivered')}"
                )
            return 0
        disabled = await store.registry.disabled()
        header = (
            "ENDPOINT",
            "POOL",
            "DELIVERED",
            "FAILED",
            "DEAD",
            "DUPLICATES",
            "STATE",
            "LAST SUCCESS",
            "LAST FAILURE",
            "URL",
        )
        rows = [header]
        now = time.time()
        for ep in sorted((await store.registry.all()).values(), key=lambda e: e.id):
            s = await store.figures.stats(ep.id)
            streak, until = int(s.get("streak", 0)), float(s.get("open_until", 0)) / 1000
            if ep.id in disabled:
                state = "disabled: " + str(disabled[ep.id].get("reason", ""))
            elif ep.paused:
                state = "paused"
            elif circuit_open(streak, until, config.circuit_threshold, now):
                state = "circuit-open"
            else:
                state = "active"
            last_failure = "-"
            if s.get("last_failure"):
                f = json.loads(s["last_failure"])
                last_failure = f"{_when(f['at'] * 1000)} {f.get('reason', '')}"
            rows.append(
                (
                    ep.id,
                    ep.pool,
                    s.get("delivered", "0"),
                    s.get("failed", "0"),
                    s.get("dead", "0"),
                    s.get("duplicates", "0"),
                    state,
                    _when(s.get("last_success")),
                    last_failure,
                    ep.url,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        return 0
    finally:
        await store.aclose()


def _duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)
