"""The report's charts, as Vega-Lite specs built with altair (rendered in the page by the
inlined Vega-Embed runtime, :mod:`feedforge.vega`).

Every function takes plain rows and returns a spec dict (``None`` when there is nothing to
draw), so the sections never touch altair and a chart's data is exactly the numbers in the
section's tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import altair as alt
import polars as pl

WIDTH = 560
HEIGHT = 220
_CONFIG: dict[str, Any] = {
    "view": {"stroke": None},
    "axis": {"labelFontSize": 11, "titleFontSize": 12, "grid": True, "gridColor": "#eee"},
    "legend": {"labelFontSize": 11, "titleFontSize": 12},
    "font": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif",
}


def _spec(chart: alt.TopLevelMixin) -> dict[str, Any]:
    spec = chart.configure(**_CONFIG).to_dict()
    spec.pop("$schema", None)  # a URL the page never fetches; vega-embed needs no schema
    return spec


def _frame(rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame | None:
    return pl.DataFrame(list(rows)) if rows else None


def lines(
    rows: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    color: str | None = None,
    *,
    x_title: str | None = None,
    y_title: str | None = None,
    log_y: bool = False,
    points: bool = True,
    facet: str | None = None,
    temporal: bool = False,
) -> dict[str, Any] | None:
    """Lines of ``y`` over ``x`` (one per ``color``; small multiples per ``facet``)."""
    frame = _frame(rows)
    if frame is None:
        return None
    scale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    x_type = "T" if temporal else "Q"
    encoding: dict[str, Any] = {
        "x": alt.X(f"{x}:{x_type}", title=x_title or x),
        "y": alt.Y(f"{y}:Q", title=y_title or y, scale=scale),
        "tooltip": [c for c in (x, y, color, facet) if c],
    }
    if color:
        encoding["color"] = alt.Color(f"{color}:N", title=color)
    chart = alt.Chart(frame).mark_line(point=points).encode(**encoding)
    if facet:
        chart = chart.properties(width=WIDTH // 2 - 40, height=HEIGHT - 60).facet(
            facet=alt.Facet(f"{facet}:N", title=None), columns=2
        )
        chart = chart.resolve_scale(y="independent")
    else:
        chart = chart.properties(width=WIDTH, height=HEIGHT)
    return _spec(chart)


def stacked_bars(
    rows: Sequence[Mapping[str, Any]], x: str, y: str, color: str, *, y_title: str | None = None
) -> dict[str, Any] | None:
    """Bars of ``y`` per ``x`` (a date), stacked by ``color``."""
    frame = _frame(rows)
    if frame is None:
        return None
    chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X(f"{x}:T", title=x),
            y=alt.Y(f"sum({y}):Q", title=y_title or y),
            color=alt.Color(f"{color}:N", title=color),
            tooltip=[x, color, y],
        )
        .properties(width=WIDTH, height=HEIGHT)
    )
    return _spec(chart)


def long_tail(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """Item interaction counts by popularity rank (log scale), area under the curve."""
    frame = _frame(rows)
    if frame is None:
        return None
    chart = (
        alt.Chart(frame)
        .mark_area(line=True, opacity=0.3)
        .encode(
            x=alt.X("rank:Q", title="item popularity rank"),
            y=alt.Y(
                "interactions:Q",
                title="train positives",
                scale=alt.Scale(type="symlog"),
                stack=None,
            ),
            tooltip=["rank", "interactions", "cumulative_share"],
        )
        .properties(width=WIDTH, height=HEIGHT)
    )
    return _spec(chart)


def horizontal_bars(
    rows: Sequence[Mapping[str, Any]], label: str, value: str, *, title: str | None = None
) -> dict[str, Any] | None:
    """One bar per ``label`` (sorted by ``value``), signed values diverging around 0."""
    frame = _frame(rows)
    if frame is None:
        return None
    chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            y=alt.Y(f"{label}:N", sort="-x", title=None),
            x=alt.X(f"{value}:Q", title=title or value),
            color=alt.condition(alt.datum[value] >= 0, alt.value("#4c78a8"), alt.value("#e45756")),
            tooltip=[label, value],
        )
        .properties(width=WIDTH - 120, height=max(60, 18 * frame.height))
    )
    return _spec(chart)


def estimates(
    rows: Sequence[Mapping[str, Any]],
    label: str,
    value: str,
    low: str,
    high: str,
    *,
    color: str | None = None,
    title: str | None = None,
    zero_rule: bool = True,
) -> dict[str, Any] | None:
    """A point per ``label`` with its interval ``[low, high]`` (and a rule at 0)."""
    frame = _frame(rows)
    if frame is None:
        return None
    base = alt.Chart(frame).encode(y=alt.Y(f"{label}:N", title=None))
    color_enc = alt.Color(f"{color}:N", title=color) if color else alt.value("#4c78a8")
    bars = base.mark_rule(strokeWidth=2).encode(
        x=alt.X(f"{low}:Q", title=title or value), x2=f"{high}:Q", color=color_enc
    )
    dots = base.mark_point(filled=True, size=60).encode(
        x=f"{value}:Q", color=color_enc, tooltip=[c for c in (label, value, low, high, color) if c]
    )
    layers: list[Any] = [bars, dots]
    if zero_rule:
        layers.append(
            alt.Chart(pl.DataFrame({"zero": [0.0]})).mark_rule(color="#999").encode(x="zero:Q")
        )
    chart = alt.layer(*layers).properties(width=WIDTH - 120, height=max(60, 26 * frame.height))
    return _spec(chart)


def reliability(rows: Sequence[Mapping[str, Any]], head_title: str) -> dict[str, Any] | None:
    """A reliability diagram: observed against predicted per bin, and the diagonal."""
    frame = _frame(rows)
    if frame is None:
        return None
    top = max(float(v) for v in (*frame.get_column("predicted"), *frame.get_column("observed")))
    diagonal = (
        alt.Chart(pl.DataFrame({"a": [0.0, top], "b": [0.0, top]}))
        .mark_line(color="#999", strokeDash=[4, 4])
        .encode(x="a:Q", y="b:Q")
    )
    points = (
        alt.Chart(frame)
        .mark_line(point=True)
        .encode(
            x=alt.X("predicted:Q", title=f"predicted {head_title}"),
            y=alt.Y("observed:Q", title=f"observed {head_title}"),
            tooltip=["predicted", "observed", "n"],
        )
    )
    return _spec(alt.layer(diagonal, points).properties(width=260, height=220))


def grouped_bars(
    rows: Sequence[Mapping[str, Any]], group: str, value: str, color: str
) -> dict[str, Any] | None:
    """Bars of ``value`` per ``color`` within each ``group`` (small multiples)."""
    frame = _frame(rows)
    if frame is None:
        return None
    chart = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X(f"{color}:N", title=None, axis=alt.Axis(labelAngle=-20)),
            y=alt.Y(f"{value}:Q", title=None),
            color=alt.Color(f"{color}:N", title=color, legend=None),
            tooltip=[group, color, value],
        )
        .properties(width=160, height=160)
        .facet(column=alt.Column(f"{group}:N", title=None))
        .resolve_scale(y="independent")
    )
    return _spec(chart)
