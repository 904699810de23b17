"""Charts drawn as inline SVG on the server: no JavaScript library, nothing fetched."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape

W, H, PAD = 640, 150, 28


def _svg(width: int, height: int, body: list[str], label: str, natural: bool = False) -> Markup:
    # charts stretch to their box; a graph keeps its natural size (scrolls when wide)
    size = f'width="{width}" height="{height}"' if natural else 'width="100%"'
    return Markup(f'<svg class="chart" viewBox="0 0 {width} {height}" {size} role="img" '
                  f'aria-label="{escape(label)}" preserveAspectRatio="xMinYMin meet">{"".join(body)}</svg>')


def _axes(top: float, unit: str) -> list[str]:
    return [f'<line class="axis" x1="{PAD}" y1="{H - PAD}" x2="{W}" y2="{H - PAD}"/>',
            f'<text class="tick" x="{PAD}" y="{H - 8}">-60 min</text>',
            f'<text class="tick" x="{W - 4}" y="{H - 8}" text-anchor="end">now</text>',
            f'<text class="tick" x="{PAD - 4}" y="14" text-anchor="end">{escape(_num(top))}{unit}</text>',
            f'<text class="tick" x="{PAD - 4}" y="{H - PAD}" text-anchor="end">0</text>']


def _num(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def throughput_chart(activity: Sequence[Mapping[str, Any]]) -> Markup:
    """Runs finished per minute over the last hour: succeeded and failed, stacked."""
    per_minute = {int(a["minute"]): a for a in activity if 0 <= int(a["minute"]) < 60}
    top = max([int(a["succeeded"]) + int(a["failed"]) for a in per_minute.values()] + [1])
    slot = (W - PAD) / 60
    body = _axes(top, "/min")
    for minute, a in sorted(per_minute.items()):
        x = PAD + minute * slot + 1
        y = float(H - PAD)
        for kind in ("succeeded", "failed"):
            h = int(a[kind]) / top * (H - PAD - 16)
            if h > 0:
                y -= h
                body.append(f'<rect class="bar {kind}" x="{x:.1f}" y="{y:.1f}" width="{slot - 2:.1f}" '
                            f'height="{h:.1f}"><title>{int(a[kind])} {kind}</title></rect>')
    return _svg(W, H, body, "runs finished per minute")


def latency_chart(activity: Sequence[Mapping[str, Any]]) -> Markup:
    """End-to-end latency (created to finished) per minute: p50 and p95 lines."""
    points = sorted((int(a["minute"]), float(a["p50_s"] or 0), float(a["p95_s"] or 0))
                    for a in activity if 0 <= int(a["minute"]) < 60)
    top = max([p95 for _, _, p95 in points] + [0.001])
    slot = (W - PAD) / 60
    body = _axes(top, " s")
    for index, name in ((1, "p50"), (2, "p95")):
        coords = " ".join(f"{PAD + p[0] * slot + slot / 2:.1f},{H - PAD - p[index] / top * (H - PAD - 16):.1f}"
                          for p in points)
        if coords:
            body.append(f'<polyline class="line {name}" points="{coords}"><title>{name}</title></polyline>')
    body.append(f'<text class="legend p50" x="{W - 90}" y="14">p50</text>'
                f'<text class="legend p95" x="{W - 50}" y="14">p95</text>')
    return _svg(W, H, body, "latency p50 and p95")


def step_timeline(steps: Sequence[Mapping[str, Any]], now: datetime) -> Markup:
    """One bar per step from its start to its end (or now), on a shared time axis."""
    if not steps:
        return Markup("")
    start = min(s["started_at"] for s in steps)
    end = max((s["finished_at"] or now) for s in steps)
    span = max((end - start).total_seconds(), 0.001)
    label_w, row = 170, 22
    width, height = 900, row * len(steps) + 8
    body = []
    for i, s in enumerate(steps):
        finished = s["finished_at"] or now
        x = label_w + (s["started_at"] - start).total_seconds() / span * (width - label_w - 70)
        w = max(2.0, (finished - s["started_at"]).total_seconds() / span * (width - label_w - 70))
        took = (finished - s["started_at"]).total_seconds()
        y = 4 + i * row
        body.append(f'<text class="label" x="0" y="{y + 14}">{escape(s["step_key"])}</text>'
                    f'<rect class="bar {escape(s["status"])}" x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="14">'
                    f'<title>{escape(s["step_key"])}: {escape(s["status"])}, {took:.3f} s</title></rect>'
                    f'<text class="tick" x="{x + w + 4:.1f}" y="{y + 14}">{took:.3f} s</text>')
    return _svg(width, height, body, "step timeline", natural=True)


def dag_layout(graph: Mapping[str, Sequence[str]]) -> dict[str, tuple[int, int]]:
    """(column, row) per node: a node's column is its longest path from a root."""
    depth: dict[str, int] = {}

    def visit(node: str, seen: frozenset[str]) -> int:
        if node not in depth:
            parents = [p for p in graph.get(node, ()) if p in graph and p not in seen]
            depth[node] = 1 + max((visit(p, seen | {node}) for p in parents), default=-1)
        return depth[node]

    rows: dict[int, int] = {}
    placed = {}
    for node in graph:
        column = visit(node, frozenset())
        placed[node] = (column, rows.get(column, 0))
        rows[column] = rows.get(column, 0) + 1
    return placed


def dag(graph: Mapping[str, Sequence[str]], states: Mapping[str, str], links: Mapping[str, int]) -> Markup:
    """The workflow's nodes as boxes coloured by state, with an arrow from each parent to its child."""
    if not graph:
        return Markup("")
    placed = dag_layout(graph)
    bw, bh, gx, gy = 150, 40, 60, 18
    columns = max(c for c, _ in placed.values()) + 1
    rows = max(r for _, r in placed.values()) + 1
    width, height = columns * (bw + gx), rows * (bh + gy) + 4
    body = ['<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            'orient="auto"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"/></marker></defs>']
    for node, parents in graph.items():
        cx, cy = placed[node]
        for parent in parents:
            if parent not in placed:
                continue
            px, py = placed[parent]
            x1, y1 = px * (bw + gx) + bw, py * (bh + gy) + bh / 2 + 2
            x2, y2 = cx * (bw + gx), cy * (bh + gy) + bh / 2 + 2
            body.append(f'<path class="edge" d="M{x1},{y1} C{x1 + gx / 2},{y1} {x2 - gx / 2},{y2} {x2 - 2},{y2}" '
                        'marker-end="url(#arrow)"/>')
    for node, (c, r) in placed.items():
        state = states.get(node, "pending")
        x, y = c * (bw + gx), r * (bh + gy) + 2
        box = (f'<g class="node {escape(state)}"><rect x="{x}" y="{y}" width="{bw}" height="{bh}" rx="6"/>'
               f'<text x="{x + 10}" y="{y + 17}" class="name">{escape(node)}</text>'
               f'<text x="{x + 10}" y="{y + 32}" class="state">{escape(state)}</text></g>')
        if node in links:
            box = f'<a href="/runs/{int(links[node])}">{box}</a>'
        body.append(box)
    return _svg(width, height, body, "workflow graph", natural=True)
