"""Tracing: one trace per webhook, from the sender through hookline to the endpoint.

The entry points (``hookline receiver | dispatcher | dev``) build a
:class:`Tracing` with :func:`setup` and pass it to the components, which only
call its span helpers. When tracing is off the components get :data:`OFF`: every
helper returns at once (a shared no-op context manager, an empty list), so the
hot path pays a branch and no OpenTelemetry call.

* **Core**: the OpenTelemetry SDK with a batch span processor and an OTLP exporter
  (HTTP/protobuf by default, gRPC with ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``),
  configured by the standard ``OTEL_*`` variables: endpoint, protocol, headers,
  timeout, sampler, service name, batch sizes. The SDK is imported only when
  tracing is on.
* **On or off**: on with ``HOOKLINE_TRACING=on``, or with ``auto`` (the default)
  when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is
  set; off with ``HOOKLINE_TRACING=off``, ``OTEL_SDK_DISABLED=true`` or
  ``OTEL_TRACES_EXPORTER=none``.
* **OpenTracing**: the OpenTelemetry shim over the component's provider is
  installed as the global OpenTracing tracer, so code instrumented with the
  ``opentracing`` API joins the same traces.
* **Propagation**: Jaeger (``uber-trace-id``), W3C trace-context and W3C baggage.
  Extraction runs them in that order, so W3C wins when a request carries both;
  ``OTEL_PROPAGATORS`` chooses another set. Inside hookline, the queue entry
  (:attr:`~hookline.models.Webhook.trace`) carries W3C trace-context and baggage.

The spans (``docs/tracing.md`` shows a real trace)::

    hookline-receiver    POST /webhooks/send   SERVER    continues the sender's context
                           body upload         INTERNAL  bodies over the inline limit
                           send <stream>       PRODUCER  its context goes into the entry
    hookline-dispatcher  process <stream>      CONSUMER  one per attempt, child of the producer
                           POST                CLIENT    injects traceparent into the delivery

Attributes follow the OpenTelemetry HTTP and messaging conventions, plus a few
``hookline.*`` ones (endpoint, attempt, outcome). Bodies, headers other than the
user agent, signatures, keys and URL query values are never recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Final

import aiohttp
from aiohttp import web
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.jaeger import JaegerPropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from hookline.config import Config
from hookline.errors import InvalidSpec
from hookline.models import Deferred, Delivered, Failed, Outcome, Rejected, Webhook

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.trace.sampling import Sampler

RECEIVER: Final = "hookline-receiver"
DISPATCHER: Final = "hookline-dispatcher"
MESSAGING_SYSTEM: Final = "redis"

# The queue entry's carrier: hookline writes it and reads it, W3C is enough.
_CARRIER: Final = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
_NOTHING: Final[AbstractContextManager[None]] = contextlib.nullcontext()
_ENDPOINT_VARS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def default_propagator() -> TextMapPropagator:
    """Jaeger, W3C trace-context, W3C baggage: extracted in this order, so W3C wins."""
    return CompositePropagator(
        [JaegerPropagator(), TraceContextTextMapPropagator(), W3CBaggagePropagator()]
    )


class Tracing:
    """A component's tracer, its propagators and the span helpers the components call.

    Built by :func:`setup`; :data:`OFF` when tracing is off. ``provider`` is kept
    only to flush and shut down the exporter."""

    def __init__(
        self,
        tracer: Tracer | None,
        propagator: TextMapPropagator | None = None,
        provider: TracerProvider | None = None,
    ) -> None:
        self.tracer = tracer
        self.enabled = tracer is not None
        self.propagator = propagator or default_propagator()
        self.provider = provider

    # -- receiver

    @contextlib.contextmanager
    def server(self, request: web.Request, route: str) -> Iterator[Span]:
        """The SERVER span of one request, continuing the sender's trace (``traceparent``
        or ``uber-trace-id``) and current while the request is handled."""
        assert self.tracer is not None
        parent = self.propagator.extract(request.headers)
        token = otel_context.attach(parent)  # the sender's baggage stays in the context
        try:
            attributes: dict[str, Any] = {
                "http.request.method": request.method,
                "http.route": route,
                "url.path": request.path,
                "url.scheme": request.scheme,
            }
            host, _, port = request.host.rpartition(":")
            if host and port.isdigit():
                attributes["server.address"] = host
                attributes["server.port"] = int(port)
            else:
                attributes["server.address"] = request.host
            if request.remote:
                attributes["client.address"] = request.remote
            agent = request.headers.get("User-Agent")
            if agent:
                attributes["user_agent.original"] = agent
            if request.content_length is not None:
                attributes["http.request.body.size"] = request.content_length
            with self.tracer.start_as_current_span(
                f"{request.method} {route}", kind=SpanKind.SERVER, attributes=attributes
            ) as span:
                yield span
        finally:
            otel_context.detach(token)

    @staticmethod
    def answered(span: Span, status: int) -> None:
        """Record the response status; a 5xx is the server's error, a 4xx the sender's."""
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))

    def upload(self, store: str) -> AbstractContextManager[Any]:
        """The span of a large body's upload to the body store."""
        if self.tracer is None:
            return _NOTHING
        return self.tracer.start_as_current_span(
            "body upload", kind=SpanKind.INTERNAL, attributes={"hookline.body.store": store}
        )

    def produce(self, webhook: Webhook, destination: str) -> AbstractContextManager[Any]:
        """The PRODUCER span of an enqueue; its context goes into ``webhook.trace``, so it
        must be entered before the entry is packed."""
        if self.tracer is None:
            return _NOTHING
        return self._produce(webhook, destination)

    @contextlib.contextmanager
    def _produce(self, webhook: Webhook, destination: str) -> Iterator[Span]:
        assert self.tracer is not None
        attributes: dict[str, Any] = {
            "messaging.system": MESSAGING_SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "xadd",
            "messaging.destination.name": destination,
            "messaging.message.id": webhook.id,
            "messaging.message.body.size": webhook.size,
            "hookline.endpoint": webhook.endpoint,
        }
        with self.tracer.start_as_current_span(
            f"send {destination}", kind=SpanKind.PRODUCER, attributes=attributes
        ) as span:
            _CARRIER.inject(webhook.trace)
            yield span

    # -- dispatcher

    def consume(
        self, webhook: Webhook, destination: str, group: str
    ) -> AbstractContextManager[Any]:
        """The CONSUMER span of one delivery attempt, a child of the producer span whose
        context the entry carries (a new trace when it carries none)."""
        if self.tracer is None:
            return _NOTHING
        return self._consume(webhook, destination, group)

    @contextlib.contextmanager
    def _consume(self, webhook: Webhook, destination: str, group: str) -> Iterator[Span]:
        assert self.tracer is not None
        token = otel_context.attach(_CARRIER.extract(webhook.trace))
        try:
            attributes: dict[str, Any] = {
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "deliver",
                "messaging.destination.name": destination,
                "messaging.consumer.group.name": group,
                "messaging.message.id": webhook.id,
                "messaging.message.body.size": webhook.size,
                "hookline.endpoint": webhook.endpoint,
                "hookline.attempt": webhook.attempt + 1,
            }
            with self.tracer.start_as_current_span(
                f"process {destination}", kind=SpanKind.CONSUMER, attributes=attributes
            ) as span:
                yield span
        finally:
            otel_context.detach(token)

    def outcome(self, outcome: Outcome) -> None:
        """Record what the current delivery attempt came to on its CONSUMER span."""
        if self.tracer is None:
            return
        span = trace.get_current_span()
        if not span.is_recording():
            return
        if isinstance(outcome, Delivered):
            span.set_attribute("hookline.outcome", "delivered")
            return
        kind = {Failed: "failed", Rejected: "rejected", Deferred: "deferred"}[type(outcome)]
        span.set_attributes({"hookline.outcome": kind, "hookline.outcome.reason": outcome.reason})
        if not isinstance(outcome, Deferred):
            span.set_status(Status(StatusCode.ERROR, outcome.reason))

    def dead_lettered(self, reason: str) -> None:
        """Mark the current delivery attempt as the one that sent the webhook to the dead letter."""
        if self.tracer is None:
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("hookline.dead_letter", reason)
            span.set_status(Status(StatusCode.ERROR, reason))

    def client_trace_configs(self) -> list[aiohttp.TraceConfig]:
        """For the dispatcher's ``ClientSession``: a CLIENT span around each delivery request,
        child of the current CONSUMER span, whose context is injected into the request
        (``traceparent``, and the other configured propagators' headers)."""
        if self.tracer is None:
            return []
        config = aiohttp.TraceConfig()
        config.on_request_start.append(self._request_start)
        config.on_request_end.append(self._request_end)
        config.on_request_exception.append(self._request_exception)
        return [config]

    async def _request_start(
        self,
        _: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        assert self.tracer is not None
        url = params.url
        attributes: dict[str, Any] = {
            "http.request.method": params.method,
            "server.address": url.host or "",
            "url.full": _redacted(url),
        }
        if url.port is not None:
            attributes["server.port"] = url.port
        span = self.tracer.start_span(params.method, kind=SpanKind.CLIENT, attributes=attributes)
        ctx.span = span
        self.propagator.inject(params.headers, context=trace.set_span_in_context(span))

    async def _request_end(
        self,
        _: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        span: Span = ctx.span
        status = params.response.status
        span.set_attribute("http.response.status_code", status)
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    async def _request_exception(
        self,
        _: aiohttp.ClientSession,
        ctx: SimpleNamespace,
        params: aiohttp.TraceRequestExceptionParams,
    ) -> None:
        span: Span = ctx.span
        # The type only: some aiohttp messages quote the URL with its query.
        name = type(params.exception).__name__
        span.set_attribute("error.type", name)
        span.set_status(Status(StatusCode.ERROR, name))
        span.end()

    # -- lifecycle

    def flush(self, timeout: float = 10.0) -> bool:
        """Export every finished span now (blocking); False when the exporter timed out."""
        if self.provider is None:
            return True
        return self.provider.force_flush(int(timeout * 1000))

    async def close(self) -> None:
        """Flush and stop the exporter (its blocking calls run in a thread)."""
        if self.provider is not None:
            await asyncio.to_thread(self.provider.shutdown)


OFF: Final = Tracing(None)


def _redacted(url: Any) -> str:
    """``url.full`` without credentials or query values (either may hold a token)."""
    if url.user or url.password:
        url = url.with_user(None)
    if url.query_string:
        url = url.with_query([(k, "REDACTED") for k in url.query])
    return str(url.with_fragment(None))


# -- setup


def enabled(config: Config, environ: Mapping[str, str]) -> bool:
    """Whether tracing is on for this configuration and environment."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    if config.tracing == "auto":
        return any(environ.get(name) for name in _ENDPOINT_VARS)
    return config.tracing == "on"


def setup(
    config: Config,
    service: str,
    environ: Mapping[str, str] | None = None,
    *,
    install_global: bool = True,
) -> Tracing:
    """The component's :class:`Tracing`: :data:`OFF`, or an SDK tracer exporting OTLP.

    ``service`` is the component's default service name (``OTEL_SERVICE_NAME``
    overrides it). With ``install_global`` the provider also becomes the global
    OpenTelemetry provider (if none is set yet), its OpenTracing shim the global
    OpenTracing tracer and the propagators the global ones; two components in one
    process (``hookline dev``) each keep their own provider and service name."""
    env = os.environ if environ is None else environ
    if not enabled(config, env):
        return OFF
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from hookline import __version__

    if "OTEL_TRACES_EXPORTER" in env and env["OTEL_TRACES_EXPORTER"].strip().lower() != "otlp":
        raise InvalidSpec("OTEL_TRACES_EXPORTER: hookline exports 'otlp' (or 'none')")
    name = env.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(
        resource=Resource.create({"service.name": name, "service.version": __version__}),
        sampler=sampler(env),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter(env)))
    propagator = propagators(env)
    if install_global:
        install(provider, propagator)
    return Tracing(provider.get_tracer("hookline", __version__), propagator, provider)


def install(provider: TracerProvider, propagator: TextMapPropagator) -> None:
    """Make ``provider`` the process's tracing for code that uses the global APIs:
    OpenTracing (through the shim) and OpenTelemetry (if no provider is set yet)."""
    import opentracing
    from opentelemetry.shim.opentracing_shim import create_tracer

    propagate.set_global_textmap(propagator)  # the shim injects and extracts through it
    opentracing.set_global_tracer(create_tracer(provider))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)


def propagators(environ: Mapping[str, str]) -> TextMapPropagator:
    """``OTEL_PROPAGATORS`` (any of ``jaeger``, ``tracecontext``, ``baggage``, or ``none``);
    by default all three, Jaeger first so that W3C wins when both arrive."""
    raw = environ.get("OTEL_PROPAGATORS", "").strip()
    if not raw:
        return default_propagator()
    known: dict[str, type[TextMapPropagator]] = {
        "jaeger": JaegerPropagator,
        "tracecontext": TraceContextTextMapPropagator,
        "baggage": W3CBaggagePropagator,
    }
    chosen: list[TextMapPropagator] = []
    for item in (n.strip().lower() for n in raw.split(",")):
        if item == "none":
            continue
        if item not in known:
            raise InvalidSpec(f"OTEL_PROPAGATORS: {item!r} is not one of {', '.join(known)}, none")
        chosen.append(known[item]())
    return CompositePropagator(chosen)


def sampler(environ: Mapping[str, str]) -> Sampler:
    """``OTEL_TRACES_SAMPLER`` and ``OTEL_TRACES_SAMPLER_ARG``, as the specification has
    them (default ``parentbased_always_on``); an unknown value fails at start."""
    from opentelemetry.sdk.trace import sampling

    kind = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
    fixed = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
    }
    if kind in fixed:
        return fixed[kind]
    if kind not in ("traceidratio", "parentbased_traceidratio"):
        raise InvalidSpec(f"OTEL_TRACES_SAMPLER: unknown sampler {kind!r}")
    raw = environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip() or "1.0"
    try:
        ratio = float(raw)
    except ValueError as exc:
        raise InvalidSpec(f"OTEL_TRACES_SAMPLER_ARG={raw!r}: {exc}") from exc
    if not 0.0 <= ratio <= 1.0:
        raise InvalidSpec(f"OTEL_TRACES_SAMPLER_ARG={raw!r}: a ratio in [0, 1]")
    if kind == "traceidratio":
        return sampling.TraceIdRatioBased(ratio)
    return sampling.ParentBasedTraceIdRatio(ratio)


def export_target(environ: Mapping[str, str]) -> tuple[str, str]:
    """(protocol, URL) of the OTLP export: ``OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL``
    ``http/protobuf`` (the default, port 4318) or ``grpc`` (port 4317), to
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the full URL) or ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (the base URL, to which OTLP/HTTP adds ``/v1/traces``)."""
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    traces_url = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base_url = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if protocol == "grpc":
        return protocol, traces_url or base_url or "http://localhost:4317"
    if protocol == "http/protobuf":
        if traces_url:
            return protocol, traces_url
        return protocol, (base_url or "http://localhost:4318").rstrip("/") + "/v1/traces"
    raise InvalidSpec(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: use 'http/protobuf' or 'grpc'")


def describe_export(environ: Mapping[str, str]) -> str:
    protocol, url = export_target(environ)
    return f"{url} ({protocol})"


def exporter(environ: Mapping[str, str]) -> SpanExporter:
    """The OTLP exporter to :func:`export_target`; headers, timeout, compression and
    certificates come from their ``OTEL_EXPORTER_OTLP_*`` variables, read by the SDK."""
    protocol, url = export_target(environ)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(endpoint=url)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )

    return HttpExporter(endpoint=url)
