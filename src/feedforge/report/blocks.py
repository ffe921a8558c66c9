"""What a report section is made of: text, fact lists, tables, preformatted text and charts
(Vega-Lite specs), plus the artifacts (and their versions) its numbers come from."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

BlockKind = Literal["text", "facts", "table", "pre", "chart", "empty"]


@dataclass
class Block:
    """One element of a section. ``empty`` says a stage has no data (and why)."""

    kind: BlockKind
    title: str = ""
    text: str = ""
    facts: list[tuple[str, str]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    spec: dict[str, Any] | None = None
    index: int = -1
    """A chart's position among the page's charts (set when the page is rendered)."""


@dataclass
class Section:
    """One of the 7 steps."""

    key: str
    title: str
    summary: str
    blocks: list[Block] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)
    """``(artifact, version or path)`` of everything the section read."""

    def add(self, block: Block) -> None:
        self.blocks.append(block)

    def text(self, text: str, title: str = "") -> None:
        self.add(Block("text", title=title, text=text))

    def empty(self, title: str, why: str) -> None:
        self.add(Block("empty", title=title, text=why))

    def facts(self, title: str, facts: Sequence[tuple[str, Any]]) -> None:
        self.add(Block("facts", title=title, facts=[(k, fmt(v)) for k, v in facts]))

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.add(
            Block(
                "table",
                title=title,
                columns=list(columns),
                rows=[[fmt(v) for v in row] for row in rows],
            )
        )

    def chart(self, title: str, spec: dict[str, Any] | None, note: str = "") -> None:
        if spec is not None:
            self.add(Block("chart", title=title, spec=spec, text=note))

    def pre(self, title: str, text: str) -> None:
        self.add(Block("pre", title=title, text=text))

    def source(self, artifact: str, version: Any) -> None:
        self.sources.append((artifact, fmt(version)))


def read_json(path: Path) -> Any | None:
    """A JSON artifact's content, or None when it is missing or unreadable (the section
    then says it has no data)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def fmt(value: Any, digits: int = 4) -> str:
    """A value as the report prints it: floats to ``digits`` significant digits, None as
    a dash, lists joined."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:,.{max(digits - 2, 1)}f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list | tuple):
        return ", ".join(fmt(v, digits) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {fmt(v, digits)}" for k, v in value.items())
    return str(value)


def interval(value: float | None, ci: Sequence[float] | None, digits: int = 4) -> str:
    """``value [low, high]``, or the value alone without an interval."""
    if ci is None or len(ci) != 2:
        return fmt(value, digits)
    return f"{fmt(value, digits)} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"
