"""OpenTelemetry spans for tasks, when ``opentelemetry`` is installed and configured.

The span is started inside the context captured at ``add_task``, so it is a child
of the request's span, and is current for everything the task does.
"""

from __future__ import annotations

import contextvars
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
except ImportError:  # the optional dependency is absent: tasks run without spans
    trace = None  # type: ignore[assignment]


def task_tracer() -> Any | None:
    """Our tracer once a real tracer provider is configured; None before that or without OpenTelemetry."""
    if trace is None or isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return None
    return trace.get_tracer("fastapi_taskflow")


def start_task_span(tracer: Any, ctx: contextvars.Context, func_name: str, task_id: str) -> Any:
    """Start a span for one task inside ``ctx`` and make it current there."""
    span = ctx.run(tracer.start_span, f"task {func_name}", attributes={"taskflow.task_id": task_id})
    ctx.run(otel_context.attach, trace.set_span_in_context(span))
    return span


def end_task_span(span: Any, error: BaseException | None) -> None:
    if error is not None:
        span.record_exception(error)
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(error)))
    span.end()
