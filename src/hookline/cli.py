"""The ``hookline`` command: the parser, and which function each subcommand runs.

    hookline receiver | dispatcher | operator   run a component (configured by HOOKLINE_*)
    hookline dev [--endpoints DIR] [--tracing]  the local stack: redis, receiver, dispatcher, sink
                                                (and Jaeger, with --tracing)
    hookline sink [--port N]                    a demo endpoint that checks signatures
    hookline send --key KEY [--type TYPE]       post a test webhook (a source's event: --type)
    hookline dlq list | show ID | replay ...    the dead letter
    hookline endpoints                          endpoints and their delivery figures

Each component's ``run`` (``receiver/main.py``, ``dispatcher/main.py``,
``operator/main.py``) builds its own dependencies; the local stack is
:mod:`hookline.local`, the operator's tools are :mod:`hookline.admin`. Any
:class:`~hookline.errors.HooklineError` ends the command with one line and status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from hookline import config as config_mod
from hookline.errors import HooklineError
from hookline.runtime import run


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hookline", description="A Kubernetes-native webhook relay.")
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("receiver", help="run the ingest service")
    sub.add_parser("dispatcher", help="run a delivery worker for HOOKLINE_POOL")
    sub.add_parser("operator", help="run the Kubernetes operator")
    dev = sub.add_parser("dev", help="run the local stack")
    dev.add_argument("--endpoints", default="examples/endpoints")
    dev.add_argument("--sink-port", type=int, default=9000)
    dev.add_argument(
        "--tracing",
        action="store_true",
        help="trace every webhook into a Jaeger of the stack's own "
        "(or to OTEL_EXPORTER_OTLP_ENDPOINT when set)",
    )
    dev.add_argument(
        "--jaeger-port", type=int, default=16686, help="that Jaeger's UI and API (gRPC API: N-1)"
    )
    dev.add_argument("--otlp-port", type=int, default=4318, help="its OTLP/HTTP (OTLP/gRPC: N-1)")
    sink = sub.add_parser(
        "sink", help="a demo endpoint that prints each webhook, its signature checked"
    )
    sink.add_argument("--port", type=int, default=8080)
    send = sub.add_parser("send", help="post a test webhook")
    send.add_argument("--url", default="http://127.0.0.1:8080")
    send.add_argument("--key", required=True, help="an endpoint's or a source's ingest key")
    send.add_argument(
        "--type",
        metavar="EVENT_TYPE",
        help="the event type (X-WH-Event-Type): required with a source's key, whose event "
        "goes to every subscriber whose filter matches it",
    )
    send.add_argument("--data", help='the body (default: {"type": EVENT_TYPE or "test", ...})')
    send.add_argument("--file")
    send.add_argument("--content-type", default="application/json")
    send.add_argument("--header", action="append", help="NAME: VALUE, repeatable")
    send.add_argument("--idempotency-key")
    dlq = sub.add_parser("dlq", help="list, show and replay dead letters")
    dsub = dlq.add_subparsers(dest="action", required=True)
    lst = dsub.add_parser("list")
    lst.add_argument("--endpoint")
    lst.add_argument("--since", help="e.g. 30m, 2h, 7d")
    lst.add_argument("--limit", type=int, default=100)
    show = dsub.add_parser("show")
    show.add_argument("id", help="a dead-letter id or a webhook id")
    rep = dsub.add_parser("replay")
    rep.add_argument("ids", nargs="*")
    rep.add_argument("--endpoint")
    rep.add_argument("--since")
    eps = sub.add_parser("endpoints", help="endpoints and their delivery figures")
    eps.add_argument("--attempts", metavar="ENDPOINT", help="the latest attempts of one endpoint")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_mod.load()
        if args.command == "receiver":
            from hookline import receiver

            run(lambda stop: receiver.run(config, stop))
        elif args.command == "dispatcher":
            from hookline import dispatcher

            run(lambda stop: dispatcher.run(config, stop))
        elif args.command == "operator":
            from hookline import operator

            return int(operator.run(config))
        elif args.command in ("dev", "sink"):
            from hookline.local import stack

            if args.command == "sink":
                run(lambda stop: stack.sink(config, stop, args.port))
            else:
                if args.tracing:
                    config = dataclasses.replace(config, tracing="on")
                run(
                    lambda stop: stack.run(
                        config,
                        stop,
                        args.endpoints,
                        args.sink_port,
                        args.jaeger_port,
                        args.otlp_port,
                    )
                )
        else:
            from hookline import admin

            if args.command == "send":
                return int(run(lambda _stop: admin.send(config, args)))
            if args.command == "dlq":
                return int(run(lambda _stop: admin.dlq(config, args)))
            return int(run(lambda _stop: admin.endpoints(config, args.attempts)))
    except HooklineError as exc:
        print(f"hookline: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
