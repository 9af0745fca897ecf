"""Charts as inline SVG, drawn on the server: the page loads nothing from anywhere else.

Every chart is an ``<svg role="img">`` with a title and a description a screen reader reads,
and the page puts the same figures in a table under it.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

#: Distinguishable on white and for the common colour-vision deficiencies (Okabe-Ito).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442",
           "#000000")
FONT = 'font-family="system-ui, sans-serif" font-size="12"'


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _open(width: int, height: int, title: str, desc: str, ident: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" '
            f'aria-labelledby="{ident}-t {ident}-d" class="chart" id="{ident}">'
            f'<title id="{ident}-t">{_e(title)}</title><desc id="{ident}-d">{_e(desc)}</desc>')


def _nice_max(value: float) -> float:
    """A round axis top at or above ``value``."""
    if value <= 0:
        return 1.0
    step = 10 ** (len(str(int(value))) - 1)
    for mult in (1, 2, 2.5, 5, 10):
        if step * mult >= value:
            return float(step * mult)
    return float(value)


def empty(title: str, ident: str, message: str = "No data yet") -> str:
    return (_open(480, 60, title, message, ident)
            + f'<text x="10" y="35" {FONT} fill="#555">{_e(message)}</text></svg>')


def stacked_bars(ident: str, title: str, categories: Sequence[str],
                 series: Mapping[str, Sequence[float]], *, width: int = 760,
                 height: int = 260) -> str:
    """Vertical bars, one per category (a night), stacked by series (a program)."""
    if not categories or not series:
        return empty(title, ident)
    totals = [sum(s[i] for s in series.values()) for i in range(len(categories))]
    top = _nice_max(max(totals))
    left, top_pad, bottom = 50, 10, 40
    right = max(150, 7 * max(len(name) for name in series) + 40)  # the legend's room
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    bar_w = plot_w / len(categories)
    desc = (f"{len(categories)} bars from {categories[0]} to {categories[-1]}; "
            f"highest {max(totals):,.0f}; series: {', '.join(series)}")
    out = [_open(width, height, title, desc, ident)]
    for k in range(5):
        v = top * k / 4
        y = top_pad + plot_h - plot_h * k / 4
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                   f'stroke="#ddd"/><text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" '
                   f'{FONT}>{v:,.0f}</text>')
    for i, cat in enumerate(categories):
        base = 0.0
        x = left + i * bar_w
        for j, (name, values) in enumerate(series.items()):
            v = values[i]
            if v <= 0:
                continue
            h = plot_h * v / top
            y = top_pad + plot_h - plot_h * base / top - h
            out.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(bar_w - 2, 1):.1f}" '
                       f'height="{h:.1f}" fill="{PALETTE[j % len(PALETTE)]}">'
                       f'<title>{_e(cat)} {_e(name)}: {v:,.0f}</title></rect>')
            base += v
        if len(categories) <= 16 or i % max(len(categories) // 8, 1) == 0:
            out.append(f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 16}" '
                       f'text-anchor="middle" {FONT}>{_e(str(cat)[5:])}</text>')
    for j, name in enumerate(series):
        y = top_pad + 14 + j * 18
        out.append(f'<rect x="{width - right + 12}" y="{y - 10}" width="12" height="12" '
                   f'fill="{PALETTE[j % len(PALETTE)]}"/><text x="{width - right + 30}" '
                   f'y="{y}" {FONT}>{_e(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def hbars(ident: str, title: str, rows: Sequence[tuple[str, float]], *, width: int = 760,
          fmt: str = "{:,.0f}", maximum: float | None = None,
          marks: Sequence[tuple[float, str]] = ()) -> str:
    """Horizontal bars, one per row (label, value); ``marks``: vertical threshold lines."""
    if not rows:
        return empty(title, ident)
    top = maximum or _nice_max(max([v for _, v in rows] + [m for m, _ in marks]))
    label_w = min(max(len(label) for label, _ in rows) * 7 + 10, 300)
    left, right, bar_h = label_w, 90, 22
    height = len(rows) * (bar_h + 6) + 30
    plot_w = width - left - right
    desc = "; ".join(f"{label}: {fmt.format(v)}" for label, v in rows[:20])
    out = [_open(width, height, title, desc, ident)]
    for i, (label, v) in enumerate(rows):
        y = 8 + i * (bar_h + 6)
        w = plot_w * min(v / top, 1.0) if top else 0
        out.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" {FONT}>{_e(label)}'
                   f'</text><rect x="{left}" y="{y}" width="{max(w, 1):.1f}" height="{bar_h}" '
                   f'fill="{PALETTE[0]}"><title>{_e(label)}: {_e(fmt.format(v))}</title></rect>'
                   f'<text x="{left + w + 6:.1f}" y="{y + 15}" {FONT}>{_e(fmt.format(v))}'
                   '</text>')
    for value, label in marks:
        x = left + plot_w * min(value / top, 1.0)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="2" y2="{height - 18}" stroke="#D55E00" '
                   f'stroke-dasharray="4 3"/><text x="{x:.1f}" y="{height - 4}" '
                   f'text-anchor="middle" {FONT} fill="#D55E00">{_e(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def intervals(ident: str, title: str, rows: Sequence[tuple[str, float, float, float]], *,
              width: int = 760, unit: str = " pts") -> str:
    """One row per (label, estimate, low, high): a dot at the estimate and a line across its
    interval, around a zero line (an interval clear of zero is an effect)."""
    if not rows:
        return empty(title, ident)
    reach = max(max(abs(lo), abs(hi), abs(est)) for _, est, lo, hi in rows) or 1.0
    label_w = min(max(len(label) for label, *_ in rows) * 7 + 10, 300)
    right, row_h = 120, 26
    height = len(rows) * row_h + 34
    plot_w = width - label_w - right
    mid = label_w + plot_w / 2

    def x(v: float) -> float:
        return mid + plot_w / 2 * v / reach

    desc = "; ".join(f"{label}: {est:+.1f}{unit} ({lo:+.1f} to {hi:+.1f})"
                     for label, est, lo, hi in rows[:20])
    out = [_open(width, height, title, desc, ident),
           f'<line x1="{mid:.1f}" x2="{mid:.1f}" y1="4" y2="{height - 22}" stroke="#888"/>'
           f'<text x="{mid:.1f}" y="{height - 6}" text-anchor="middle" {FONT}>0</text>'
           f'<text x="{label_w}" y="{height - 6}" {FONT}>{-reach:+.1f}{_e(unit)}</text>'
           f'<text x="{label_w + plot_w}" y="{height - 6}" text-anchor="end" {FONT}>'
           f'{reach:+.1f}{_e(unit)}</text>']
    for i, (label, est, lo, hi) in enumerate(rows):
        y = 16 + i * row_h
        colour = PALETTE[2] if lo > 0 else PALETTE[5] if hi < 0 else PALETTE[0]
        out.append(f'<text x="{label_w - 6}" y="{y + 4}" text-anchor="end" {FONT}>{_e(label)}'
                   f'</text><line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{y}" y2="{y}" '
                   f'stroke="{colour}" stroke-width="3"/><circle cx="{x(est):.1f}" cy="{y}" '
                   f'r="5" fill="{colour}"><title>{_e(label)}: {est:+.1f}{_e(unit)} '
                   f'({lo:+.1f} to {hi:+.1f})</title></circle><text x="{label_w + plot_w + 8}" '
                   f'y="{y + 4}" {FONT}>{est:+.1f}{_e(unit)}</text>')
    out.append("</svg>")
    return "".join(out)
