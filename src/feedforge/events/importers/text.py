"""Reading primitives of the importers: files read by polars, errors that point at a line.

Every reader turns raw columns into parsed ones with polars expressions, together with one
boolean flag per :class:`Rule` ("this row breaks the rule"). Only the parsed columns and the
flags are kept, so a 25M-row file is never held twice. When a flag is set anywhere, the first
offending line is looked up again in the file and quoted in a
:class:`~feedforge.errors.ValidationError` that names the file, the line and what was expected.
Big all-numeric rating files first try :func:`fast_numeric` (polars' typed CSV parser) and
fall back to that validating path when anything is off.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from feedforge.errors import ValidationError

LINE = "line"
"""The 1-based line (text) or row (Parquet) number column every reader keeps."""

_BLOCK = 1 << 24
_QUOTED = 200
_NO_SEPARATOR = "\x1f"  # ASCII unit separator: never part of a text line, so one column per line


class Origin(Protocol):
    """Where rows come from, for error messages."""

    @property
    def path(self) -> Path:
        """The file."""

    @property
    def unit(self) -> str:
        """What its records are called: ``"line"`` or ``"row"``."""

    def quote(self, number: int) -> str | None:
        """The raw content of line (or row) ``number``, if it can be shown."""


def bad_input(origin: Origin, number: int, expected: str) -> ValidationError:
    """A ValidationError naming the file, the line and what was expected there."""
    found = origin.quote(number)
    message = f"{origin.path}, {origin.unit} {number}: expected {expected}"
    if found is not None:
        shown = found if len(found) <= _QUOTED else found[:_QUOTED] + "..."
        message += f"; found {shown!r}"
    where: dict[str, Any] = {"path": str(origin.path), origin.unit: number}
    return ValidationError(message, **where)


@dataclass(frozen=True)
class TextFile:
    """A text file and how polars reads it.

    Attributes:
        path: The file, named in errors.
        data: What polars reads: the path, or the file's text re-encoded as UTF-8.
        lossy: Decode invalid UTF-8 as U+FFFD instead of failing (numeric files whose bytes
            are Latin-1 at worst: a stray byte then fails the number check of its line).
    """

    path: Path
    data: Path | bytes
    lossy: bool = False
    unit: str = "line"

    @classmethod
    def utf8(cls, path: Path, *, lossy: bool = False) -> TextFile:
        return cls(path, path, lossy)

    @classmethod
    def latin1(cls, path: Path) -> TextFile:
        """A small file read whole: UTF-8 when it decodes as such, else Latin-1 (any byte).

        GroupLens ships ML-100K and ML-1M metadata in Latin-1; Latin-1 text with accented
        letters is practically never valid UTF-8, so a file that decodes is taken as UTF-8.
        """
        raw = path.read_bytes()
        try:
            raw.decode("utf-8")
            return cls(path, raw)
        except UnicodeDecodeError:
            return cls(path, raw.decode("latin-1").encode("utf-8"))

    def lines(self) -> pl.LazyFrame:
        """Every physical line: ``line`` (1-based) and ``text`` (null when empty)."""
        return pl.scan_csv(
            self.data,
            has_header=False,
            separator=_NO_SEPARATOR,
            quote_char=None,
            schema={"text": pl.String()},
            encoding="utf8-lossy" if self.lossy else "utf8",
        ).with_row_index(LINE, offset=1)

    def quote(self, number: int) -> str | None:
        # Lossy, so a line that is not valid UTF-8 can still be shown.
        lines = TextFile(self.path, self.data, lossy=True).lines()
        try:
            rows = lines.filter(pl.col(LINE) == number).collect()
        except pl.exceptions.PolarsError:
            return None
        return rows.item(0, "text") if rows.height else None

    def is_empty(self) -> bool:
        if isinstance(self.data, bytes):
            return not self.data.strip()
        return self.path.stat().st_size == 0

    def check_utf8(self) -> None:
        """Raise naming the first line that is not valid UTF-8 (one pass, in blocks)."""
        if self.lossy or isinstance(self.data, bytes):
            return
        pending, newlines = b"", 0
        with self.path.open("rb") as fh:
            while True:
                block = fh.read(_BLOCK)
                data = pending + block
                try:
                    _, used = codecs.utf_8_decode(data, "strict", not block)
                except UnicodeDecodeError as exc:
                    line = newlines + data.count(b"\n", 0, exc.start) + 1
                    raise bad_input(
                        self, line, f"UTF-8 text (byte {data[exc.start]:#04x} is not valid UTF-8)"
                    ) from None
                newlines += data.count(b"\n", 0, used)
                pending = data[used:]
                if not block:
                    return


@dataclass(frozen=True)
class Rule:
    """A check on parsed rows: ``bad`` is true on a row that breaks it (null counts as bad)."""

    bad: pl.Expr
    expected: str


def collect(
    origin: Origin,
    frame: pl.LazyFrame,
    diagnose: Callable[[], None] | None = None,
    *,
    expected: str,
) -> pl.DataFrame:
    """Collect ``frame``, turning read errors into ValidationErrors that name the file.

    Args:
        origin: The file being read.
        frame: A lazy query over it.
        diagnose: Called on a read error to raise a more precise error (with a line), if it can.
        expected: What the file should hold, quoted when it is empty.
    """
    try:
        return frame.collect()
    except pl.exceptions.NoDataError as exc:
        raise ValidationError(
            f"{origin.path}: the file is empty; expected {expected}", path=str(origin.path)
        ) from exc
    except pl.exceptions.PolarsError as exc:
        if isinstance(origin, TextFile):
            origin.check_utf8()
        if diagnose is not None:
            diagnose()
        reason = str(exc).strip().splitlines()[0]
        raise ValidationError(
            f"{origin.path}: cannot be read ({reason})", path=str(origin.path)
        ) from exc


def validated(
    origin: Origin,
    frame: pl.LazyFrame,
    outputs: Mapping[str, pl.Expr],
    rules: Sequence[Rule],
    diagnose: Callable[[], None] | None = None,
    *,
    expected: str,
) -> pl.DataFrame:
    """Compute ``outputs`` (plus ``line``) from ``frame`` and check every rule.

    Args:
        origin: The file read.
        frame: Its rows, with a ``line`` column.
        outputs: Output column -> expression over ``frame``.
        rules: Checks of the rows.
        diagnose: See :func:`collect`.
        expected: What the file should hold, quoted when it holds no rows.

    Returns:
        ``line`` and the output columns.

    Raises:
        ValidationError: the file holds no rows, or a row breaks a rule; the first such line
            is named and quoted (on one line breaking several rules, the first rule in
            ``rules`` is reported).
    """
    flags = [f"_bad{i}" for i in range(len(rules))]
    result = collect(
        origin,
        frame.select(
            LINE,
            *(expr.alias(name) for name, expr in outputs.items()),
            *(
                rule.bad.fill_null(True).alias(flag)
                for rule, flag in zip(rules, flags, strict=True)
            ),
        ),
        diagnose,
        expected=expected,
    )
    if result.is_empty():
        raise ValidationError(
            f"{origin.path}: the file holds no data; expected {expected}", path=str(origin.path)
        )
    if rules:
        firsts = result.select(pl.col(LINE).filter(pl.col(f)).min().alias(f) for f in flags).row(0)
        found = [(line, i) for i, line in enumerate(firsts) if line is not None]
        if found:
            line, i = min(found)
            raise bad_input(origin, int(line), rules[i].expected)
    return result.drop(flags)


def fast_numeric(
    text: TextFile,
    separator: str,
    columns: Mapping[str, pl.DataType | None],
    *,
    header: bool,
) -> pl.DataFrame | None:
    """Read an all-numeric file with polars' typed CSV parser, or return None.

    This is the fast path of big rating files (about 4x faster than reading text and casting).
    It gives up (None) on anything unusual: a parse error, a missing value, a non-finite
    number, a blank line; the validating reader then reads the file again and names the first
    bad line. It accepts a subset of what that reader accepts and parses values the same way.

    Args:
        text: The file.
        separator: A one-byte field separator.
        columns: Column name -> dtype, in file order; a None dtype marks a field that must be
            empty (how ``a::b`` splits on ``:``). With ``header``, the names are looked up in
            the header instead and other columns are ignored.
        header: The first line is a header.
    """
    typed_columns = {n: d for n, d in columns.items() if d is not None}
    try:
        if header:
            frame = pl.scan_csv(
                text.data,
                separator=separator,
                infer_schema=False,
                schema_overrides=typed_columns,
                encoding="utf8-lossy" if text.lossy else "utf8",
            )
            if not set(typed_columns) <= set(frame.collect_schema().names()):
                return None
        else:
            frame = pl.scan_csv(
                text.data,
                separator=separator,
                has_header=False,
                quote_char=None,
                schema={n: d if d is not None else pl.String() for n, d in columns.items()},
                encoding="utf8-lossy" if text.lossy else "utf8",
            )
        empty = [n for n, d in columns.items() if d is None]
        ok = pl.all_horizontal(
            *(pl.col(n).is_not_null() for n in typed_columns),
            *(pl.col(n).is_null() for n in empty),
            *(pl.col(n).is_finite() for n, d in typed_columns.items() if d.is_float()),
        )
        result = frame.select(*typed_columns, ok.alias("_ok")).collect()
    except pl.exceptions.PolarsError:
        return None
    if result.is_empty() or not result.get_column("_ok").all():
        return None
    return result.drop("_ok")


def split_lines(text: TextFile, separator: str, names: Sequence[str]) -> pl.LazyFrame:
    """Non-blank lines split on a literal ``separator`` into String columns ``names``.

    The frame keeps ``line`` and ``_fields`` (the number of fields found) for
    :func:`field_count_rule`.
    """
    body = pl.col("text")
    return (
        text.lines()
        .filter(body.str.strip_chars().str.len_bytes() > 0)
        .select(
            LINE,
            (body.str.count_matches(separator, literal=True) + 1).alias("_fields"),
            body.str.split_exact(separator, len(names) - 1)
            .struct.rename_fields(list(names))
            .alias("_split"),
        )
        .unnest("_split")
    )


def field_count_rule(n: int, what: str) -> Rule:
    return Rule(pl.col("_fields") != n, f"{n} {what}")


def scan_csv(
    text: TextFile, *, expected: str, separator: str = ","
) -> tuple[pl.LazyFrame, list[str]]:
    """A CSV file with a header, every column read as String (``expected``: see
    :func:`collect`).

    Returns:
        The rows (``line`` is the physical line number: the header is line 1 and a quoted
        field holding a line break would shift the count) without blank lines, and the
        header's column names.
    """
    frame = pl.scan_csv(
        text.data, separator=separator, infer_schema=False, encoding="utf8", quote_char='"'
    )
    header = collect(text, frame.head(0), expected=expected).columns
    rows = frame.with_row_index(LINE, offset=2).filter(
        pl.any_horizontal(pl.col(header).is_not_null())
    )
    return rows, header


def csv_diagnosis(text: TextFile, n_columns: int, separator: str = ",") -> Callable[[], None]:
    """A ``diagnose`` hook for native CSV reads: find a line with too many fields or an
    unterminated quote (polars reports those without a line number)."""

    def diagnose() -> None:
        body = pl.col("text")
        unquoted = body.str.replace_all(r'"([^"]|"")*"', "")
        extra = unquoted.str.count_matches(separator, literal=True) + 1 > n_columns
        unterminated = body.str.count_matches('"', literal=True) % 2 == 1
        lines = text.lines().filter(body.is_not_null())
        rows = lines.filter(extra | unterminated).select(LINE, unterminated.alias("open")).head(1)
        found = rows.collect()
        if found.height:
            line, open_quote = found.row(0)
            expected = (
                "a closing double quote on the same line"
                if open_quote
                else f"at most {n_columns} {separator!r}-separated fields (as in the header)"
            )
            raise bad_input(text, int(line), expected)

    return diagnose


def csv_with_columns(
    text: TextFile, names: tuple[str, ...]
) -> tuple[pl.LazyFrame, Callable[[], None]]:
    """The rows of a CSV file whose header must hold ``names``, and its error diagnosis."""
    rows, header = scan_csv(text, expected="a header line " + ",".join(names) + " and rows")
    missing = [n for n in names if n not in header]
    if missing:
        raise bad_input(
            text,
            1,
            f"a comma-separated header with the columns {','.join(names)} "
            f"(missing {', '.join(missing)})",
        )
    return rows, csv_diagnosis(text, len(header))
