"""Tracing's configuration: the standard ``OTEL_*`` variables, read once at start.

Called by the entry points (``hookline receiver | dispatcher | dev | send``, in
:mod:`hookline.cli`): :func:`setup` builds each component's
:class:`~hookline.tracing.Tracing` under its service name (:data:`RECEIVER`,
:data:`DISPATCHER`; :data:`SENDER` and :data:`SINK` for the local tools), and
:func:`describe_export` says where its spans go.

* **On or off**: on with ``HOOKLINE_TRACING=on``, or with ``auto`` (the default)
  when ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is
  set; off with ``HOOKLINE_TRACING=off``, ``OTEL_SDK_DISABLED=true`` or
  ``OTEL_TRACES_EXPORTER=none``. Off is :data:`~hookline.tracing.OFF`, and the
  OpenTelemetry SDK is not imported.
* **Export**: the SDK's provider (sampler, resource) and an OTLP export
  configured by the standard variables: endpoint, protocol, headers, timeout,
  sampler, service name, batch sizes. OTLP/HTTP, the default, goes through
  :mod:`hookline.export`; ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` through the
  SDK's batch processor and gRPC exporter.
* **OpenTracing**: the OpenTelemetry shim over the component's provider is
  installed as the global OpenTracing tracer, so code instrumented with the
  ``opentracing`` API joins the same traces.
* **Propagation**: Jaeger, W3C trace-context and W3C baggage by default
  (:func:`~hookline.tracing.default_propagator`); ``OTEL_PROPAGATORS`` chooses
  another set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from opentelemetry import propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.jaeger import JaegerPropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from hookline.config import Config
from hookline.errors import InvalidSpec
from hookline.tracing import OFF, Tracing, default_propagator

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler

RECEIVER: Final = "hookline-receiver"
DISPATCHER: Final = "hookline-dispatcher"
SENDER: Final = "hookline-send"  # `hookline send`, a traced sender
SINK: Final = "hookline-sink"  # the demo sink, a traced endpoint

_ENDPOINT_VARS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


def enabled(config: Config, environ: Mapping[str, str]) -> bool:
    """Whether tracing is on for this configuration and environment."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    if config.tracing == "auto":
        return endpoint_set(environ)
    return config.tracing == "on"


def endpoint_set(environ: Mapping[str, str]) -> bool:
    """Whether the environment names where spans go (``OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT``)."""
    return any(environ.get(name) for name in _ENDPOINT_VARS)


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

    from hookline import __version__

    if "OTEL_TRACES_EXPORTER" in env and env["OTEL_TRACES_EXPORTER"].strip().lower() != "otlp":
        raise InvalidSpec("OTEL_TRACES_EXPORTER: hookline exports 'otlp' (or 'none')")
    name = env.get("OTEL_SERVICE_NAME") or service
    provider = TracerProvider(
        resource=Resource.create({"service.name": name, "service.version": __version__}),
        sampler=sampler(env),
    )
    processor = span_processor(env, provider.resource)
    provider.add_span_processor(processor)
    propagator = propagators(env)
    if install_global:
        install(provider, propagator)
    return Tracing(provider, processor, propagator)


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
        "parentbased_always_on": sampling.DEFAULT_ON,
        "parentbased_always_off": sampling.DEFAULT_OFF,
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


def span_processor(environ: Mapping[str, str], resource: Resource) -> SpanProcessor:
    """OTLP/HTTP: hookline's :class:`~hookline.export.OtlpHttpProcessor`, which takes
    spans encoded as they end; OTLP/gRPC: the SDK's batch processor and exporter."""
    protocol, url = export_target(environ)
    if protocol == "http/protobuf":
        from hookline.export import OtlpHttpProcessor

        return OtlpHttpProcessor(url, resource, environ)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter(endpoint=url))
