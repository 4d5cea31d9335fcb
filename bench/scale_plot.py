"""The figure of ``bench/scale.py``: delivered/s and Redis CPU against dispatcher processes.

Hand-built SVG from the script's JSON lines (``scale_dispatchers``, ``scale_model``,
``scale_load``), so that no plotting library is needed: two panels sharing the x axis
(k), measured points per round, the model's line, and the model applied to the CPU the
dispatchers actually got (rings). ``python bench/scale.py --replot LINES --svg FILE``
redraws it from saved lines.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def svg(lines: list[dict[str, Any]]) -> str:
    """Delivered/s and Redis CPU against dispatcher processes: measured points, the model."""
    m = next(ln for ln in lines if ln["name"] == "scale_model")
    disp = [ln for ln in lines if ln["name"] == "scale_dispatchers"]
    ks = sorted({ln["k"] for ln in disp})
    kmax = max(ks) + 0.5
    when = m.get("measured", "")
    loads = [ln for ln in lines if ln["name"] == "scale_load"]
    load = f"{loads[0]['at_start']:g} to {loads[0]['value']:g}" if loads else "not recorded"
    w, h = 900, 560
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="DejaVu Sans, Arial, sans-serif" font-size="13">',
        f'<rect width="{w}" height="{h}" fill="#fff"/>',
        f'<text x="{w / 2}" y="26" text-anchor="middle" font-size="17" font-weight="bold">'
        "k dispatcher processes draining one Redis stream (1 KiB bodies)</text>",
        f'<text x="{w / 2}" y="46" text-anchor="middle" fill="#555">'
        f"measured {when} on this shared {m['cores']}-core machine, load average {load}; "
        "bench/scale.py</text>",
    ]
    points_rate = [(ln["k"], r) for ln in disp for r in ln["runs"]]
    model_rate = [(ln["k"], float(ln["model"])) for ln in disp]
    ideal = [(k, k * m["dispatcher_per_core"]) for k in ks]
    # what the model says for the CPU the dispatchers were given: a gap between these and
    # the measured dots is the model's error, a gap to the line is other sessions' load
    got = [(ln["k"], c * 1e6 / m["dispatcher_us"]) for ln in disp for c in ln["dispatcher_cpu"]]
    top = max([r for _, r in points_rate] + [r for _, r in model_rate] + [ideal[0][1]])
    ymax = nice(top * 1.15)
    ideal = clipped(ideal, ymax)
    out += panel(
        x0=80,
        y0=80,
        pw=330,
        ph=340,
        kmax=kmax,
        ymax=ymax,
        ks=ks,
        title="delivered / s",
        ylabel="webhooks delivered per second",
        series=[
            ("line", ideal, "#999", "4 4"),
            ("line", model_rate, "#d62728", ""),
            ("rings", got, "#d62728", ""),
            ("dots", points_rate, "#1f77b4", ""),
        ],
        fmt=lambda v: f"{v / 1000:g}k" if v else "0",
    )
    points_redis = [(ln["k"], c) for ln in disp for c in ln["redis_cpu_runs"]]
    model_redis = [(k, r * m["redis_us_per_delivery"] / 1e6) for k, r in model_rate]
    out += panel(
        x0=530,
        y0=80,
        pw=330,
        ph=340,
        kmax=kmax,
        ymax=1.0,
        ks=ks,
        title="Redis CPU",
        ylabel="share of Redis's one core",
        series=[
            ("line", model_redis, "#d62728", ""),
            ("rings", [(k, r * m["redis_us_per_delivery"] / 1e6) for k, r in got], "#d62728", ""),
            ("dots", points_redis, "#1f77b4", ""),
        ],
        fmt=lambda v: f"{v:.1f}",
    )
    # legend
    ly = 482
    out += [
        f'<circle cx="90" cy="{ly}" r="5" fill="#1f77b4"/>',
        f'<text x="102" y="{ly + 4}">measured (one per round)</text>',
        f'<line x1="290" y1="{ly}" x2="320" y2="{ly}" stroke="#d62728" stroke-width="2.5"/>',
        f'<text x="328" y="{ly + 4}">model, machine to ourselves: min(k &#215; '
        f"{m['dispatcher_per_core']:,}/s, {m['cores']} cores &#247; CPU per delivery, "
        "Redis)</text>",
        f'<circle cx="90" cy="{ly + 22}" r="7" fill="none" stroke="#d62728" stroke-width="1.5"/>',
        f'<text x="102" y="{ly + 26}">model at the CPU the dispatchers got</text>',
        f'<line x1="400" y1="{ly + 22}" x2="430" y2="{ly + 22}" stroke="#999" '
        'stroke-width="2" stroke-dasharray="4 4"/>',
        f'<text x="438" y="{ly + 26}">k &#215; one dispatcher core (a core per pod)</text>',
        f'<text x="90" y="{ly + 48}">One Redis core carries {m["redis_per_core"]:,} webhooks/s '
        f"in and out ({m['redis_us_per_accept']:g} µs to accept one, "
        f"{m['redis_us_per_delivery']:g} µs to deliver it).</text>",
    ]
    out.append("</svg>")
    return "\n".join(out) + "\n"


def clipped(points: list[tuple[int, float]], top: float) -> list[tuple[float, float]]:
    """A rising line's points up to where it leaves the plot at ``top``."""
    out: list[tuple[float, float]] = []
    for (k, v), prev in zip(points, [None, *points], strict=False):
        if v <= top:
            out.append((k, v))
            continue
        if prev is not None and prev[1] < top:
            k0, v0 = prev
            out.append((k0 + (top - v0) / (v - v0) * (k - k0), top))
        break
    return out


def nice(v: float) -> float:
    """The round number at or above ``v`` an axis ends at (1, 2, 2.5 or 5 times 10^n)."""
    exp = 10.0 ** math.floor(math.log10(v))
    return next(m * exp for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * exp >= v)


def panel(
    *,
    x0: float,
    y0: float,
    pw: float,
    ph: float,
    kmax: float,
    ymax: float,
    ks: list[int],
    title: str,
    ylabel: str,
    series: list[tuple[str, list[tuple[float, float]], str, str]],
    fmt: Callable[[float], str],
) -> list[str]:
    def x(k: float) -> float:
        return x0 + k / kmax * pw

    def y(v: float) -> float:
        return y0 + ph - min(v, ymax) / ymax * ph

    out = [
        f'<text x="{x0 + pw / 2}" y="{y0 - 10}" text-anchor="middle" font-size="15" '
        f'font-weight="bold">{title}</text>',
        f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>',
    ]
    for i in range(6):
        v = ymax * i / 5
        out += [
            f'<line x1="{x0}" y1="{y(v):.1f}" x2="{x0 + pw}" y2="{y(v):.1f}" stroke="#ddd"/>',
            f'<text x="{x0 - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{fmt(v)}</text>',
        ]
    for k in ks:
        out += [
            f'<line x1="{x(k):.1f}" y1="{y0 + ph}" x2="{x(k):.1f}" y2="{y0 + ph + 5}" '
            'stroke="#333"/>',
            f'<text x="{x(k):.1f}" y="{y0 + ph + 20}" text-anchor="middle">{k}</text>',
        ]
    out += [
        f'<text x="{x0 + pw / 2}" y="{y0 + ph + 40}" text-anchor="middle">'
        "dispatcher processes (k)</text>",
        f'<text transform="translate({x0 - 52},{y0 + ph / 2}) rotate(-90)" '
        f'text-anchor="middle">{ylabel}</text>',
    ]
    for kind, pts, colour, dash in series:
        if kind == "line":
            path = " ".join(f"{x(k):.1f},{y(v):.1f}" for k, v in pts)
            extra = f' stroke-dasharray="{dash}"' if dash else ""
            out.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" '
                f'stroke-width="2.5"{extra}/>'
            )
        elif kind == "rings":
            out += [
                f'<circle cx="{x(k):.1f}" cy="{y(v):.1f}" r="7" fill="none" stroke="{colour}" '
                'stroke-width="1.5"/>'
                for k, v in pts
            ]
        else:
            out += [
                f'<circle cx="{x(k):.1f}" cy="{y(v):.1f}" r="5" fill="{colour}" '
                'fill-opacity="0.8"/>'
                for k, v in pts
            ]
    return out
