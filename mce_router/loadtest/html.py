"""The HTML report: one self-contained file (inline CSS and SVG, no script, nothing fetched), so
it opens from disk or a CI artifact in any browser."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from .document import limit_entries, thresholds_text, verdict

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
WIDTH, HEIGHT = 560, 230
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 14, 34

Series = tuple[str, Sequence[tuple[float, float]]]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 0.001:
        if value >= low - step * 0.001:
            ticks.append(round(value, 10))
        value += step
    return ticks


def _label(value: float) -> str:
    if value and abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:,.2f}".rstrip("0").rstrip(".") if value % 1 else f"{value:,.0f}"


def chart(
    title: str,
    series: Sequence[Series],
    x_label: str,
    y_label: str,
    *,
    x_ticks: Sequence[tuple[float, str]] | None = None,
    markers: bool = False,
) -> str:
    points = [p for _, pts in series for p in pts if p[1] is not None]
    if not points:
        return f'<div class="chart"><h3>{html.escape(title)}</h3><p class="empty">no data</p></div>'
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:
        x1 = x0 + 1
    top = max(ys) * 1.05 or 1.0
    y_ticks = _ticks(0.0, top)
    if y_ticks[-1] < top:  # the axis ends on a tick above the highest point
        y_ticks.append(y_ticks[-1] + (y_ticks[-1] - y_ticks[-2] if len(y_ticks) > 1 else top))
    y1 = y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * plot_w

    def sy(y: float) -> float:
        return TOP + plot_h - y / y1 * plot_h

    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">'
    ]
    for t in y_ticks:
        y = sy(t)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#e5e5e5"/>'
            f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{_label(t)}</text>'
        )
    xt = x_ticks or [(t, _label(t)) for t in _ticks(x0, x1, 6)]
    for value, text in xt:
        if x0 <= value <= x1:
            x = sx(value)
            parts.append(
                f'<line x1="{x:.1f}" y1="{TOP + plot_h}" x2="{x:.1f}" y2="{TOP + plot_h + 4}" '
                f'stroke="#555"/><text x="{x:.1f}" y="{TOP + plot_h + 15}" '
                f'text-anchor="middle">{html.escape(text)}</text>'
            )
    parts.append(
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#555"/>'
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">'
        f"{html.escape(x_label)}</text>"
        f'<text x="12" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + plot_h / 2})">{html.escape(y_label)}</text>'
    )
    legend_x = LEFT + 8
    for i, (name, pts) in enumerate(series):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts if y is not None)
        if path:
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>'
            )
            if markers:
                parts.extend(
                    f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>'
                    for x, y in pts
                    if y is not None
                )
        parts.append(
            f'<rect x="{legend_x}" y="{TOP + 6 + i * 14}" width="10" height="3" fill="{color}"/>'
            f'<text x="{legend_x + 14}" y="{TOP + 10 + i * 14}">{html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return f'<div class="chart"><h3>{html.escape(title)}</h3>{"".join(parts)}</div>'


def _nines(p: float) -> float:
    """x position of a percentile on a 'number of nines' axis (p50 → 0.3, p99 → 2, p99.9 → 3)."""
    return -math.log10(max(1.0 - p / 100.0, 1e-5))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _stats_table(rows: Sequence[tuple[str, dict[str, Any]]]) -> str:
    head = (
        "<tr><th>target</th><th>requests</th><th>errors</th><th>req/s</th><th>p50</th>"
        "<th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>errors by code</th></tr>"
    )
    body = []
    for name, s in rows:
        lat = s["latency_ms"]
        codes = ", ".join(f"{html.escape(c)} {n}" for c, n in s["errors_by_code"].items())
        body.append(
            f"<tr><td>{html.escape(name)}</td><td>{s['requests']:,}</td><td>{s['errors']:,}</td>"
            f"<td>{s['achieved_rps']:,.1f}</td>"
            + "".join(f"<td>{_ms(lat[k])}</td>" for k in ("p50", "p90", "p99", "p999", "max"))
            + f"<td>{codes or '-'}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table><p class='unit'>latency in ms</p>"


def _limit_section(limit: dict[str, Any]) -> str:
    thresholds = thresholds_text(limit["thresholds"], "≤")
    rows = []
    series: list[Series] = []
    for name, entry in limit_entries(limit):
        best = entry["max_rps"]
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td class='big'>"
            f"{'none' if best is None else f'{best:,.0f}'}</td>"
            f"<td>{_ms(entry['p99_ms'])}</td>"
            f"<td class='why'>{html.escape(entry['stopped_by'])}</td></tr>"
        )
        series.append((name, [(s["target_rps"], s["latency_ms"]["p99"]) for s in entry["steps"]]))
    table = (
        "<table><tr><th>target</th><th>highest rate meeting the thresholds (req/s)</th>"
        f"<th>p99 there (ms)</th><th>stopped by</th></tr>{''.join(rows)}</table>"
    )
    plot = chart("p99 latency per step", series, "offered rate (req/s)", "p99 (ms)", markers=True)
    return f"<h2>Find the limit</h2><p>Thresholds: {html.escape(thresholds)}</p>{table}{plot}"


def render(data: dict[str, Any]) -> str:
    timeline = data["timeline"]
    names = [m["name"] for m in data["mix"]]
    rate_series: list[Series] = [
        ("achieved (all)", [(r["t"], r["ok"] + r["errors"]) for r in timeline]),
        ("target", [(r["t"], r["target_rps"]) for r in timeline if r["target_rps"]]),
    ]
    rate_series += [
        (name, [(r["t"], r["containers"].get(name, 0)) for r in timeline]) for name in names
    ] if len(names) > 1 else []  # fmt: skip
    latency_series: list[Series] = [
        (label, [(r["t"], r[key]) for r in timeline if r[key] is not None])
        for label, key in (("p50", "p50_ms"), ("p99", "p99_ms"), ("max", "max_ms"))
    ]
    curve_series: list[Series] = [
        (name, [(_nines(p), v) for p, v in s["percentile_curve"]])
        for name, s in [*data["containers"].items(), ("overall", data["overall"])]
    ]
    nines_ticks = [(_nines(p), label) for p, label in
                   ((0, "p0"), (50, "p50"), (90, "p90"), (99, "p99"), (99.9, "p99.9"),
                    (99.99, "p99.99"))]  # fmt: skip
    router = data.get("router") or {}
    cpu_series: list[Series] = [
        (name, [(t, v) for t, v in c["cpu_percent"]["samples"]])
        for name, c in (router.get("containers") or {}).items()
    ]
    verdict_line = (
        f'<p class="ok">Valid: {html.escape(verdict(data))}.</p>'
        if data["valid"]
        else '<p class="bad">INVALID: the generator was the bottleneck, these numbers are the '
        "harness's limit, not the system's:<br>"
        + "<br>".join(html.escape(r) for r in data["invalid_reasons"])
        + "</p>"
    )
    sections = [
        f"<h1>Load test: {html.escape(data['endpoint'])}</h1>",
        f"<p>{html.escape(data['url'])} · {data['duration_s']:.1f} s · "
        f"{data['processes']} generator process(es) · "
        f"{'SigV4-signed' if data['signed'] else 'unsigned'} · schema {html.escape(data['schema'])}"
        "</p>",
        verdict_line,
    ]
    if data.get("limit"):
        sections.append(_limit_section(data["limit"]))
    sections.append("<h2>Client side</h2>")
    sections.append(_stats_table([*data["containers"].items(), ("overall", data["overall"])]))
    auto = data.get("autoscaling")
    if auto and auto.get("warning"):
        sections.append(f'<p class="bad">Autoscaling: {html.escape(auto["warning"])}</p>')
    sections.append('<div class="charts">')
    sections.append(chart("Rate over time", rate_series, "seconds", "requests/s"))
    sections.append(chart("Latency over time", latency_series, "seconds", "ms"))
    sections.append(
        chart("Percentile curves", curve_series, "percentile", "ms", x_ticks=nines_ticks)
    )
    if cpu_series:
        sections.append(chart("Container CPU (router's CPUUtilization)", cpu_series, "seconds",
                              "% of one core"))  # fmt: skip
    sections.append("</div>")
    if router.get("containers"):
        rows = []
        for name, c in router["containers"].items():
            client = data["containers"].get(name, {}).get("latency_ms", {})
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>{c['invocations']:,.0f}</td>"
                f"<td>{c['errors_4xx'] + c['errors_5xx']:,.0f}</td>"
                f"<td>{_ms(client.get('p50'))}</td>"
                f"<td>{_ms(c['container_latency_ms']['p50'])}</td>"
                f"<td>{_ms(c['container_latency_ms']['mean'])}</td>"
                f"<td>{_ms(c['overhead_latency_ms']['mean'])}</td>"
                f"<td>{_ms(c['cpu_percent']['mean'])}</td>"
                f"<td>{_ms(c['memory_percent']['mean'])}</td></tr>"
            )
        sections.append(
            "<h2>Router side (its /metrics over the run)</h2><table><tr><th>container</th>"
            "<th>invocations</th><th>errors</th><th>client p50 (ms)</th>"
            "<th>ContainerLatency p50 (ms)</th><th>ContainerLatency mean (ms)</th>"
            "<th>OverheadLatency mean (ms)</th><th>CPU mean (%)</th><th>memory mean (%)</th>"
            f"</tr>{''.join(rows)}</table>"
        )
    for note in data["notes"]:
        sections.append(f"<p class='note'>{html.escape(note)}</p>")
    style = (
        "body{font-family:sans-serif;margin:24px;color:#222;max-width:1300px}"
        "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}"
        ".charts{display:flex;flex-wrap:wrap;gap:12px}.chart h3{margin:6px 0;font-size:14px}"
        ".ok{color:#1a7f37}.bad{color:#b42318;font-weight:bold}.unit,.note{color:#666}"
        ".big{font-weight:bold;font-size:16px}td.why{text-align:left}"
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>mce-router load test</title>"
        f"<style>{style}</style></head><body>{''.join(sections)}</body></html>\n"
    )
