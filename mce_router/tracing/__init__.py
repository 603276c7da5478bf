"""Observers of every invocation, through the hot path's one seam (``proxy.InvocationHooks``):
OpenTelemetry spans (:mod:`.otel`, the optional ``otel`` extra) and the hop log of failing
Serial requests (:mod:`.hoplog`). Nothing here runs per request unless configured."""

from __future__ import annotations

from .hooks import TracingHooks, build_hooks
from .hoplog import HopLog

__all__ = ["HopLog", "TracingHooks", "build_hooks"]
