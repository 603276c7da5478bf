"""Readings of the JSON report document shared by the end-of-run text and the HTML page (one
place, so both say the same thing)."""

from __future__ import annotations

from typing import Any


def verdict(data: dict[str, Any]) -> str:
    """What ``valid`` vouches for, in words."""
    if data.get("limit"):
        return (
            "the generator kept up at every rate reported as a limit; a search it could not "
            "push further says 'the generator saturated'"
        )
    return "the generator kept up: scheduling lag and its CPU within limits"


def limit_entries(limit: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Find-the-limit results in display order: the endpoint's mix, then each container alone."""
    return [("endpoint (mix)", limit["endpoint"]), *limit["containers"].items()]


def thresholds_text(thresholds: dict[str, Any], at_most: str = "<=") -> str:
    """The find-the-limit thresholds that were set, as ``p99_ms <= 50, error_rate <= 0.01``."""
    parts = [f"{k} {at_most} {v:g}" for k, v in thresholds.items() if v is not None]
    return ", ".join(parts) or "none"
