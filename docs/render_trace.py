"""Draw a trace from Jaeger's HTTP API as an SVG waterfall, the way the Jaeger UI shows it.

    python docs/render_trace.py TRACE.json OUT.svg

``TRACE.json`` is what ``GET /api/traces/{traceID}`` answers (``{"data": [trace]}``).
``docs/trace.json`` is one a test run wrote (``HOOKLINE_TRACE_DUMP=docs/trace.json
pytest tests/tracing -k failed_then_delivered``) and ``docs/trace.svg`` its picture.
Standard library only.
"""

from __future__ import annotations

import json
import sys
from html import escape
from pathlib import Path
from typing import Any

ROW = 26
LABEL = 520
BAR = 560
PAD = 16
HEAD = 64
COLOURS = ["#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f"]


def rows(trace: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    """(depth, span) in tree order: each span under its parent, siblings by start time."""
    spans = {s["spanID"]: s for s in trace["spans"]}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in spans.values():
        parents = [r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
        parent = parents[0] if parents and parents[0] in spans else None
        children.setdefault(parent, []).append(span)
    out: list[tuple[int, dict[str, Any]]] = []

    def walk(parent: str | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s["startTime"]):
            out.append((depth, span))
            walk(span["spanID"], depth + 1)

    walk(None, 0)
    return out


def tag(span: dict[str, Any], key: str) -> Any:
    return next((t["value"] for t in span.get("tags", []) if t["key"] == key), None)


def duration(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def render(trace: dict[str, Any]) -> str:
    ordered = rows(trace)
    services = {p["serviceName"] for p in trace["processes"].values()}
    colour = {s: COLOURS[i % len(COLOURS)] for i, s in enumerate(sorted(services))}
    start = min(s["startTime"] for _, s in ordered)
    end = max(s["startTime"] + s["duration"] for _, s in ordered)
    total = max(1, end - start)
    width = PAD * 2 + LABEL + BAR
    height = HEAD + ROW * len(ordered) + PAD * 2 + 24
    scale = BAR / total
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" '
        'font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{PAD}" y="{PAD + 12}" font-size="14" font-weight="bold">'
        f"Trace {escape(trace['traceID'])}</text>",
        f'<text x="{PAD}" y="{PAD + 30}" fill="#555">{len(ordered)} spans, '
        f"{len(services)} services, {duration(total)} (from Jaeger's /api/traces)</text>",
    ]
    # the time axis
    axis_y = HEAD + 4
    for i in range(5):
        x = PAD + LABEL + BAR * i / 4
        out.append(
            f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" '
            f'y2="{HEAD + ROW * len(ordered) + 8}" stroke="#e3e3e3"/>'
        )
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        out.append(
            f'<text x="{x:.1f}" y="{axis_y - 6}" fill="#777" text-anchor="{anchor}">'
            f"{duration(total * i / 4)}</text>"
        )
    for n, (depth, span) in enumerate(ordered):
        y = HEAD + 10 + n * ROW
        service = trace["processes"][span["processID"]]["serviceName"]
        kind = tag(span, "span.kind")
        error = tag(span, "error") is True or tag(span, "otel.status_code") == "ERROR"
        if n % 2:
            out.append(
                f'<rect x="{PAD}" y="{y - 4}" width="{LABEL + BAR}" height="{ROW}" fill="#f7f7f7"/>'
            )
        x0 = PAD + 6 + depth * 14
        out.append(
            f'<rect x="{x0}" y="{y + 3}" width="4" height="12" fill="{colour[service]}"/>'
            f'<text x="{x0 + 9}" y="{y + 13}"><tspan font-weight="bold">{escape(service)}'
            f'</tspan> <tspan fill="#333">{escape(span["operationName"])}</tspan>'
            + (f' <tspan fill="#888">{escape(kind)}</tspan>' if kind else "")
            + "</text>"
        )
        bx = PAD + LABEL + (span["startTime"] - start) * scale
        bw = max(2.0, span["duration"] * scale)
        stroke = ' stroke="#d62728" stroke-width="2"' if error else ""
        out.append(
            f'<rect x="{bx:.1f}" y="{y + 1}" width="{bw:.1f}" height="16" rx="2" '
            f'fill="{colour[service]}"{stroke}/>'
        )
        label = duration(span["duration"])
        status = tag(span, "http.response.status_code")
        if status is not None:
            label += f"  HTTP {status}"
        attempt = tag(span, "hookline.attempt")
        if attempt is not None:
            label += f"  attempt {attempt}: {tag(span, 'hookline.outcome')}"
        right = bx + bw + 4 + 7 * len(label) < PAD + LABEL + BAR
        lx = bx + bw + 4 if right else bx - 4
        out.append(
            f'<text x="{lx:.1f}" y="{y + 13}" fill="{"#d62728" if error else "#444"}" '
            f'text-anchor="{"start" if right else "end"}">{escape(label)}</text>'
        )
    ly = HEAD + ROW * len(ordered) + PAD + 14
    x = PAD
    for service in sorted(services):
        out.append(
            f'<rect x="{x}" y="{ly - 10}" width="12" height="12" fill="{colour[service]}"/>'
            f'<text x="{x + 16}" y="{ly}">{escape(service)}</text>'
        )
        x += 24 + 7 * len(service)
    out.append(
        f'<rect x="{x}" y="{ly - 10}" width="12" height="12" fill="none" stroke="#d62728" '
        f'stroke-width="2"/><text x="{x + 16}" y="{ly}">error status</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    answer = json.loads(Path(sys.argv[1]).read_text())
    Path(sys.argv[2]).write_text(render(answer["data"][0]))


if __name__ == "__main__":
    main()
